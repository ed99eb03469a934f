// Package rotation renews device certificates: on a device's request, only
// with a fresh passing attestation and a new TPM key certified by the AK;
// and on the fleet's initiative, as forced rotation jobs over a device
// list, a group, a model or the whole fleet — rate-limited, with progress,
// resumed after a restart.
//
// A renewal request is checked in this order: the device is active; its
// evidence passes attestation (fleet/attest: nonce issued for renewal,
// quotes, event log, counters, policy — a failure is acted on as any
// failed attestation); the request carries the same nonce; the new key's
// public area has the attributes of a non-exportable signing key; the AK
// certified it over that nonce; the CSR is signed by it. Then a certificate
// is issued and recorded among the device's certificates in a transaction
// that checks again that the device is active: a quarantine that committed
// first refuses the renewal (the certificate, never recorded, is refused
// by the broker), and one that commits after revokes it with the others.
// A renewal is idempotent per key: one for a key the device's current
// certificate already certifies (the device asked again while the first
// answer was slow or lost) passes the same checks and is answered with
// that certificate; no second one is issued. The previous certificate
// stays valid until the device connects with the new one (so a crash
// never leaves it without a working identity); then every certificate the
// renewals replaced is revoked as superseded.
package rotation

import (
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Inventory is what renewal reads and writes of the device inventory.
// *inventory.Store implements it (bbolt or PostgreSQL).
type Inventory interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
	Update(ctx context.Context, id string, fn func(*inventory.Device) error) error
	RevokeSuperseded(ctx context.Context, id, serial string) ([]string, error)
	AddEvent(ctx context.Context, e inventory.Event) error
}

var _ Inventory = (*inventory.Store)(nil)

// Config configures the service.
type Config struct {
	CA        *ca.CA
	Inventory Inventory
	Attest    *attest.Service
	Jobs      *Jobs
	// Send publishes to a device's down topic of kind.
	Send func(deviceID, kind string, payload []byte) error
	// Connected reports live sessions (for job pacing); nil means all.
	Connected func(deviceID string) bool
	// Lifetime of renewed certificates; 0 uses the CA's default.
	Lifetime time.Duration
	// Workers is how many renewals Run verifies at once; 0 means 4 ×
	// GOMAXPROCS: a renewal waits on fsync'd writes, and concurrent ones
	// share them (group commit), so more workers than CPUs pay off.
	Workers int
	// Leases runs the rotation jobs' stepping under the lease LeaseJobs,
	// so that replicas sharing the jobs ask each device once and keep
	// each job's rate (fleet/storage/lease: Holder). Nil: Run steps
	// them itself, as one process does.
	Leases Leases
	// WaitHandled makes Submit return only once its request was answered
	// (at most SubmitWait): for a transport that acknowledges a device's
	// message when the handler returns, and gives it to another replica
	// when this one dies first (the broker pool's persistent sessions).
	// The embedded broker acknowledges before its handlers run (and a
	// process that dies takes every session with it): there Submit queues
	// the request and returns.
	WaitHandled bool
	Now         func() time.Time
	Logger      *slog.Logger
}

// Leases runs work under named leases (fleet/storage/lease: Holder):
// fn's context ends when the lease is lost.
type Leases interface {
	Hold(ctx context.Context, name string, fn func(context.Context) error) error
}

// LeaseJobs is the lease under which Run steps the rotation jobs.
const LeaseJobs = "rotation_jobs"

// Service handles renewals and runs rotation jobs.
type Service struct {
	cfg     Config
	log     *slog.Logger
	q       chan request
	stopped chan struct{} // closed when Run returns: Submit waits no more
	once    sync.Once
}

// stop tells Submit that Run returned.
func (s *Service) stop() {
	s.once.Do(func() {
		if s.stopped != nil {
			close(s.stopped)
		}
	})
}

type request struct {
	deviceID string
	env      *wire.Envelope
	done     chan struct{} // closed once handled
}

