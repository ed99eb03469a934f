// Package swtpm starts and stops real swtpm processes (TPM 2.0 software
// emulators) for tests, the simulator and the demo.
//
// Each Instance is one swtpm process with its own state directory, listening
// on two loopback TCP ports: the TPM port (TPM commands, what device/tpm
// opens as "swtpm://127.0.0.1:PORT" and tpm2-tools as TCTI
// "swtpm:host=127.0.0.1,port=PORT") and the control port (swtpm's control
// protocol: power cycle, stop). A fresh state directory is manufactured with
// swtpm_setup, which creates an RSA-2048 EK (persistent 0x81010001,
// certificate in NV 0x01c00002), an ECC P-384 EK (0x81010016, certificate in
// NV 0x01c00016) and a platform certificate, all signed by a private CA (see
// CA) so that tests never share /var/lib/swtpm-localca.
//
// Facts that shape this package:
//
//   - swtpm serves one TCP connection on the TPM port at a time; a second
//     client blocks until the first disconnects. Clients must not hold the
//     connection longer than they need it.
//   - swtpm has no resource manager: transient objects survive a closed
//     connection and there are only three transient slots.
//   - A power cycle without TPM2_Shutdown first is a disorderly shutdown; a
//     few of them lock out DA-protected objects. Reboot and Stop send
//     TPM2_Shutdown(CLEAR) first; Kill does not (it simulates power loss).
//   - Setup with EK certificates takes about 0.65 s; the process starts in
//     15-50 ms.
package swtpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stateFile is the file swtpm keeps a TPM 2.0's permanent state in.
const stateFile = "tpm2-00.permall"

// Binaries this package runs.
var binaries = []string{"swtpm", "swtpm_setup", "swtpm_localca"}

// Available reports whether the swtpm binaries this package needs are
// installed; its error names the missing ones.
func Available() error {
	var missing []string
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("swtpm: missing binaries: %s (Debian: apt-get install swtpm swtpm-tools)", strings.Join(missing, ", "))
	}
	return nil
}

// Options configure Start.
type Options struct {
	// StateDir holds the TPM state, swtpm's log (swtpm.log) and the setup
	// log (setup.log). Required. If it holds no TPM state yet, Start
	// manufactures one with swtpm_setup (or copies Template).
	StateDir string

	// CA signs the EK and platform certificates when the state is
	// manufactured. Required unless StateDir already holds a state or
	// Template is set.
	CA *CA

	// Template, when set, is the state directory of an instance manufactured
	// earlier; its TPM state is copied instead of running swtpm_setup, which
	// saves about 0.65 s per instance. Every copy has the SAME endorsement
	// keys and seeds as the template: use it only for load tests, never
	// where device identity matters (enrollment, clone detection).
	Template string

	// PCRBanks are the PCR banks the manufactured TPM allocates, e.g.
	// "sha1,sha256"; empty means swtpm_setup's default (sha256).
	PCRBanks string

	// Logger receives lifecycle events; nil discards them.
	Logger *slog.Logger

	// StartTimeout bounds the wait for the process to serve. Zero means 10 s.
	StartTimeout time.Duration
}

// Instance is a running (or stopped) swtpm process. Its methods are safe for
// concurrent use.
type Instance struct {
	dir     string
	timeout time.Duration
	log     *slog.Logger

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exits
	port int
	ctrl int
}

// Start manufactures the state if StateDir has none, then starts swtpm on
// two free adjacent loopback ports (TPM port P, control port P+1, the layout
// tpm2-tools' swtpm TCTI expects) and waits until it serves. A lost race for a port
// (another process bound it first) is retried with other ports.
func Start(ctx context.Context, opts Options) (*Instance, error) {
	if opts.StateDir == "" {
		return nil, errors.New("swtpm: start: no state directory")
	}
	if err := Available(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, fmt.Errorf("swtpm: start: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("swtpm: start: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	inst := &Instance{dir: dir, timeout: opts.StartTimeout, log: log.With("swtpm", dir)}
	if inst.timeout == 0 {
		inst.timeout = 10 * time.Second
	}
	if !hasState(dir) {
		switch {
		case opts.Template != "":
			if err := copyState(opts.Template, dir); err != nil {
				return nil, err
			}
		case opts.CA != nil:
			start := time.Now()
			if err := setup(ctx, dir, opts.CA, opts.PCRBanks); err != nil {
				return nil, err
			}
			inst.log.Info("swtpm manufactured", "took", time.Since(start))
		default:
			return nil, errors.New("swtpm: start: state directory is empty and neither CA nor Template is set")
		}
	}
	if err := inst.launch(ctx, 0, 0); err != nil {
		return nil, err
	}
	return inst, nil
}

func hasState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, stateFile))
	return err == nil
}

