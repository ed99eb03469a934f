package enroll

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Sessions holds what enrollment keeps between a device's messages: the
// sessions open between a request and its proof (the credential
// activation challenge), the sessions already used (a replayed proof is
// told so), and the bootstrap client each pending device waits on (an
// approval tells it to ask again). Replicas of the fleet that share one
// Sessions let a proof reach another replica than its request did.
// Config.Sessions nil keeps them in the process's memory (one process);
// OpenSessionsPostgres keeps them in a PostgreSQL database the replicas
// share.
type Sessions interface {
	// Open stores sess, valid for ttl from now, as its client's; proof is
	// the activation proof that will answer it (sess keeps its digest), to
	// seal with what a shared store must not show. The client's
	// client's earlier session for the same EK ends, and so does its
	// oldest when it holds maxClientSessions; other clients' sessions
	// are never touched. Beyond maxSessions open sessions it is refused
	// with wire.ReasonRateLimited.
	Open(ctx context.Context, sess *Session, proof []byte, ttl time.Duration) error
	// Take ends the session id that clientID opened and returns it, for
	// proof to answer; the session counts as used from then on, whatever
	// the proof. A used session is refused with wire.ReasonReplay; an
	// unknown one, another client's (which stays open) or an expired
	// one with wire.ReasonChallengeExpired. A returned session whose
	// activation digest proof does not match may carry only its client
	// and the device record it found (Session.existing's ID).
	Take(ctx context.Context, id []byte, clientID string, proof []byte) (*Session, error)
	// Waiting records that pending deviceID waits on bootstrap clientID.
	Waiting(ctx context.Context, deviceID, clientID string) error
	// Client returns the bootstrap client pending deviceID waits on, ""
	// if none.
	Client(ctx context.Context, deviceID string) (string, error)
	// Enrolled forgets the client deviceID waited on.
	Enrolled(ctx context.Context, deviceID string) error
	// Expire forgets expired sessions, and used ones older than keepUsed.
	Expire(ctx context.Context, keepUsed time.Duration) error
}

// Session is an enrollment in progress: what the fleet decided on the
// request, that the proof completes. Its fields are the package's.
type Session struct {
	clientID string
	id       []byte
	nonce    []byte
	// digest is activationDigest of the activation proof that answers the
	// session; the secret itself is not kept.
	digest   []byte
	expires  time.Time
	req      *wire.EnrollRequest
	ek       *verifier.EK
	ak       *verifier.AK
	tk       *verifier.TransportKey
	path     string            // "" = pending
	existing *inventory.Device // the record when the request arrived; decisions re-read it
	clone    string            // why this looks like a clone, decided after activation
	// model and group are the fleet's for this device: the inventory's
	// for a known device, else the token's grant.
	model, group string
	// protocol is the version of the proof that answers the session, set
	// when it is taken: the version the device spoke last.
	protocol int
}

// activationDigest is what a session keeps of the activation proof that
// answers it: a digest, from which the proof cannot be made.
func activationDigest(proof []byte) []byte {
	h := sha256.New()
	h.Write([]byte("sigil enroll activation digest\x00"))
	h.Write(proof)
	return h.Sum(nil)
}

// memSessions is the Sessions of one process, in its memory.
type memSessions struct {
	now func() time.Time

	mu       sync.Mutex
	sessions map[string]*Session  // by session hex
	byClient map[string][]string  // bootstrap client ID -> its open sessions, oldest first
	used     map[string]time.Time // consumed sessions, for replay answers
	clients  map[string]string    // device ID -> bootstrap client ID of pending devices
}

var _ Sessions = (*memSessions)(nil)

func newMemSessions(now func() time.Time) *memSessions {
	return &memSessions{now: now, sessions: map[string]*Session{}, byClient: map[string][]string{}, used: map[string]time.Time{}, clients: map[string]string{}}
}

// dropLocked forgets an open session.
func (m *memSessions) dropLocked(key string, sess *Session) {
	delete(m.sessions, key)
	keys := slices.DeleteFunc(m.byClient[sess.clientID], func(k string) bool { return k == key })
	if len(keys) == 0 {
		delete(m.byClient, sess.clientID)
	} else {
		m.byClient[sess.clientID] = keys
	}
}

func (m *memSessions) Open(_ context.Context, sess *Session, _ []byte, _ time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range slices.Clone(m.byClient[sess.clientID]) {
		if old := m.sessions[k]; old != nil && old.ek.Fingerprint == sess.ek.Fingerprint {
			m.dropLocked(k, old)
		}
	}
	if keys := m.byClient[sess.clientID]; len(keys) >= maxClientSessions {
		m.dropLocked(keys[0], m.sessions[keys[0]])
	}
	if len(m.sessions) >= maxSessions {
		return errTooMany
	}
	key := hex.EncodeToString(sess.id)
	if old := m.sessions[key]; old != nil {
		m.dropLocked(key, old) // a 128-bit collision: only with a broken or replayed Rand
	}
	m.sessions[key] = sess
	m.byClient[sess.clientID] = append(m.byClient[sess.clientID], key)
	return nil
}

var (
	errTooMany        = wire.Refuse(wire.ReasonRateLimited, "too many enrollments in progress", nil)
	errSessionUsed    = wire.Refuse(wire.ReasonReplay, "enrollment session already used", nil)
	errSessionUnknown = wire.Refuse(wire.ReasonChallengeExpired, "unknown enrollment session", nil)
	errSessionExpired = wire.Refuse(wire.ReasonChallengeExpired, "enrollment session expired", nil)
)

func (m *memSessions) Take(_ context.Context, id []byte, clientID string, _ []byte) (*Session, error) {
	key := hex.EncodeToString(id)
	now := m.now()
	m.mu.Lock()
	sess := m.sessions[key]
	if sess != nil && sess.clientID == clientID {
		m.dropLocked(key, sess)
		m.used[key] = now
	} else {
		sess = nil // another client's session is not this client's to answer, nor to end
	}
	_, used := m.used[key]
	m.mu.Unlock()
	switch {
	case sess == nil && used:
		return nil, errSessionUsed
	case sess == nil:
		return nil, errSessionUnknown
	case now.After(sess.expires):
		return nil, errSessionExpired
	}
	return sess, nil
}

func (m *memSessions) Waiting(_ context.Context, deviceID, clientID string) error {
	m.mu.Lock()
	m.clients[deviceID] = clientID
	m.mu.Unlock()
	return nil
}

func (m *memSessions) Client(_ context.Context, deviceID string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.clients[deviceID], nil
}

func (m *memSessions) Enrolled(_ context.Context, deviceID string) error {
	m.mu.Lock()
	delete(m.clients, deviceID)
	m.mu.Unlock()
	return nil
}

func (m *memSessions) Expire(_ context.Context, keepUsed time.Duration) error {
	now := m.now()
	cutoff := now.Add(-keepUsed)
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range m.sessions {
		if now.After(v.expires) {
			m.dropLocked(k, v)
		}
	}
	for k, t := range m.used {
		if t.Before(cutoff) {
			delete(m.used, k)
		}
	}
	return nil
}
