// Package enroll is the device's side of enrollment (docs/PROTOCOL.md,
// "Enrollment"): it proves the device to the fleet from its TPM's
// endorsement key over a bootstrap session and stores the certificate the
// fleet issues for its transport key. The fleet's side is fleet/enroll.
//
// One attempt (Client.Attempt):
//
//  1. a CSR for the device ID (derived from the EK) signed by the
//     transport key (TK) inside the TPM;
//  2. a bootstrap TLS connection that verifies the fleet with the roots
//     the device holds and fleet_ca (bootstrapTLS), with a fresh client
//     ID, optionally an enrollment token and a claim certificate;
//  3. the request: EK, AK and TK public areas, the CSR, model, firmware,
//     serial and token;
//  4. the fleet's challenge answered: the credential activated with the EK
//     (bound to the AK's name), the TK certified by the AK and the PCRs
//     quoted, both over the fleet's nonce, the event log when asked;
//  5. the result: active (the certificate is checked with
//     device/credential before it is stored), pending (the device stays
//     connected and asks again every PendingRetry, or at once when the
//     fleet says it was approved), or refused (*RefusedError).
//
// Client.Enroll repeats attempts, with jittered backoff, until the device
// is enrolled. The identity moves only from keys or pending to pending or
// enrolled, and each change is stored before the next step.
package enroll

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/device/credential"
	"github.com/sigil-iot/sigil/device/internal/retry"
	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TPM is what enrollment does with the device's TPM: *device/tpm.TPM.
type TPM interface {
	EK() (*tpm.EK, error)
	Signer(key *tpm.KeyBlob) (crypto.Signer, error)
	ActivateCredential(ak *tpm.KeyBlob, credBlob, encSecret []byte) ([]byte, error)
	Certify(ak, key *tpm.KeyBlob, nonce []byte) (attest, sig []byte, err error)
	Quote(ak *tpm.KeyBlob, nonce []byte, sel wire.PCRSelection) (*wire.Quote, error)
}

var _ TPM = (*tpm.TPM)(nil)

// Store keeps the device's identity: *device/state.Store.
type Store interface {
	SaveIdentity(id *state.Identity) error
}

var _ Store = (*state.Store)(nil)

// Conn is a bootstrap session with the fleet's broker: *device/link.Conn.
type Conn interface {
	Publish(ctx context.Context, topic string, payload []byte) error
	Subscribe(ctx context.Context, filter string, handler func(topic string, payload []byte)) error
	Done() <-chan struct{}
	Err() error
	Close()
}

var _ Conn = (*link.Conn)(nil)

// Observer hears how enrollment goes (device/agent shows it in its
// status). Its methods run on the enrolling goroutine and must not block.
type Observer interface {
	// Identity reports the identity after a change: pending, a refusal
	// (LastReason), enrolled.
	Identity(id *state.Identity)
	// Failed reports an attempt that failed; the next starts after a
	// backoff.
	Failed(err error)
}

// Defaults of Config.
const (
	DefaultPendingRetry  = 30 * time.Second
	DefaultAnswerTimeout = 30 * time.Second
	DefaultRetryMin      = time.Second
	DefaultRetryMax      = 5 * time.Minute
)

