// Package fakefleet is an in-memory fleet for the device's unit tests, in
// the spirit of Tailscale's test control server: it speaks pkg/wire to the
// device's real state machines (device/enroll, device/renew, the session
// loop of device/agent) over fake broker sessions — no broker, no TLS, no
// network — and lets a test choose each answer (pending, refused, a
// RetryAfter, silence, a delay) and each connection's fate (accepted,
// refused by the fleet, unreachable). Everything runs on the caller's
// clock, so tests drive it with testing/synctest.
//
// What it checks, as the fleet would:
//
//   - every session verifies the broker's certificate with the roots and
//     server name of the device's tls.Config, as a TLS handshake does;
//   - an mTLS session's client certificate chains to the fleet CA as a
//     client certificate valid now, is not revoked, names the client ID,
//     and its private key signs a fresh digest that the certificate's key
//     verifies (proof of possession, as CertificateVerify proves);
//   - a session publishes and subscribes only under its own topics;
//   - an enrollment proof activates the credential the fleet made for the
//     EK and the AK's name (TPM2_MakeCredential, with go-tpm), for the
//     session and nonce of the challenge it answers; a CSR is signed by
//     the transport key the request names (enrollment) or by the key it
//     names (renewal), for the device's ID.
//
// It does not verify certify or quote structures or event logs: that is
// fleet/verifier's job, tested there.
package fakefleet

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// ServerName is the name on the broker's certificate.
const ServerName = "fleet.test"

// Broker is the broker address devices are configured with; Dial ignores
// it.
const Broker = ServerName + ":8883"

// DefaultLife is the lifetime of the certificates the fleet issues.
const DefaultLife = 24 * time.Hour

// EnrollAnswer is how the fleet answers an enrollment request. Its zero
// value challenges the device and, once the proof checks, enrolls it.
type EnrollAnswer struct {
	Pending bool        // answer pending (operator approval)
	Refuse  wire.Reason // nonzero: refuse with this reason
	Message string      // the refusal's public message
	// RetryAfter is the refusal's RetryAfter, in seconds.
	RetryAfter int
	Silent     bool // answer nothing
	// Uncorrelated sends the refusal without naming the request, as a
	// fleet that could not decode it does (an older one).
	Uncorrelated bool
	// Edit, if set, changes the active result before it is sent.
	Edit func(res *wire.EnrollResult)
}

// RenewAnswer is how the fleet answers the n-th renewal request (from 1):
// res after delay, or nothing when res is nil. Fleet.Issue gives the
// certificate a fleet issues.
type RenewAnswer func(n int, req *wire.RenewRequest) (delay time.Duration, res *wire.RenewResult)

// Dial is one connection attempt of a device.
type Dial struct {
	At        time.Time
	ClientID  string
	Bootstrap bool              // an enrollment session (no client certificate)
	Cert      *x509.Certificate // the client certificate presented, if any
	Err       error             // what Dial returned
}

// Message is a message a device published.
type Message struct {
	At       time.Time
	ClientID string
	Topic    string
	Env      *wire.Envelope
}

// Body decodes m's body as typ into v.
func (m Message) Body(typ string, v any) error { return wire.DecodeBody(m.Env, typ, v) }

// Fleet is the fake fleet. Its methods are safe for concurrent use.
type Fleet struct {
	t      testing.TB
	topics wire.Topics
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	server *x509.Certificate

	mu            sync.Mutex
	onEnroll      func(n int, req *wire.EnrollRequest) EnrollAnswer
	onRenew       RenewAnswer
	onConnect     func(d Dial) error
	challengesPer int
	life          time.Duration
	offline       bool
	closed        bool
	issued        map[string][]string // serials (hex) issued, by device ID
	revoked       map[string]bool     // revoked serials (hex)
	enrolls       int
	renews        int
	challenges    map[string]*enrollment // by the challenge's message ID
	conns         map[*Conn]struct{}
	sent          []Message
	dials         []Dial
	wg            sync.WaitGroup
}

