package softtpm

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
)

// SeedSize is the size of a TPM's primary seed.
const SeedSize = 32

// Option configures New.
type Option func(*options)

type options struct {
	seed  []byte
	ca    *CA
	rsaEK *rsa.PrivateKey
	now   func() time.Time
	rand  io.Reader
	state *State
}

// WithSeed sets the TPM's primary seed, SeedSize bytes. Every secret of the
// TPM is derived from it: the ECC EK, the storage root key, the seeds that
// wrap key blobs and imported secrets, and the proof that obfuscates the
// counters in attestations. A TPM
// made again from the same seed has the same EK (and, from the same CA, the
// same EK certificate) and loads the blobs the earlier one made; this is how
// a simulated device keeps its identity across a restart of the simulation.
// Treat the seed like an EK private key. Without WithSeed, New draws a seed
// from the random source.
func WithSeed(seed []byte) Option { return func(o *options) { o.seed = seed } }

// WithCA makes ca the TPM's manufacturer: New has it issue the EK
// certificate, which the TPM keeps in NV as the TCG EK profile places it
// (0x01c0000a for the ECC P-256 EK, 0x01c00002 for an RSA-2048 EK). Without
// it the TPM has no EK certificate.
func WithCA(ca *CA) Option { return func(o *options) { o.ca = ca } }

// WithRSAEK gives the TPM an RSA-2048 EK (the TCG default RSA template)
// with private key key, instead of the ECC P-256 EK derived from the seed.
// RSA key generation costs tens to hundreds of milliseconds, too much for
// thousands of devices: generate keys ahead of time and keep them. The key
// is used as given; the seed still derives everything else.
func WithRSAEK(key *rsa.PrivateKey) Option { return func(o *options) { o.rsaEK = key } }

// WithClock sets the time source of the TPM's clock (TPMS_CLOCK_INFO in
// quotes and certifications); nil, the default, means time.Now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithRand sets the source of randomness: the primary seed when WithSeed is
// not given, the private keys CreateAK and CreateTransportKey generate, and
// the IVs of key blobs. nil, the default, means crypto/rand. A TPM reads it
// only under its mutex; a reader shared by several TPMs must be safe for
// concurrent use. (ECDSA signatures draw their randomness from crypto/rand
// regardless, as crypto/ecdsa does since Go 1.26.)
func WithRand(r io.Reader) Option { return func(o *options) { o.rand = r } }

// WithState restores the state a TPM saved with (*TPM).State: its NV
// counters, reset counter and clock. With the same seed, the TPM then
// continues where the saved one stopped, as swtpm continues from its state
// file; the restore counts as a reboot (PCRs start at their reset values and
// the reset counter moves on by one).
func WithState(s *State) Option { return func(o *options) { o.state = s } }

// State is what a TPM keeps across power cycles that its seed does not
// determine. It holds no secrets.
type State struct {
	Counters   map[uint32]uint64 `json:"counters,omitempty"` // NV counter index -> value
	ResetCount uint32            `json:"reset_count"`
	Clock      uint64            `json:"clock"` // milliseconds
}

// TPM is a software TPM 2.0 for one simulated device. Its methods are
// those of *device/tpm.TPM that the device daemon uses, with the same
// signatures and types; they are safe for concurrent use and run one at a
// time, as TPM commands do.
type TPM struct {
	now  func() time.Time
	rand io.Reader

	mu     sync.Mutex
	closed bool
	seed   [SeedSize]byte
	ek     *endorsementKey
	srk    []byte // qualified name of the storage root key, computed on first use
	pcrs   [numPCRs][sha256.Size]byte
	nv     map[uint32]*nvIndex

	clockBase    time.Time // the clock is clockOffset + milliseconds since clockBase
	clockOffset  uint64
	resetCount   uint32
	restartCount uint32
}

