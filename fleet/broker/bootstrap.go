package broker

import (
	"log/slog"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Bootstrap connections (TLS without a device certificate) are what anyone
// can open, so none may hold a slot for long or lock others out:
//
//   - A bootstrap CONNECT must ask for a keepalive of at most
//     MaxBootstrapKeepalive (0, no keepalive, is refused): a silent peer is
//     dropped after 1.5 keepalives.
//   - It must publish to its enrollment topic within BootstrapFirstMessage
//     of its CONNECT, and it is closed BootstrapLifetime after its TLS
//     handshake whatever it does.
//   - The pool (MaxBootstrapClients, MaxBootstrapPerSource per address)
//     never refuses a newcomer: at a cap, the least recently active
//     connection of the newcomer's address (or, at the fleet-wide cap, of
//     the address holding most) is closed to make room. Activity is the
//     TLS handshake, the CONNECT and each enrollment publish; pings are
//     not activity.
//   - A known device re-enrolling (Config.KnownDevice recognizes its
//     client ID at CONNECT) moves to the reserve (BootstrapReserve
//     sessions, one per device), where nothing closes it to make room, so
//     that a revoked or expired device recovers however many anonymous
//     clients compete. The client ID is a claim, not a proof: someone who
//     knows a device's ID can take that device's reserved slot for one
//     session (bounded by the deadlines above); the device then still
//     enrolls from the pool, as any new device does.

// Codes a closed bootstrap session is told (MQTT 5 clients; 3.1.1 clients
// just see the connection close).
var (
	codeNoEnrollment    = packets.Code{Code: packets.ErrAdministrativeAction.Code, Reason: "no enrollment message"}
	codeMaxConnectTime  = packets.Code{Code: 0xA0, Reason: "maximum connect time"}
	codeBootstrapEvicts = packets.ErrServerBusy
)

// touch records activity of a bootstrap connection (an ordering, not a
// time: the least active connection has the smallest mark).
func (c *conn) touch() { c.active.Store(c.b.activity.Add(1)) }

// takeBootstrapSlot puts a new bootstrap connection in the pool. At a cap
// it returns the connection it displaced (already out of the pool; the
// caller closes it); ok is false only when nothing could be displaced.
func (b *Broker) takeBootstrapSlot(c *conn) (victim *conn, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	from := b.bootPool[c.src]
	switch {
	case len(from) >= b.cfg.MaxBootstrapPerSource:
		victim = leastActive(from)
	case b.poolSize >= b.cfg.MaxBootstrapClients:
		var heaviest map[*conn]struct{}
		for _, s := range b.bootPool {
			if len(s) > len(heaviest) {
				heaviest = s
			}
		}
		victim = leastActive(heaviest)
	}
	if victim == nil && (len(from) >= b.cfg.MaxBootstrapPerSource || b.poolSize >= b.cfg.MaxBootstrapClients) {
		return nil, false
	}
	if victim != nil {
		b.leavePoolLocked(victim)
	}
	if from == nil {
		from = make(map[*conn]struct{})
		b.bootPool[c.src] = from
	}
	from[c] = struct{}{}
	c.inPool = true
	b.poolSize++
	return victim, true
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
	if s := b.bootPool[c.src]; s != nil {
		delete(s, c)
		if len(s) == 0 {
			delete(b.bootPool, c.src)
		}
	}
}

// releaseBootstrapSlot is called once when a bootstrap connection closes.
func (b *Broker) releaseBootstrapSlot(c *conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leavePoolLocked(c)
	if c.reserved != "" && b.reserved[c.reserved] == c {
		delete(b.reserved, c.reserved)
	}
}

// reserveBootstrap moves c from the pool to the reserve for device, if the
// reserve has room and the device holds no reserved session yet.
func (b *Broker) reserveBootstrap(c *conn, device string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !c.inPool || device == "" || len(b.reserved) >= b.cfg.BootstrapReserve || b.reserved[device] != nil {
		return false
	}
	b.leavePoolLocked(c)
	b.reserved[device] = c
	c.reserved = device
	b.reservations.Add(1)
	return true
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

// bootstrapAdmitted starts what a bootstrap session owes after its CONNECT:
// its first enrollment message, before BootstrapFirstMessage; and, for a
// known device, its move to the reserve.
func (b *Broker) bootstrapAdmitted(c *conn, clientID string) {
	c.touch()
	if b.cfg.KnownDevice != nil {
		if dev, ok := b.cfg.KnownDevice(clientID); ok && b.reserveBootstrap(c, dev) {
			b.logAnon(slog.LevelDebug, c.src, "broker: bootstrap session of a known device reserved", "client", clientID)
		}
	}
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