// enrollment is a challenge the fleet sent, waiting for its proof.
type enrollment struct {
	clientID string
	req      *wire.EnrollRequest
	ekKey    crypto.PublicKey
	secret   []byte
	session  []byte
	nonce    []byte
	answer   EnrollAnswer
}

// New returns a fleet with a fresh CA under the topic prefix of topics.
// It stops (ending its sessions and waiting for its goroutines) when the
// test ends.
func New(t testing.TB, topics wire.Topics) *Fleet {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake fleet CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	f := &Fleet{t: t, topics: topics, ca: ca, caKey: key, life: DefaultLife, challengesPer: 1,
		issued: map[string][]string{}, revoked: map[string]bool{}, challenges: map[string]*enrollment{}, conns: map[*Conn]struct{}{}}
	serverKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.server = f.sign(&x509.Certificate{Subject: pkix.Name{CommonName: ServerName}, DNSNames: []string{ServerName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, serverKey.Public(), now.Add(-time.Hour), 10*365*24*time.Hour)
	t.Cleanup(f.Close)
	return f
}

// CA is the fleet's CA certificate: the root devices trust.
func (f *Fleet) CA() *x509.Certificate { return f.ca }

// CAPEM is the CA certificate in PEM, as a fleet_ca file holds it.
func (f *Fleet) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.ca.Raw})
}

// WriteCA writes the fleet CA's certificate (CAPEM) to a file in a
// temporary directory, the device's FleetCA setting, and returns its path.
func (f *Fleet) WriteCA(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fleet-ca.pem")
	if err := os.WriteFile(p, f.CAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// OnEnroll makes fn answer each enrollment request (n from 1).
func (f *Fleet) OnEnroll(fn func(n int, req *wire.EnrollRequest) EnrollAnswer) {
	f.mu.Lock()
	f.onEnroll = fn
	f.mu.Unlock()
}

// OnRenew makes fn answer each renewal request; by default each is
// answered at once with a certificate (Issue).
func (f *Fleet) OnRenew(fn RenewAnswer) {
	f.mu.Lock()
	f.onRenew = fn
	f.mu.Unlock()
}

// OnConnect has fn judge each connection attempt that passed the fleet's
// own checks; its error is what the device's Dial returns (for example
// &link.ConnackError{Code: link.ConnackServerUnavailable}).
func (f *Fleet) OnConnect(fn func(d Dial) error) {
	f.mu.Lock()
	f.onConnect = fn
	f.mu.Unlock()
}

// ChallengesPerRequest makes the fleet answer each request for a renewal
// challenge with n challenges (default 1), as a fleet retrying its own
// sends might.
func (f *Fleet) ChallengesPerRequest(n int) {
	f.mu.Lock()
	f.challengesPer = max(n, 1)
	f.mu.Unlock()
}

// SetLife sets the lifetime of the certificates issued from now on.
func (f *Fleet) SetLife(d time.Duration) {
	f.mu.Lock()
	f.life = d
	f.mu.Unlock()
}

// SetOnline makes the fleet reachable or not; going offline ends every
// session, and Dial then fails as a refused TCP connection does.
func (f *Fleet) SetOnline(online bool) {
	f.mu.Lock()
	f.offline = !online
	var drop []*Conn
	if !online {
		for c := range f.conns {
			drop = append(drop, c)
		}
	}
	f.mu.Unlock()
	for _, c := range drop {
		c.fail(errors.New("fakefleet: connection reset by peer"))
	}
}

// Revoke revokes every certificate issued for deviceID so far and ends
// its sessions, as a quarantine does: the broker refuses those
// certificates from now on (CONNACK 5). Certificates issued later (a
// re-enrollment) are not revoked.
func (f *Fleet) Revoke(deviceID string) {
	f.mu.Lock()
	var drop []*Conn
	for c := range f.conns {
		if !c.bootstrap && c.clientID == deviceID {
			drop = append(drop, c)
		}
	}
	for _, serial := range f.issued[deviceID] {
		f.revoked[serial] = true
	}
	f.mu.Unlock()
	for _, c := range drop {
		c.fail(errors.New("fakefleet: session ended by the fleet"))
	}
}

// Drop ends the sessions of clientID (a device ID or an enrollment client
// ID), as a lost connection does.
func (f *Fleet) Drop(clientID string) {
	f.mu.Lock()
	var drop []*Conn
	for c := range f.conns {
		if c.clientID == clientID {
			drop = append(drop, c)
		}
	}
	f.mu.Unlock()
	for _, c := range drop {
		c.fail(errors.New("fakefleet: connection lost"))
	}
}

// Close ends every session and waits for the fleet's goroutines.
func (f *Fleet) Close() {
	f.mu.Lock()
	f.closed = true
	var drop []*Conn
	for c := range f.conns {
		drop = append(drop, c)
	}
	f.mu.Unlock()
	for _, c := range drop {
		c.fail(errors.New("fakefleet: fleet stopped"))
	}
	f.wg.Wait()
}

// Dials returns the connection attempts made so far, in order.
func (f *Fleet) Dials() []Dial {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Dial(nil), f.dials...)
}

// Sent returns the messages devices published of type typ ("" for all),
// in order.
func (f *Fleet) Sent(typ string) []Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Message
	for _, m := range f.sent {
		if typ == "" || m.Env.Type == typ {
			out = append(out, m)
		}
	}
	return out
}