// setup manufactures a TPM 2.0 state with EK and platform certificates.
func setup(ctx context.Context, dir string, ca *CA, banks string) error {
	args := []string{"--tpm2", "--create-ek-cert", "--create-platform-cert",
		"--tpmstate", dir, "--config", ca.SetupConfig(),
		"--logfile", filepath.Join(dir, "setup.log"), "--overwrite"}
	if banks != "" {
		args = append(args, "--pcr-banks", banks)
	}
	cmd := exec.CommandContext(ctx, "swtpm_setup", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		tail, _ := os.ReadFile(filepath.Join(dir, "setup.log"))
		return fmt.Errorf("swtpm: setup: %w: %s%s", err, out, lastLines(tail, 5))
	}
	return nil
}

func copyState(from, to string) error {
	b, err := os.ReadFile(filepath.Join(from, stateFile))
	if err != nil {
		return fmt.Errorf("swtpm: copy template: %w", err)
	}
	if err := os.WriteFile(filepath.Join(to, stateFile), b, 0o600); err != nil {
		return fmt.Errorf("swtpm: copy template: %w", err)
	}
	return nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// launch starts the process; port and ctrl are tried first when nonzero.
func (i *Instance) launch(ctx context.Context, port, ctrl int) error {
	const attempts = 5
	var lastErr error
	for a := 0; a < attempts; a++ {
		if a > 0 || port == 0 || ctrl == 0 {
			var err error
			if port, ctrl, err = freePorts(); err != nil {
				return fmt.Errorf("swtpm: start: %w", err)
			}
		}
		err := i.run(ctx, port, ctrl)
		if err == nil {
			return nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		i.log.Debug("swtpm did not start, retrying with other ports", "err", err)
	}
	return fmt.Errorf("swtpm: start: %w", lastErr)
}

// freePorts picks two adjacent loopback ports, P and P+1, that are free
// right now. They must be adjacent: tpm2-tools' swtpm TCTI finds the control
// channel at port+1.
func freePorts() (int, int, error) {
	for try := 0; try < 50; try++ {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		p := l1.Addr().(*net.TCPAddr).Port
		if p == 65535 {
			l1.Close()
			continue
		}
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l1.Close()
		if err != nil {
			continue
		}
		l2.Close()
		return p, p + 1, nil
	}
	return 0, 0, errors.New("no two adjacent free ports")
}

// run starts swtpm once and waits until its control channel answers.
func (i *Instance) run(ctx context.Context, port, ctrl int) error {
	logFile := filepath.Join(i.dir, "swtpm.log")
	// The process must outlive ctx (a start-up context), so it is not tied
	// to it; ctx only bounds the wait.
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrl),
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+i.dir,
		"--log", "file="+logFile+",level=1")
	out, err := os.OpenFile(filepath.Join(i.dir, "swtpm.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		out.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(done)
	}()

	wctx, cancel := context.WithTimeout(ctx, i.timeout)
	defer cancel()
	for {
		select {
		case <-done:
			b, _ := os.ReadFile(logFile)
			return fmt.Errorf("swtpm exited during start (%s): %s", cmd.ProcessState, lastLines(b, 3))
		case <-wctx.Done():
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("swtpm did not serve within %s: %w", i.timeout, wctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
		if err := ctrlCommand(ctrl, cmdGetCapability, nil, 8, 200*time.Millisecond); err == nil {
			break
		}
	}
	i.mu.Lock()
	i.cmd, i.done, i.port, i.ctrl = cmd, done, port, ctrl
	i.mu.Unlock()
	i.log.Info("swtpm started", "port", port, "ctrl", ctrl, "pid", cmd.Process.Pid)
	return nil
}

// URI is the address device/tpm opens: "swtpm://127.0.0.1:PORT".
func (i *Instance) URI() string { return "swtpm://" + i.addr() }

// TCTI is the tpm2-tools -T argument: "swtpm:host=127.0.0.1,port=PORT".
func (i *Instance) TCTI() string { return "swtpm:host=127.0.0.1,port=" + strconv.Itoa(i.Port()) }

// Port is the TPM command port.
func (i *Instance) Port() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.port
}

// CtrlPort is the swtpm control channel port.
func (i *Instance) CtrlPort() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.ctrl
}

// StateDir is the instance's state directory.
func (i *Instance) StateDir() string { return i.dir }

func (i *Instance) addr() string { return "127.0.0.1:" + strconv.Itoa(i.Port()) }

// Running reports whether the process is alive.
func (i *Instance) Running() bool {
	i.mu.Lock()
	done := i.done
	i.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Stop shuts the TPM down in order (TPM2_Shutdown(CLEAR)), asks swtpm to
// exit through the control channel, and escalates to SIGTERM and SIGKILL if
// it does not exit. The state is kept; Restart starts it again. Stopping a
// stopped instance is a no-op.
func (i *Instance) Stop() error {
	if !i.Running() {
		return nil
	}
	var errs []error
	if err := i.shutdownTPM(); err != nil {
		errs = append(errs, err)
	}
	if err := ctrlCommand(i.CtrlPort(), cmdShutdown, nil, 4, 2*time.Second); err != nil {
		errs = append(errs, fmt.Errorf("control shutdown: %w", err))
	}
	if err := i.waitExit(3 * time.Second); err != nil {
		errs = append(errs, err)
	}
	i.log.Info("swtpm stopped")
	if len(errs) > 0 {
		return fmt.Errorf("swtpm: stop: %w", errors.Join(errs...))
	}
	return nil
}

// waitExit waits for the process, then signals SIGTERM and SIGKILL.
func (i *Instance) waitExit(grace time.Duration) error {
	i.mu.Lock()
	cmd, done := i.cmd, i.done
	i.mu.Unlock()
	if done == nil {
		return nil
	}
	for _, sig := range []syscall.Signal{0, syscall.SIGTERM, syscall.SIGKILL} {
		if sig != 0 {
			_ = cmd.Process.Signal(sig)
		}
		select {
		case <-done:
			if sig == syscall.SIGKILL {
				return errors.New("swtpm needed SIGKILL")
			}
			return nil
		case <-time.After(grace):
		}
	}
	return errors.New("swtpm did not exit after SIGKILL")
}

// Kill ends the process with SIGKILL, as a power loss would: no
// TPM2_Shutdown, volatile state lost, permanent state kept. The next start
// counts as a disorderly shutdown (DA lockout counts them).
func (i *Instance) Kill() error {
	i.mu.Lock()
	cmd, done := i.cmd, i.done
	i.mu.Unlock()
	if done == nil {
		return nil
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
		i.log.Info("swtpm killed")
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("swtpm: kill: process did not exit")
	}
}

// Restart starts the process again on the same state directory, stopping it
// in order first if it is still running. It tries the previous ports first
// and falls back to new ones if they were taken meanwhile, so URI, TCTI and
// Port may change: read them again after Restart (and re-open a *tpm.TPM
// whose URI changed).
func (i *Instance) Restart(ctx context.Context) error {
	if err := i.Stop(); err != nil {
		return fmt.Errorf("swtpm: restart: %w", err)
	}
	i.mu.Lock()
	port, ctrl := i.port, i.ctrl
	i.mu.Unlock()
	return i.launch(ctx, port, ctrl)
}

// Reboot simulates an orderly reboot of the machine without restarting the
// process: TPM2_Shutdown(CLEAR) on the TPM port, a power cycle (CMD_INIT) on
// the control channel, then TPM2_Startup(CLEAR). Afterwards PCRs are reset,
// the reset counter has incremented, transient objects and sessions are
// gone, and persistent objects and NV remain. Ports are unchanged.
//
// The TPM port must be free: a client holding a connection to it blocks
// Reboot until ctx ends.
func (i *Instance) Reboot(ctx context.Context) error {
	if !i.Running() {
		return errors.New("swtpm: reboot: not running")
	}
	if err := i.shutdownTPMCtx(ctx); err != nil {
		return fmt.Errorf("swtpm: reboot: %w", err)
	}
	// CMD_INIT's flags: 0 (do not delete volatile state; there is none after Shutdown).
	if err := ctrlCommand(i.CtrlPort(), cmdInit, []byte{0, 0, 0, 0}, 4, 5*time.Second); err != nil {
		return fmt.Errorf("swtpm: reboot: power cycle: %w", err)
	}
	rc, err := i.tpmCommand(ctx, tpmCCStartup)
	if err != nil {
		return fmt.Errorf("swtpm: reboot: startup: %w", err)
	}
	if rc != 0 && rc != rcInitialize {
		return fmt.Errorf("swtpm: reboot: startup: TPM error 0x%x", rc)
	}
	i.log.Info("swtpm rebooted")
	return nil
}

// shutdownTPM sends TPM2_Shutdown(CLEAR), tolerating a TPM that is not
// started.
func (i *Instance) shutdownTPM() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return i.shutdownTPMCtx(ctx)
}

func (i *Instance) shutdownTPMCtx(ctx context.Context) error {
	rc, err := i.tpmCommand(ctx, tpmCCShutdown)
	if err != nil {
		return fmt.Errorf("TPM2_Shutdown: %w", err)
	}
	if rc != 0 && rc != rcInitialize {
		return fmt.Errorf("TPM2_Shutdown: TPM error 0x%x", rc)
	}
	return nil
}

// TPM command codes and response codes used here.
const (
	tpmCCStartup  = 0x144
	tpmCCShutdown = 0x145
	rcInitialize  = 0x100 // TPM_RC_INITIALIZE: already started / not started
)

// tpmCommand sends TPM2_Startup or TPM2_Shutdown with TPM_SU_CLEAR and
// returns the response code.
func (i *Instance) tpmCommand(ctx context.Context, cc uint32) (uint32, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", i.addr())
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	// TPM_ST_NO_SESSIONS, size 12, command code, TPM_SU_CLEAR.
	cmd := binary.BigEndian.AppendUint16(nil, 0x8001)
	cmd = binary.BigEndian.AppendUint32(cmd, 12)
	cmd = binary.BigEndian.AppendUint32(cmd, cc)
	cmd = binary.BigEndian.AppendUint16(cmd, 0)
	if _, err := conn.Write(cmd); err != nil {
		return 0, err
	}
	var hdr [10]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return 0, err
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > 4096 {
		return 0, fmt.Errorf("bad response size %d", size)
	}
	if _, err := io.CopyN(io.Discard, conn, int64(size-10)); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(hdr[6:10]), nil
}

// swtpm control channel commands (swtpm's tpm_ioctl.h).
const (
	cmdGetCapability = 0x01
	cmdInit          = 0x02
	cmdShutdown      = 0x03
)

// ctrlCommand sends one control command with its payload and reads respLen
// bytes, whose first four are the result code.
func ctrlCommand(port int, cmd uint32, payload []byte, respLen int, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	msg := binary.BigEndian.AppendUint32(nil, cmd)
	if _, err := conn.Write(append(msg, payload...)); err != nil {
		return err
	}
	resp := make([]byte, respLen)
	if _, err := io.ReadFull(conn, resp); err != nil {
		return err
	}
	if rc := binary.BigEndian.Uint32(resp[:4]); rc != 0 {
		return fmt.Errorf("control command %d: result 0x%x", cmd, rc)
	}
	return nil
}

// LogTail returns the last n lines of swtpm's log, for test failure messages.
func (i *Instance) LogTail(n int) string {
	b, err := os.ReadFile(filepath.Join(i.dir, "swtpm.log"))
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	return lastLines(b, n)
}
