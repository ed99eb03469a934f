package rotation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// CA rotation as the operator drives it (see fleet/ca for the generations):
// prepare, activate (server certificate re-issued with the cross
// certificate, trust bundle pushed, every active device re-issued by a
// forced rotation job), retire (old generation out of the bundle; devices
// still connected with its certificates are disconnected and come back
// through re-enrollment from their EK).

// Sessions is what CA rotation needs of the MQTT layer: the connected
// devices, by the certificate they connected with, and a way to end a
// session.
type Sessions interface {
	ConnectedDevices(keep func(deviceID string, cert *x509.Certificate) bool) []string
	Disconnect(deviceID string)
}

// brokerCertificates is what a pool of brokers (*mqttpool.Transport)
// tells of the certificates its brokers present to devices, by broker
// address; the embedded broker, whose certificate is the fleet's, has
// none to tell.
type brokerCertificates interface {
	ServerCertificates(ctx context.Context) (map[string]*x509.Certificate, error)
}

// ErrBrokersOnRetiringCA: a broker of the pool still presents a
// certificate of a generation Retire would take out of the devices' trust
// bundle; after it, no device would connect to it. Re-issue the broker's
// certificate (sigil broker-config) first. Compare with errors.Is.
var ErrBrokersOnRetiringCA = errors.New("rotation: a broker of the pool presents a certificate of a generation to retire")

// BrokersError is ErrBrokersOnRetiringCA with the brokers it is about,
// or why they could not be checked.
type BrokersError struct {
	Brokers []string // addresses presenting a certificate of a generation to retire
	Err     error    // why some could not be checked (then the retirement is refused too)
}

func (e *BrokersError) Error() string {
	if len(e.Brokers) > 0 {
		return fmt.Sprintf("%v: %s; re-issue their certificates (sigil broker-config) before retiring", ErrBrokersOnRetiringCA, strings.Join(e.Brokers, ", "))
	}
	return fmt.Sprintf("%v: the brokers' certificates could not all be checked: %v", ErrBrokersOnRetiringCA, e.Err)
}

func (e *BrokersError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrBrokersOnRetiringCA, e.Err}
	}
	return []error{ErrBrokersOnRetiringCA}
}

// CARotationConfig configures NewCARotation. CA, Jobs, Sessions and Send
// are required.
type CARotationConfig struct {
	CA *ca.CA
	// ServerCert re-issues the fleet's server certificate once a new
	// generation signs (ca.ServerCert).
	ServerCert interface{ Refresh() error }
	// Jobs starts the forced rotation that re-issues every device.
	Jobs     *Service
	Sessions Sessions
	// Send publishes a message to a device on one of its down kinds.
	Send   func(deviceID, kind string, payload []byte) error
	Logger *slog.Logger
}

// CARotation drives the fleet CA's generations for the operators (the
// API's CARotation): each step pushes the trust bundle to the connected
// devices.
type CARotation struct {
	cfg CARotationConfig
	log *slog.Logger
	// sending orders a device's trust bundles: the bundle is read and
	// sent under its device's lock, so that a bundle read before a change
	// (at a hello) is never sent after the one read after it (the push of
	// that change), which the device would then replace with the stale one.
	sending [64]sync.Mutex
}

// NewCARotation builds CA rotation.
func NewCARotation(cfg CARotationConfig) *CARotation {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &CARotation{cfg: cfg, log: log}
	// A step made on another replica: the devices this one hears get the
	// bundle (off the notification bus's goroutine: a push to every
	// device takes a while, and the bus carries revocations too).
	cfg.CA.OnAdopt(func() { go r.pushTrustBundle() })
	return r
}

// PrepareCA creates the next CA generation and pushes the new trust bundle
// to every connected device.
func (r *CARotation) PrepareCA(by string) (ca.Generation, error) {
	g, err := r.cfg.CA.Prepare()
	if err != nil {
		return g, err
	}
	r.log.Info("CA generation prepared", "generation", g.N, "by", by)
	r.pushTrustBundle()
	return g, nil
}