// New returns a service; Run starts it.
func New(cfg Config) (*Service, error) {
	if cfg.CA == nil || cfg.Inventory == nil || cfg.Attest == nil || cfg.Send == nil || cfg.Jobs == nil {
		return nil, errors.New("rotation: CA, Inventory, Attest, Jobs and Send are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4 * runtime.GOMAXPROCS(0)
	}
	return &Service{cfg: cfg, log: cfg.Logger, q: make(chan request, 1024), stopped: make(chan struct{})}, nil
}

// SubmitWait bounds how long Submit waits for its request to be handled.
const SubmitWait = 30 * time.Second

// Submit queues a renewal request from an authenticated device. With
// Config.WaitHandled it returns once the request was handled (answered),
// Run stopped, or SubmitWait passed: the broker pool acknowledges a
// device's message when its handler returns, so that its persistent
// sessions keep a renewal request that its replica had not handled when
// it died, and another replica handles it once it drains them, instead of
// the device waiting for its rotation job to ask it again. A full queue
// refuses the request at once (rate limited).
func (s *Service) Submit(deviceID string, env *wire.Envelope) {
	r := request{deviceID, env, make(chan struct{})}
	select {
	case s.q <- r:
	default:
		s.reply(deviceID, &wire.RenewResult{Status: wire.StatusRefused, Reason: wire.ReasonRateLimited, Message: "renewal queue full", RetryAfter: 30})
		return
	}
	if !s.cfg.WaitHandled {
		return
	}
	t := time.NewTimer(SubmitWait)
	defer t.Stop()
	select {
	case <-r.done:
	case <-s.stopped:
	case <-t.C:
		s.log.Warn("renewal request still queued: acknowledged before it is handled", "device_id", deviceID)
	}
}

// Run handles renewals on Config.Workers goroutines and drives rotation
// jobs once a second (under the lease LeaseJobs with Config.Leases) until
// ctx ends; it returns when they have stopped.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.stop()
	for range s.cfg.Workers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case r := <-s.q:
					s.Renew(r.deviceID, r.env)
					close(r.done)
				}
			}
		})
	}
	if s.cfg.Leases == nil {
		return s.stepJobs(ctx)
	}
	return s.cfg.Leases.Hold(ctx, LeaseJobs, s.stepJobs)
}

// stepJobs steps the running jobs once a second until ctx ends, or until
// a step's write is refused because the lease it runs under was taken
// over (lease.ErrLost, returned: the holder stops the work).
func (s *Service) stepJobs(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := s.step(ctx); err != nil {
				return err
			}
		}
	}
}

func (s *Service) reply(deviceID string, res *wire.RenewResult) {
	b, err := wire.Encode(wire.TypeRenewResult, nil, s.cfg.Now(), res)
	if err == nil {
		err = s.cfg.Send(deviceID, "cert", b)
	}
	if err != nil {
		s.log.Warn("sending renewal result failed", "device_id", deviceID, "err", err)
	}
}

// Renew handles one renewal request synchronously and answers the device.
// It is safe for concurrent use, also for the same device: the device's
// record is updated in one inventory transaction, and its nonce answers
// one request only.
func (s *Service) Renew(deviceID string, env *wire.Envelope) {
	res, err := s.renew(deviceID, env)
	if err != nil {
		var we *wire.Error
		if !errors.As(err, &we) {
			s.log.Error("renewal failed", "device_id", deviceID, "err", err)
			we = wire.Refuse(wire.ReasonInternal, "internal error", err)
		}
		s.log.Info("renewal refused", "device_id", deviceID, "reason", we.Reason.String(), "cause", we.Err)
		res = &wire.RenewResult{Status: wire.StatusRefused, Reason: we.Reason, Message: we.Message}
		if we.Reason.Temporary() {
			res.RetryAfter = 30
		}
	}
	s.reply(deviceID, res)
}

