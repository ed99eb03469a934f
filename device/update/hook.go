package update

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults of HookConfig.
const (
	DefaultHookTimeout        = 2 * time.Minute
	DefaultHookInstallTimeout = 30 * time.Minute
	// BootIDFile is where Linux publishes the current boot's ID.
	BootIDFile = "/proc/sys/kernel/random/boot_id"
)

// HookConfig configures a HookBackend.
type HookConfig struct {
	// Path is the hook program (see the package documentation for its
	// contract). Required.
	Path string
	// Slots names the two slots as the hook knows them; zero means "a"
	// and "b".
	Slots [2]string
	// Env is added to the hook's environment (KEY=value).
	Env []string
	// Timeout bounds each command but install; 0 means
	// DefaultHookTimeout.
	Timeout time.Duration
	// InstallTimeout bounds install; 0 means DefaultHookInstallTimeout.
	InstallTimeout time.Duration
	// BootID returns the current boot's ID when "HOOK booted" prints
	// none; nil reads BootIDFile.
	BootID func() (string, error)
	// SlotDevices maps a slot name to the file or block device holding
	// its image (e.g. /dev/mmcblk0p2), read by adaptive updates to reuse
	// the booted slot's blocks; without an entry for the booted slot the
	// engine fetches every block it lacks.
	SlotDevices map[string]string
}

// HookBackend runs a program for each step, so that boards with RAUC,
// SWUpdate, Mender's boot scripts or a plain U-Boot environment plug in
// (see the package documentation for the contract).
type HookBackend struct {
	cfg HookConfig
}

var _ Backend = (*HookBackend)(nil)

// OpenSlot opens the device file of slot, from HookConfig.SlotDevices
// (SlotReader).
func (h *HookBackend) OpenSlot(_ context.Context, slot string) (io.ReadCloser, error) {
	p, ok := h.cfg.SlotDevices[slot]
	if !ok {
		return nil, fmt.Errorf("update: hook backend: no device for slot %q", slot)
	}
	return os.Open(p)
}

// NewHook checks cfg and returns a HookBackend.
func NewHook(cfg HookConfig) (*HookBackend, error) {
	if cfg.Path == "" {
		return nil, errors.New("update: hook backend: no hook program")
	}
	if cfg.Slots == ([2]string{}) {
		cfg.Slots = [2]string{"a", "b"}
	}
	for _, s := range cfg.Slots {
		if !validSlot(s) {
			return nil, fmt.Errorf("update: hook backend: invalid slot name %q", s)
		}
	}
	if cfg.Slots[0] == cfg.Slots[1] {
		return nil, errors.New("update: hook backend: both slots have the same name")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultHookTimeout
	}
	if cfg.InstallTimeout <= 0 {
		cfg.InstallTimeout = DefaultHookInstallTimeout
	}
	if cfg.BootID == nil {
		cfg.BootID = func() (string, error) {
			b, err := os.ReadFile(BootIDFile)
			return strings.TrimSpace(string(b)), err
		}
	}
	return &HookBackend{cfg: cfg}, nil
}

// Slots implements Backend.
func (h *HookBackend) Slots() [2]string { return h.cfg.Slots }

// Booted implements Backend: "HOOK booted" prints the slot and, optionally,
// a boot ID after it.
func (h *HookBackend) Booted(ctx context.Context) (Boot, error) {
	out, err := h.run(ctx, h.cfg.Timeout, "booted")
	if err != nil {
		return Boot{}, err
	}
	b, err := parseBooted(out, h.cfg.Slots)
	if err != nil {
		return Boot{}, err
	}
	if b.ID == "" {
		if b.ID, err = h.cfg.BootID(); err != nil {
			return Boot{}, fmt.Errorf("update: hook backend: boot ID: %w", err)
		}
		if b.ID == "" {
			return Boot{}, errors.New("update: hook backend: empty boot ID")
		}
	}
	return b, nil
}

