package attest

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// State is the attestation protocol's state that spans several messages
// of a device: the nonces issued and not yet answered, the challenges a
// device left unanswered and its last evidence (the stale sweep), and its
// current broker session with the verdict that session holds (Current).
// Replicas of the fleet that share one State see the same: a challenge
// one replica issued is answered on another, once. Config.State nil keeps
// it in the process's memory (one process); OpenStatePostgres keeps it in
// a PostgreSQL database the replicas share.
type State interface {
	// Issue records nonce n, valid for ttl from now, and counts a
	// challenge its device has not answered yet. A device holds at most
	// maxOpenNonces nonces: the oldest goes for a new one.
	Issue(ctx context.Context, n *Nonce, ttl time.Duration) error
	// Take consumes the nonce value issued to deviceID and returns it.
	// A nonce unknown, already used or expired is refused with a
	// *wire.Error of reason wire.ReasonNonceInvalid (expired: consumed
	// too); one issued to another device is refused and left to it.
	// Another error is the state's own failure.
	Take(ctx context.Context, deviceID string, value []byte) (Nonce, error)
	// Answered records that deviceID's evidence arrived at at: its
	// unanswered challenges count from zero again, and its current
	// session, if any, holds this verdict — a pass (on a nonce the fleet
	// issued at issued, judged at judged) or none. A pass on a nonce
	// issued before the recorded pass's leaves that one (verdicts judged
	// at once on several replicas are recorded in any order); a failure
	// always clears it.
	Answered(ctx context.Context, deviceID string, at time.Time, pass bool, issued, judged time.Time) error
	// SessionStarted starts deviceID's session, admitted at at; the
	// passes judged before count no more.
	SessionStarted(ctx context.Context, deviceID string, at time.Time) error
	// SessionEnded ends deviceID's session.
	SessionEnded(ctx context.Context, deviceID string) error
	// Current returns nil when deviceID's session holds a pass on a nonce
	// issued during that session and judged at most maxAge ago; an error
	// wrapping ErrNoCurrentVerdict otherwise.
	Current(ctx context.Context, deviceID string, maxAge time.Duration) error
	// Liveness returns, for each of ids in order, how long ago its last
	// evidence arrived (since the state began if none did) and how many
	// challenges it left unanswered since.
	Liveness(ctx context.Context, ids []string) ([]Liveness, error)
	// Expire forgets the nonces that expired.
	Expire(ctx context.Context) error
}

// Nonce is a challenge the fleet issued to a device.
type Nonce struct {
	Value    []byte
	DeviceID string
	// Purpose is "" (attestation) or wire.PurposeRenew.
	Purpose string
	// Issued is when the fleet issued it (the State's clock: a shared
	// State's is the database's).
	Issued time.Time
	// Selections are the PCR banks and indexes the device was asked to
	// quote.
	Selections []wire.PCRSelection
}

// Liveness is what the stale sweep knows of a device.
type Liveness struct {
	// Silent is the time since the device's last evidence.
	Silent time.Duration
	// Unanswered counts the challenges sent since that evidence.
	Unanswered int
}

// maxOpenNonces bounds the challenges a device may have outstanding; the
// oldest is dropped beyond it.
const maxOpenNonces = 4

var (
	errNonceUnknown = wire.Refuse(wire.ReasonNonceInvalid, "nonce unknown, already used or issued to another device", nil)
	errNonceExpired = wire.Refuse(wire.ReasonNonceInvalid, "nonce expired", nil)
)

// current decides Current from what a State holds of a device's session:
// whether it has one, when it started, and its newest verdict's pass
// (passAt zero if none).
func current(has bool, start, passIssued, passAt, now time.Time, maxAge time.Duration) error {
	switch {
	case !has:
		return fmt.Errorf("%w: the device has no session", ErrNoCurrentVerdict)
	case passAt.IsZero() || passIssued.Before(start):
		return fmt.Errorf("%w: no passing attestation in the device's current session", ErrNoCurrentVerdict)
	case now.Sub(passAt) > maxAge:
		return fmt.Errorf("%w: the last passing attestation is %s old (at most %s)", ErrNoCurrentVerdict, now.Sub(passAt).Round(time.Second), maxAge)
	}
	return nil
}

// memState is the State of one process, in its memory.
type memState struct {
	now func() time.Time

	mu         sync.Mutex
	nonces     map[string]memNonce  // hex nonce -> issue
	open       map[string][]string  // device -> its nonces, oldest first (some may be gone)
	unanswered map[string]int       // device -> challenges sent since its last evidence
	lastSeen   map[string]time.Time // device -> last evidence
	sessions   map[string]*session  // device -> its current broker session
	started    time.Time
}

