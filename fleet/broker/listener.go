package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sigil-iot/sigil/pkg/identity"
)

// listener is a mochi listeners.Listener that serves TLS. Unlike mochi's
// TCP listener, its accept loop survives failed accepts (EMFILE and the
// like): it backs off from 5 ms up to 1 s and retries. It completes the
// handshake itself, under a deadline, and binds the peer's identity to the
// connection before mochi sees it.
type listener struct {
	id      string
	address string
	tls     *tls.Config
	b       *Broker

	// listen opens the socket; tests replace it to inject accept errors.
	listen func(network, address string) (net.Listener, error)

	mu     sync.Mutex
	ln     net.Listener
	log    *slog.Logger
	closed bool
	done   chan struct{}
	conns  map[net.Conn]struct{} // every open connection, to close on Close
	wg     sync.WaitGroup        // connection goroutines, including establish
}

var _ listeners.Listener = (*listener)(nil)

func newListener(id, address string, tc *tls.Config, b *Broker) *listener {
	return &listener{
		id: id, address: address, tls: tc, b: b,
		listen: net.Listen,
		done:   make(chan struct{}),
		conns:  make(map[net.Conn]struct{}),
	}
}

func (l *listener) ID() string       { return l.id }
func (l *listener) Protocol() string { return "tls" }

func (l *listener) Address() string {
	if a := l.addr(); a != nil {
		return a.String()
	}
	return l.address
}

func (l *listener) addr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// Init binds the socket.
func (l *listener) Init(log *slog.Logger) error {
	ln, err := l.listen("tcp", l.address)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.ln, l.log = ln, log
	l.mu.Unlock()
	return nil
}

// Serve accepts until Close.
func (l *listener) Serve(establish listeners.EstablishFn) {
	const minDelay, maxDelay = 5 * time.Millisecond, time.Second
	delay := time.Duration(0)
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.b.acceptErrors.Add(1)
			delay = min(max(2*delay, minDelay), maxDelay)
			l.log.Warn("broker: accept failed, retrying", "err", err, "delay", delay)
			t := time.NewTimer(delay)
			select {
			case <-l.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		if !l.track(raw) {
			_ = raw.Close()
			return
		}
		go l.handle(raw, establish)
	}
}

// track registers a connection unless the listener is closing.
func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
	l.wg.Add(1)
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.wg.Done()
}

func (l *listener) handle(raw net.Conn, establish listeners.EstablishFn) {
	defer l.untrack(raw)
	b := l.b
	timeout := b.cfg.HandshakeTimeout
	tc := tls.Server(raw, l.tls)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		b.handshakeFailures.Add(1)
		b.logAnon(slog.LevelDebug, hostOf(raw.RemoteAddr()), "broker: TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		_ = raw.Close()
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) && len(cve.UnverifiedCertificates) > 0 {
			// A client certificate from outside the fleet: worth knowing who.
			b.refusedCertificate(cve, raw.RemoteAddr().String())
		}
		return
	}
	c := &conn{Conn: tc, b: b, finished: make(chan struct{})}
	defer close(c.finished)
	st := tc.ConnectionState()
	if len(st.PeerCertificates) > 0 && len(st.VerifiedChains) > 0 && b.isClaim(st.VerifiedChains) {
		c.claim = st.PeerCertificates[0] // a bootstrap client with a claim credential
	}
	if c.claim == nil && len(st.PeerCertificates) > 0 && len(st.VerifiedChains) > 0 {
		c.cert = st.PeerCertificates[0]
		c.deviceID, c.idErr = identity.FromCertificate(c.cert, b.cfg.TrustDomain)
		if site, err := identity.BridgeFromCertificate(c.cert, b.cfg.TrustDomain); c.idErr != nil && err == nil {
			c.site, c.idErr = site, nil
		}
	} else {
		if !b.cfg.AllowBootstrap {
			_ = tc.Close()
			return
		}
		// One source address may not hold the whole bootstrap allowance,
		// and held slots do not lock newcomers out (bootstrap.go).
		c.src = sourceOf(raw.RemoteAddr())
		c.boot = true
		c.touch()
		b.bootstrap.Add(1) // before it is in the pool, where Close may find it
		if victim := b.takeBootstrapSlot(c); victim != nil {
			b.overCap.Add(1)
			go b.closeBootstrap(victim, "making room for a newer bootstrap connection", codeBootstrapEvicts)
		}
		c.startTimer(b.cfg.BootstrapLifetime, func() { b.expire(c, "bootstrap lifetime reached", codeMaxConnectTime) })
	}
	// CONNECT must follow promptly; mochi resets the deadline after it.
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if err := establish(l.id, c); err != nil {
		var code packets.Code
		if errors.As(err, &code) && (code.Code == packets.ErrMalformedPacket.Code ||
			code.Code == packets.ErrProtocolViolation.Code || code.Code == packets.ErrPacketTooLarge.Code) {
			b.malformedPackets.Add(1)
		}
		if c.cert == nil {
			b.logAnon(slog.LevelDebug, hostOf(raw.RemoteAddr()), "broker: connection ended", "remote", raw.RemoteAddr().String(), "err", err)
		} else {
			l.log.Debug("broker: connection ended", "remote", raw.RemoteAddr().String(), "err", err)
		}
	}
	_ = c.Close()
}

