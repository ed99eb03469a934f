// Package renew is the device's side of certificate renewal
// (docs/PROTOCOL.md, "Renewal"): during an mTLS session it renews the
// session's certificate at RenewAt of its lifetime, or when the fleet asks
// (cert.rotate), with a new transport key (TK) created in the TPM,
// certified by the attestation key over the fleet's nonce, and fresh
// evidence.
//
// The state of the key and certificate lives in the identity
// (state.Identity.Next) and is stored before each step acts on it:
//
//   - the new key is stored before any request names it, so that a
//     certificate the fleet issues for it is never for a key the device
//     lost in a crash;
//   - the certificate is stored in Next only after credential.Verify
//     accepted it; the device switches to it (device/agent) only once a
//     connection with it succeeded.
//
// One renewal is outstanding at a time (Session): the device asks for a
// renewal challenge, answers it with one renewal request, and waits for
// the fleet's answer. Until the answer comes, or the answer timeout passes
// without one, nothing starts another: not the renewal timer, not the
// fleet's cert.rotate, not a second challenge. A refusal (or a certificate
// the device refuses) ends the attempt, and the next starts after a
// backoff that doubles from RetryMin to RetryMax, with jitter, and never
// before the RetryAfter the fleet's answer gave. A new session starts
// afresh: an answer to a request sent on a lost connection is lost with
// it, and the fleet answers a repeated request for the same key with the
// certificate it already issued.
package renew

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/sigil-iot/sigil/device/credential"
	"github.com/sigil-iot/sigil/device/internal/retry"
	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TPM is what renewal does with the device's TPM: *device/tpm.TPM.
type TPM interface {
	CreateTransportKey() (*tpm.KeyBlob, error)
	PublicKey(key *tpm.KeyBlob) (crypto.PublicKey, error)
	Signer(key *tpm.KeyBlob) (crypto.Signer, error)
	Certify(ak, key *tpm.KeyBlob, nonce []byte) (attest, sig []byte, err error)
}

var _ TPM = (*tpm.TPM)(nil)

// Store keeps the device's identity: *device/state.Store.
type Store interface {
	SaveIdentity(id *state.Identity) error
}

var _ Store = (*state.Store)(nil)

// Publisher sends messages to the fleet over the session: *link.Conn.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

var _ Publisher = (*link.Conn)(nil)

// Attester makes the evidence of a renewal request for a challenge
// (device/agent: every PCR bank the challenge selects, and the logs it
// asks for); nil when ctx ended first.
type Attester interface {
	Evidence(ctx context.Context, id *state.Identity, ch *wire.AttestChallenge) *wire.AttestEvidence
}

// AttesterFunc adapts a function to Attester.
type AttesterFunc func(ctx context.Context, id *state.Identity, ch *wire.AttestChallenge) *wire.AttestEvidence

// Evidence calls f.
func (f AttesterFunc) Evidence(ctx context.Context, id *state.Identity, ch *wire.AttestChallenge) *wire.AttestEvidence {
	return f(ctx, id, ch)
}

// Pacing of renewals.
const (
	// MinAnswerTimeout is the least time the device waits for the
	// fleet's answer to a renewal before it asks again: a loaded fleet
	// answers in tens of seconds.
	MinAnswerTimeout = 2 * time.Minute
	// MaxRetryAfter bounds the wait a fleet's RetryAfter may impose.
	MaxRetryAfter = time.Hour
	// DefaultRenewAt is Config.RenewAt's default.
	DefaultRenewAt = 0.667
)