// ActivateCA makes the prepared generation the signing one, presents a new
// server certificate, pushes the bundle and, when rate > 0, starts a forced
// rotation of every active device at that rate (per second) so each gets a
// certificate of the new generation. It returns the job (nil without one).
func (r *CARotation) ActivateCA(by string, rate float64) (ca.Generation, *Job, error) {
	g, err := r.cfg.CA.Activate()
	if err != nil {
		return g, nil, err
	}
	// The CA has switched: whatever follows fails or not, devices must
	// get the bundle and be re-issued.
	if r.cfg.ServerCert != nil {
		if err := r.cfg.ServerCert.Refresh(); err != nil {
			r.log.Error("CA activated, but the server certificate could not be re-issued; the previous one stays in use", "err", err)
		}
	}
	r.log.Info("CA generation activated", "generation", g.N, "by", by)
	r.pushTrustBundle()
	if rate <= 0 {
		return g, nil, nil
	}
	job, err := r.cfg.Jobs.Start(Selector{All: true}, rate, fmt.Sprintf("CA generation %d activated", g.N), by)
	if err != nil && !errors.Is(err, ErrNoMatch) {
		return g, nil, err
	}
	return g, job, nil
}

// RetireCA retires the superseded generations, pushes the reduced bundle
// and disconnects devices still connected with a certificate they issued:
// the broker refuses those from now on, and the devices enroll again.
func (r *CARotation) RetireCA(by string) ([]ca.Generation, error) {
	if err := r.brokersOnNewGenerations(); err != nil {
		return nil, err
	}
	gens, err := r.cfg.CA.Retire()
	if err != nil {
		return nil, err
	}
	r.log.Info("CA generations retired", "generations", len(gens), "by", by)
	r.pushTrustBundle()
	stale := r.cfg.Sessions.ConnectedDevices(func(_ string, cert *x509.Certificate) bool {
		_, err := r.cfg.CA.Issuer(cert)
		return errors.Is(err, ca.ErrRetiredGenerator)
	})
	for _, id := range stale {
		r.cfg.Sessions.Disconnect(id)
	}
	if len(stale) > 0 {
		r.log.Info("disconnected devices holding retired-generation certificates", "devices", len(stale))
	}
	return gens, nil
}

// brokersOnNewGenerations refuses a retirement (*BrokersError) while a
// broker of the pool presents a certificate of a superseded generation,
// which the retirement takes out of the devices' trust bundle, or
// cannot be checked (deny by default).
func (r *CARotation) brokersOnNewGenerations() error {
	bc, ok := r.cfg.Sessions.(brokerCertificates)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	certs, err := bc.ServerCertificates(ctx)
	if err != nil {
		return &BrokersError{Err: err}
	}
	var stale []string
	for addr, cert := range certs {
		if g, err := r.cfg.CA.Issuer(cert); err != nil || g.State != ca.GenActive && g.State != ca.GenPrepared {
			stale = append(stale, addr)
		}
	}
	if len(stale) > 0 {
		slices.Sort(stale)
		return &BrokersError{Brokers: stale}
	}
	return nil
}

// Hello is told of a device's hello, after each connect: once the CA
// has rotated (Rotating: more than one generation, retired ones
// included) it sends the device the trust bundle it may have missed.
func (r *CARotation) Hello(deviceID string) {
	if r.cfg.CA.Rotating() {
		r.SendTrustBundle(deviceID)
	}
}

// pushTrustBundle sends the current bundle to every connected device.
func (r *CARotation) pushTrustBundle() {
	for _, id := range r.cfg.Sessions.ConnectedDevices(nil) {
		r.SendTrustBundle(id)
	}
}

// SendTrustBundle sends the CA's current trust bundle to a device; a
// device's bundles are sent in the order they were read.
func (r *CARotation) SendTrustBundle(deviceID string) {
	h := fnv.New32a()
	h.Write([]byte(deviceID))
	mu := &r.sending[h.Sum32()%uint32(len(r.sending))]
	mu.Lock()
	defer mu.Unlock()
	b, err := wire.Encode(wire.TypeTrustBundle, nil, time.Now(), &wire.TrustBundle{Roots: r.cfg.CA.TrustBundle()})
	if err != nil {
		r.log.Error("encoding trust bundle", "err", err)
		return
	}
	if err := r.cfg.Send(deviceID, "trust", b); err != nil {
		r.log.Warn("sending trust bundle", "device_id", deviceID, "err", err)
	}
}
