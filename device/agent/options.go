package agent

import (
	"context"
	"crypto"
	"net"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/telemetry"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TPM is what the agent does with the device's TPM: enrollment (EK, keys,
// credential activation, certify, quote), the mTLS session's signer,
// attestation, sealed secrets, and, for firmware updates, the
// anti-rollback counter and the measurement into a PCR. sigild opens
// *device/tpm.TPM from Config.TPM; a simulator gives its own with WithTPM.
type TPM interface {
	EK() (*tpm.EK, error)
	CreateAK() (*tpm.KeyBlob, error)
	CreateTransportKey() (*tpm.KeyBlob, error)
	PublicKey(key *tpm.KeyBlob) (crypto.PublicKey, error)
	Signer(key *tpm.KeyBlob) (crypto.Signer, error)
	Certify(ak, key *tpm.KeyBlob, nonce []byte) (attest, sig []byte, err error)
	Quote(ak *tpm.KeyBlob, nonce []byte, sel wire.PCRSelection) (*wire.Quote, error)
	ReadPCRs(sel wire.PCRSelection) ([][]byte, error)
	ExtendPCR(pcr int, digest []byte) error
	ActivateCredential(ak *tpm.KeyBlob, credBlob, encSecret []byte) ([]byte, error)
	ImportSecret(public, duplicate, seed []byte, pcrs *wire.PCRSelection) (*tpm.SealedBlob, error)
	SecurityVersion() (uint64, error)
	AdvanceSecurityVersion(to uint64) (uint64, error)
}

var (
	_ TPM             = (*tpm.TPM)(nil)
	_ update.Counter  = TPM(nil)
	_ update.Measurer = TPM(nil)
)

// Option gives an Agent what it otherwise takes from its Config and the
// device: its TPM, its state store, its firmware slots, its system
// telemetry, its network. sigild uses none; a simulator running many
// agents in one process uses them all (sim/swarm).
type Option func(*options)

type options struct {
	tpm      TPM
	state    *state.Store
	backend  update.Backend
	system   telemetry.Source
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	observer link.Observer
	// link opens the agent's broker sessions in place of link.Dial: the
	// in-memory fleet of the package's tests (device/internal/fakefleet).
	link func(ctx context.Context, cfg link.Config) (session, error)
	ext  Extension // WithExtension
}

// WithTPM makes the agent use t instead of opening Config.TPM. The agent
// does not close it.
func WithTPM(t TPM) Option { return func(o *options) { o.tpm = t } }

// WithState makes the agent use st instead of opening the state file
// Config.State (a simulator keeps it in memory: sim/memstate). The agent
// does not close it. The status socket's secret requests then read st
// through the running agent only.
func WithState(st *state.Store) Option { return func(o *options) { o.state = st } }

// WithUpdateBackend makes the agent install firmware into b instead of the
// backend Config.UpdateBackend names.
func WithUpdateBackend(b update.Backend) Option { return func(o *options) { o.backend = b } }

// WithSystemTelemetry makes the agent's telemetry take the system's
// values from s instead of /proc and statfs (telemetry.Config.System).
func WithSystemTelemetry(s telemetry.Source) Option { return func(o *options) { o.system = s } }

// WithDial makes the agent open its connections to the fleet (broker
// sessions and image downloads) with dial instead of a net.Dialer: a
// simulator spreads its devices over loopback source addresses.
func WithDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dial = dial }
}

// WithLinkObserver has every broker session of the agent (bootstrap and
// mTLS) report to obs (link.Config.Observer).
func WithLinkObserver(obs link.Observer) Option { return func(o *options) { o.observer = obs } }