// Connected reports whether deviceID has an mTLS session up.
func (f *Fleet) Connected(deviceID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		if !c.bootstrap && c.clientID == deviceID {
			return true
		}
	}
	return false
}

// Send hands the device deviceID a message of type typ on each of its
// mTLS sessions; it reports whether one was up.
func (f *Fleet) Send(deviceID, typ string, body any) bool {
	f.mu.Lock()
	var to []*Conn
	for c := range f.conns {
		if !c.bootstrap && c.clientID == deviceID {
			to = append(to, c)
		}
	}
	f.mu.Unlock()
	for _, c := range to {
		c.send(0, f.topics.DeviceDown(deviceID, "ctl"), typ, nil, body)
	}
	return len(to) > 0
}

// Approve tells every pending enrollment session that the device was
// approved (enroll.retry): it asks again at once.
func (f *Fleet) Approve() {
	f.mu.Lock()
	var to []*Conn
	for c := range f.conns {
		if c.bootstrap {
			to = append(to, c)
		}
	}
	f.mu.Unlock()
	for _, c := range to {
		c.send(0, f.topics.EnrollDown(c.clientID, "enroll"), wire.TypeEnrollRetry, nil, &wire.Retry{})
	}
}

// Issue is the certificate a fleet issues for a renewal request: for the
// CSR's key, for the device the CSR names.
func (f *Fleet) Issue(req *wire.RenewRequest) *wire.RenewResult {
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		f.t.Errorf("fakefleet: renewal CSR: %v", err)
		return &wire.RenewResult{Status: wire.StatusRefused, Reason: wire.ReasonCSRInvalid, Message: "CSR invalid"}
	}
	return &wire.RenewResult{Status: wire.StatusActive, Certificate: f.IssueCert(csr.Subject.CommonName, csr.PublicKey, time.Now(), f.lifetime()),
		TrustBundle: [][]byte{f.ca.Raw}}
}

// IssueCert issues a client certificate for deviceID's key pub, valid from
// notBefore for life.
func (f *Fleet) IssueCert(deviceID string, pub crypto.PublicKey, notBefore time.Time, life time.Duration) []byte {
	c := f.sign(&x509.Certificate{Subject: pkix.Name{CommonName: deviceID}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, pub, notBefore, life)
	f.mu.Lock()
	f.issued[deviceID] = append(f.issued[deviceID], c.SerialNumber.Text(16))
	f.mu.Unlock()
	return c.Raw
}

func (f *Fleet) lifetime() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.life
}

