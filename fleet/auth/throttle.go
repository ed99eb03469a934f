package auth

import (
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Throttle configures how failed logins slow down and lock out.
//
// Failures are counted per user name and source address together, so that
// guessing a name's password from one place locks that place out, not the
// person who owns the name and logs in from elsewhere. A source address
// that fails for many names is locked out whatever the name. A name that
// fails from many addresses at once (a distributed guess) is slowed down,
// never locked: past UserFailures, attempts for it from addresses it has
// not logged in from are admitted one per UserDelay, while addresses it
// logged in from since the server started are not slowed.
type Throttle struct {
	// Failures is how many failed logins for one user name from one source
	// address lock that name out from that address. Zero means 5.
	Failures int
	// Lockout is how long a locked-out name and address, or address,
	// stays locked, and how long after its last failure a counter is
	// forgotten. Zero means 15 minutes.
	Lockout time.Duration
	// BaseDelay is the wait after a name's first failure from an address;
	// each further failure doubles it, up to MaxDelay. Zero means 1 second.
	BaseDelay time.Duration
	// MaxDelay caps the wait between attempts. Zero means 1 minute.
	MaxDelay time.Duration
	// AddrFailures is how many failed logins from one source address (an
	// IPv4 address or an IPv6 /64), for any names, lock it out. Zero means
	// 50.
	AddrFailures int
	// UserFailures is how many failed logins for one user name, from all
	// addresses together within Lockout of each other, slow that name
	// down (see the type's doc). Zero means 100.
	UserFailures int
	// UserDelay is the wait between admitted attempts of a slowed-down
	// name from addresses it has not logged in from. Zero means 5 seconds.
	UserDelay time.Duration
	// MaxEntries bounds the counters kept in memory for each of names and
	// addresses, names, and addresses; past it the stalest counter is
	// dropped. Zero means 100000.
	MaxEntries int
}

func (t Throttle) withDefaults() Throttle {
	if t.Failures <= 0 {
		t.Failures = 5
	}
	if t.Lockout <= 0 {
		t.Lockout = 15 * time.Minute
	}
	if t.BaseDelay <= 0 {
		t.BaseDelay = time.Second
	}
	if t.MaxDelay <= 0 {
		t.MaxDelay = time.Minute
	}
	if t.AddrFailures <= 0 {
		t.AddrFailures = 50
	}
	if t.UserFailures <= 0 {
		t.UserFailures = 100
	}
	if t.UserDelay <= 0 {
		t.UserDelay = 5 * time.Second
	}
	if t.MaxEntries <= 0 {
		t.MaxEntries = 100000
	}
	return t
}

// counter is the failure history of one name and address, or one address.
type counter struct {
	failures    int       // failed (or still running) attempts since the last reset
	last        time.Time // the last attempt counted
	lockedUntil time.Time
}

// nameCounter is the failure history of one user name from every address.
type nameCounter struct {
	failures int       // failures within Lockout of each other
	last     time.Time // the last failure
	next     time.Time // while slowed: the earliest next attempt from an unfamiliar address
	familiar []string  // addresses the name logged in from, newest last
}

// maxFamiliar bounds the addresses remembered per name.
const maxFamiliar = 8

// pairKey is a user name and a source address.
type pairKey struct{ user, addr string }

// throttle keeps login counters. Attempts count as failures of their name
// and address from the moment they start (until they succeed), so that
// parallel guesses wait like sequential ones.
type throttle struct {
	cfg   Throttle
	mu    sync.Mutex
	pairs map[pairKey]*counter
	addrs map[string]*counter
	names map[string]*nameCounter
}

func newThrottle(cfg Throttle) *throttle {
	return &throttle{cfg: cfg, pairs: make(map[pairKey]*counter), addrs: make(map[string]*counter), names: make(map[string]*nameCounter)}
}

// delay is the wait after n failures.
func (t *throttle) delay(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := t.cfg.BaseDelay
	for i := 1; i < n && d < t.cfg.MaxDelay; i++ {
		d *= 2
	}
	return min(d, t.cfg.MaxDelay)
}

// retryAfter reports how long c must wait at now (0: it may try), and
// forgets a stale history.
func (t *throttle) retryAfter(c *counter, now time.Time, delays bool) time.Duration {
	if now.Before(c.lockedUntil) {
		return c.lockedUntil.Sub(now)
	}
	if c.failures > 0 && now.Sub(c.last) >= t.cfg.Lockout {
		c.failures = 0
	}
	if delays {
		if next := c.last.Add(t.delay(c.failures)); now.Before(next) {
			return next.Sub(now)
		}
	}
	return 0
}

// slowed reports whether n is slowed down at now for attempts from addr.
func (t *throttle) slowed(n *nameCounter, addr string, now time.Time) bool {
	if n.failures > 0 && now.Sub(n.last) >= t.cfg.Lockout {
		n.failures, n.next = 0, time.Time{}
	}
	return n.failures >= t.cfg.UserFailures && !slices.Contains(n.familiar, addr)
}

// begin reports whether an attempt for user from addr ("" for none) may
// run at now; when it may, the attempt counts for user and addr as a
// failure until succeed.
func (t *throttle) begin(user, addr string, now time.Time) (retry time.Duration, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pc := getCounter(t, t.pairs, pairKey{user, addr}, now)
	wait := t.retryAfter(pc, now, true)
	if addr != "" {
		wait = max(wait, t.retryAfter(getCounter(t, t.addrs, addr, now), now, false))
	}
	if wait > 0 {
		return wait, false
	}
	nc := t.name(user, now)
	if t.slowed(nc, addr, now) {
		if now.Before(nc.next) {
			return nc.next.Sub(now), false
		}
		nc.next = now.Add(t.cfg.UserDelay)
	}
	pc.failures++
	pc.last = now
	return 0, true
}

// lockouts says which counters a failure locked out (or slowed down).
type lockouts struct {
	pair, addr, name bool
}

// fail records that an attempt begun at now failed, and reports what it
// locked out or slowed down.
func (t *throttle) fail(user, addr string, now time.Time) lockouts {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out lockouts
	if pc := getCounter(t, t.pairs, pairKey{user, addr}, now); pc.failures >= t.cfg.Failures {
		pc.lockedUntil = now.Add(t.cfg.Lockout)
		pc.failures = 0
		out.pair = true
	}
	nc := t.name(user, now)
	if nc.failures > 0 && now.Sub(nc.last) >= t.cfg.Lockout {
		nc.failures = 0
	}
	nc.failures++
	nc.last = now
	out.name = nc.failures == t.cfg.UserFailures
	if addr == "" {
		return out
	}
	ac := getCounter(t, t.addrs, addr, now)
	ac.failures++
	ac.last = now
	if ac.failures >= t.cfg.AddrFailures {
		ac.lockedUntil = now.Add(t.cfg.Lockout)
		ac.failures = 0
		out.addr = true
	}
	return out
}

// succeed forgets user's failures from addr and remembers addr as one user
// logs in from. The address keeps its own failures (a valid account must
// not wash an address's guesses away), and so does the name (one
// successful login does not end a guess from elsewhere).
func (t *throttle) succeed(user, addr string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pairs, pairKey{user, addr})
	if addr == "" {
		return
	}
	nc := t.name(user, now)
	nc.familiar = slices.DeleteFunc(nc.familiar, func(a string) bool { return a == addr })
	if len(nc.familiar) == maxFamiliar {
		nc.familiar = slices.Delete(nc.familiar, 0, 1)
	}
	nc.familiar = append(nc.familiar, addr)
}

