package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
)

// Goals from the product issues.
const (
	GoalArm64Size = 7 << 20 // bytes: sigild for linux/arm64, static and stripped
	GoalIdleRSS   = 8e6     // bytes (8 MB): sigild enrolled, connected and idle (issue 17; 10 MB before)
)

// SigildOptions configures Sigild.
type SigildOptions struct {
	// Sigild is the binary to run. Empty builds ./cmd/sigild from the
	// source tree the current directory is in, as `make cross` does (static,
	// stripped), for the host and for linux/arm64 (whose size is reported).
	Sigild string
	// Dir holds the binaries, the TPM state, the fleet and sigild's state.
	// Required.
	Dir string
	// Idle is how long sigild stays idle after connecting before its RSS
	// is read. Default 5s.
	Idle time.Duration
	// Restarts is how many restarts are timed. Default 5.
	Restarts int
	// Timeout bounds each wait for sigild to connect. Default 30s.
	Timeout time.Duration
	// Logger receives the fleet's log; nil discards it.
	Logger *slog.Logger
}

// SigildResult is the outcome of Sigild.
type SigildResult struct {
	Binary     string
	Size       int64 // bytes of the binary run
	Arm64Size  int64 // bytes of the linux/arm64 build; 0 when not built
	Arm64Built bool
	// FirstConnect is from the first process start (fresh state) to
	// enrolled and connected: key creation, enrollment and mTLS connect.
	FirstConnect time.Duration
	// StatusExit is `sigild status`'s exit code once connected (0 means
	// enrolled and connected).
	StatusExit int
	// Idle is the memory of the first process (the one that enrolled)
	// after IdleFor connected; its Peak was reached during enrollment.
	Idle Memory
	// Restarted is the memory of the last restarted process (enrolled
	// already: it only connects) after IdleFor connected.
	Restarted Memory
	IdleFor   time.Duration
	// Restarts are the times from process start to connected after a
	// SIGTERM and a clean exit; RestartP50 is their median.
	Restarts   []time.Duration
	RestartP50 time.Duration
}

