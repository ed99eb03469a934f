package auth

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Throttle configures how failed logins slow down and lock out.
type Throttle struct {
	// Failures is how many failed logins for one user name lock it out.
	// Zero means 5.
	Failures int
	// Lockout is how long a locked-out user name or address stays locked,
	// and how long after its last failure a counter is forgotten. Zero
	// means 15 minutes.
	Lockout time.Duration
	// BaseDelay is the wait after a user name's first failure; each further
	// failure doubles it, up to MaxDelay. Zero means 1 second.
	BaseDelay time.Duration
	// MaxDelay caps the wait between attempts. Zero means 1 minute.
	MaxDelay time.Duration
	// AddrFailures is how many failed logins from one source address (an
	// IPv4 address or an IPv6 /64) lock it out. Zero means 50.
	AddrFailures int
	// MaxEntries bounds the counters kept in memory for each of user names
	// and addresses; past it the stalest counter is dropped. Zero means
	// 100000.
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
	if t.MaxEntries <= 0 {
		t.MaxEntries = 100000
	}
	return t
}

// counter is the failure history of one user name or address.
type counter struct {
	failures    int       // failed (or still running) attempts since the last reset
	last        time.Time // the last attempt counted
	lockedUntil time.Time
}

// throttle keeps login counters. Attempts for a user name count as
// failures from the moment they start (until they succeed), so that
// parallel guesses wait like sequential ones.
type throttle struct {
	cfg   Throttle
	mu    sync.Mutex
	users map[string]*counter
	addrs map[string]*counter
}

func newThrottle(cfg Throttle) *throttle {
	return &throttle{cfg: cfg, users: make(map[string]*counter), addrs: make(map[string]*counter)}
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

// begin reports whether an attempt for user from addr ("" for none) may
// run at now; when it may, the attempt counts for user as a failure until
// succeed.
func (t *throttle) begin(user, addr string, now time.Time) (retry time.Duration, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	uc := t.get(t.users, user, now)
	wait := t.retryAfter(uc, now, true)
	if addr != "" {
		wait = max(wait, t.retryAfter(t.get(t.addrs, addr, now), now, false))
	}
	if wait > 0 {
		return wait, false
	}
	uc.failures++
	uc.last = now
	return 0, true
}

// fail records that an attempt begun at now failed, and reports whether
// the user name and the address are now locked out.
func (t *throttle) fail(user, addr string, now time.Time) (userLocked, addrLocked bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if uc := t.get(t.users, user, now); uc.failures >= t.cfg.Failures {
		uc.lockedUntil = now.Add(t.cfg.Lockout)
		uc.failures = 0
		userLocked = true
	}
	if addr == "" {
		return userLocked, false
	}
	ac := t.get(t.addrs, addr, now)
	ac.failures++
	ac.last = now
	if ac.failures >= t.cfg.AddrFailures {
		ac.lockedUntil = now.Add(t.cfg.Lockout)
		ac.failures = 0
		addrLocked = true
	}
	return userLocked, addrLocked
}

// succeed forgets user's failures. The address keeps its own: a valid
// account must not wash an address's guesses away.
func (t *throttle) succeed(user string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.users, user)
}

// get returns m's counter for key, creating it (and making room) if needed.
func (t *throttle) get(m map[string]*counter, key string, now time.Time) *counter {
	if c, ok := m[key]; ok {
		return c
	}
	if len(m) >= t.cfg.MaxEntries {
		t.evict(m, now)
	}
	c := &counter{}
	m[key] = c
	return c
}

// evict drops the counters that no longer matter or, if none, the stalest
// one that is not locked out (so that a flood of new names cannot wash a
// lockout away), or else the stalest.
func (t *throttle) evict(m map[string]*counter, now time.Time) {
	type pick struct {
		key   string
		at    time.Time
		found bool
	}
	var unlocked, any pick
	consider := func(p *pick, k string, c *counter) {
		if !p.found || c.last.Before(p.at) {
			*p = pick{key: k, at: c.last, found: true}
		}
	}
	for k, c := range m {
		locked := now.Before(c.lockedUntil)
		if !locked && now.Sub(c.last) >= t.cfg.Lockout {
			delete(m, k)
			continue
		}
		if !locked {
			consider(&unlocked, k, c)
		}
		consider(&any, k, c)
	}
	if len(m) < t.cfg.MaxEntries {
		return
	}
	if unlocked.found {
		delete(m, unlocked.key)
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