func (f *Fleet) sign(tmpl *x509.Certificate, pub crypto.PublicKey, notBefore time.Time, life time.Duration) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, notBefore, notBefore.Add(life)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca, pub, f.caKey)
	if err != nil {
		f.t.Errorf("fakefleet: issuing: %v", err)
		return nil
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// Dial is the device's link.Dial: it opens a session with the fleet for
// cfg, after the checks a TLS handshake and the broker make.
func (f *Fleet) Dial(ctx context.Context, cfg link.Config) (*Conn, error) {
	d := Dial{At: time.Now(), ClientID: cfg.ClientID, Bootstrap: strings.HasPrefix(cfg.ClientID, "e-")}
	c, err := f.dial(ctx, cfg, &d)
	d.Err = err
	f.mu.Lock()
	f.dials = append(f.dials, d)
	f.mu.Unlock()
	return c, err
}

func (f *Fleet) dial(ctx context.Context, cfg link.Config, d *Dial) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	offline, closed, judge := f.offline, f.closed, f.onConnect
	f.mu.Unlock()
	if offline || closed {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	if cfg.TLS == nil {
		return nil, errors.New("fakefleet: no TLS configuration")
	}
	name := cfg.TLS.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(cfg.Broker)
	}
	now := time.Now()
	if cfg.TLS.Time != nil {
		now = cfg.TLS.Time()
	}
	if _, err := f.server.Verify(x509.VerifyOptions{Roots: cfg.TLS.RootCAs, DNSName: name, CurrentTime: now}); err != nil {
		return nil, fmt.Errorf("fakefleet: tls: %w", err)
	}
	if !d.Bootstrap {
		cert, err := f.clientCert(cfg)
		d.Cert = cert
		if err != nil {
			return nil, err
		}
	}
	if judge != nil {
		if err := judge(*d); err != nil {
			return nil, err
		}
	}
	c := &Conn{f: f, clientID: cfg.ClientID, bootstrap: d.Bootstrap, queue: make(chan delivery, 256), done: make(chan struct{})}
	f.mu.Lock()
	f.conns[c] = struct{}{}
	f.mu.Unlock()
	f.wg.Go(c.deliver)
	return c, nil
}

// clientCert checks an mTLS session's client certificate.
func (f *Fleet) clientCert(cfg link.Config) (*x509.Certificate, error) {
	if len(cfg.TLS.Certificates) == 0 || len(cfg.TLS.Certificates[0].Certificate) == 0 {
		return nil, &link.AlertError{Alert: 116} // certificate_required
	}
	tc := cfg.TLS.Certificates[0]
	leaf, err := x509.ParseCertificate(tc.Certificate[0])
	if err != nil {
		return nil, &link.AlertError{Alert: 42} // bad_certificate
	}
	signer, ok := tc.PrivateKey.(crypto.Signer)
	if !ok {
		return leaf, errors.New("fakefleet: tls: the client certificate's key cannot sign")
	}
	digest := make([]byte, 32)
	rand.Read(digest)
	sig, err := signer.Sign(rand.Reader, digest, crypto.SHA256)
	pub, isEC := leaf.PublicKey.(*ecdsa.PublicKey)
	if err != nil || !isEC || !ecdsa.VerifyASN1(pub, digest, sig) {
		return leaf, fmt.Errorf("fakefleet: tls: the client key does not match its certificate (%v)", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.ca)
	inter := x509.NewCertPool()
	for _, der := range tc.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: time.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return leaf, &link.AlertError{Alert: 45} // certificate_expired
		}
		return leaf, &link.AlertError{Alert: 48} // unknown_ca
	}
	f.mu.Lock()
	revoked := f.isRevoked(leaf)
	f.mu.Unlock()
	if revoked {
		return leaf, &link.ConnackError{Code: link.ConnackNotAuthorized}
	}
	if leaf.Subject.CommonName != cfg.ClientID {
		return leaf, &link.ConnackError{Code: link.ConnackIdentifierRejected}
	}
	return leaf, nil
}