// Sigild runs sigild as a real process against an in-process fleet, with an
// swtpm as its TPM, and measures its size, idle memory and restart time.
// Readiness is read from sigild's status socket (what `sigild status`
// reads), polled every 5 ms; `sigild status` itself is run once to confirm.
// Building the binaries and manufacturing the swtpm happen before any clock.
func Sigild(ctx context.Context, o SigildOptions) (*SigildResult, error) {
	if o.Dir == "" {
		return nil, errors.New("bench: sigild: no working directory")
	}
	if o.Idle == 0 {
		o.Idle = 5 * time.Second
	}
	if o.Restarts == 0 {
		o.Restarts = 5
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	res := &SigildResult{Binary: o.Sigild, IdleFor: o.Idle}
	if res.Binary == "" {
		var err error
		if res.Binary, res.Arm64Size, err = buildSigild(ctx, filepath.Join(o.Dir, "bin")); err != nil {
			return nil, err
		}
		res.Arm64Built = true
	}
	fi, err := os.Stat(res.Binary)
	if err != nil {
		return nil, fmt.Errorf("bench: sigild: %w", err)
	}
	res.Size = fi.Size()

	tpms, ekCADir, stop, err := startTPMs(ctx, o.Dir, 1, o.Logger)
	if err != nil {
		return nil, err
	}
	defer stop()
	fleet, err := harness.StartFleet(ctx, server.Config{DataDir: filepath.Join(o.Dir, "fleet"), EKCADir: ekCADir}, o.Logger.With("side", "fleet"))
	if err != nil {
		return nil, err
	}
	defer fleet.Stop()

	devDir := filepath.Join(o.Dir, "device")
	if err := os.MkdirAll(devDir, 0o700); err != nil {
		return nil, fmt.Errorf("bench: sigild: %w", err)
	}
	cfg := fleet.AgentConfig(harness.DeviceConfig{
		TPM: tpms[0].URI(), Dir: devDir, Model: "bench-gw", Firmware: "1.0.0", Serial: "BENCH-SIGILD",
	})
	cfg.LogLevel = "warn"
	cfgPath := filepath.Join(devDir, "config.json")
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err == nil {
		err = os.WriteFile(cfgPath, b, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: sigild: %w", err)
	}
	logFile, err := os.Create(filepath.Join(devDir, "sigild.log"))
	if err != nil {
		return nil, fmt.Errorf("bench: sigild: %w", err)
	}
	defer logFile.Close()

	p := &process{bin: res.Binary, cfg: cfgPath, control: cfg.Control, log: logFile}
	defer p.stop()
	if res.FirstConnect, err = p.startAndWait(ctx, o.Timeout); err != nil {
		return nil, err
	}
	res.StatusExit = statusExit(ctx, res.Binary, cfgPath)
	if res.StatusExit != 0 {
		return nil, fmt.Errorf("bench: sigild status exited %d although the status socket says connected", res.StatusExit)
	}
	if res.Idle, err = p.idleMemory(ctx, o.Idle); err != nil {
		return nil, err
	}
	for range o.Restarts {
		if err := p.stop(); err != nil {
			return nil, err
		}
		d, err := p.startAndWait(ctx, o.Timeout)
		if err != nil {
			return nil, err
		}
		res.Restarts = append(res.Restarts, d)
	}
	res.RestartP50 = percentile(res.Restarts, 50)
	if len(res.Restarts) > 0 {
		if res.Restarted, err = p.idleMemory(ctx, o.Idle); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// idleMemory waits for idle, then reads the running sigild's memory.
func (p *process) idleMemory(ctx context.Context, idle time.Duration) (Memory, error) {
	select {
	case <-ctx.Done():
		return Memory{}, ctx.Err()
	case <-time.After(idle):
	}
	return memory(p.cmd.Process.Pid)
}

// Print writes the result as a small table with the goals.
func (r *SigildResult) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "measure\tvalue\tgoal")
	if r.Arm64Built {
		fmt.Fprintf(tw, "linux/arm64 size (static, stripped)\t%s\t≤ %s %s\n", mib(r.Arm64Size), mib(GoalArm64Size), verdict(r.Arm64Size <= GoalArm64Size))
	}
	fmt.Fprintf(tw, "size of the binary run (%s)\t%s\t\n", filepath.Base(r.Binary), mib(r.Size))
	fmt.Fprintf(tw, "idle RSS after %v, enrolled and connected\t%s\t≤ %s %s\n", r.IdleFor, mb(r.Idle.RSS), mb(GoalIdleRSS), verdict(r.Idle.RSS <= GoalIdleRSS))
	r.Idle.printSplit(tw)
	fmt.Fprintf(tw, "peak RSS (VmHWM, includes enrollment)\t%s\t\n", mb(r.Idle.Peak))
	if r.Restarted.RSS > 0 {
		fmt.Fprintf(tw, "idle RSS after %v, restarted (no enrollment) and connected\t%s\t\n", r.IdleFor, mb(r.Restarted.RSS))
		r.Restarted.printSplit(tw)
	}
	fmt.Fprintf(tw, "first start to connected (enrollment)\t%s\t\n", ms(r.FirstConnect))
	all := make([]string, len(r.Restarts))
	for i, d := range r.Restarts {
		all[i] = strconv.Itoa(int(d.Milliseconds()))
	}
	fmt.Fprintf(tw, "restart to connected, median of %d\t%s\t(all: %s ms)\n", len(r.Restarts), ms(r.RestartP50), strings.Join(all, ", "))
	tw.Flush()
}

func verdict(ok bool) string {
	if ok {
		return "(met)"
	}
	return "(NOT MET)"
}

func mib(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }
func mb(n int64) string  { return fmt.Sprintf("%.1f MB (%.2f MiB)", float64(n)/1e6, float64(n)/(1<<20)) }

// process is sigild run as a child process.
type process struct {
	bin, cfg, control string
	log               io.Writer
	cmd               *exec.Cmd
	done              chan error
}

// startAndWait starts sigild and returns the time until its status socket
// reports it enrolled and connected.
func (p *process) startAndWait(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	p.cmd = exec.Command(p.bin, "run", "--config", p.cfg)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	t0 := time.Now()
	if err := p.cmd.Start(); err != nil {
		return 0, fmt.Errorf("bench: start sigild: %w", err)
	}
	p.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan<- error) { done <- c.Wait() }(p.cmd, p.done)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline:
			return 0, fmt.Errorf("bench: sigild not connected after %v (see its log)", timeout)
		case err := <-p.done:
			p.done <- err
			return 0, fmt.Errorf("bench: sigild exited: %v", err)
		case <-tick.C:
			st, err := agent.ReadStatus(p.control)
			if err == nil && harness.Connected(*st) {
				return time.Since(t0), nil
			}
		}
	}
}

