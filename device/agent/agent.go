// Package agent is sigild: it owns the device's TPM session and state
// store, and composes the device's jobs into one daemon (Config, New, Run):
//
//   - enrollment from the TPM's endorsement key (device/enroll), once, and
//     again when the fleet refuses the certificate or it expired while
//     the device was offline;
//   - the mTLS session whose private key never leaves the TPM, kept up
//     by the connection loop with backoff (connectLoop), and the session
//     loop (sessionLoop) that routes the fleet's messages: attestation,
//     certificate renewal (device/renew), trust bundle pushes, SSH host
//     certificates, secret deliveries, firmware updates (device/update)
//     and telemetry (device/telemetry);
//   - the SSH host key born in the TPM, served to sshd (device/sshagent);
//   - the status socket `sigild status` reads.
//
// A renewed certificate is used once it arrives and kept only once a
// connection with it succeeded. A restart resumes from the stored
// identity and never enrolls twice.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/device/enroll"
	"github.com/sigil-iot/sigil/device/internal/retry"
	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Version is sigild's version, set at build time with -ldflags.
var Version = "dev"

// Agent is the device daemon.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	topics wire.Topics
	now    func() time.Time
	rand   io.Reader

	opts options
	tpm  TPM
	st   *state.Store

	challenges chan *wire.AttestChallenge
	renewals   chan *wire.RenewResult
	rotate     chan struct{}
	trust      chan [][]byte            // trust bundles pushed during a CA rotation
	ssh        sshState                 // hands SSH certificate messages to the session worker (ssh.go)
	access     accessState              // just-in-time access: the trust generation and sshd log reader (access.go)
	secrets    chan *wire.SecretDeliver // deliveries for the session's secret worker (secrets.go)
	tel        agentTelemetry           // sampler, sender and the session they publish on (telemetry.go)
	fw         firmwareState            // firmware updates (update.go)

	mu     sync.Mutex
	status Status
}

