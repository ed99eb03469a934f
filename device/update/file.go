package update

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// The slot names of a FileBackend.
const (
	fileSlotA = "a"
	fileSlotB = "b"
)

// FileState is the boot record of a FileBackend: what a boot loader's
// environment holds on a real A/B board.
type FileState struct {
	Active  string `json:"active"`            // the slot that boots when nothing is pending
	Booted  string `json:"booted"`            // the slot running now
	Pending string `json:"pending,omitempty"` // the slot to boot next, once
	Boot    uint64 `json:"boot"`              // boot counter, the boot ID
}

// FileConfig configures a FileBackend.
type FileConfig struct {
	// Dir holds the slots (slot-a.img, slot-b.img) and the boot record
	// (boot.json). It is created if missing; a new one boots slot "a".
	Dir string
	// Health checks the running slot, given its name and image file; nil
	// means the image file exists and is not empty.
	Health func(ctx context.Context, slot, image string) error
}

// FileBackend is an A/B backend on plain files, for the simulator and tests:
// two slot files and a boot record written atomically (temporary file,
// fsync, rename, fsync of the directory), so that a crash leaves the old or
// the new record. Reboot simulates the boot loader: it boots the pending
// slot once, else the active one.
type FileBackend struct {
	dir    string
	health func(ctx context.Context, slot, image string) error
	mu     sync.Mutex
}

var _ Backend = (*FileBackend)(nil)

// NewFile opens (or creates) a FileBackend in cfg.Dir.
func NewFile(cfg FileConfig) (*FileBackend, error) {
	if cfg.Dir == "" {
		return nil, errors.New("update: file backend: no directory")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("update: file backend: %w", err)
	}
	fb := &FileBackend{dir: cfg.Dir, health: cfg.Health}
	fb.mu.Lock()
	defer fb.mu.Unlock()
	if _, err := fb.read(); errors.Is(err, os.ErrNotExist) {
		if err := fb.write(&FileState{Active: fileSlotA, Booted: fileSlotA, Boot: 1}); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	return fb, nil
}

// Image is the file of slot.
func (fb *FileBackend) Image(slot string) string {
	return filepath.Join(fb.dir, "slot-"+slot+".img")
}

// OpenSlot opens the image in slot for reading (SlotReader).
func (fb *FileBackend) OpenSlot(_ context.Context, slot string) (io.ReadCloser, error) {
	if slot != fileSlotA && slot != fileSlotB {
		return nil, fmt.Errorf("update: no slot %q", slot)
	}
	return os.Open(fb.Image(slot))
}

// State returns the boot record.
func (fb *FileBackend) State() (FileState, error) {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	s, err := fb.read()
	if err != nil {
		return FileState{}, err
	}
	return *s, nil
}

// Slots implements Backend.
func (fb *FileBackend) Slots() [2]string { return [2]string{fileSlotA, fileSlotB} }

// Booted implements Backend.
func (fb *FileBackend) Booted(context.Context) (Boot, error) {
	s, err := fb.State()
	if err != nil {
		return Boot{}, err
	}
	return Boot{Slot: s.Booted, ID: strconv.FormatUint(s.Boot, 10)}, nil
}

// Install implements Backend: it copies the image into the slot file
// atomically. It refuses the booted slot.
func (fb *FileBackend) Install(ctx context.Context, slot, path string) error {
	if err := fb.check(slot); err != nil {
		return err
	}
	fb.mu.Lock()
	defer fb.mu.Unlock()
	s, err := fb.read()
	if err != nil {
		return err
	}
	if slot == s.Booted {
		return fmt.Errorf("update: file backend: slot %s is the booted one", slot)
	}
	src, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("update: file backend: %w", err)
	}
	defer src.Close()
	return fb.atomic(fb.Image(slot), func(w io.Writer) error {
		_, err := io.Copy(w, readerCtx{ctx, src})
		return err
	})
}