// stop sends SIGTERM and waits for the exit (SIGKILL after 10 s); it is a
// no-op when the process is not running.
func (p *process) stop() error {
	if p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	defer func() { p.cmd = nil }()
	select {
	case <-p.done:
		return nil // already exited
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("bench: sigild did not exit within 10s of SIGTERM")
	}
}

// statusExit runs `sigild status` and returns its exit code.
func statusExit(ctx context.Context, bin, cfg string) int {
	err := exec.CommandContext(ctx, bin, "status", "--config", cfg).Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

// Memory is a process's memory as /proc/PID/status reports it, in bytes.
type Memory struct {
	RSS  int64 // VmRSS: resident now
	Peak int64 // VmHWM: the most resident so far
	// Anon is RssAnon: the heap, goroutine and thread stacks, the
	// runtime's own structures, written pages of the binary's data.
	Anon int64
	// File is RssFile: pages of files mapped, read-only and clean — the
	// executable's code and read-only data, the state file bbolt maps.
	// The kernel can drop them at any time and read them again.
	File int64
}

// printSplit writes the lines that split m.RSS.
func (m Memory) printSplit(w io.Writer) {
	fmt.Fprintf(w, "  of which anonymous (heap, stacks, runtime)\t%s\t\n", mb(m.Anon))
	fmt.Fprintf(w, "  of which file-backed (the executable, bbolt's map)\t%s\t\n", mb(m.File))
}

// memory reads a process's memory from /proc/PID/status.
func memory(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("bench: %w", err)
	}
	defer f.Close()
	return parseStatus(f)
}

// parseStatus extracts VmRSS, VmHWM, RssAnon and RssFile from
// /proc/PID/status (the last two since Linux 4.5).
func parseStatus(r io.Reader) (Memory, error) {
	var m Memory
	fields := map[string]*int64{"VmRSS": &m.RSS, "VmHWM": &m.Peak, "RssAnon": &m.Anon, "RssFile": &m.File}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		dst := fields[k]
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return Memory{}, fmt.Errorf("bench: /proc status: unexpected %s line %q", k, v)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("bench: /proc status: %w", err)
		}
		*dst = n << 10
	}
	if err := sc.Err(); err != nil {
		return Memory{}, fmt.Errorf("bench: /proc status: %w", err)
	}
	if m.RSS == 0 || m.Peak == 0 || m.Anon == 0 || m.File == 0 {
		return Memory{}, errors.New("bench: /proc status: no VmRSS, VmHWM, RssAnon or RssFile")
	}
	return m, nil
}

// sigildGCFlags are the compiler flags `make cross` builds sigild with
// (SIGILD_GCFLAGS in the Makefile; a test keeps the two in step): no inlining
// outside the runtime and crypto.
var sigildGCFlags = []string{"-gcflags=all=-l", "-gcflags=runtime/...=", "-gcflags=crypto/...=", "-gcflags=internal/...="}

// sigildGOEXPERIMENT is the GOEXPERIMENT `make cross` builds sigild with
// (SIGILD_GOEXPERIMENT in the Makefile): Go's classic encoding/json.
const sigildGOEXPERIMENT = "nojsonv2"

// buildSigild builds sigild as `make cross` does (CGO_ENABLED=0,
// sigildGOEXPERIMENT, -trimpath, sigildGCFlags, -ldflags "-s -w") for the host into dir, and for linux/arm64 to report its
// size. It returns the host binary's path and the arm64 size.
func buildSigild(ctx context.Context, dir string) (string, int64, error) {
	src, err := moduleDir(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("%w; or pass --sigild PATH", err)
	}
	gobin, _ := goTool()
	build := func(out string, env ...string) error {
		args := append(append([]string{"build", "-trimpath"}, sigildGCFlags...), "-ldflags", "-s -w", "-o", out, "./cmd/sigild")
		cmd := exec.CommandContext(ctx, gobin, args...)
		cmd.Dir = src
		cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0", "GOEXPERIMENT="+sigildGOEXPERIMENT), env...)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("bench: go build %s: %v\n%s", strings.Join(env, " "), err, b)
		}
		return nil
	}
	host := filepath.Join(dir, "sigild")
	arm64 := filepath.Join(dir, "sigild-linux-arm64")
	if err := build(host); err != nil {
		return "", 0, err
	}
	if err := build(arm64, "GOOS=linux", "GOARCH=arm64"); err != nil {
		return "", 0, err
	}
	fi, err := os.Stat(arm64)
	if err != nil {
		return "", 0, fmt.Errorf("bench: %w", err)
	}
	return host, fi.Size(), nil
}