// New manufactures a TPM: it derives the EK from the seed (or takes the RSA
// key of WithRSAEK), has the CA of WithCA certify it, and starts the TPM up
// (PCRs at their reset values).
func New(opts ...Option) (*TPM, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	t := &TPM{now: o.now, rand: o.rand, nv: map[uint32]*nvIndex{}}
	if t.now == nil {
		t.now = time.Now
	}
	if t.rand == nil {
		t.rand = rand.Reader
	}
	switch {
	case o.seed == nil:
		if _, err := io.ReadFull(t.rand, t.seed[:]); err != nil {
			return nil, fmt.Errorf("softtpm: new: seed: %w", err)
		}
	case len(o.seed) != SeedSize:
		return nil, fmt.Errorf("softtpm: new: seed of %d bytes, want %d", len(o.seed), SeedSize)
	default:
		copy(t.seed[:], o.seed)
	}
	var err error
	if o.rsaEK != nil {
		t.ek, err = newRSAEK(o.rsaEK)
	} else {
		t.ek, err = deriveECCEK(t.seed[:])
	}
	if err != nil {
		return nil, fmt.Errorf("softtpm: new: EK: %w", err)
	}
	if o.ca != nil {
		cert, err := o.ca.IssueEK(t.ek.key)
		if err != nil {
			return nil, fmt.Errorf("softtpm: new: EK certificate: %w", err)
		}
		t.ek.cert = cert
		t.nv[t.ek.certIndex] = &nvIndex{data: cert}
	}
	t.clockBase = t.now()
	if s := o.state; s != nil {
		for idx, v := range s.Counters {
			if err := checkNVIndex(idx); err != nil {
				return nil, fmt.Errorf("softtpm: new: state: %w", err)
			}
			if _, taken := t.nv[idx]; taken {
				return nil, fmt.Errorf("softtpm: new: state: counter at 0x%08x, which holds the EK certificate", idx)
			}
			t.nv[idx] = &nvIndex{counter: true, value: v}
		}
		t.resetCount, t.clockOffset = s.ResetCount+1, s.Clock
	}
	t.startup()
	return t, nil
}

// State returns what WithState needs to restart this TPM later.
func (t *TPM) State() *State {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &State{ResetCount: t.resetCount, Clock: t.clock()}
	for idx, n := range t.nv {
		if n.counter {
			if s.Counters == nil {
				s.Counters = map[uint32]uint64{}
			}
			s.Counters[idx] = n.value
		}
	}
	return s
}

// do runs f under the mutex, unless the TPM is closed. Errors are prefixed
// with "softtpm: op: ".
func (t *TPM) do(op string, f func() error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("softtpm: %s: %w", op, tpm.ErrClosed)
	}
	if err := f(); err != nil {
		return fmt.Errorf("softtpm: %s: %w", op, err)
	}
	return nil
}

// Close releases the TPM; its operations then fail with tpm.ErrClosed.
// Key blobs stay usable by a TPM made again from the same seed.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	return nil
}

// Shutdown is TPM2_Shutdown(CLEAR): a device calls it before a planned stop.
// The software TPM keeps no volatile state worth saving and has no
// dictionary-attack logic that a disorderly shutdown would feed, so it only
// checks that the TPM is open.
func (t *TPM) Shutdown() error { return t.do("shutdown", func() error { return nil }) }

// Reboot simulates an orderly power cycle of the device, as
// swtpm.Instance.Reboot does: TPM2_Shutdown(CLEAR), then
// TPM2_Startup(CLEAR). PCRs return to their reset values and the reset
// counter moves on; the EK, key blobs, imported secrets and NV counters
// stay, and the clock keeps running.
func (t *TPM) Reboot() error {
	return t.do("reboot", func() error {
		t.resetCount++
		t.startup()
		return nil
	})
}

// startup is TPM2_Startup(CLEAR): PCRs 0-16 and 23 are zero, the
// locality-bound PCRs 17-22 all ones (PC Client profile, as swtpm starts
// them), and the restart counter is zero.
func (t *TPM) startup() {
	for i := range t.pcrs {
		fill := byte(0)
		if i >= 17 && i <= 22 {
			fill = 0xff
		}
		for j := range t.pcrs[i] {
			t.pcrs[i][j] = fill
		}
	}
	t.restartCount = 0
}

// clock is the TPM's clock in milliseconds. The caller holds t.mu.
func (t *TPM) clock() uint64 {
	d := t.now().Sub(t.clockBase)
	if d < 0 {
		d = 0
	}
	return t.clockOffset + uint64(d.Milliseconds())
}

// derive derives a secret of the TPM from its primary seed, for one use
// named by label.
func (t *TPM) derive(label string, bits int) []byte {
	return tpm2.KDFa(crypto256, t.seed[:], label, nil, nil, bits)
}

// Response codes are returned as a TPM returns them: a format-1 code names
// the parameter, handle or session it concerns, so that errors.Is matches
// the canonical tpm2.TPMRC and the message reads as device/tpm's does.
func paramErr(rc tpm2.TPMRC, n int) error {
	return tpm2.TPMRC(uint32(rc) | 0x040 | uint32(n)<<8)
}

func sessionErr(rc tpm2.TPMRC, n int) error {
	return tpm2.TPMRC(uint32(rc) | 0x800 | uint32(n)<<8)
}

// errNilBlob is returned for a nil key blob.
var errNilBlob = errors.New("nil key blob")
