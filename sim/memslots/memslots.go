// Package memslots is an A/B firmware slot backend in memory for
// simulated devices: a device/update.Backend, so a simulated device takes
// firmware campaigns through the real update engine (download, digest
// check, install into the inactive slot, switch, reboot, health check,
// commit or rollback, the anti-rollback counter and the PCR measurement
// through the device's TPM) while its "flash" is a few dozen bytes.
//
// A slot keeps the size and SHA-256 digest of the image installed into it,
// not its bytes: the engine verified the image before installing it, and
// 10,000 devices holding a 1 MiB image each would take 10 GB. The boot
// loader is simulated as update.FileBackend does it: Switch makes a slot
// boot next, once; Reboot boots it (or the active slot) with the next boot
// ID; Commit makes the booted slot the active one. Reboot does not reset
// the device's TPM, as FileBackend does not.
//
// It is for simulation only and never reaches sigild.
package memslots

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	"github.com/sigil-iot/sigil/device/update"
)

// The slot names.
const (
	SlotA = "a"
	SlotB = "b"
)

// Image is what a slot holds.
type Image struct {
	Size   int64
	SHA256 [32]byte
}

// State is the boot record: what a boot loader's environment holds.
type State struct {
	Active  string // boots when nothing is pending
	Booted  string // runs now
	Pending string // boots next, once ("" for none)
	Boot    uint64 // boot counter, the boot ID
}

// Config configures a Backend.
type Config struct {
	// Health checks the booted slot; nil means healthy when the slot
	// holds an image. A simulator makes some devices fail it.
	Health func(ctx context.Context, slot string, img *Image) error
}

// Backend is an A/B slot backend in memory, safe for concurrent use. Slot
// A boots first, with the factory image the backend has no record of
// (Image returns nil for it).
type Backend struct {
	health func(ctx context.Context, slot string, img *Image) error

	mu    sync.Mutex
	st    State
	slots map[string]*Image
}

var _ update.Backend = (*Backend)(nil)

// New returns a backend booted from slot A.
func New(cfg Config) *Backend {
	return &Backend{health: cfg.Health, st: State{Active: SlotA, Booted: SlotA, Boot: 1}, slots: map[string]*Image{}}
}

// State returns the boot record.
func (b *Backend) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.st
}

// Image returns what slot holds; nil for a slot never installed.
func (b *Backend) Image(slot string) *Image {
	b.mu.Lock()
	defer b.mu.Unlock()
	if img := b.slots[slot]; img != nil {
		c := *img
		return &c
	}
	return nil
}

// Slots implements update.Backend.
func (b *Backend) Slots() [2]string { return [2]string{SlotA, SlotB} }

// Booted implements update.Backend.
func (b *Backend) Booted(context.Context) (update.Boot, error) {
	st := b.State()
	return update.Boot{Slot: st.Booted, ID: strconv.FormatUint(st.Boot, 10)}, nil
}

// Install implements update.Backend: it reads the image file at path and
// keeps its size and digest in slot. It refuses the booted slot.
func (b *Backend) Install(ctx context.Context, slot, path string) error {
	if err := check(slot); err != nil {
		return err
	}
	if b.State().Booted == slot {
		return fmt.Errorf("memslots: slot %s is the booted one", slot)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("memslots: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, readerCtx{ctx, f})
	if err != nil {
		return fmt.Errorf("memslots: install %s: %w", slot, err)
	}
	img := &Image{Size: n}
	h.Sum(img.SHA256[:0])
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.st.Booted == slot {
		return fmt.Errorf("memslots: slot %s is the booted one", slot)
	}
	b.slots[slot] = img
	return nil
}

// Switch implements update.Backend: slot boots next, once.
func (b *Backend) Switch(_ context.Context, slot string) error {
	if err := check(slot); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.slots[slot] == nil {
		return fmt.Errorf("memslots: slot %s has no image", slot)
	}
	b.st.Pending = slot
	return nil
}

// Reboot implements update.Backend: the pending slot boots (and is
// forgotten: try-once), else the active one, with the next boot ID.
func (b *Backend) Reboot(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.st.Boot++
	b.st.Booted = b.st.Active
	if b.st.Pending != "" {
		b.st.Booted, b.st.Pending = b.st.Pending, ""
	}
	return nil
}

// Health implements update.Backend with Config.Health.
func (b *Backend) Health(ctx context.Context) error {
	b.mu.Lock()
	slot := b.st.Booted
	var img *Image
	if i := b.slots[slot]; i != nil {
		c := *i
		img = &c
	}
	b.mu.Unlock()
	if b.health != nil {
		return b.health(ctx, slot, img)
	}
	if img == nil || img.Size == 0 {
		return fmt.Errorf("memslots: health: slot %s holds no image", slot)
	}
	return nil
}

// Commit implements update.Backend: the booted slot becomes the active
// one.
func (b *Backend) Commit(_ context.Context, slot string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if slot != b.st.Booted {
		return fmt.Errorf("memslots: commit %s while %s is booted", slot, b.st.Booted)
	}
	b.st.Active, b.st.Pending = slot, ""
	return nil
}

// Rollback implements update.Backend: slot becomes the active one and
// nothing is pending.
func (b *Backend) Rollback(_ context.Context, slot string) error {
	if err := check(slot); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.st.Active, b.st.Pending = slot, ""
	return nil
}

func check(slot string) error {
	if slot != SlotA && slot != SlotB {
		return fmt.Errorf("memslots: unknown slot %q", slot)
	}
	return nil
}

// readerCtx stops a copy when ctx is done.
type readerCtx struct {
	ctx context.Context
	r   io.Reader
}

func (r readerCtx) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// ErrUnhealthy is what a simulator's Health returns for a device it
// makes fail its health check.
var ErrUnhealthy = errors.New("memslots: the new image does not come up")