// Config is what renewal needs; TPM, Store and Attester are required.
type Config struct {
	TPM      TPM
	Store    Store
	Attester Attester
	// Topics is the fleet's topic tree.
	Topics wire.Topics
	// RenewAt is the fraction of the certificate's lifetime after which
	// it is renewed; 0 means DefaultRenewAt.
	RenewAt float64
	// RetryMin and RetryMax bound the backoff after a refusal; the answer
	// timeout is RetryMax, at least MinAnswerTimeout, spread by up to a
	// fifth more. 0 means 1s and 5m.
	RetryMin, RetryMax time.Duration
	// Refused, if set, hears of each refusal by the fleet (its reason and
	// public message); it must not block.
	Refused func(reason wire.Reason, message string)
	// Now is the clock (nil: time.Now); Rand the entropy for CSRs and
	// jitter (nil: crypto/rand); Logger nil discards.
	Now    func() time.Time
	Rand   io.Reader
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.RenewAt <= 0 {
		c.RenewAt = DefaultRenewAt
	}
	if c.RetryMin <= 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 5 * time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Session is the renewal of one mTLS session's certificate. Its methods
// are called from the session's loop, one at a time; they mutate the
// identity the session was started with and store it.
type Session struct {
	cfg  Config
	log  *slog.Logger
	conn Publisher
	id   *state.Identity

	phase     phase
	notBefore time.Time // a refused attempt's next one starts at or after it
	bo        *retry.Backoff
	timer     *time.Timer
}

type phase int

const (
	idle  phase = iota // nothing outstanding; the timer starts the next attempt
	asked              // a renewal challenge was asked for
	sent               // the request was sent; waiting for the answer
)

// ErrConfig is a Config without its required parts.
var ErrConfig = errors.New("renew: a TPM, a store and an attester are required")

// Start begins renewing id's certificate on conn: its timer fires at
// RenewAt of the certificate's lifetime (at least a second from now; an
// hour when the certificate does not parse). Stop releases it.
func Start(cfg Config, conn Publisher, id *state.Identity) (*Session, error) {
	if cfg.TPM == nil || cfg.Store == nil || cfg.Attester == nil {
		return nil, ErrConfig
	}
	cfg.setDefaults()
	s := &Session{cfg: cfg, log: cfg.Logger, conn: conn, id: id,
		bo: &retry.Backoff{Min: cfg.RetryMin, Max: cfg.RetryMax, Rand: cfg.Rand}}
	s.timer = time.NewTimer(s.delay())
	return s, nil
}

// C fires when the renewal timer expires: call Due then.
func (s *Session) C() <-chan time.Time { return s.timer.C }

// Stop stops the timer.
func (s *Session) Stop() { s.timer.Stop() }

// delay is the time until RenewAt of the current certificate's lifetime
// (at least a second).
func (s *Session) delay() time.Duration {
	c, err := x509.ParseCertificate(s.id.Cert)
	if err != nil {
		return time.Hour
	}
	life := c.NotAfter.Sub(c.NotBefore)
	at := c.NotBefore.Add(time.Duration(float64(life) * s.cfg.RenewAt))
	return max(at.Sub(s.cfg.Now()), time.Second)
}

// answerTimeout is how long the device waits for the answer to a renewal
// before it asks again: RetryMax, at least MinAnswerTimeout, spread by up
// to a fifth more.
func (s *Session) answerTimeout() time.Duration {
	d := max(s.cfg.RetryMax, MinAnswerTimeout)
	return d + retry.UpTo(s.cfg.Rand, d/5)
}

func (s *Session) reset(d time.Duration) { s.timer.Reset(d) }

// Due handles the renewal timer: the certificate reached RenewAt, a
// backoff ended, or an outstanding renewal got no answer in time.
func (s *Session) Due(ctx context.Context) {
	if s.phase != idle {
		s.log.Warn("no answer to the renewal request in time; asking again")
	}
	s.begin(ctx)
}

// Rotate handles the fleet's cert.rotate: a renewal starts now unless one
// is outstanding or the fleet asked the device to wait.
func (s *Session) Rotate(ctx context.Context) {
	switch {
	case s.phase != idle:
		s.log.Info("the fleet asks for a rotation; the renewal under way answers it")
	case s.cfg.Now().Before(s.notBefore):
		s.log.Info("the fleet asks for a rotation; renewing when the wait it asked for ends", "at", s.notBefore)
	default:
		s.begin(ctx)
	}
}

// begin starts an attempt: a new key if needed (stored before it is
// used), and the request for a renewal challenge. The timer fires next at
// the answer's timeout, or, if the attempt could not start, after the
// backoff.
func (s *Session) begin(ctx context.Context) {
	if !s.ask(ctx) {
		s.retry(0)
		return
	}
	s.phase = asked
	s.reset(s.answerTimeout())
}

// Challenge answers a renewal challenge with the renewal request, once
// per attempt: a challenge the device did not ask for, or one for an
// attempt already answered, is dropped. When the request cannot be made
// the attempt ends with a backoff.
func (s *Session) Challenge(ctx context.Context, ch *wire.AttestChallenge) {
	if s.phase != asked {
		s.log.Debug("renewal challenge not asked for, or already answered; dropped")
		return
	}
	if !s.request(ctx, ch) {
		s.retry(0)
		return
	}
	s.phase = sent
}

// Result handles the fleet's answer to a renewal. It reports true when a
// certificate for the new key was stored in the identity's Next: the
// session should end to reconnect with it. A refusal of the outstanding
// attempt ends it with a backoff of at least the answer's RetryAfter.
func (s *Session) Result(res *wire.RenewResult) (renewed bool) {
	switch s.accept(res) {
	case accepted:
		return true
	case stale:
		return false
	}
	if s.phase == idle {
		return false // no attempt of this session waits for it
	}
	s.retry(retryAfter(res))
	return false
}

// retry ends the current attempt; the next starts after the next step of
// the backoff, never sooner than what the fleet asked (ra), spread by up
// to a fifth more so that devices the fleet refused together do not
// return together.
func (s *Session) retry(ra time.Duration) {
	d := s.bo.Next()
	if ra > 0 {
		d = max(d, ra+retry.UpTo(s.cfg.Rand, ra/5))
	}
	s.phase, s.notBefore = idle, s.cfg.Now().Add(d)
	s.reset(d)
}

// retryAfter is the wait a renewal result asks for, at most MaxRetryAfter.
func retryAfter(res *wire.RenewResult) time.Duration {
	if res.RetryAfter <= 0 {
		return 0
	}
	return min(time.Duration(res.RetryAfter)*time.Second, MaxRetryAfter)
}

// ask creates the next transport key, storing it before it is used,
// unless one without a certificate is already there, then asks the fleet
// for a renewal challenge. It reports whether it asked.
func (s *Session) ask(ctx context.Context) bool {
	id := s.id
	if id.Next == nil || len(id.Next.Cert) > 0 {
		tk, err := s.cfg.TPM.CreateTransportKey()
		if err != nil {
			s.log.Warn("renewal: creating the new transport key failed", "err", err)
			return false
		}
		id.Next = &state.Renewal{TK: state.KeyBlob{Public: tk.Public, Private: tk.Private}}
		if err := s.cfg.Store.SaveIdentity(id); err != nil {
			s.log.Warn("renewal: saving the new key failed", "err", err)
			return false
		}
	}
	s.log.Info("renewing the certificate")
	return s.publish(ctx, "attest", wire.TypeAttestRequest, &wire.AttestRequest{Reason: wire.PurposeRenew})
}

// request answers a renewal challenge: fresh evidence, the new key
// certified by the AK over the same nonce, and a CSR signed by the new
// key. It reports whether the request was sent.
func (s *Session) request(ctx context.Context, ch *wire.AttestChallenge) bool {
	id := s.id
	if id.Next == nil {
		return false
	}
	ev := s.cfg.Attester.Evidence(ctx, id, ch)
	if ev == nil {
		return false
	}
	tk := blob(id.Next.TK)
	attest, sig, err := s.cfg.TPM.Certify(blob(id.AK), tk, ch.Nonce)
	if err != nil {
		s.log.Warn("renewal: certify failed", "err", err)
		return false
	}
	signer, err := s.cfg.TPM.Signer(tk)
	if err != nil {
		s.log.Warn("renewal: new key unusable", "err", err)
		return false
	}
	csr, err := x509.CreateCertificateRequest(s.cfg.Rand, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: id.DeviceID}, SignatureAlgorithm: x509.ECDSAWithSHA256}, signer)
	if err != nil {
		s.log.Warn("renewal: CSR failed", "err", err)
		return false
	}
	req := &wire.RenewRequest{Nonce: ch.Nonce, TKPublic: id.Next.TK.Public, CertifyInfo: attest, CertifySig: sig, CSR: csr, Evidence: *ev}
	return s.publish(ctx, "renew", wire.TypeRenewRequest, req)
}

