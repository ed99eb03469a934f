package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// throttler counts login attempts (Throttle). The bbolt store keeps the
// counters in memory (memThrottle); the PostgreSQL store keeps them in
// the database, shared by the replicas (sharedThrottle), so that an
// attacker gains nothing by spreading guesses over them.
type throttler interface {
	// begin reports whether an attempt for user from addr may run at
	// now (throttle.begin); an error refuses it.
	begin(ctx context.Context, user, addr string, now time.Time) (time.Duration, bool, error)
	// fail records a failed attempt (throttle.fail).
	fail(ctx context.Context, user, addr string, now time.Time) (lockouts, error)
	// succeed records a successful one (throttle.succeed).
	succeed(ctx context.Context, user, addr string, now time.Time) error
	// prune forgets counters that no longer hold anything back.
	prune(ctx context.Context, now time.Time) error
}

// memThrottle is the throttle in memory, one per process.
type memThrottle struct{ *throttle }

func (m memThrottle) begin(_ context.Context, user, addr string, now time.Time) (time.Duration, bool, error) {
	d, ok := m.throttle.begin(user, addr, now)
	return d, ok, nil
}

func (m memThrottle) fail(_ context.Context, user, addr string, now time.Time) (lockouts, error) {
	return m.throttle.fail(user, addr, now), nil
}

func (m memThrottle) succeed(_ context.Context, user, addr string, now time.Time) error {
	m.throttle.succeed(user, addr, now)
	return nil
}

// prune: the memory throttle evicts as it goes (MaxEntries).
func (memThrottle) prune(context.Context, time.Time) error { return nil }

// sharedThrottle keeps the counters in the bucket "throttle": each
// attempt's step runs the memory throttle's rules over the three
// counters it touches (user and address, address, user), read and
// written back in one transaction.
type sharedThrottle struct {
	cfg Throttle
	db  kv.DB
}

// storedCounter and storedName are counter and nameCounter as stored.
type storedCounter struct {
	Failures    int       `json:"failures"`
	Last        time.Time `json:"last"`
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

type storedName struct {
	Failures int       `json:"failures"`
	Last     time.Time `json:"last"`
	Next     time.Time `json:"next,omitzero"`
	Familiar []string  `json:"familiar,omitempty"`
}

// Keys: "p" NUL user NUL addr, "a" NUL addr, "n" NUL user.
func pairCounterKey(user, addr string) []byte { return []byte("p\x00" + user + "\x00" + addr) }
func addrCounterKey(addr string) []byte       { return []byte("a\x00" + addr) }
func nameCounterKey(user string) []byte       { return []byte("n\x00" + user) }

// step runs fn over a throttle holding the stored counters of user and
// addr, then stores them back (deleting those fn dropped), in one
// transaction.
func (s *sharedThrottle) step(ctx context.Context, user, addr string, fn func(*throttle)) error {
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketThrottle)
		t := newThrottle(s.cfg)
		pk, ak, nk := pairCounterKey(user, addr), addrCounterKey(addr), nameCounterKey(user)
		var c storedCounter
		if v := b.Get(pk); v != nil {
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			t.pairs[pairKey{user, addr}] = &counter{failures: c.Failures, last: c.Last, lockedUntil: c.LockedUntil}
		}
		if v := b.Get(ak); v != nil {
			c = storedCounter{}
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			t.addrs[addr] = &counter{failures: c.Failures, last: c.Last, lockedUntil: c.LockedUntil}
		}
		if v := b.Get(nk); v != nil {
			var n storedName
			if err := json.Unmarshal(v, &n); err != nil {
				return err
			}
			t.names[user] = &nameCounter{failures: n.Failures, last: n.Last, next: n.Next, familiar: n.Familiar}
		}
		fn(t)
		putCounter := func(k []byte, c *counter) error {
			if c == nil {
				return b.Delete(k)
			}
			v, err := json.Marshal(storedCounter{Failures: c.failures, Last: c.last, LockedUntil: c.lockedUntil})
			if err != nil {
				return err
			}
			return b.Put(k, v)
		}
		if err := putCounter(pk, t.pairs[pairKey{user, addr}]); err != nil {
			return err
		}
		if addr != "" {
			if err := putCounter(ak, t.addrs[addr]); err != nil {
				return err
			}
		}
		if n := t.names[user]; n != nil {
			v, err := json.Marshal(storedName{Failures: n.failures, Last: n.last, Next: n.next, Familiar: n.familiar})
			if err != nil {
				return err
			}
			return b.Put(nk, v)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("auth: login throttle: %w", err)
	}
	return nil
}

func (s *sharedThrottle) begin(ctx context.Context, user, addr string, now time.Time) (d time.Duration, ok bool, err error) {
	err = s.step(ctx, user, addr, func(t *throttle) { d, ok = t.begin(user, addr, now) })
	return d, ok, err
}

func (s *sharedThrottle) fail(ctx context.Context, user, addr string, now time.Time) (l lockouts, err error) {
	err = s.step(ctx, user, addr, func(t *throttle) { l = t.fail(user, addr, now) })
	return l, err
}

func (s *sharedThrottle) succeed(ctx context.Context, user, addr string, now time.Time) error {
	return s.step(ctx, user, addr, func(t *throttle) { t.succeed(user, addr, now) })
}

// prune deletes the counters past Lockout since their last failure and
// no longer locked; a user's counter stays while it remembers addresses
// the user logged in from.
func (s *sharedThrottle) prune(ctx context.Context, now time.Time) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		c := tx.Bucket(bucketThrottle).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			stale := false
			if k[0] == 'n' {
				var n storedName
				stale = json.Unmarshal(v, &n) != nil || (now.Sub(n.Last) >= s.cfg.Lockout && len(n.Familiar) == 0)
			} else {
				var sc storedCounter
				stale = json.Unmarshal(v, &sc) != nil || (now.Sub(sc.Last) >= s.cfg.Lockout && !now.Before(sc.LockedUntil))
			}
			if stale {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