// Switch implements Backend: slot becomes pending, booted once by the next
// Reboot.
func (fb *FileBackend) Switch(_ context.Context, slot string) error {
	if err := fb.check(slot); err != nil {
		return err
	}
	return fb.update(func(s *FileState) error {
		if _, err := os.Stat(fb.Image(slot)); err != nil {
			return fmt.Errorf("update: file backend: slot %s has no image: %w", slot, err)
		}
		s.Pending = slot
		return nil
	})
}

// Reboot implements Backend: it boots the pending slot (and forgets it:
// try-once), else the active one, with the next boot ID.
func (fb *FileBackend) Reboot(context.Context) error {
	return fb.update(func(s *FileState) error {
		s.Boot++
		s.Booted = s.Active
		if s.Pending != "" {
			s.Booted, s.Pending = s.Pending, ""
		}
		return nil
	})
}

// Health implements Backend with FileConfig.Health.
func (fb *FileBackend) Health(ctx context.Context) error {
	s, err := fb.State()
	if err != nil {
		return err
	}
	img := fb.Image(s.Booted)
	if fb.health != nil {
		return fb.health(ctx, s.Booted, img)
	}
	fi, err := os.Stat(img)
	if err != nil {
		return fmt.Errorf("update: file backend: health: %w", err)
	}
	if fi.Size() == 0 {
		return errors.New("update: file backend: health: empty image")
	}
	return nil
}

// Commit implements Backend: the booted slot becomes the active one.
func (fb *FileBackend) Commit(_ context.Context, slot string) error {
	return fb.update(func(s *FileState) error {
		if slot != s.Booted {
			return fmt.Errorf("update: file backend: commit %s while %s is booted", slot, s.Booted)
		}
		s.Active, s.Pending = slot, ""
		return nil
	})
}

// Rollback implements Backend: slot becomes the active one and nothing is
// pending.
func (fb *FileBackend) Rollback(_ context.Context, slot string) error {
	if err := fb.check(slot); err != nil {
		return err
	}
	return fb.update(func(s *FileState) error {
		s.Active, s.Pending = slot, ""
		return nil
	})
}

func (fb *FileBackend) check(slot string) error {
	if slot != fileSlotA && slot != fileSlotB {
		return fmt.Errorf("update: file backend: unknown slot %q", slot)
	}
	return nil
}

func (fb *FileBackend) update(f func(*FileState) error) error {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	s, err := fb.read()
	if err != nil {
		return err
	}
	if err := f(s); err != nil {
		return err
	}
	return fb.write(s)
}

func (fb *FileBackend) read() (*FileState, error) {
	b, err := os.ReadFile(filepath.Join(fb.dir, "boot.json"))
	if err != nil {
		return nil, fmt.Errorf("update: file backend: %w", err)
	}
	return parseFileState(b)
}

// parseFileState decodes and checks a boot record.
func parseFileState(b []byte) (*FileState, error) {
	var s FileState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("update: file backend: boot record: %w", err)
	}
	known := func(slot string) bool { return slot == fileSlotA || slot == fileSlotB }
	if !known(s.Active) || !known(s.Booted) || (s.Pending != "" && !known(s.Pending)) {
		return nil, errors.New("update: file backend: boot record names an unknown slot")
	}
	return &s, nil
}

func (fb *FileBackend) write(s *FileState) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("update: file backend: %w", err)
	}
	return fb.atomic(filepath.Join(fb.dir, "boot.json"), func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// atomic replaces path with what fill writes: a temporary file in the same
// directory, synced, renamed over path, and the directory synced.
func (fb *FileBackend) atomic(path string, fill func(io.Writer) error) error {
	tmp, err := os.CreateTemp(fb.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("update: file backend: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, nothing to remove
	err = fill(tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = syncDir(fb.dir)
	}
	if err != nil {
		return fmt.Errorf("update: file backend: write %s: %w", filepath.Base(path), err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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