func (s *Service) renew(deviceID string, env *wire.Envelope) (*wire.RenewResult, error) {
	var req wire.RenewRequest
	if err := wire.DecodeBody(env, wire.TypeRenewRequest, &req); err != nil {
		return nil, wire.Refuse(wire.ReasonBadRequest, "malformed renewal request", err)
	}
	dev, err := s.cfg.Inventory.Device(context.TODO(), deviceID)
	if err != nil {
		return nil, err
	}
	if dev.State != inventory.StateActive {
		return nil, wire.Refuse(wire.ReasonQuarantined, "only active devices renew; prove the device first", nil)
	}
	if !hmac.Equal(req.Nonce, req.Evidence.Nonce) {
		return nil, wire.Refuse(wire.ReasonNonceInvalid, "the renewal and its evidence carry different nonces", nil)
	}
	rec, err := s.cfg.Attest.Judge(deviceID, &req.Evidence)
	if err != nil {
		return nil, err
	}
	if rec.Code == wire.ReasonNonceInvalid || rec.Code == wire.ReasonBadRequest {
		return nil, wire.Refuse(rec.Code, rec.Message, nil)
	}
	if rec.Result != wire.VerdictPass {
		return nil, wire.Refuse(wire.ReasonAttestationFailed, "renewal refused: "+rec.Message, nil)
	}
	ak, err := verifier.VerifyAK(dev.AKPublic)
	if err != nil {
		return nil, err
	}
	tk, err := verifier.VerifyTransportKeyPublic(req.TKPublic)
	if err != nil {
		return nil, err
	}
	ck, err := verifier.VerifyCertify(ak, tk, req.Nonce, req.CertifyInfo, req.CertifySig)
	if err != nil {
		return nil, err
	}
	if _, err := verifier.VerifyCSR(req.CSR, ck); err != nil {
		return nil, err
	}
	// Read again: the device may have been quarantined or revoked while
	// its evidence was judged.
	if cur, err := s.cfg.Inventory.Device(context.TODO(), deviceID); err == nil {
		if prior := s.issuedFor(cur, ck.Key); prior != nil {
			return s.again(deviceID, prior), nil
		}
	}
	cert, err := s.cfg.CA.IssueDevice(deviceID, ck.Key, s.cfg.Lifetime)
	if err != nil {
		return nil, err
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	var old string
	var prior *x509.Certificate
	err = s.cfg.Inventory.Update(context.TODO(), deviceID, func(d *inventory.Device) error {
		// Checked in the transaction that records the serial: a quarantine
		// or a revocation of the device (every unexpired certificate,
		// inventory.Store.RevokeDevice) is ordered before or after it,
		// never in between.
		if d.State != inventory.StateActive {
			return wire.Refuse(wire.ReasonQuarantined, "only active devices renew", nil)
		}
		if d.IsRevoked(d.CertSerial) {
			return wire.Refuse(wire.ReasonRevoked, "the device's certificates were revoked; enroll again", nil)
		}
		// A renewal for the same key that committed since this one
		// started: its certificate is the answer, this one is dropped.
		if prior = s.issuedFor(d, ck.Key); prior != nil {
			return errIssued
		}
		if err := d.CanIssue(s.cfg.Now()); err != nil {
			return wire.Refuse(wire.ReasonRateLimited, "too many certificates outstanding; renew once older ones expired", err)
		}
		old = d.CertSerial
		d.IssuedCertificate(cert)
		return nil
	})
	if errors.Is(err, errIssued) {
		return s.again(deviceID, prior), nil
	}
	if err != nil {
		s.log.Warn("renewal not recorded; its certificate is never admitted", "device_id", deviceID, "cert_serial", serial, "err", err)
		return nil, err
	}
	_ = s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: s.cfg.Now(), DeviceID: deviceID, Kind: "renewed",
		Detail: fmt.Sprintf("certificate %s for a new TPM key (attestation #%d passed); replaces %s", serial, rec.Seq, old)})
	s.log.Info("certificate renewed", "device_id", deviceID, "cert_serial", serial, "replaces", old)
	// Counted in the running jobs now; if this fails, the job's next
	// attempt to ask the device sees the new serial.
	done, err := s.cfg.Jobs.renewed(context.TODO(), deviceID, s.cfg.Now().UTC())
	if err != nil {
		s.log.Warn("recording a renewal in rotation jobs failed", "device_id", deviceID, "err", err)
	}
	for _, id := range done {
		s.log.Info("rotation job done", "job", id)
	}
	return &wire.RenewResult{Status: wire.StatusActive, Certificate: cert.Raw, TrustBundle: s.cfg.CA.TrustBundle()}, nil
}

// errIssued aborts the transaction of a renewal whose key got its
// certificate meanwhile.
var errIssued = errors.New("rotation: a certificate for this key was issued meanwhile")

// issuedFor returns the certificate d holds for key if it is still
// current, else nil. A renewal is idempotent per key: a device that asks
// again for the key it asked for before (its answer was slow or lost) gets
// the certificate already issued for it, never a second one. Current
// means: d's current certificate, whose DER the fleet kept, for key,
// admitted (recorded, neither revoked nor expired), and issued by the
// active CA generation; and d is active.
func (s *Service) issuedFor(d *inventory.Device, key *ecdsa.PublicKey) *x509.Certificate {
	now := s.cfg.Now()
	if d.State != inventory.StateActive || len(d.CertDER) == 0 || !d.Admits(d.CertSerial, now) {
		return nil
	}
	c, err := x509.ParseCertificate(d.CertDER)
	if err != nil || hex.EncodeToString(c.SerialNumber.Bytes()) != d.CertSerial {
		return nil
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key) {
		return nil
	}
	if c.CheckSignatureFrom(s.cfg.CA.Certificate()) != nil {
		return nil // from a generation a CA rotation is retiring: issue anew
	}
	return c
}

// again answers a renewal for a key that already has its certificate
// with that certificate. Nothing is recorded: the first answer did that.
func (s *Service) again(deviceID string, c *x509.Certificate) *wire.RenewResult {
	s.log.Info("renewal repeated for a key already certified; answering with its certificate", "device_id", deviceID,
		"cert_serial", hex.EncodeToString(c.SerialNumber.Bytes()))
	return &wire.RenewResult{Status: wire.StatusActive, Certificate: c.Raw, TrustBundle: s.cfg.CA.TrustBundle()}
}

// Connected is called when a device connects with a certificate: every
// certificate its renewals replaced is revoked once it uses its current
// one, and running jobs that found it unreachable ask it at their next
// step.
func (s *Service) Connected(deviceID, serial string) {
	if err := s.cfg.Jobs.reachable(context.TODO(), deviceID, s.cfg.Now().UTC()); err != nil {
		s.log.Warn("rotation jobs unreadable", "device_id", deviceID, "err", err)
	}
	revoked, err := s.cfg.Inventory.RevokeSuperseded(context.TODO(), deviceID, serial)
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		s.log.Warn("revoking superseded certificates failed", "device_id", deviceID, "err", err)
	}
	if len(revoked) > 0 {
		s.log.Info("superseded certificates revoked", "device_id", deviceID, "serials", revoked)
	}
}