// Status is what `sigild status` prints.
type Status struct {
	DeviceID   string    `json:"device_id,omitempty"`
	Enrollment string    `json:"enrollment"` // new, keys, pending, enrolled
	Connected  bool      `json:"connected"`
	Broker     string    `json:"broker"`
	CertSerial string    `json:"cert_serial,omitempty"`
	CertExpiry time.Time `json:"cert_expiry,omitzero"`
	CertIssuer string    `json:"cert_issuer,omitempty"`
	// TrustRoots names the fleet roots the device trusts (changes during
	// a CA rotation).
	TrustRoots  []string  `json:"trust_roots,omitempty"`
	EnrolledAt  time.Time `json:"enrolled_at,omitzero"`
	LastReason  string    `json:"last_reason,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	ConnectedAt time.Time `json:"connected_at,omitzero"`
	Model       string    `json:"model"`
	Firmware    string    `json:"firmware,omitempty"`
	Agent       string    `json:"agent"`
	Running     bool      `json:"running"` // set by CurrentStatus
	// LastAttested is when evidence was last sent; LastVerdict the fleet's
	// answer ("pass", or "fail: <reason>").
	LastAttested time.Time `json:"last_attested,omitzero"`
	LastVerdict  string    `json:"last_verdict,omitempty"`
	// LastFleetMessage is when a message from the fleet last arrived;
	// FleetSilentSince when the oldest message the fleet answers (an
	// attestation request, evidence) was sent since then (zero: none
	// waits). A broker that accepts the device while the fleet behind it
	// answers nothing (a plant bridge cut off from the fleet) shows here.
	LastFleetMessage time.Time `json:"last_fleet_message,omitzero"`
	FleetSilentSince time.Time `json:"fleet_silent_since,omitzero"`
}

// SilentAfter is how long a connected device waits for the fleet's answer
// before its status says the fleet is silent.
const SilentAfter = 30 * time.Second

// Silence is how long the fleet has left the device's messages unanswered
// at now, when the device is connected and that is SilentAfter or more;
// otherwise zero.
func (s *Status) Silence(now time.Time) time.Duration {
	if d := now.Sub(s.FleetSilentSince); s.Connected && !s.FleetSilentSince.IsZero() && d >= SilentAfter {
		return d
	}
	return 0
}

// expectAnswer notes that the device is about to send the fleet a message
// it answers; the fleet is silent from the oldest such message.
func (a *Agent) expectAnswer() {
	a.setStatus(func(s *Status) {
		if s.FleetSilentSince.IsZero() {
			s.FleetSilentSince = a.now()
		}
	})
}

// New validates cfg. Run does the work. Options replace what the agent
// otherwise opens from cfg (a simulator's TPM, state store, slots).
func New(cfg Config, logger *slog.Logger, opts ...Option) (*Agent, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent: config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, log: logger, topics: wire.Topics{Prefix: cfg.TopicPrefix}, now: time.Now, rand: rand.Reader,
		challenges: make(chan *wire.AttestChallenge, 4), renewals: make(chan *wire.RenewResult, 2), rotate: make(chan struct{}, 1), trust: make(chan [][]byte, 1),
		secrets: make(chan *wire.SecretDeliver, secretQueue)}
	a.status = Status{Enrollment: "new", Broker: cfg.Broker, Model: cfg.Model, Firmware: cfg.Firmware, Agent: Version}
	for _, o := range opts {
		o(&a.opts)
	}
	return a, nil
}

// Status returns a snapshot of the daemon's state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

func (a *Agent) setStatus(fn func(*Status)) {
	a.mu.Lock()
	fn(&a.status)
	a.mu.Unlock()
}

// Run enrolls if needed, then keeps the mTLS session up until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.st, a.tpm = a.opts.state, a.opts.tpm
	if a.st == nil {
		st, err := state.Open(a.cfg.State, state.Options{})
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer st.Close()
		a.st = st
	}
	if a.tpm == nil {
		t, err := tpm.Open(a.cfg.TPM, tpm.WithLogger(a.log))
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer t.Close()
		a.tpm = t
	}

	if a.cfg.Control != "-" {
		stop, err := a.serveControl(a.cfg.Control)
		if err != nil {
			a.log.Warn("status socket unavailable", "path", a.cfg.Control, "err", err)
		} else {
			defer stop()
		}
	}

	id, err := a.ensureKeys()
	if err != nil {
		return err
	}
	if a.cfg.SSHTPMHostKey != "" {
		stop, err := a.serveSSHAgent(ctx)
		if err != nil {
			return err
		}
		defer stop()
	}
	a.publishIdentity(id)
	defer a.startUpdates(ctx)()
	if id, err = a.enrollUntilDone(ctx, id); err != nil {
		return stopped(ctx, err)
	}
	stopTelemetry := a.startTelemetry(ctx)
	defer stopTelemetry()
	return a.connectLoop(ctx, id)
}

// enrollUntilDone enrolls (device/enroll), backing off between attempts,
// until enrolled or ctx ends (then it returns ctx's error).
func (a *Agent) enrollUntilDone(ctx context.Context, id *state.Identity) (*state.Identity, error) {
	c, err := enroll.New(a.enrollConfig())
	if err != nil {
		return id, fmt.Errorf("agent: %w", err)
	}
	if id, err = c.Enroll(ctx, id); err != nil {
		return id, err
	}
	a.publishIdentity(id)
	return id, nil
}

// ensureKeys creates the AK and transport key once and persists them before
// they are used.
func (a *Agent) ensureKeys() (*state.Identity, error) {
	id, err := a.st.Identity()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if id.Status != state.StatusNew {
		return id, nil
	}
	ak, err := a.tpm.CreateAK()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	tk, err := a.tpm.CreateTransportKey()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	id.AK = state.KeyBlob{Public: ak.Public, Private: ak.Private}
	id.TK = state.KeyBlob{Public: tk.Public, Private: tk.Private}
	id.Status = state.StatusKeys
	if err := a.st.SaveIdentity(id); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.log.Info("created attestation and transport keys in the TPM")
	return id, nil
}

func blob(k state.KeyBlob) *tpm.KeyBlob { return &tpm.KeyBlob{Public: k.Public, Private: k.Private} }

func (a *Agent) publishIdentity(id *state.Identity) {
	a.setStatus(func(s *Status) {
		s.Enrollment = id.Status
		if id.Status == state.StatusNew {
			s.Enrollment = "new"
		}
		s.DeviceID = id.DeviceID
		s.LastReason = id.LastReason
		s.EnrolledAt = id.EnrolledAt
		if c, err := x509.ParseCertificate(id.Cert); err == nil {
			s.CertSerial = hex.EncodeToString(c.SerialNumber.Bytes())
			s.CertExpiry = c.NotAfter
			s.CertIssuer = c.Issuer.CommonName
		}
		s.TrustRoots = s.TrustRoots[:0:0]
		for _, der := range id.TrustBundle {
			if c, err := x509.ParseCertificate(der); err == nil {
				s.TrustRoots = append(s.TrustRoots, c.Subject.CommonName)
			}
		}
	})
}

// enrollConfig is the configuration of the agent's enrollment client
// (device/enroll): the agent's TPM, state store, broker and identity
// claims, with the agent's status as its observer.
func (a *Agent) enrollConfig() enroll.Config {
	return enroll.Config{
		TPM: a.tpm, Store: a.st,
		Link:   link.Config{Broker: a.cfg.BootstrapBroker, Logger: a.log, Dial: a.opts.dial, Observer: a.opts.observer},
		Dial:   func(ctx context.Context, cfg link.Config) (enroll.Conn, error) { return a.dialLink(ctx, cfg) },
		Topics: a.topics, ServerName: a.cfg.BootstrapServerName, FleetCA: a.cfg.FleetCA, ClaimCert: a.cfg.ClaimCert, ClaimKey: a.cfg.ClaimKey,
		Token: a.cfg.Token, TokenFile: a.cfg.TokenFile, Model: a.cfg.Model, Serial: a.cfg.Serial, Firmware: a.runningFirmware,
		EventLog: a.cfg.EventLog, PendingRetry: time.Duration(a.cfg.PendingRetry),
		RetryMin: time.Duration(a.cfg.RetryMin), RetryMax: time.Duration(a.cfg.RetryMax),
		ReleaseTrust: func(trust []byte, rotations []wire.TrustRotation) {
			a.adoptReleaseTrust(trust, rotations, "enrollment")
		},
		Observer: enrollObserver{a}, Now: a.now, Rand: a.rand, Logger: a.log,
	}
}

// enrollObserver shows enrollment's progress in the agent's status.
type enrollObserver struct{ a *Agent }

func (o enrollObserver) Identity(id *state.Identity) { o.a.publishIdentity(id) }

func (o enrollObserver) Failed(err error) {
	o.a.setStatus(func(s *Status) { s.LastError = err.Error() })
}

// connectLoop keeps the mTLS session up, reconnecting with backoff. A
// renewed certificate is used as soon as it arrives and kept only once a
// connection with it succeeds. When the broker refuses the certificate
// (revoked, e.g. after a quarantine) or it expired while the device was
// offline, the device enrolls again from its EK.
func (a *Agent) connectLoop(ctx context.Context, id *state.Identity) error {
	bo := a.backoff()
	refused := 0 // consecutive refusals of the current certificate
	for {
		conn, err := a.connectNext(ctx, id)
		if conn == nil && err == nil {
			if a.expired(id) {
				a.log.Warn("certificate expired while offline; proving the device again from its EK")
				if id, err = a.reenroll(ctx, id); err != nil {
					return stopped(ctx, err)
				}
				continue
			}
			conn, err = a.connect(ctx, id.DeviceID, current(id))
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.log.Warn("connect failed", "err", err)
			a.setStatus(func(s *Status) { s.LastError = err.Error() })
			if authRefused(err) {
				if refused++; refused >= 2 {
					a.log.Warn("the fleet refuses this certificate; enrolling again from the EK")
					if id, err = a.reenroll(ctx, id); err != nil {
						return stopped(ctx, err)
					}
					refused = 0
					continue
				}
			}
			if !retry.Sleep(ctx, bo.Next()) {
				return nil
			}
			continue
		}
		refused = 0
		bo.Reset()
		a.setStatus(func(s *Status) { s.Connected = true; s.ConnectedAt = a.now(); s.LastError = "" })
		a.log.Info("connected with TPM-backed mTLS", "device_id", id.DeviceID, "broker", a.cfg.Broker)
		sess, cancel := context.WithCancel(ctx)
		renewed := make(chan bool, 1)
		go func() { renewed <- a.sessionLoop(sess, conn, id) }()
		var secretWorker sync.WaitGroup
		deviceID := id.DeviceID
		secretWorker.Go(func() { a.secretLoop(sess, conn, deviceID) })
		a.setTelemetrySession(conn, deviceID)
		var switchNow bool
		select {
		case <-ctx.Done():
		case <-conn.Done():
		case switchNow = <-renewed:
		}
		cancel()
		if !switchNow {
			switchNow = <-renewed
		}
		secretWorker.Wait()
		a.setTelemetrySession(nil, "")
		a.setFirmwareLink(nil, "") // reports wait for the next session
		if ctx.Err() != nil {
			conn.Close()
			a.setStatus(func(s *Status) { s.Connected = false })
			return nil
		}
		if switchNow {
			conn.Close()
			a.setStatus(func(s *Status) { s.Connected = false })
			continue // reconnect with the renewed certificate at once
		}
		a.setStatus(func(s *Status) { s.Connected = false; s.LastError = fmt.Sprint("connection lost: ", conn.Err()) })
		a.log.Warn("connection lost", "err", conn.Err())
		if !retry.Sleep(ctx, bo.Next()) {
			return nil
		}
	}
}

// stopped is nil when ctx ended (a clean stop), else err.
func stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// reenroll forgets the certificate and enrolls again from the EK.
func (a *Agent) reenroll(ctx context.Context, id *state.Identity) (*state.Identity, error) {
	id.Status = state.StatusKeys
	id.Next = nil
	if err := a.st.SaveIdentity(id); err != nil {
		return id, err
	}
	return a.enrollUntilDone(ctx, id)
}

func (a *Agent) expired(id *state.Identity) bool {
	c, err := x509.ParseCertificate(id.Cert)
	return err == nil && a.now().After(c.NotAfter)
}

// creds is a transport key with its certificate.
type creds struct {
	tk    state.KeyBlob
	cert  []byte
	chain [][]byte
	trust [][]byte
}

func current(id *state.Identity) creds {
	return creds{tk: id.TK, cert: id.Cert, chain: id.Chain, trust: id.TrustBundle}
}

// connectNext tries a renewed certificate that has arrived. On success the
// device switches to it for good (and the old key blob is forgotten); on a
// refusal the renewal is dropped and the current identity stays. It
// returns nil, nil when there is nothing to try or it should fall back.
func (a *Agent) connectNext(ctx context.Context, id *state.Identity) (session, error) {
	n := id.Next
	if n == nil || len(n.Cert) == 0 {
		return nil, nil
	}
	conn, err := a.connect(ctx, id.DeviceID, creds{tk: n.TK, cert: n.Cert, chain: n.Chain, trust: n.TrustBundle})
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		a.log.Warn("connecting with the renewed certificate failed; keeping the current one", "err", err)
		if authRefused(err) {
			id.Next = nil
			if err := a.st.SaveIdentity(id); err != nil {
				return nil, err
			}
		}
		return nil, nil
	}
	id.TK, id.Cert, id.Chain, id.TrustBundle, id.Next = n.TK, n.Cert, n.Chain, n.TrustBundle, nil
	if err := a.st.SaveIdentity(id); err != nil {
		conn.Close()
		return nil, err
	}
	a.publishIdentity(id)
	a.log.Info("switched to the renewed certificate", "cert_serial", a.Status().CertSerial)
	return conn, nil
}

// TLS alerts (RFC 8446 section 6) with which a broker refuses a client
// certificate.
const (
	alertBadCertificate      = 42
	alertCertificateRevoked  = 44
	alertCertificateExpired  = 45
	alertCertificateUnknown  = 46
	alertUnknownCA           = 48
	alertAccessDenied        = 49
	alertCertificateRequired = 116 // Go's server, when no certificate of ours is from a CA it accepts
)

// authRefused reports whether the fleet refused the device's certificate,
// the one answer after which the device forgets it and enrolls again from
// its EK. It decides on the types device/link returns, which come only
// from a broker the TLS handshake authenticated with the fleet's trust
// bundle: CONNACK 4 or 5 (*link.ConnackError), or a certificate alert the
// broker sent after the handshake (*link.AlertError). Nothing an
// unauthenticated peer sends or names counts (a server certificate that
// does not verify, whatever its names; an alert inside the handshake;
// bytes that are not TLS), so a network attacker without the fleet's keys
// cannot make the device drop its credential.
func authRefused(err error) bool {
	if c, ok := errors.AsType[*link.ConnackError](err); ok {
		return c.Code == link.ConnackBadCredentials || c.Code == link.ConnackNotAuthorized
	}
	if a, ok := errors.AsType[*link.AlertError](err); ok {
		switch a.Alert {
		case alertBadCertificate, alertCertificateRevoked, alertCertificateExpired, alertCertificateUnknown,
			alertUnknownCA, alertAccessDenied, alertCertificateRequired:
			return true
		}
	}
	return false
}

// clientTLS is the TLS configuration of a connection to the fleet with
// the given credentials: its TPM-held key signs, its trust bundle verifies
// the fleet (the broker and the firmware downloads alike).
func (a *Agent) clientTLS(c creds) (*tls.Config, error) {
	signer, err := a.tpm.Signer(blob(c.tk))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	leaf, err := x509.ParseCertificate(c.cert)
	if err != nil {
		return nil, fmt.Errorf("agent: stored certificate: %w", err)
	}
	roots := x509.NewCertPool()
	for _, der := range c.trust {
		if c, err := x509.ParseCertificate(der); err == nil {
			roots.AddCert(c)
		}
	}
	return &tls.Config{
		RootCAs: roots, ServerName: a.cfg.ServerName, MinVersion: tls.VersionTLS12, Time: a.now,
		Certificates: []tls.Certificate{{Certificate: append([][]byte{c.cert}, c.chain...), PrivateKey: signer, Leaf: leaf}},
	}, nil
}

func (a *Agent) connect(ctx context.Context, deviceID string, c creds) (session, error) {
	tlsCfg, err := a.clientTLS(c)
	if err != nil {
		return nil, err
	}
	conn, err := a.dialLink(ctx, link.Config{Broker: a.cfg.Broker, ClientID: deviceID, TLS: tlsCfg, Logger: a.log,
		Dial: a.opts.dial, Observer: a.opts.observer})
	if err != nil {
		return nil, err
	}
	if err := conn.Subscribe(ctx, a.topics.Filter(wire.SegDevice, deviceID, wire.Down), a.handleDown); err != nil {
		conn.Close()
		return nil, err
	}
	hello, err := wire.Encode(wire.TypeHello, nil, a.now(), &wire.Hello{Model: a.cfg.Model, Firmware: a.runningFirmware(), Agent: Version})
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := conn.Publish(ctx, a.topics.DeviceUp(deviceID, "hello"), hello); err != nil {
		conn.Close()
		return nil, err
	}
	a.setFirmwareLink(conn, deviceID)
	return conn, nil
}

func (a *Agent) handleDown(topic string, payload []byte) {
	env, err := wire.Decode(payload)
	if err != nil {
		a.log.Warn("dropping malformed message from fleet", "topic", topic, "err", err)
		return
	}
	a.setStatus(func(s *Status) { s.LastFleetMessage, s.FleetSilentSince = a.now(), time.Time{} })
	switch env.Type {
	case wire.TypeAttestChallenge:
		var ch wire.AttestChallenge
		if err := wire.DecodeBody(env, wire.TypeAttestChallenge, &ch); err != nil {
			a.log.Warn("dropping malformed challenge", "err", err)
			return
		}
		select {
		case a.challenges <- &ch:
		default:
			a.log.Warn("attestation challenges arrive faster than the TPM answers; dropping one")
		}
	case wire.TypeRenewResult:
		var r wire.RenewResult
		if err := wire.DecodeBody(env, wire.TypeRenewResult, &r); err != nil {
			a.log.Warn("dropping malformed renewal result", "err", err)
			return
		}
		select {
		case a.renewals <- &r:
		default:
		}
	case wire.TypeRotate:
		var r wire.Rotate
		if err := wire.DecodeBody(env, wire.TypeRotate, &r); err != nil {
			return
		}
		a.log.Info("the fleet asks for a certificate rotation", "reason", r.Reason)
		select {
		case a.rotate <- struct{}{}:
		default:
		}
	case wire.TypeTrustBundle:
		var b wire.TrustBundle
		if err := wire.DecodeBody(env, wire.TypeTrustBundle, &b); err != nil {
			a.log.Warn("dropping malformed trust bundle", "err", err)
			return
		}
		// The newest bundle wins: replace one still pending.
		for {
			select {
			case a.trust <- b.Roots:
				return
			default:
				select {
				case <-a.trust:
				default:
				}
			}
		}
	case wire.TypeSecretDeliver:
		a.queueSecret(env)
	case wire.TypeFirmwareAnnounce, wire.TypeFirmwareTrust:
		a.queueFirmware(env)
	case wire.TypeSSHCerts:
		a.sshCerts(env)
	case wire.TypeAccessTrust:
		a.accessTrust(env)
	case wire.TypeTelemetryAck:
		a.telemetryAck(env)
	case wire.TypeAttestVerdict:
		var v wire.AttestVerdict
		if err := wire.DecodeBody(env, wire.TypeAttestVerdict, &v); err != nil {
			return
		}
		verdict := v.Result
		if v.Result != wire.VerdictPass {
			verdict += ": " + v.Reason.String() + ": " + v.Message
			a.log.Warn("attestation failed", "reason", v.Reason.String(), "message", v.Message)
		}
		a.setStatus(func(s *Status) { s.LastVerdict = verdict })
		if v.Result == wire.VerdictPass {
			a.sshAttested()
			if a.opts.ext != nil {
				a.opts.ext.Attested()
			}
		}
	default:
		if a.opts.ext != nil {
			a.opts.ext.Down(env)
			return
		}
		a.log.Debug("message from fleet", "type", env.Type, "id", env.IDString())
	}
}

// backoff is the jittered exponential backoff between RetryMin and
// RetryMax of the agent's retries.
func (a *Agent) backoff() *retry.Backoff {
	return &retry.Backoff{Min: time.Duration(a.cfg.RetryMin), Max: time.Duration(a.cfg.RetryMax), Rand: a.rand}
}

// session is a connection to the fleet's broker: *link.Conn, or the
// in-memory fleet of the agent's tests.
type session interface {
	Publish(ctx context.Context, topic string, payload []byte) error
	Subscribe(ctx context.Context, filter string, handler func(topic string, payload []byte)) error
	Done() <-chan struct{}
	Err() error
	Close()
}

var _ session = (*link.Conn)(nil)

// dialLink opens a session: with link.Dial, or the dialer an in-package
// test gave.
func (a *Agent) dialLink(ctx context.Context, cfg link.Config) (session, error) {
	if a.opts.link != nil {
		return a.opts.link(ctx, cfg)
	}
	c, err := link.Dial(ctx, cfg)
	if err != nil {
		return nil, err // not a nil *link.Conn inside a session
	}
	return c, nil
}