func (f *Fleet) isRevoked(c *x509.Certificate) bool { return f.revoked[c.SerialNumber.Text(16)] }

// handle is the fleet's side of a message c published.
func (f *Fleet) handle(c *Conn, topic string, env *wire.Envelope) {
	f.mu.Lock()
	f.sent = append(f.sent, Message{At: time.Now(), ClientID: c.clientID, Topic: topic, Env: env})
	f.mu.Unlock()
	switch env.Type {
	case wire.TypeEnrollRequest:
		f.enrollRequest(c, env)
	case wire.TypeEnrollProof:
		f.enrollProof(c, env)
	case wire.TypeAttestRequest:
		var r wire.AttestRequest
		if err := wire.DecodeBody(env, wire.TypeAttestRequest, &r); err != nil {
			f.t.Errorf("fakefleet: attest request: %v", err)
			return
		}
		if r.Reason != wire.PurposeRenew {
			return // attestation is fleet/attest's; not simulated
		}
		f.mu.Lock()
		n := f.challengesPer
		f.mu.Unlock()
		for range n {
			c.send(0, f.topics.DeviceDown(c.clientID, "attest"), wire.TypeAttestChallenge, nil, &wire.AttestChallenge{
				Nonce: random(32), Purpose: wire.PurposeRenew, Selections: []wire.PCRSelection{{Hash: wire.AlgSHA256, PCRs: []int{0, 7}}}})
		}
	case wire.TypeRenewRequest:
		var r wire.RenewRequest
		if err := wire.DecodeBody(env, wire.TypeRenewRequest, &r); err != nil {
			f.t.Errorf("fakefleet: renewal request: %v", err)
			return
		}
		f.mu.Lock()
		f.renews++
		n, answer := f.renews, f.onRenew
		f.mu.Unlock()
		delay, res := time.Duration(0), (*wire.RenewResult)(nil)
		if answer != nil {
			delay, res = answer(n, &r)
		} else {
			res = f.Issue(&r)
		}
		if res != nil {
			c.send(delay, f.topics.DeviceDown(c.clientID, "renew"), wire.TypeRenewResult, nil, res)
		}
	}
}

func (f *Fleet) enrollRequest(c *Conn, env *wire.Envelope) {
	var req wire.EnrollRequest
	if err := wire.DecodeBody(env, wire.TypeEnrollRequest, &req); err != nil {
		f.t.Errorf("fakefleet: enrollment request: %v", err)
		return
	}
	f.mu.Lock()
	f.enrolls++
	n, decide := f.enrolls, f.onEnroll
	f.mu.Unlock()
	var ans EnrollAnswer
	if decide != nil {
		ans = decide(n, &req)
	}
	down := f.topics.EnrollDown(c.clientID, "enroll")
	switch {
	case ans.Silent:
		return
	case ans.Refuse != 0:
		corr := env.ID
		if ans.Uncorrelated {
			corr = nil
		}
		c.send(0, down, wire.TypeEnrollResult, corr, &wire.EnrollResult{Status: wire.StatusRefused, Reason: ans.Refuse, Message: ans.Message, RetryAfter: ans.RetryAfter})
		return
	case ans.Pending:
		c.send(0, down, wire.TypeEnrollResult, env.ID, &wire.EnrollResult{Status: wire.StatusPending, Reason: wire.ReasonPending, RetryAfter: 30})
		return
	}
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.EKPublic)
	var ekKey crypto.PublicKey
	if err == nil {
		ekKey, err = tpm2.Pub(*ek)
	}
	var ak *tpm2.TPMTPublic
	if err == nil {
		ak, err = tpm2.Unmarshal[tpm2.TPMTPublic](req.AKPublic)
	}
	var akName *tpm2.TPM2BName
	if err == nil {
		akName, err = tpm2.ObjectName(ak)
	}
	var kem tpm2.LabeledEncapsulationKey
	if err == nil {
		kem, err = tpm2.ImportEncapsulationKey(ek)
	}
	e := &enrollment{clientID: c.clientID, req: &req, ekKey: ekKey, secret: random(32), session: random(16), nonce: random(32), answer: ans}
	var credBlob, encSecret []byte
	if err == nil {
		credBlob, encSecret, err = tpm2.CreateCredential(rand.Reader, kem, akName.Buffer, e.secret)
	}
	if err != nil {
		f.t.Errorf("fakefleet: enrollment request: EK or AK: %v", err)
		c.send(0, down, wire.TypeEnrollResult, env.ID, &wire.EnrollResult{Status: wire.StatusRefused, Reason: wire.ReasonBadRequest, Message: "EK or AK unusable"})
		return
	}
	ch := &wire.EnrollChallenge{Session: e.session, CredentialBlob: credBlob, EncryptedSecret: encSecret, Nonce: e.nonce,
		Selection: wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{0, 7}}, Expires: time.Now().Add(time.Minute).UnixMilli()}
	id := c.send(0, down, wire.TypeEnrollChallenge, env.ID, ch)
	f.mu.Lock()
	f.challenges[string(id)] = e
	f.mu.Unlock()
}

