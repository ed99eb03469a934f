// Package agent is sigild: it owns the device's TPM session and state store,
// enrolls with the fleet over MQTT, then keeps an mTLS session whose private
// key never leaves the TPM.
//
// The enrollment sequence (docs/PROTOCOL.md):
//
//  1. create, once, an attestation key (AK) and a transport key (TK) in the
//     TPM and persist their wrapped blobs;
//  2. on a bootstrap TLS connection, send the EK, AK and TK public areas, a
//     CSR signed by the TK, model, firmware and an optional token;
//  3. answer the fleet's challenge: activate the credential with the EK,
//     certify the TK with the AK and quote the PCRs, both over the fleet's
//     nonce;
//  4. store the certificate and the fleet trust bundle, then reconnect with
//     mutual TLS, signing the handshake with the TK inside the TPM.
//
// A restart resumes from the stored status and never enrolls twice.
package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
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
	"math/big"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/identity"
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
	if id, err = a.enrollUntilDone(ctx, id); err != nil || ctx.Err() != nil {
		return nil
	}
	stopTelemetry := a.startTelemetry(ctx)
	defer stopTelemetry()
	return a.connectLoop(ctx, id)
}

// enrollUntilDone enrolls, backing off between attempts, until enrolled or
// ctx ends (then it returns ctx's error).
func (a *Agent) enrollUntilDone(ctx context.Context, id *state.Identity) (*state.Identity, error) {
	bo := a.backoff()
	for id.Status != state.StatusEnrolled {
		var err error
		id, err = a.enroll(ctx, id)
		if ctx.Err() != nil {
			return id, ctx.Err()
		}
		if err != nil {
			a.log.Warn("enrollment attempt failed", "err", err)
			a.setStatus(func(s *Status) { s.LastError = err.Error() })
			if !sleep(ctx, bo.next()) {
				return id, ctx.Err()
			}
		}
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

// refusal is a non-temporary answer from the fleet.
type refusal struct {
	reason wire.Reason
	msg    string
}

func (r *refusal) Error() string {
	return fmt.Sprintf("agent: enrollment refused: %s (code %d): %s", r.reason, r.reason, r.msg)
}

func (a *Agent) token() (string, error) {
	if a.cfg.TokenFile != "" {
		b, err := os.ReadFile(a.cfg.TokenFile)
		if err != nil {
			return "", fmt.Errorf("agent: token file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return a.cfg.Token, nil
}

// bootstrapTLS is the TLS configuration of an enrollment connection. It
// verifies the fleet with the roots the device holds (the trust bundle of
// its enrollment, renewals and trust.bundle pushes: it follows the fleet's
// CA rotations) joined with the fleet_ca file when there is one. fleet_ca
// is what a device that never enrolled trusts; once enrolled the device
// re-enrolls (refused or expired) whether fleet_ca still names a current
// root, names one retired by CA rotations, or was removed.
func (a *Agent) bootstrapTLS(held [][]byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	roots := 0
	for _, der := range held {
		if c, err := x509.ParseCertificate(der); err == nil && c.IsCA {
			pool.AddCert(c)
			roots++
		}
	}
	if a.cfg.FleetCA != "" {
		pemBytes, err := os.ReadFile(a.cfg.FleetCA)
		switch {
		case err == nil && pool.AppendCertsFromPEM(pemBytes):
			roots++
		case roots == 0 && err != nil:
			return nil, fmt.Errorf("agent: fleet CA: %w", err)
		case roots == 0:
			return nil, fmt.Errorf("agent: fleet CA %s: no PEM certificates", a.cfg.FleetCA)
		case errors.Is(err, os.ErrNotExist):
			a.log.Debug("fleet_ca absent; verifying the fleet with the trust bundle held", "fleet_ca", a.cfg.FleetCA)
		default:
			a.log.Warn("fleet_ca unusable; verifying the fleet with the trust bundle held", "fleet_ca", a.cfg.FleetCA, "err", err)
		}
	}
	if roots == 0 {
		return nil, errors.New("agent: no fleet trust: fleet_ca is not set and the device holds no trust bundle")
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: a.cfg.BootstrapServerName, MinVersion: tls.VersionTLS12, Time: a.now}
	if a.cfg.ClaimCert != "" {
		claim, err := tls.LoadX509KeyPair(a.cfg.ClaimCert, a.cfg.ClaimKey)
		if err != nil {
			return nil, fmt.Errorf("agent: claim credential: %w", err)
		}
		cfg.Certificates = []tls.Certificate{claim}
	}
	return cfg, nil
}

// enroll runs one enrollment session: it returns the updated identity when
// the device is enrolled, or an error after which the caller backs off.
// While the fleet keeps the device pending it stays connected and asks again
// every PendingRetry or when told it was approved.
func (a *Agent) enroll(ctx context.Context, id *state.Identity) (*state.Identity, error) {
	ek, err := a.tpm.EK()
	if err != nil {
		return id, fmt.Errorf("agent: %w", err)
	}
	devID, err := identity.DeviceID(ek.Key)
	if err != nil {
		return id, err
	}
	tok, err := a.token()
	if err != nil {
		return id, err
	}
	signer, err := a.tpm.Signer(blob(id.TK))
	if err != nil {
		return id, fmt.Errorf("agent: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(a.rand, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: devID}, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, signer)
	if err != nil {
		return id, fmt.Errorf("agent: CSR: %w", err)
	}
	tlsCfg, err := a.bootstrapTLS(id.TrustBundle)
	if err != nil {
		return id, err
	}
	// A fresh bootstrap client ID per attempt: a predictable one could be
	// taken over by another client to cut this enrollment off.
	suffix := make([]byte, 4)
	if _, err := io.ReadFull(a.rand, suffix); err != nil {
		return id, err
	}
	clientID := "e-" + devID[:16] + "-" + hex.EncodeToString(suffix)
	lc := link.Config{Broker: a.cfg.BootstrapBroker, ClientID: clientID, TLS: tlsCfg, Logger: a.log, Dial: a.opts.dial, Observer: a.opts.observer}
	if tok != "" {
		lc.Username, lc.Password = "token", []byte(tok) // the fleet may require a credential at connect
	}
	conn, err := link.Dial(ctx, lc)
	if err != nil {
		return id, err
	}
	defer conn.Close()

	inbox := make(chan *wire.Envelope, 8)
	err = conn.Subscribe(ctx, a.topics.Filter(wire.SegEnroll, clientID, wire.Down), func(_ string, payload []byte) {
		env, err := wire.Decode(payload)
		if err != nil {
			a.log.Warn("dropping malformed message from fleet", "err", err)
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
		CSR: csr, Model: a.cfg.Model, Firmware: a.runningFirmware(), Serial: a.cfg.Serial, Token: tok,
	}
	send := func(typ string, corr []byte, body any) ([]byte, error) {
		b, err := wire.Encode(typ, corr, a.now(), body)
		if err != nil {
			return nil, err
		}
		env, _ := wire.Decode(b)
		return env.ID, conn.Publish(ctx, a.topics.EnrollUp(clientID, "enroll"), b)
	}
	reqID, err := send(wire.TypeEnrollRequest, nil, req)
	if err != nil {
		return id, err
	}
	id.Attempts++
	a.log.Info("enrollment request sent", "device_id", devID, "model", a.cfg.Model)

	const answerTimeout = 30 * time.Second
	timer := time.NewTimer(answerTimeout)
	defer timer.Stop()
	var proofID []byte
	pending := false
	for {
		select {
		case <-ctx.Done():
			return id, ctx.Err()
		case <-conn.Done():
			return id, fmt.Errorf("agent: bootstrap connection lost: %v", conn.Err())
		case <-timer.C:
			if pending {
				if reqID, err = send(wire.TypeEnrollRequest, nil, req); err != nil {
					return id, err
				}
				proofID = nil
				timer.Reset(answerTimeout)
				continue
			}
			return id, errors.New("agent: no answer from the fleet")
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
				proof, err := a.answer(id, &ch)
				if err != nil {
					return id, err
				}
				if proofID, err = send(wire.TypeEnrollProof, env.ID, proof); err != nil {
					return id, err
				}
				timer.Reset(answerTimeout)
			case wire.TypeEnrollResult:
				if !hmac.Equal(env.Corr, reqID) && (proofID == nil || !hmac.Equal(env.Corr, proofID)) {
					continue
				}
				var res wire.EnrollResult
				if err := wire.DecodeBody(env, wire.TypeEnrollResult, &res); err != nil {
					return id, err
				}
				switch res.Status {
				case wire.StatusActive:
					return a.accept(id, &res, signer.Public())
				case wire.StatusPending:
					if !pending {
						a.log.Info("enrollment pending operator approval", "device_id", devID)
					}
					pending = true
					id.Status = state.StatusPending
					id.LastReason = res.Reason.String()
					if err := a.st.SaveIdentity(id); err != nil {
						return id, err
					}
					a.publishIdentity(id)
					timer.Reset(time.Duration(a.cfg.PendingRetry))
				default:
					id.LastReason = fmt.Sprintf("%s: %s", res.Reason, res.Message)
					a.publishIdentity(id)
					return id, &refusal{reason: res.Reason, msg: res.Message}
				}
			case wire.TypeEnrollRetry:
				if pending {
					timer.Reset(0)
				}
			}
		}
	}
}

// answer activates the credential and certifies and quotes over the nonce.
func (a *Agent) answer(id *state.Identity, ch *wire.EnrollChallenge) (*wire.EnrollProof, error) {
	secret, err := a.tpm.ActivateCredential(blob(id.AK), ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(ch.Session)
	mac.Write(ch.Nonce)
	attest, sig, err := a.tpm.Certify(blob(id.AK), blob(id.TK), ch.Nonce)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	q, err := a.tpm.Quote(blob(id.AK), ch.Nonce, ch.Selection)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	proof := &wire.EnrollProof{Session: ch.Session, Activation: mac.Sum(nil), CertifyInfo: attest, CertifySig: sig, Quote: *q}
	if ch.EventLog && a.cfg.EventLog != "-" {
		// The fleet's policy judges the boot events too; without the log
		// the fleet refuses, and says so.
		log, err := readBounded(a.cfg.EventLog, wire.MaxEventLog)
		switch {
		case err == nil:
			proof.EventLog = log
		case !errors.Is(err, os.ErrNotExist):
			a.log.Warn("event log unreadable; enrolling without it", "path", a.cfg.EventLog, "err", err)
		}
	}
	return proof, nil
}

// accept checks the issued certificate before storing it: it must be for
// the transport key and chain to the trust bundle it came with.
func (a *Agent) accept(id *state.Identity, res *wire.EnrollResult, tkPub crypto.PublicKey) (*state.Identity, error) {
	if err := verifyIssued(res.Certificate, res.Chain, res.TrustBundle, tkPub, a.now()); err != nil {
		return id, err
	}
	a.adoptReleaseTrust(res.FirmwareTrust, res.FirmwareRotations, "enrollment")
	id.Status = state.StatusEnrolled
	id.DeviceID = res.DeviceID
	id.Cert = res.Certificate
	id.Chain = res.Chain
	id.TrustBundle = res.TrustBundle
	id.EnrolledAt = a.now().UTC()
	id.LastReason = ""
	if err := a.st.SaveIdentity(id); err != nil {
		return id, err
	}
	a.log.Info("enrolled", "device_id", id.DeviceID)
	return id, nil
}

// verifyIssued checks a certificate the fleet issued: for key, a client
// certificate chaining to the trust bundle it came with.
func verifyIssued(der []byte, chain, trust [][]byte, key crypto.PublicKey, now time.Time) error {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("agent: issued certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(key) {
		return errors.New("agent: issued certificate is not for the transport key")
	}
	roots := x509.NewCertPool()
	for _, b := range trust {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return fmt.Errorf("agent: trust bundle: %w", err)
		}
		roots.AddCert(c)
	}
	inter := x509.NewCertPool()
	for _, b := range chain {
		if c, err := x509.ParseCertificate(b); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("agent: issued certificate does not verify: %w", err)
	}
	return nil
}

// connectLoop keeps the mTLS session up, reconnecting with backoff. A
// renewed certificate is used as soon as it arrives and kept only once a
// connection with it succeeds. When the broker refuses the certificate
// (revoked, e.g. after a quarantine) or it expired while the device was
// offline, the device enrolls again from its EK.
func (a *Agent) connectLoop(ctx context.Context, id *state.Identity) error {
	bo := a.backoff()
	refused := 0
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
			if !sleep(ctx, bo.next()) {
				return nil
			}
			continue
		}
		refused = 0
		bo.reset()
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
		if !sleep(ctx, bo.next()) {
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
func (a *Agent) connectNext(ctx context.Context, id *state.Identity) (*link.Conn, error) {
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

func (a *Agent) connect(ctx context.Context, deviceID string, c creds) (*link.Conn, error) {
	tlsCfg, err := a.clientTLS(c)
	if err != nil {
		return nil, err
	}
	conn, err := link.Dial(ctx, link.Config{Broker: a.cfg.Broker, ClientID: deviceID, TLS: tlsCfg, Logger: a.log,
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
		}
	default:
		a.log.Debug("message from fleet", "type", env.Type, "id", env.IDString())
	}
}

// backoff is jittered exponential backoff between RetryMin and RetryMax.
type backoff struct {
	min, max, cur time.Duration
	rand          io.Reader
}

func (a *Agent) backoff() *backoff {
	return &backoff{min: time.Duration(a.cfg.RetryMin), max: time.Duration(a.cfg.RetryMax), rand: a.rand}
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	// Full jitter in [cur/2, cur].
	half := int64(b.cur / 2)
	if half <= 0 {
		return b.cur
	}
	n, err := rand.Int(b.rand, big.NewInt(half))
	if err != nil {
		return b.cur
	}
	return time.Duration(half + n.Int64())
}

func (b *backoff) reset() { b.cur = 0 }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