// Config is what enrollment needs. TPM, Store, Link.Broker and Model are
// required.
type Config struct {
	TPM   TPM
	Store Store
	// Link holds the bootstrap connection's settings (Broker, Logger,
	// Dial, Observer, KeepAlive, Timeout); each attempt sets ClientID,
	// TLS, Username and Password.
	Link link.Config
	// Dial opens the bootstrap session; nil means link.Dial.
	Dial func(ctx context.Context, cfg link.Config) (Conn, error)
	// Topics is the fleet's topic tree.
	Topics wire.Topics
	// ServerName is the TLS name expected on the broker's certificate.
	ServerName string
	// FleetCA is a PEM file of fleet roots trusted beside the ones the
	// device holds; required while it holds none (see bootstrapTLS).
	FleetCA string
	// ClaimCert and ClaimKey are PEM files of a claim credential presented
	// on the bootstrap connection; optional, together.
	ClaimCert, ClaimKey string
	// Token is an enrollment token; TokenFile names a file holding one,
	// read at each attempt. Optional.
	Token, TokenFile string
	// Model and Serial describe the device to the fleet.
	Model, Serial string
	// Firmware returns the version the device runs, asked at each
	// attempt; nil sends none.
	Firmware func() string
	// EventLog is the measured-boot event log sent when the fleet asks;
	// "" or "-" sends none. A missing file means the platform has none.
	EventLog string
	// PendingRetry is how often a pending device asks again; 0 means
	// DefaultPendingRetry.
	PendingRetry time.Duration
	// AnswerTimeout is how long an attempt waits for each answer of the
	// fleet; 0 means DefaultAnswerTimeout.
	AnswerTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between attempts; 0 means
	// DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// ReleaseTrust takes the firmware release trust set and rotations of
	// an active result, before the identity is stored (device/agent
	// checks them against the set the device holds); nil ignores them.
	ReleaseTrust func(trust []byte, rotations []wire.TrustRotation)
	// Observer, if set, hears of identity changes and failed attempts.
	Observer Observer
	// Now is the clock (nil: time.Now); Rand the entropy for CSRs,
	// client IDs and jitter (nil: crypto/rand); Logger nil discards.
	Now    func() time.Time
	Rand   io.Reader
	Logger *slog.Logger
}

// Client enrolls the device.
type Client struct {
	cfg Config
	log *slog.Logger
}