// publish sends a message on the session's up topic of kind; it reports
// whether the broker took it.
func (s *Session) publish(ctx context.Context, kind, typ string, body any) bool {
	b, err := wire.Encode(typ, nil, s.cfg.Now(), body)
	if err == nil {
		err = s.conn.Publish(ctx, s.cfg.Topics.DeviceUp(s.id.DeviceID, kind), b)
	}
	if err != nil && ctx.Err() == nil {
		s.log.Warn("renewal: sending failed", "type", typ, "err", err)
	}
	return err == nil
}

// outcome is what accept made of an answer.
type outcome int

const (
	accepted outcome = iota // certificate stored: reconnect with it
	refused                 // the fleet refused, or the device refused the certificate
	stale                   // an answer to an older request: ignored
)

// accept takes the fleet's answer. A certificate is stored after
// credential.Verify accepted it for the new key (accepted: the device
// reconnects with it). A certificate for another key is an answer to an
// older request (stale). A refusal, or a certificate for the new key that
// does not verify, is refused; after the latter the new key is dropped,
// so that the next attempt asks for another (the fleet answers the same
// key with the same certificate).
func (s *Session) accept(res *wire.RenewResult) outcome {
	id := s.id
	if res.Status != wire.StatusActive {
		s.log.Warn("renewal refused", "reason", res.Reason.String(), "message", res.Message, "retry_after", res.RetryAfter)
		if s.cfg.Refused != nil {
			s.cfg.Refused(res.Reason, res.Message)
		}
		return refused
	}
	if id.Next == nil || len(id.Next.Cert) > 0 {
		return stale
	}
	pub, err := s.cfg.TPM.PublicKey(blob(id.Next.TK))
	if err != nil {
		s.log.Warn("renewal: the new key is unusable", "err", err)
		return refused
	}
	if c, err := x509.ParseCertificate(res.Certificate); err == nil {
		if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || !k.Equal(pub) {
			s.log.Info("renewal: a certificate for another key arrived (an answer to an older request); ignored")
			return stale
		}
	}
	if _, err := credential.Verify(res.Certificate, res.Chain, res.TrustBundle, pub, s.cfg.Now()); err != nil {
		s.log.Warn("renewal: refusing the issued certificate; the next attempt uses a new key", "err", err)
		id.Next = nil
		if err := s.cfg.Store.SaveIdentity(id); err != nil {
			s.log.Warn("renewal: saving the identity failed", "err", err)
		}
		return refused
	}
	id.Next.Cert, id.Next.Chain, id.Next.TrustBundle = res.Certificate, res.Chain, res.TrustBundle
	if err := s.cfg.Store.SaveIdentity(id); err != nil {
		s.log.Warn("renewal: saving the certificate failed", "err", err)
		return refused
	}
	s.log.Info("renewed certificate received; reconnecting with it")
	return accepted
}

func blob(k state.KeyBlob) *tpm.KeyBlob { return &tpm.KeyBlob{Public: k.Public, Private: k.Private} }