func (f *Fleet) enrollProof(c *Conn, env *wire.Envelope) {
	var proof wire.EnrollProof
	if err := wire.DecodeBody(env, wire.TypeEnrollProof, &proof); err != nil {
		f.t.Errorf("fakefleet: enrollment proof: %v", err)
		return
	}
	f.mu.Lock()
	e := f.challenges[string(env.Corr)]
	delete(f.challenges, string(env.Corr))
	f.mu.Unlock()
	down := f.topics.EnrollDown(c.clientID, "enroll")
	refuse := func(r wire.Reason, msg string) {
		c.send(0, down, wire.TypeEnrollResult, env.ID, &wire.EnrollResult{Status: wire.StatusRefused, Reason: r, Message: msg})
	}
	if e == nil || e.clientID != c.clientID || !bytes.Equal(proof.Session, e.session) {
		refuse(wire.ReasonChallengeExpired, "no such challenge")
		return
	}
	mac := hmac.New(sha256.New, e.secret)
	mac.Write(e.session)
	mac.Write(e.nonce)
	if !hmac.Equal(mac.Sum(nil), proof.Activation) {
		refuse(wire.ReasonActivationFailed, "credential activation proof is wrong")
		return
	}
	deviceID, err := identity.DeviceID(e.ekKey)
	if err != nil {
		refuse(wire.ReasonBadRequest, "EK unusable")
		return
	}
	csr, err := x509.ParseCertificateRequest(e.req.CSR)
	if err == nil {
		err = csr.CheckSignature()
	}
	var tk crypto.PublicKey
	if err == nil {
		var pub *tpm2.TPMTPublic
		if pub, err = tpm2.Unmarshal[tpm2.TPMTPublic](e.req.TKPublic); err == nil {
			tk, err = tpm2.Pub(*pub)
		}
	}
	if err == nil {
		if k, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || !k.Equal(tk) || csr.Subject.CommonName != deviceID {
			err = errors.New("the CSR is not for the transport key and the device")
		}
	}
	if err != nil {
		f.t.Errorf("fakefleet: enrollment CSR: %v", err)
		refuse(wire.ReasonCSRInvalid, "CSR invalid")
		return
	}
	res := &wire.EnrollResult{Status: wire.StatusActive, DeviceID: deviceID, Session: e.session,
		Certificate: f.IssueCert(deviceID, tk, time.Now(), f.lifetime()), TrustBundle: [][]byte{f.ca.Raw}}
	if e.answer.Edit != nil {
		e.answer.Edit(res)
	}
	c.send(0, down, wire.TypeEnrollResult, env.ID, res)
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// Conn is a device's session with the fake fleet, as device/link.Conn is
// with a broker. Handlers run on the session's own goroutine, one message
// at a time, in the order the fleet sent them.
type Conn struct {
	f         *Fleet
	clientID  string
	bootstrap bool
	queue     chan delivery
	done      chan struct{}

	mu   sync.Mutex
	subs []subscription
	err  error
}

type subscription struct {
	filter  string
	handler func(topic string, payload []byte)
}

type delivery struct {
	topic   string
	payload []byte
}

var _ interface {
	Publish(ctx context.Context, topic string, payload []byte) error
	Subscribe(ctx context.Context, filter string, handler func(topic string, payload []byte)) error
	Done() <-chan struct{}
	Err() error
	Close()
} = (*Conn)(nil)

func (c *Conn) segment() string {
	if c.bootstrap {
		return wire.SegEnroll
	}
	return wire.SegDevice
}

// Publish hands the fleet a message. A topic outside the session's own
// up topics ends the session, as a broker enforcing its ACL does.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.isDone() {
		return c.Err()
	}
	tp, err := c.f.topics.Parse(topic)
	if err != nil || tp.Segment != c.segment() || tp.ID != c.clientID || tp.Dir != wire.Up {
		c.f.t.Errorf("fakefleet: %s published to %s", c.clientID, topic)
		c.fail(errors.New("fakefleet: publish refused by the broker's ACL"))
		return c.Err()
	}
	env, err := wire.Decode(payload)
	if err != nil {
		c.f.t.Errorf("fakefleet: %s sent a malformed message: %v", c.clientID, err)
		return nil
	}
	c.f.handle(c, topic, env)
	return nil
}