// New returns a client for cfg with its defaults filled in.
func New(cfg Config) (*Client, error) {
	var errs []error
	if cfg.TPM == nil || cfg.Store == nil {
		errs = append(errs, errors.New("a TPM and a store are required"))
	}
	if cfg.Link.Broker == "" || cfg.Model == "" {
		errs = append(errs, errors.New("a broker and a model are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if cfg.Dial == nil {
		cfg.Dial = dialLink
	}
	if cfg.PendingRetry <= 0 {
		cfg.PendingRetry = DefaultPendingRetry
	}
	if cfg.AnswerTimeout <= 0 {
		cfg.AnswerTimeout = DefaultAnswerTimeout
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Link.Logger == nil {
		cfg.Link.Logger = cfg.Logger
	}
	return &Client{cfg: cfg, log: cfg.Logger}, nil
}

// dialLink is link.Dial as a Config.Dial (a failed dial is a nil Conn, not
// a nil *link.Conn inside one).
func dialLink(ctx context.Context, cfg link.Config) (Conn, error) {
	c, err := link.Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// RefusedError is the fleet's refusal of an enrollment: its reason and
// public message, and how long the fleet asked the device to wait before
// it tries again (EnrollResult.RetryAfter, at most MaxRetryAfter; 0 when
// it said nothing).
type RefusedError struct {
	Reason     wire.Reason
	Message    string
	RetryAfter time.Duration
}

// MaxRetryAfter bounds the wait a fleet's RetryAfter may impose on the
// next enrollment attempt.
const MaxRetryAfter = time.Hour

func (e *RefusedError) Error() string {
	return fmt.Sprintf("enroll: refused: %s (code %d): %s", e.Reason, e.Reason, e.Message)
}

// ErrNoAnswer is an attempt the fleet did not answer in time.
var ErrNoAnswer = errors.New("enroll: no answer from the fleet")

// LostError is a bootstrap session lost before the attempt ended.
type LostError struct {
	Err error // why (the session's Err)
}

func (e *LostError) Error() string {
	return fmt.Sprintf("enroll: bootstrap connection lost: %v", e.Err)
}

func (e *LostError) Unwrap() error { return e.Err }

// Enroll makes attempts, backing off between them, until id is enrolled
// (and returns it) or ctx ends (and returns ctx's error). An identity
// already enrolled is returned as it is. After a refusal that says when
// to try again (RefusedError.RetryAfter: a fleet that is busy answers
// rate_limited with one) the next attempt comes that long later plus up
// to a quarter more (jitter, so that the devices it refused at once do
// not come back at once), not after the exponential backoff, which does
// not grow meanwhile.
func (c *Client) Enroll(ctx context.Context, id *state.Identity) (*state.Identity, error) {
	bo := &retry.Backoff{Min: c.cfg.RetryMin, Max: c.cfg.RetryMax, Rand: c.cfg.Rand}
	for id.Status != state.StatusEnrolled {
		var err error
		id, err = c.Attempt(ctx, id)
		if ctx.Err() != nil {
			return id, ctx.Err()
		}
		if err != nil {
			c.log.Warn("enrollment attempt failed", "err", err)
			if c.cfg.Observer != nil {
				c.cfg.Observer.Failed(err)
			}
			var wait time.Duration
			if re, ok := errors.AsType[*RefusedError](err); ok && re.RetryAfter > 0 {
				wait = re.RetryAfter + retry.UpTo(c.cfg.Rand, re.RetryAfter/4)
			} else {
				wait = bo.Next()
			}
			if !retry.Sleep(ctx, wait) {
				return id, ctx.Err()
			}
		}
	}
	return id, nil
}

// Attempt runs one enrollment session for id, whose keys exist (status
// keys or pending). It returns id enrolled, or an error after which the
// caller backs off: a *RefusedError, ErrNoAnswer, a *LostError, or what
// failed on the device. While the fleet keeps the device pending it stays
// connected and asks again every PendingRetry, or at once when told it
// was approved.
func (c *Client) Attempt(ctx context.Context, id *state.Identity) (*state.Identity, error) {
	if id.Status != state.StatusKeys && id.Status != state.StatusPending {
		return id, fmt.Errorf("enroll: identity is %q, not %q or %q", id.Status, state.StatusKeys, state.StatusPending)
	}
	ek, err := c.cfg.TPM.EK()
	if err != nil {
		return id, fmt.Errorf("enroll: %w", err)
	}
	devID, err := identity.DeviceID(ek.Key)
	if err != nil {
		return id, fmt.Errorf("enroll: %w", err)
	}
	tok, err := c.token()
	if err != nil {
		return id, err
	}
	signer, err := c.cfg.TPM.Signer(blob(id.TK))
	if err != nil {
		return id, fmt.Errorf("enroll: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(c.cfg.Rand, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: devID}, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, signer)
	if err != nil {
		return id, fmt.Errorf("enroll: CSR: %w", err)
	}
	tlsCfg, err := c.bootstrapTLS(id.TrustBundle)
	if err != nil {
		return id, err
	}
	// A fresh bootstrap client ID per attempt: a predictable one could be
	// taken over by another client to cut this enrollment off.
	suffix := make([]byte, 4)
	if _, err := io.ReadFull(c.cfg.Rand, suffix); err != nil {
		return id, fmt.Errorf("enroll: %w", err)
	}
	clientID := "e-" + devID[:16] + "-" + hex.EncodeToString(suffix)
	lc := c.cfg.Link
	lc.ClientID, lc.TLS, lc.Username, lc.Password = clientID, tlsCfg, "", nil
	if tok != "" {
		lc.Username, lc.Password = "token", []byte(tok) // the fleet may require a credential at connect
	}
	conn, err := c.cfg.Dial(ctx, lc)
	if err != nil {
		return id, err
	}
	defer conn.Close()

	inbox := make(chan *wire.Envelope, 8)
	err = conn.Subscribe(ctx, c.cfg.Topics.Filter(wire.SegEnroll, clientID, wire.Down), func(_ string, payload []byte) {
		env, err := wire.Decode(payload)
		if err != nil {
			c.log.Warn("dropping malformed message from fleet", "err", err)
			return
		}
		select {
		case inbox <- env:
		default:
		}
	})
	if err != nil {
		return id, err
	}
	req := &wire.EnrollRequest{
		EKPublic: ek.Public, EKCert: ek.Cert, AKPublic: id.AK.Public, TKPublic: id.TK.Public,
		CSR: csr, Model: c.cfg.Model, Firmware: c.firmware(), Serial: c.cfg.Serial, Token: tok,
	}
	send := func(typ string, corr []byte, body any) ([]byte, error) {
		b, err := wire.Encode(typ, corr, c.cfg.Now(), body)
		if err != nil {
			return nil, err
		}
		env, err := wire.Decode(b)
		if err != nil {
			return nil, err
		}
		return env.ID, conn.Publish(ctx, c.cfg.Topics.EnrollUp(clientID, "enroll"), b)
	}
	reqID, err := send(wire.TypeEnrollRequest, nil, req)
	if err != nil {
		return id, err
	}
	id.Attempts++
	c.log.Info("enrollment request sent", "device_id", devID, "model", c.cfg.Model)

	timer := time.NewTimer(c.cfg.AnswerTimeout)
	defer timer.Stop()
	var proofID []byte
	pending := false
	for {
		select {
		case <-ctx.Done():
			return id, ctx.Err()
		case <-conn.Done():
			return id, &LostError{Err: conn.Err()}
		case <-timer.C:
			if !pending {
				return id, ErrNoAnswer
			}
			if reqID, err = send(wire.TypeEnrollRequest, nil, req); err != nil {
				return id, err
			}
			proofID = nil
			timer.Reset(c.cfg.AnswerTimeout)
		case env := <-inbox:
			switch env.Type {
			case wire.TypeEnrollChallenge:
				if !hmac.Equal(env.Corr, reqID) {
					continue // an answer to an earlier request
				}
				var ch wire.EnrollChallenge
				if err := wire.DecodeBody(env, wire.TypeEnrollChallenge, &ch); err != nil {
					return id, err
				}
				proof, err := c.answer(id, &ch)
				if err != nil {
					return id, err
				}
				if proofID, err = send(wire.TypeEnrollProof, env.ID, proof); err != nil {
					return id, err
				}
				timer.Reset(c.cfg.AnswerTimeout)
			case wire.TypeEnrollResult:
				if !hmac.Equal(env.Corr, reqID) && (proofID == nil || !hmac.Equal(env.Corr, proofID)) && !olderFleet(env, proofID) {
					continue
				}
				var res wire.EnrollResult
				if err := wire.DecodeBody(env, wire.TypeEnrollResult, &res); err != nil {
					return id, err
				}
				switch res.Status {
				case wire.StatusActive:
					return c.accept(id, &res, signer.Public())
				case wire.StatusPending:
					if !pending {
						c.log.Info("enrollment pending operator approval", "device_id", devID)
					}
					pending = true
					id.Status = state.StatusPending
					id.LastReason = res.Reason.String()
					if err := c.cfg.Store.SaveIdentity(id); err != nil {
						return id, err
					}
					c.observe(id)
					timer.Reset(c.cfg.PendingRetry)
				default:
					id.LastReason = fmt.Sprintf("%s: %s", res.Reason, res.Message)
					c.observe(id)
					return id, &RefusedError{Reason: res.Reason, Message: res.Message, RetryAfter: retryAfter(&res)}
				}
			case wire.TypeEnrollRetry:
				if pending {
					timer.Reset(0)
				}
			}
		}
	}
}

// retryAfter is the wait a refusal asks for, at most MaxRetryAfter.
func retryAfter(res *wire.EnrollResult) time.Duration {
	if res.RetryAfter <= 0 {
		return 0
	}
	return min(time.Duration(res.RetryAfter)*time.Second, MaxRetryAfter)
}

// olderFleet reports whether env is the refusal of a fleet older than the
// device, which cannot read its request (unsupported_version): not having
// decoded the request, it cannot name it, and its answer carries no
// correlation. Taken only while no challenge was answered; it ends the
// attempt as any refusal does, with the reason the device shows.
func olderFleet(env *wire.Envelope, proofID []byte) bool {
	if len(env.Corr) != 0 || proofID != nil {
		return false
	}
	var res wire.EnrollResult
	return wire.DecodeBody(env, wire.TypeEnrollResult, &res) == nil && res.Status == wire.StatusRefused && res.Reason == wire.ReasonUnsupportedVersion
}

func (c *Client) observe(id *state.Identity) {
	if c.cfg.Observer != nil {
		c.cfg.Observer.Identity(id)
	}
}

func (c *Client) firmware() string {
	if c.cfg.Firmware == nil {
		return ""
	}
	return c.cfg.Firmware()
}

func blob(k state.KeyBlob) *tpm.KeyBlob { return &tpm.KeyBlob{Public: k.Public, Private: k.Private} }

// token is the enrollment token: Token, or TokenFile's contents.
func (c *Client) token() (string, error) {
	if c.cfg.TokenFile != "" {
		b, err := os.ReadFile(c.cfg.TokenFile)
		if err != nil {
			return "", fmt.Errorf("enroll: token file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return c.cfg.Token, nil
}

// answer activates the credential and certifies and quotes over the nonce.
func (c *Client) answer(id *state.Identity, ch *wire.EnrollChallenge) (*wire.EnrollProof, error) {
	secret, err := c.cfg.TPM.ActivateCredential(blob(id.AK), ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(ch.Session)
	mac.Write(ch.Nonce)
	attest, sig, err := c.cfg.TPM.Certify(blob(id.AK), blob(id.TK), ch.Nonce)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	q, err := c.cfg.TPM.Quote(blob(id.AK), ch.Nonce, ch.Selection)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	proof := &wire.EnrollProof{Session: ch.Session, Activation: mac.Sum(nil), CertifyInfo: attest, CertifySig: sig, Quote: *q}
	if ch.EventLog && c.cfg.EventLog != "" && c.cfg.EventLog != "-" {
		// The fleet's policy judges the boot events too; without the log
		// the fleet refuses, and says so.
		log, err := readBounded(c.cfg.EventLog, wire.MaxEventLog)
		switch {
		case err == nil:
			proof.EventLog = log
		case !errors.Is(err, os.ErrNotExist):
			c.log.Warn("event log unreadable; enrolling without it", "path", c.cfg.EventLog, "err", err)
		}
	}
	return proof, nil
}

// accept checks the issued certificate (credential.Verify: for the
// transport key, chaining to the trust bundle it came with) before it
// hands the release trust on and stores the enrolled identity.
func (c *Client) accept(id *state.Identity, res *wire.EnrollResult, tkPub crypto.PublicKey) (*state.Identity, error) {
	if _, err := credential.Verify(res.Certificate, res.Chain, res.TrustBundle, tkPub, c.cfg.Now()); err != nil {
		return id, err
	}
	if c.cfg.ReleaseTrust != nil {
		c.cfg.ReleaseTrust(res.FirmwareTrust, res.FirmwareRotations)
	}
	id.Status = state.StatusEnrolled
	id.DeviceID = res.DeviceID
	id.Cert = res.Certificate
	id.Chain = res.Chain
	id.TrustBundle = res.TrustBundle
	id.Next = nil
	id.EnrolledAt = c.cfg.Now().UTC()
	id.LastReason = ""
	if err := c.cfg.Store.SaveIdentity(id); err != nil {
		return id, err
	}
	c.log.Info("enrolled", "device_id", id.DeviceID)
	c.observe(id)
	return id, nil
}

// bootstrapTLS is the TLS configuration of an enrollment connection. It
// verifies the fleet with the roots the device holds (the trust bundle of
// its enrollment, renewals and trust.bundle pushes: it follows the fleet's
// CA rotations) joined with the FleetCA file when there is one. FleetCA is
// what a device that never enrolled trusts; once enrolled the device
// re-enrolls (refused or expired) whether FleetCA still names a current
// root, names one retired by CA rotations, or was removed.
func (c *Client) bootstrapTLS(held [][]byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	roots := 0
	for _, der := range held {
		if c, err := x509.ParseCertificate(der); err == nil && c.IsCA {
			pool.AddCert(c)
			roots++
		}
	}
	if c.cfg.FleetCA != "" {
		pemBytes, err := os.ReadFile(c.cfg.FleetCA)
		switch {
		case err == nil && pool.AppendCertsFromPEM(pemBytes):
			roots++
		case roots == 0 && err != nil:
			return nil, fmt.Errorf("enroll: fleet CA: %w", err)
		case roots == 0:
			return nil, fmt.Errorf("enroll: fleet CA %s: no PEM certificates", c.cfg.FleetCA)
		case errors.Is(err, os.ErrNotExist):
			c.log.Debug("fleet_ca absent; verifying the fleet with the trust bundle held", "fleet_ca", c.cfg.FleetCA)
		default:
			c.log.Warn("fleet_ca unusable; verifying the fleet with the trust bundle held", "fleet_ca", c.cfg.FleetCA, "err", err)
		}
	}
	if roots == 0 {
		return nil, errors.New("enroll: no fleet trust: fleet_ca is not set and the device holds no trust bundle")
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: c.cfg.ServerName, MinVersion: tls.VersionTLS12, Time: c.cfg.Now}
	if c.cfg.ClaimCert != "" {
		claim, err := tls.LoadX509KeyPair(c.cfg.ClaimCert, c.cfg.ClaimKey)
		if err != nil {
			return nil, fmt.Errorf("enroll: claim credential: %w", err)
		}
		cfg.Certificates = []tls.Certificate{claim}
	}
	return cfg, nil
}

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, fmt.Errorf("enroll: %s is larger than %d bytes", path, max)
	}
	return b, nil
}
