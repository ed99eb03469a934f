package workload

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Errors of the manager.
var (
	// ErrOffline: no session with the fleet now.
	ErrOffline = errors.New("workload: no session with the fleet")
	// ErrRefused: the fleet refused (Refusal holds its reason).
	ErrRefused = errors.New("workload: the fleet refused")
)

// Refusal is the fleet's refusal of a workload request.
type Refusal struct {
	Reason  wire.Reason
	Message string
}

func (r *Refusal) Error() string {
	return "workload: the fleet refused: " + r.Reason.String() + ": " + r.Message
}

// Is makes errors.Is(err, ErrRefused) hold.
func (r *Refusal) Is(target error) bool { return target == ErrRefused }

// Defaults of the manager.
const (
	askTimeout    = 15 * time.Second
	entriesMaxAge = 5 * time.Second // entries older than this are asked again on a call
)

// Manager keeps the device's workload registrations and SVIDs, asking the
// fleet over the agent's session. It implements agent.Extension. Safe for
// concurrent use.
type Manager struct {
	log *slog.Logger
	now func() time.Time

	mu        sync.Mutex
	publish   func(ctx context.Context, kind string, payload []byte) error // nil: offline
	pending   map[string]chan *wire.WorkloadAnswer                         // by request ID (hex)
	entries   []wire.WorkloadEntry
	entriesAt time.Time
	bundle    [][]byte // X.509 roots (DER)
	jwks      []byte
	svids     map[string]*x509SVID // by entry name
	changed   chan struct{}        // closed and replaced when anything above changes
	refresh   sync.Mutex           // one entries request at a time
}

// x509SVID is an issued X.509-SVID with its in-memory key.
type x509SVID struct {
	id      string
	chain   [][]byte
	key     []byte // PKCS#8
	expires time.Time
	renew   time.Time // half its lifetime
}

// NewManager returns a manager; logger nil discards, now nil is time.Now.
func NewManager(logger *slog.Logger, now func() time.Time) *Manager {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Manager{log: logger, now: now, pending: map[string]chan *wire.WorkloadAnswer{}, svids: map[string]*x509SVID{}, changed: make(chan struct{})}
}

// Session implements agent.Extension: the registrations are asked for at
// once on each new session.
func (m *Manager) Session(ctx context.Context, publish func(ctx context.Context, kind string, payload []byte) error) (end func()) {
	m.mu.Lock()
	m.publish = publish
	m.entriesAt = time.Time{}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		m.publish = nil
		m.mu.Unlock()
	}
}

// Attested implements agent.Extension: registrations are asked for again
// on the next call.
func (m *Manager) Attested() {
	m.mu.Lock()
	m.entriesAt = time.Time{}
	m.mu.Unlock()
}

// Down implements agent.Extension: it takes the fleet's answers.
func (m *Manager) Down(env *wire.Envelope) {
	if env.Type != wire.TypeWorkloadAnswer {
		return
	}
	var a wire.WorkloadAnswer
	if err := wire.DecodeBody(env, wire.TypeWorkloadAnswer, &a); err != nil {
		m.log.Warn("workload: dropping a malformed answer", "err", err)
		return
	}
	m.mu.Lock()
	ch := m.pending[hex.EncodeToString(env.Corr)]
	delete(m.pending, hex.EncodeToString(env.Corr))
	m.mu.Unlock()
	if ch != nil {
		ch <- &a
	}
}