// name returns user's name counter, creating it (and making room) if
// needed.
func (t *throttle) name(user string, now time.Time) *nameCounter {
	if n, ok := t.names[user]; ok {
		return n
	}
	if len(t.names) >= t.cfg.MaxEntries {
		evict(t.names, t.cfg.MaxEntries, func(n *nameCounter) (time.Time, bool, bool) {
			return n.last, now.Sub(n.last) >= t.cfg.Lockout && len(n.familiar) == 0, n.failures >= t.cfg.UserFailures
		})
	}
	n := &nameCounter{}
	t.names[user] = n
	return n
}

// getCounter returns m's counter for key, creating it (and making room)
// if needed.
func getCounter[K comparable](t *throttle, m map[K]*counter, key K, now time.Time) *counter {
	if c, ok := m[key]; ok {
		return c
	}
	if len(m) >= t.cfg.MaxEntries {
		evict(m, t.cfg.MaxEntries, func(c *counter) (time.Time, bool, bool) {
			locked := now.Before(c.lockedUntil)
			return c.last, !locked && now.Sub(c.last) >= t.cfg.Lockout, locked
		})
	}
	c := &counter{}
	m[key] = c
	return c
}

// evict makes room in m (limit entries): it drops the entries that no
// longer matter (stale) or, if none, the stalest one that is not
// protected (so that a flood of new names cannot wash a lockout away), or
// else the stalest. judge returns an entry's last use and whether it is
// stale or protected.
func evict[K comparable, V any](m map[K]V, limit int, judge func(V) (last time.Time, stale, protected bool)) {
	type pick struct {
		key   K
		at    time.Time
		found bool
	}
	var unprotected, any pick
	consider := func(p *pick, k K, at time.Time) {
		if !p.found || at.Before(p.at) {
			*p = pick{key: k, at: at, found: true}
		}
	}
	for k, v := range m {
		last, stale, protected := judge(v)
		if stale {
			delete(m, k)
			continue
		}
		if !protected {
			consider(&unprotected, k, last)
		}
		consider(&any, k, last)
	}
	if len(m) < limit {
		return
	}
	if unprotected.found {
		delete(m, unprotected.key)
	} else if any.found {
		delete(m, any.key)
	}
}

// ClientAddr returns the address failed logins from r are counted under:
// the peer's IP address from r.RemoteAddr (forwarding headers are not
// trusted), with IPv6 addresses reduced to their /64.
func ClientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}