type memNonce struct {
	Nonce
	expires time.Time
}

// session is what the service knows of a device's current broker session.
type session struct {
	start time.Time // admitted at the broker
	// passIssued is when the fleet issued the nonce of the device's newest
	// verdict, if that verdict passed (zero otherwise); passAt is when it
	// was judged.
	passIssued, passAt time.Time
}

func newMemState(now func() time.Time) *memState {
	return &memState{now: now, nonces: map[string]memNonce{}, open: map[string][]string{}, unanswered: map[string]int{},
		lastSeen: map[string]time.Time{}, sessions: map[string]*session{}, started: now()}
}

var _ State = (*memState)(nil)

func (m *memState) Issue(_ context.Context, n *Nonce, ttl time.Duration) error {
	k := hex.EncodeToString(n.Value)
	m.mu.Lock()
	m.dropOldestNonce(n.DeviceID)
	m.open[n.DeviceID] = append(m.open[n.DeviceID], k)
	m.nonces[k] = memNonce{Nonce: *n, expires: n.Issued.Add(ttl)}
	m.unanswered[n.DeviceID]++
	m.mu.Unlock()
	return nil
}

// dropOldestNonce keeps a device's open nonces under maxOpenNonces; m.mu
// is held.
func (m *memState) dropOldestNonce(deviceID string) {
	open := m.pruneNonces(deviceID)
	for len(open) >= maxOpenNonces {
		delete(m.nonces, open[0])
		open = open[1:]
	}
	m.open[deviceID] = open
}

// pruneNonces forgets a device's used or expired nonces; m.mu is held.
func (m *memState) pruneNonces(deviceID string) []string {
	open := m.open[deviceID][:0]
	for _, k := range m.open[deviceID] {
		if _, ok := m.nonces[k]; ok {
			open = append(open, k)
		}
	}
	if len(open) == 0 {
		delete(m.open, deviceID)
		return nil
	}
	m.open[deviceID] = open
	return open
}

func (m *memState) Take(_ context.Context, deviceID string, value []byte) (Nonce, error) {
	k := hex.EncodeToString(value)
	m.mu.Lock()
	defer m.mu.Unlock()
	iss, ok := m.nonces[k]
	if !ok || iss.DeviceID != deviceID {
		return Nonce{}, errNonceUnknown
	}
	delete(m.nonces, k)
	if m.now().After(iss.expires) {
		return Nonce{}, errNonceExpired
	}
	return iss.Nonce, nil
}

func (m *memState) Answered(_ context.Context, deviceID string, at time.Time, pass bool, issued, judged time.Time) error {
	m.mu.Lock()
	m.unanswered[deviceID] = 0
	m.lastSeen[deviceID] = at
	if ss := m.sessions[deviceID]; ss != nil {
		switch {
		case !pass:
			ss.passIssued, ss.passAt = time.Time{}, time.Time{}
		case ss.passAt.IsZero() || !issued.Before(ss.passIssued):
			ss.passIssued, ss.passAt = issued, judged
		}
		// A pass on a nonce older than the recorded pass's (judged
		// later on another worker or replica) leaves it be.
	}
	m.mu.Unlock()
	return nil
}

func (m *memState) SessionStarted(_ context.Context, deviceID string, at time.Time) error {
	m.mu.Lock()
	m.sessions[deviceID] = &session{start: at}
	m.mu.Unlock()
	return nil
}

func (m *memState) SessionEnded(_ context.Context, deviceID string) error {
	m.mu.Lock()
	delete(m.sessions, deviceID)
	m.mu.Unlock()
	return nil
}

func (m *memState) Current(_ context.Context, deviceID string, maxAge time.Duration) error {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	ss := m.sessions[deviceID]
	if ss == nil {
		return current(false, time.Time{}, time.Time{}, time.Time{}, now, maxAge)
	}
	return current(true, ss.start, ss.passIssued, ss.passAt, now, maxAge)
}

func (m *memState) Liveness(_ context.Context, ids []string) ([]Liveness, error) {
	now := m.now()
	out := make([]Liveness, len(ids))
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, id := range ids {
		last, ok := m.lastSeen[id]
		if !ok {
			last = m.started
		}
		out[i] = Liveness{Silent: now.Sub(last), Unanswered: m.unanswered[id]}
	}
	return out, nil
}

func (m *memState) Expire(context.Context) error {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, n := range m.nonces {
		if now.After(n.expires) {
			delete(m.nonces, k)
		}
	}
	for id := range m.open {
		m.pruneNonces(id)
	}
	return nil
}