// parseBooted parses the output of "HOOK booted": one line, the slot and
// optionally a boot ID.
func parseBooted(out []byte, slots [2]string) (Boot, error) {
	line, _, _ := strings.Cut(string(out), "\n")
	f := strings.Fields(line)
	if len(f) == 0 || len(f) > 2 {
		return Boot{}, fmt.Errorf("update: hook booted: printed %q, want SLOT [BOOT-ID]", line)
	}
	if f[0] != slots[0] && f[0] != slots[1] {
		return Boot{}, fmt.Errorf("update: hook booted: unknown slot %q", f[0])
	}
	b := Boot{Slot: f[0]}
	if len(f) == 2 {
		if len(f[1]) > 128 {
			return Boot{}, errors.New("update: hook booted: boot ID longer than 128 bytes")
		}
		b.ID = f[1]
	}
	return b, nil
}

// Install implements Backend: "HOOK install SLOT PATH".
func (h *HookBackend) Install(ctx context.Context, slot, path string) error {
	_, err := h.run(ctx, h.cfg.InstallTimeout, "install", slot, path)
	return err
}

// Switch implements Backend: "HOOK switch SLOT".
func (h *HookBackend) Switch(ctx context.Context, slot string) error {
	_, err := h.run(ctx, h.cfg.Timeout, "switch", slot)
	return err
}

// Reboot implements Backend: "HOOK reboot".
func (h *HookBackend) Reboot(ctx context.Context) error {
	_, err := h.run(ctx, h.cfg.Timeout, "reboot")
	return err
}

// Health implements Backend: "HOOK health", healthy when it exits 0.
func (h *HookBackend) Health(ctx context.Context) error {
	_, err := h.run(ctx, h.cfg.Timeout, "health")
	return err
}

// Commit implements Backend: "HOOK commit SLOT".
func (h *HookBackend) Commit(ctx context.Context, slot string) error {
	_, err := h.run(ctx, h.cfg.Timeout, "commit", slot)
	return err
}

// Rollback implements Backend: "HOOK rollback SLOT".
func (h *HookBackend) Rollback(ctx context.Context, slot string) error {
	_, err := h.run(ctx, h.cfg.Timeout, "rollback", slot)
	return err
}

// maxHookOutput bounds what is kept of a hook's standard output and error.
const maxHookOutput = 4 << 10

// run runs the hook with args and returns its standard output. A failure
// carries the start of its standard error.
func (h *HookBackend) run(ctx context.Context, timeout time.Duration, args ...string) ([]byte, error) {
	for _, a := range args[1:] {
		if a != h.cfg.Slots[0] && a != h.cfg.Slots[1] && args[0] != "install" {
			return nil, fmt.Errorf("update: hook %s: unknown slot %q", args[0], a)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// os.StartProcess rather than os/exec, which would cost sigild about
	// 64 KiB; the hook runs in its own process group so that a timeout
	// kills its children too.
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("update: hook %s: %w", args[0], err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("update: hook %s: %w", args[0], err)
	}
	p, err := os.StartProcess(h.cfg.Path, append([]string{h.cfg.Path}, args...), &os.ProcAttr{
		Env: append(os.Environ(), h.cfg.Env...), Files: []*os.File{nil, outW, errW},
		Sys: &syscall.SysProcAttr{Setpgid: true},
	})
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("update: hook %s: %w", args[0], err)
	}
	stop := context.AfterFunc(ctx, func() { _ = syscall.Kill(-p.Pid, syscall.SIGKILL) })
	defer stop()
	var stdout, stderr limitedBuffer
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(&stdout, outR) })
	wg.Go(func() { _, _ = io.Copy(&stderr, errR) })
	st, err := p.Wait()
	read := make(chan struct{})
	go func() { wg.Wait(); close(read) }()
	select {
	case <-read:
	case <-time.After(5 * time.Second): // children holding the pipes do not hang us
	}
	outR.Close()
	errR.Close()
	<-read
	if err == nil && !st.Success() {
		err = errors.New(st.String())
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		if msg != "" {
			return nil, fmt.Errorf("update: hook %s: %w: %s", args[0], err, msg)
		}
		return nil, fmt.Errorf("update: hook %s: %w", args[0], err)
	}
	return stdout.Bytes(), nil
}

// limitedBuffer keeps the first maxHookOutput bytes written to it.
type limitedBuffer struct{ bytes.Buffer }

func (t *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxHookOutput - t.Len(); room > 0 {
		t.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// validSlot accepts slot names a hook can take as one argument.
func validSlot(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return s[0] != '-'
}
