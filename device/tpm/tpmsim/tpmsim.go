//go:build cgo

package tpmsim

import (
	"errors"
	"fmt"
	"sync"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpmutil"

	"github.com/sigil-iot/sigil/device/tpm"
)

// Scheme is the URI scheme this package registers: "sim://".
const Scheme = "sim"

func init() {
	tpm.Register(Scheme, func(string) (transport.TPMCloser, error) { return shared.open() })
}

// shared is the process's one simulator, reference counted by its handles.
// It is process-wide state by necessity: the simulator itself is.
var shared sharedSim

type sharedSim struct {
	mu   sync.Mutex // guards sim, refs and every command sent to sim
	sim  *simulator.Simulator
	refs int
}

func (s *sharedSim) open() (*handle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sim == nil {
		sim, err := simulator.Get()
		if err != nil {
			return nil, fmt.Errorf("tpmsim: start simulator: %w", err)
		}
		s.sim = sim
	}
	s.refs++
	return &handle{s: s}, nil
}

// handle is one user's transport to the shared simulator. It implements
// sync.Locker so that package tpm holds the simulator for a whole operation.
type handle struct {
	s *sharedSim

	mu     sync.Mutex // guards closed and held
	closed bool
	held   bool // Lock taken: Send runs under s.mu already
}

var (
	_ transport.TPMCloser = (*handle)(nil)
	_ sync.Locker         = (*handle)(nil)
)

// errClosed is returned by a closed handle.
var errClosed = errors.New("tpmsim: handle closed")

// Lock takes the simulator for the caller's exclusive use.
func (h *handle) Lock() {
	h.s.mu.Lock()
	h.mu.Lock()
	h.held = true
	h.mu.Unlock()
}

// Unlock releases the simulator.
func (h *handle) Unlock() {
	h.mu.Lock()
	h.held = false
	h.mu.Unlock()
	h.s.mu.Unlock()
}

// Send runs one TPM command.
func (h *handle) Send(cmd []byte) ([]byte, error) {
	h.mu.Lock()
	closed, held := h.closed, h.held
	h.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	if !held {
		h.s.mu.Lock()
		defer h.s.mu.Unlock()
	}
	if h.s.sim == nil {
		return nil, errClosed
	}
	return tpmutil.RunCommandRaw(h.s.sim, cmd)
}

// Close releases this handle; the last one shuts the simulator down.
func (h *handle) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	h.mu.Unlock()

	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	h.s.refs--
	if h.s.refs > 0 {
		return nil
	}
	sim := h.s.sim
	h.s.sim = nil
	if err := sim.Close(); err != nil {
		return fmt.Errorf("tpmsim: close simulator: %w", err)
	}
	return nil
}
