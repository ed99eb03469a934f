package broker

import (
	"log/slog"
	"net"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Bootstrap connections (TLS without a device certificate) are what anyone
// can open, so none may hold a slot for long, and known devices that must
// enroll again are never locked out:
//
//   - A bootstrap CONNECT must ask for a keepalive of at most
//     MaxBootstrapKeepalive (0, no keepalive, is refused): a silent peer is
//     dropped after 1.5 keepalives.
//   - It must publish to its enrollment topic within BootstrapFirstMessage
//     of its CONNECT, and it is closed BootstrapLifetime after its TLS
//     handshake whatever it does.
//   - The pool holds MaxBootstrapClients connections, at most
//     MaxBootstrapPerSource from one source (an IPv4 address, an IPv6
//     /64). At a cap, a newcomer displaces the least recently active
//     connection of its own source (or, at the fleet-wide cap, of the
//     source holding most) if that one has been inactive for
//     BootstrapDisplaceIdle. Activity is the TLS handshake, the CONNECT
//     and each enrollment publish; pings are not. Clients that sit on
//     slots give way; enrollments in progress, which publish, are not cut
//     short by a crowd of newcomers.
//   - A newcomer that finds no slot it may take waits in the overflow
//     (BootstrapReserve connections, the oldest displaced by newer ones)
//     until its CONNECT, which it keeps only as a known device.
//   - A known device (Config.KnownDevice recognizes its client ID at
//     CONNECT) moves from the pool or the overflow to the reserve
//     (BootstrapReserve sessions, one per device), where nothing displaces
//     it: a revoked or expired device recovers however many anonymous
//     clients compete. The client ID is a claim, not a proof: whoever
//     knows a device's ID can take that device's reserved slot for one
//     session (bounded by the deadlines above); the device then enrolls
//     from the pool like a new one, and enrollment still proves the EK.

// Codes a closed bootstrap session is told (MQTT 5 clients; 3.1.1 clients
// just see the connection close).
var (
	codeNoEnrollment    = packets.Code{Code: packets.ErrAdministrativeAction.Code, Reason: "no enrollment message"}
	codeMaxConnectTime  = packets.Code{Code: 0xA0, Reason: "maximum connect time"}
	codeBootstrapEvicts = packets.ErrServerBusy
)

// touch records activity of a bootstrap connection: when (for
// BootstrapDisplaceIdle), and an order that breaks ties.
func (c *conn) touch() {
	c.activeAt.Store(int64(time.Since(c.b.epoch)))
	c.active.Store(c.b.activity.Add(1))
}

// idle is how long c has been inactive.
func (c *conn) idle() time.Duration {
	return time.Since(c.b.epoch) - time.Duration(c.activeAt.Load())
}

// sourceOf is the pool's source of an address: the IPv4 address, or the
// /64 of an IPv6 one (a single host usually holds a whole /64).
func sourceOf(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta.IP.To4() != nil {
		return hostOf(a)
	}
	return (&net.IPNet{IP: ta.IP.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
}

// takeBootstrapSlot places a new bootstrap connection in the pool, or
// else in the overflow (bootstrap.go doc). It returns the connection it
// displaced, if any: already out of the pool or overflow, for the caller
// to close.
func (b *Broker) takeBootstrapSlot(c *conn) (victim *conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	from := b.bootBySrc[c.src]
	var cand *conn
	switch {
	case len(from) >= b.cfg.MaxBootstrapPerSource:
		cand = leastActive(from)
	case b.poolSize >= b.cfg.MaxBootstrapClients:
		var heaviest map[*conn]struct{}
		for _, s := range b.bootBySrc {
			if len(s) > len(heaviest) || (len(s) == len(heaviest) && leastActive(s).active.Load() < leastActive(heaviest).active.Load()) {
				heaviest = s
			}
		}
		cand = leastActive(heaviest)
	default:
		b.joinPoolLocked(c)
		return nil
	}
	if cand != nil && cand.idle() >= b.cfg.BootstrapDisplaceIdle {
		b.leavePoolLocked(cand)
		b.joinPoolLocked(c)
		return cand
	}
	if len(b.overflow) >= b.cfg.BootstrapReserve {
		victim = leastActive(b.overflow)
		delete(b.overflow, victim)
		victim.inOverflow = false
	}
	b.overflow[c] = struct{}{}
	c.inOverflow = true
	return victim
}

func (b *Broker) joinPoolLocked(c *conn) {
	s := b.bootBySrc[c.src]
	if s == nil {
		s = make(map[*conn]struct{})
		b.bootBySrc[c.src] = s
	}
	s[c] = struct{}{}
	c.inPool = true
	b.poolSize++
}

func leastActive(set map[*conn]struct{}) *conn {
	var min *conn
	for c := range set {
		if min == nil || c.active.Load() < min.active.Load() {
			min = c
		}
	}
	return min
}

// leavePoolLocked takes c out of the pool; b.mu is held.
func (b *Broker) leavePoolLocked(c *conn) {
	if !c.inPool {
		return
	}
	c.inPool = false
	b.poolSize--
	if s := b.bootBySrc[c.src]; s != nil {
		delete(s, c)
		if len(s) == 0 {
			delete(b.bootBySrc, c.src)
		}
	}
}

// releaseBootstrapSlot is called once when a bootstrap connection closes.
func (b *Broker) releaseBootstrapSlot(c *conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leavePoolLocked(c)
	if c.inOverflow {
		delete(b.overflow, c)
		c.inOverflow = false
	}
	if c.reserved != "" && b.reserved[c.reserved] == c {
		delete(b.reserved, c.reserved)
	}
}

// placeBootstrap decides, at an authenticated bootstrap CONNECT, where the
// session stays: in the reserve if KnownDevice names a device that holds
// no reserved session and the reserve has room; otherwise where it is. It
// returns false for a session in the overflow that does not get the
// reserve: it has no slot and must go.
func (b *Broker) placeBootstrap(c *conn, clientID string) bool {
	dev, known := "", false
	if b.cfg.KnownDevice != nil {
		dev, known = b.cfg.KnownDevice(clientID)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if known && dev != "" && len(b.reserved) < b.cfg.BootstrapReserve && b.reserved[dev] == nil && (c.inPool || c.inOverflow) {
		b.leavePoolLocked(c)
		delete(b.overflow, c)
		c.inOverflow = false
		b.reserved[dev] = c
		c.reserved = dev
		b.reservations.Add(1)
		return true
	}
	return c.inPool
}

// closeBootstrap closes a bootstrap connection the broker gave up on.
func (b *Broker) closeBootstrap(c *conn, why string, code packets.Code) {
	b.logAnon(slog.LevelInfo, c.src, "broker: bootstrap connection closed", "reason", why, "remote", c.RemoteAddr().String())
	// A peer that does not read must not hold up the goodbye.
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	if cl := c.client(); cl != nil {
		_ = b.srv.DisconnectClient(cl, code)
	}
	_ = c.Close()
}

// startTimer runs f after d unless the connection closes first.
func (c *conn) startTimer(d time.Duration, f func()) *time.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	t := time.AfterFunc(d, f)
	c.timers = append(c.timers, t)
	return t
}

// expire closes a bootstrap connection at one of its deadlines.
func (b *Broker) expire(c *conn, why string, code packets.Code) {
	b.bootExpired.Add(1)
	b.closeBootstrap(c, why, code)
}

// bootstrapAdmitted starts the wait for the first enrollment message of an
// admitted bootstrap session.
func (b *Broker) bootstrapAdmitted(c *conn) {
	c.touch()
	t := c.startTimer(b.cfg.BootstrapFirstMessage, func() {
		if !c.published.Load() {
			b.expire(c, "no enrollment message", codeNoEnrollment)
		}
	})
	c.mu.Lock()
	c.firstMsg = t
	c.mu.Unlock()
}

// bootstrapPublished notes an allowed publish of a bootstrap client.
func (c *conn) bootstrapPublished() {
	c.touch()
	if c.published.Swap(true) {
		return
	}
	c.mu.Lock()
	if c.firstMsg != nil {
		c.firstMsg.Stop()
	}
	c.mu.Unlock()
}
