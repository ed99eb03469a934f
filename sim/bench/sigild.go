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

// Goals from the product issue.
const (
	GoalArm64Size = 7 << 20 // bytes: sigild for linux/arm64, static and stripped
	GoalIdleRSS   = 10e6    // bytes (10 MB): sigild enrolled, connected and idle
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
	// IdleRSS is VmRSS after Idle; PeakRSS is VmHWM (the high-water mark,
	// reached during enrollment).
	IdleRSS, PeakRSS int64
	Idle             time.Duration
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
	res := &SigildResult{Binary: o.Sigild, Idle: o.Idle}
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
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(o.Idle):
	}
	if res.IdleRSS, res.PeakRSS, err = memory(p.cmd.Process.Pid); err != nil {
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
	return res, nil
}

// Print writes the result as a small table with the goals.
func (r *SigildResult) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "measure\tvalue\tgoal")
	if r.Arm64Built {
		fmt.Fprintf(tw, "linux/arm64 size (static, stripped)\t%s\t≤ %s %s\n", mib(r.Arm64Size), mib(GoalArm64Size), verdict(r.Arm64Size <= GoalArm64Size))
	}
	fmt.Fprintf(tw, "size of the binary run (%s)\t%s\t\n", filepath.Base(r.Binary), mib(r.Size))
	fmt.Fprintf(tw, "idle RSS after %v, enrolled and connected\t%s\t≤ %s %s\n", r.Idle, mb(r.IdleRSS), mb(GoalIdleRSS), verdict(r.IdleRSS <= GoalIdleRSS))
	fmt.Fprintf(tw, "peak RSS (VmHWM, includes enrollment)\t%s\t\n", mb(r.PeakRSS))
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

// memory reads VmRSS and VmHWM of a process, in bytes.
func memory(pid int) (rss, hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("bench: %w", err)
	}
	defer f.Close()
	return parseStatus(f)
}

// parseStatus extracts VmRSS and VmHWM from /proc/PID/status.
func parseStatus(r io.Reader) (rss, hwm int64, err error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("bench: /proc status: unexpected %s line %q", k, v)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("bench: /proc status: %w", err)
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("bench: /proc status: %w", err)
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, errors.New("bench: /proc status: no VmRSS or VmHWM")
	}
	return rss, hwm, nil
}

// sigildGCFlags are the compiler flags `make cross` builds sigild with
// (SIGILD_GCFLAGS in the Makefile; a test keeps the two in step): no inlining
// outside the runtime and crypto.
var sigildGCFlags = []string{"-gcflags=all=-l", "-gcflags=runtime/...=", "-gcflags=crypto/...=", "-gcflags=internal/...="}

// buildSigild builds sigild as `make cross` does (CGO_ENABLED=0, -trimpath,
// sigildGCFlags, -ldflags "-s -w") for the host into dir, and for linux/arm64 to report its
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
		cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
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
