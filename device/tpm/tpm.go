package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultDevice is the TPM Open uses for an empty URI: the kernel's resource
// manager.
const DefaultDevice = "/dev/tpmrm0"

// Errors.
var (
	// ErrClosed is returned by operations on a closed *TPM.
	ErrClosed = errors.New("tpm: closed")
	// ErrNoSimulator is returned by Open("sim://...") when package tpmsim is
	// not linked into the binary.
	ErrNoSimulator = errors.New("tpm: simulator backend not linked into this binary")
)

// Opener opens a transport for a URI of the scheme it was registered for.
// If the transport also implements sync.Locker (because several users share
// one TPM behind it), each operation holds that lock from its first command
// to its last.
type Opener func(uri string) (transport.TPMCloser, error)

// backends holds the optional backends registered with Register. It is the
// package's one registry: blank imports of backend packages fill it in their
// init functions.
var backends struct {
	mu sync.Mutex
	m  map[string]Opener
}

// Register makes a backend available to Open for URIs "scheme://...". It is
// meant to be called from the init function of a backend package (such as
// tpmsim) so that a blank import selects the backend. Registering a scheme
// again replaces the previous opener. The built-in schemes (device paths and
// "swtpm") cannot be replaced.
func Register(scheme string, open Opener) {
	backends.mu.Lock()
	defer backends.mu.Unlock()
	if backends.m == nil {
		backends.m = map[string]Opener{}
	}
	backends.m[scheme] = open
}

func registered(scheme string) Opener {
	backends.mu.Lock()
	defer backends.mu.Unlock()
	return backends.m[scheme]
}

type options struct {
	log *slog.Logger
}

// Option configures Open.
type Option func(*options)

// WithLogger sets the logger; nil (the default) discards logs. Key material
// is never logged.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// TPM is an open TPM. Its methods are safe for concurrent use; TPM commands
// are serialized.
type TPM struct {
	log *slog.Logger

	mu     sync.Mutex
	tr     transport.TPMCloser                 // long-lived transport, or nil with dial
	dial   func() (transport.TPMCloser, error) // per-operation connection (swtpm)
	closed bool
	ek     *ekInfo           // cached EK, see EK
	srk    *tpm2.NamedHandle // cached SRK handle and name
}

// Open opens the TPM named by uri:
//
//   - "" or a path such as "/dev/tpmrm0": a Linux TPM character device;
//   - "swtpm://HOST:PORT": a swtpm TPM port over TCP, connected per
//     operation because swtpm serves one connection at a time;
//   - "sim://": the in-process simulator, when package tpmsim is linked in;
//   - "SCHEME://...": another backend registered with Register.
//
// Open flushes transient objects and sessions left in the TPM by earlier
// clients.
func Open(uri string, opts ...Option) (*TPM, error) {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	log := o.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &TPM{log: log}
	scheme, rest, hasScheme := strings.Cut(uri, "://")
	switch {
	case uri == "":
		uri = DefaultDevice
		fallthrough
	case !hasScheme:
		tr, err := linuxtpm.Open(uri)
		if err != nil {
			return nil, fmt.Errorf("tpm: open %s: %w", uri, err)
		}
		t.tr = tr
	case scheme == "swtpm":
		addr := strings.TrimSuffix(rest, "/")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("tpm: open %s: %w", uri, err)
		}
		t.dial = func() (transport.TPMCloser, error) { return dialSwtpm(addr) }
	default:
		open := registered(scheme)
		if open == nil {
			if scheme == "sim" {
				return nil, ErrNoSimulator
			}
			return nil, fmt.Errorf("tpm: open %s: unknown scheme %q", uri, scheme)
		}
		tr, err := open(uri)
		if err != nil {
			return nil, fmt.Errorf("tpm: open %s: %w", uri, err)
		}
		t.tr = tr
	}
	first := func(transport.TPM) error { return nil } // a new swtpm connection flushes leftovers
	if t.tr != nil {
		first = flushLeftovers
	}
	if err := t.do("open", first); err != nil {
		if t.tr != nil {
			t.tr.Close()
		}
		return nil, err
	}
	log.Debug("tpm opened", "uri", uri)
	return t, nil
}

// Close releases the TPM. Keys stay in their blobs and persistent objects
// stay in the TPM.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.tr != nil {
		if err := t.tr.Close(); err != nil {
			return fmt.Errorf("tpm: close: %w", err)
		}
	}
	return nil
}