// ask sends a request to the fleet and waits for its answer.
func (m *Manager) ask(ctx context.Context, req *wire.WorkloadRequest) (*wire.WorkloadAnswer, error) {
	b, err := wire.Encode(wire.TypeWorkloadRequest, nil, m.now(), req)
	if err != nil {
		return nil, err
	}
	env, err := wire.Decode(b)
	if err != nil {
		return nil, err
	}
	id := hex.EncodeToString(env.ID)
	ch := make(chan *wire.WorkloadAnswer, 1)
	m.mu.Lock()
	publish := m.publish
	if publish != nil {
		m.pending[id] = ch
	}
	m.mu.Unlock()
	if publish == nil {
		return nil, ErrOffline
	}
	defer func() {
		m.mu.Lock()
		delete(m.pending, id)
		m.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	if err := publish(ctx, wire.KindWorkload, b); err != nil {
		return nil, fmt.Errorf("workload: sending the request: %w", err)
	}
	select {
	case a := <-ch:
		if a.Status != wire.StatusActive {
			return nil, &Refusal{Reason: a.Reason, Message: a.Message}
		}
		return a, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("workload: no answer from the fleet: %w", ctx.Err())
	}
}

// wake tells the streams that something changed. m.mu is held.
func (m *Manager) wake() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// Entries returns the registrations, asking the fleet when they are older
// than a few seconds (or a new session or attestation made them stale);
// when the fleet cannot be asked, the last ones known.
func (m *Manager) Entries(ctx context.Context) ([]wire.WorkloadEntry, error) {
	m.refresh.Lock()
	defer m.refresh.Unlock()
	m.mu.Lock()
	fresh := !m.entriesAt.IsZero() && m.now().Sub(m.entriesAt) < entriesMaxAge
	entries := m.entries
	m.mu.Unlock()
	if fresh {
		return entries, nil
	}
	a, err := m.ask(ctx, &wire.WorkloadRequest{Op: wire.WorkloadEntries})
	if err != nil {
		var r *Refusal
		if errors.As(err, &r) {
			return nil, err // quarantined, not attested: nothing
		}
		if entries != nil {
			m.log.Warn("workload: asking the fleet for the registrations failed; using the last ones", "err", err)
			return entries, nil
		}
		return nil, err
	}
	m.mu.Lock()
	m.entries, m.entriesAt = a.Entries, m.now()
	if len(a.JWKS) > 0 {
		m.jwks = a.JWKS
	}
	if len(a.Bundle) > 0 {
		m.bundle = a.Bundle
	}
	names := map[string]bool{}
	for _, e := range a.Entries {
		names[e.Name] = true
	}
	for n := range m.svids {
		if !names[n] {
			delete(m.svids, n) // unregistered: no more SVIDs for it
		}
	}
	m.wake()
	m.mu.Unlock()
	return a.Entries, nil
}

// Match returns the entries the caller matches.
func (m *Manager) Match(ctx context.Context, c Caller) ([]wire.WorkloadEntry, error) {
	all, err := m.Entries(ctx)
	if err != nil {
		return nil, err
	}
	var out []wire.WorkloadEntry
	for i := range all {
		if c.Matches(&all[i]) {
			out = append(out, all[i])
		}
	}
	return out, nil
}

// X509SVID returns the entry's X.509-SVID: the one held while it is within
// the first half of its lifetime, else a new one for a new key. When the
// fleet does not issue one, the one held is returned while it is valid
// (never a new one: a quarantined device's workloads get nothing new).
func (m *Manager) X509SVID(ctx context.Context, e wire.WorkloadEntry) (*x509SVID, error) {
	m.mu.Lock()
	cur := m.svids[e.Name]
	m.mu.Unlock()
	now := m.now()
	if cur != nil && now.Before(cur.renew) {
		return cur, nil
	}
	next, err := m.issueX509(ctx, e)
	if err != nil {
		if cur != nil && now.Before(cur.expires) {
			m.log.Warn("workload: renewing an X.509-SVID failed; serving the current one", "workload", e.Name, "err", err)
			return cur, nil
		}
		return nil, err
	}
	m.mu.Lock()
	m.svids[e.Name] = next
	m.wake()
	m.mu.Unlock()
	return next, nil
}

func (m *Manager) issueX509(ctx context.Context, e wire.WorkloadEntry) (*x509SVID, error) {
	id, err := url.Parse(e.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("workload: SPIFFE ID: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("workload: key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
	if err != nil {
		return nil, fmt.Errorf("workload: CSR: %w", err)
	}
	a, err := m.ask(ctx, &wire.WorkloadRequest{Op: wire.WorkloadX509, Name: e.Name, CSR: csr})
	if err != nil {
		return nil, err
	}
	if len(a.Chain) == 0 || a.Validity <= 0 {
		return nil, errors.New("workload: the fleet's answer holds no X.509-SVID")
	}
	leaf, err := x509.ParseCertificate(a.Chain[0])
	if err != nil {
		return nil, fmt.Errorf("workload: X.509-SVID: %w", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != e.SPIFFEID || !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		return nil, errors.New("workload: the fleet's X.509-SVID is not for this workload's key and SPIFFE ID")
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if len(a.Bundle) > 0 {
		m.mu.Lock()
		m.bundle = a.Bundle
		m.mu.Unlock()
	}
	validity := time.Duration(a.Validity) * time.Second
	now := m.now()
	return &x509SVID{id: e.SPIFFEID, chain: a.Chain, key: der, expires: now.Add(validity), renew: now.Add(validity / 2)}, nil
}

// JWTSVID asks the fleet for a JWT-SVID of the entry for audience.
func (m *Manager) JWTSVID(ctx context.Context, e wire.WorkloadEntry, audience []string) (string, error) {
	a, err := m.ask(ctx, &wire.WorkloadRequest{Op: wire.WorkloadJWT, Name: e.Name, Audience: audience})
	if err != nil {
		return "", err
	}
	if a.JWT == "" {
		return "", errors.New("workload: the fleet's answer holds no JWT-SVID")
	}
	if len(a.JWKS) > 0 {
		m.mu.Lock()
		m.jwks = a.JWKS
		m.mu.Unlock()
	}
	return a.JWT, nil
}

// Bundles returns the X.509 roots, the JWKS and the channel closed at the
// next change.
func (m *Manager) Bundles() (roots [][]byte, jwks []byte, changed <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bundle, m.jwks, m.changed
}