// Subscribe registers handler for filter, which must be the session's own
// down filter (else link.ErrRefused, as the broker refuses it).
func (c *Conn) Subscribe(ctx context.Context, filter string, handler func(topic string, payload []byte)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.isDone() {
		return c.Err()
	}
	if filter != c.f.topics.Filter(c.segment(), c.clientID, wire.Down) {
		return fmt.Errorf("fakefleet: subscription to %s: %w", filter, link.ErrRefused)
	}
	c.mu.Lock()
	c.subs = append(c.subs, subscription{filter: filter, handler: handler})
	c.mu.Unlock()
	return nil
}

// Done is closed when the session ends.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the session ended; nil while it is up.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the session.
func (c *Conn) Close() { c.fail(errors.New("fakefleet: connection closed")) }

func (c *Conn) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.done)
	c.mu.Unlock()
	c.f.mu.Lock()
	delete(c.f.conns, c)
	c.f.mu.Unlock()
}

// send encodes a message from the fleet and delivers it after delay; it
// returns the message's ID.
func (c *Conn) send(delay time.Duration, topic, typ string, corr []byte, body any) []byte {
	b, err := wire.Encode(typ, corr, time.Now(), body)
	if err != nil {
		c.f.t.Errorf("fakefleet: encoding %s: %v", typ, err)
		return nil
	}
	env, _ := wire.Decode(b)
	d := delivery{topic: topic, payload: b}
	if delay <= 0 {
		select {
		case c.queue <- d:
		case <-c.done:
		}
		return env.ID
	}
	c.f.wg.Go(func() {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.done:
			return
		}
		select {
		case c.queue <- d:
		case <-c.done:
		}
	})
	return env.ID
}

// deliver runs the handlers of the session's subscriptions for each
// message, until the session ends.
func (c *Conn) deliver() {
	for {
		select {
		case <-c.done:
			return
		case d := <-c.queue:
			c.mu.Lock()
			subs := append([]subscription(nil), c.subs...)
			c.mu.Unlock()
			for _, s := range subs {
				if strings.HasPrefix(d.topic, strings.TrimSuffix(s.filter, "#")) {
					s.handler(d.topic, d.payload)
				}
			}
		}
	}
}