// do runs f with the TPM under the mutex, on a fresh connection for swtpm.
// Errors are prefixed with "tpm: op: ". Cached handles are dropped on error
// so that the next operation looks them up again.
func (t *TPM) do(op string, f func(tr transport.TPM) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.doLocked(f)
	if err != nil {
		t.srk = nil
		return fmt.Errorf("tpm: %s: %w", op, err)
	}
	return nil
}

func (t *TPM) doLocked(f func(tr transport.TPM) error) error {
	if t.closed {
		return ErrClosed
	}
	if t.dial == nil {
		if l, ok := t.tr.(sync.Locker); ok {
			// A transport shared by several *TPM (the simulator) is held
			// for the whole operation, so that no other user flushes or
			// crowds out this operation's transient objects.
			l.Lock()
			defer l.Unlock()
		}
		return f(t.tr)
	}
	c, err := t.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := flushLeftovers(c); err != nil {
		return err
	}
	return f(c)
}

// Shutdown sends TPM2_Shutdown(CLEAR). Call it before a planned stop or
// reboot of a simulated TPM, so the TPM records an orderly shutdown; a real
// platform's firmware and kernel do this themselves.
func (t *TPM) Shutdown() error {
	return t.do("shutdown", func(tr transport.TPM) error {
		_, err := tpm2.Shutdown{ShutdownType: tpm2.TPMSUClear}.Execute(tr)
		return err
	})
}

// flushLeftovers flushes every transient object and session in the TPM.
func flushLeftovers(tr transport.TPM) error {
	for _, first := range []uint32{
		uint32(tpm2.TPMHTTransient) << 24,
		uint32(tpm2.TPMHTHMACSession) << 24,   // loaded sessions
		uint32(tpm2.TPMHTPolicySession) << 24, // saved sessions
	} {
		handles, err := listHandles(tr, first)
		if err != nil {
			return fmt.Errorf("list handles: %w", err)
		}
		for _, h := range handles {
			flush(tr, h)
		}
	}
	return nil
}

// listHandles returns the handles of the type whose first handle is first.
func listHandles(tr transport.TPM, first uint32) ([]tpm2.TPMHandle, error) {
	var out []tpm2.TPMHandle
	next := first
	for {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: next, PropertyCount: 64}.Execute(tr)
		if err != nil {
			return nil, err
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, err
		}
		for _, h := range hs.Handle {
			if !sameType(uint32(h), first) {
				return out, nil
			}
			out = append(out, h)
			next = uint32(h) + 1
		}
		if !rsp.MoreData || len(hs.Handle) == 0 {
			return out, nil
		}
	}
}

// sameType reports whether handle h is of the type whose first handle is
// first. Loaded sessions (TPM_HT_LOADED_SESSION, 0x02) include policy
// sessions, whose handles start with 0x03.
func sameType(h, first uint32) bool {
	if first>>24 == uint32(tpm2.TPMHTHMACSession) {
		return h>>24 == uint32(tpm2.TPMHTHMACSession) || h>>24 == uint32(tpm2.TPMHTPolicySession)
	}
	return h>>24 == first>>24
}

// flush flushes a transient object or session, ignoring errors: it runs on
// cleanup paths where the handle may already be gone.
func flush(tr transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tr)
}

// swtpmConn is a TPM command connection to swtpm's TPM port: raw TPM
// commands, responses read as a 10-byte header and then exactly the size it
// announces (a TCP read may return part of a response).
type swtpmConn struct {
	conn net.Conn
}

// Bounds on swtpm exchanges: RSA key generation can take a second or more
// on a loaded machine.
const (
	swtpmDialTimeout = 5 * time.Second
	swtpmCmdTimeout  = 2 * time.Minute
	maxResponse      = 64 << 10
)

func dialSwtpm(addr string) (*swtpmConn, error) {
	c, err := net.DialTimeout("tcp", addr, swtpmDialTimeout)
	if err != nil {
		return nil, fmt.Errorf("connect to swtpm: %w", err)
	}
	return &swtpmConn{conn: c}, nil
}

// Send implements transport.TPM.
func (s *swtpmConn) Send(cmd []byte) ([]byte, error) {
	if err := s.conn.SetDeadline(time.Now().Add(swtpmCmdTimeout)); err != nil {
		return nil, err
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("swtpm write: %w", err)
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.conn, hdr); err != nil {
		return nil, fmt.Errorf("swtpm read: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > maxResponse {
		return nil, fmt.Errorf("swtpm read: bad response size %d", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.conn, rsp[10:]); err != nil {
		return nil, fmt.Errorf("swtpm read: %w", err)
	}
	return rsp, nil
}

// Close implements io.Closer.
func (s *swtpmConn) Close() error { return s.conn.Close() }

var _ transport.TPMCloser = (*swtpmConn)(nil)