// Close stops accepting, closes every connection and waits for their
// goroutines, so that mochi's client wait group sees no late Add.
func (l *listener) Close(listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	close(l.done)
	// A peer that does not read must not hold up the goodbye packets.
	deadline := time.Now().Add(time.Second)
	for c := range l.conns {
		_ = c.SetWriteDeadline(deadline)
	}
	l.mu.Unlock()

	if l.ln != nil {
		_ = l.ln.Close()
	}
	l.disconnectClients()
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// conn is a client connection with the identity its TLS handshake proved.
type conn struct {
	*tls.Conn
	b *Broker

	// Set before mochi sees the connection, then read-only.
	cert     *x509.Certificate
	deviceID string
	site     string // of a bridge certificate (bridge.go); then idErr is nil
	idErr    error
	boot     bool
	src      string            // source of a bootstrap connection (sourceOf)
	claim    *x509.Certificate // verified claim certificate of a bootstrap client

	active    atomic.Uint64 // last activity of a bootstrap connection (Broker.activity order)
	activeAt  atomic.Int64  // and its time, since Broker.epoch
	published atomic.Bool   // a bootstrap client published to its enrollment topic

	// Guarded by Broker.mu: bootstrap slot bookkeeping (bootstrap.go).
	inPool     bool
	inOverflow bool
	reserved   string // device whose reserved slot this is

	// finished is closed once mochi is done with the connection (its
	// session detached, or kept for a persistent session): see
	// hook.OnSessionEstablish.
	finished chan struct{}

	once     sync.Once
	mu       sync.Mutex
	cl       *mqtt.Client
	id       *Identity // set when admitted
	closed   bool
	timers   []*time.Timer // bootstrap deadlines, stopped on Close
	firstMsg *time.Timer
}

func (c *conn) admitted(cl *mqtt.Client, id Identity) {
	c.mu.Lock()
	c.cl, c.id = cl, &id
	c.mu.Unlock()
}

func (c *conn) client() *mqtt.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cl
}

// Close closes the connection and, the first time, releases what it held.
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		for _, t := range c.timers {
			t.Stop()
		}
		c.mu.Unlock()
		if c.boot {
			c.b.bootstrap.Add(-1)
			c.b.releaseBootstrapSlot(c)
		}
		c.mu.Lock()
		id := c.id
		c.mu.Unlock()
		if id != nil {
			c.b.release(c, *id)
		}
	})
	return err
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// isClaim reports whether every verified chain ends at a claim CA, so that
// a certificate that also chains to the fleet CA stays a device.
func (b *Broker) isClaim(chains [][]*x509.Certificate) bool {
	if len(b.cfg.ClaimCAs) == 0 {
		return false
	}
	for _, ch := range chains {
		root := ch[len(ch)-1]
		claim := false
		for _, c := range b.cfg.ClaimCAs {
			if root.Equal(c) {
				claim = true
			}
		}
		if !claim {
			return false
		}
	}
	return true
}

// disconnectClients sends every client of l still connected the server's
// goodbye (DISCONNECT "server shutting down" where the protocol has one).
// It does what mochi's own close function (Server.closeListenerClients)
// does, without its client-table lookup: that one takes the table's read
// lock twice (Clients.GetByListener calls Len under its own RLock), and a
// client leaving at that moment — its Delete waiting for the write lock
// between the two — deadlocks the shutdown.
func (l *listener) disconnectClients() {
	for _, cl := range l.b.srv.Clients.GetAll() {
		if cl.Net.Listener == l.id && !cl.Closed() {
			_ = l.b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}
