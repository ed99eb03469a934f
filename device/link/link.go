// Package link is the device's MQTT session: one TLS connection to the
// fleet's broker, QoS 1 publishes and subscriptions whose refusal by the
// broker is reported, and a Done channel that closes when the connection is
// lost. Reconnection policy belongs to the caller (device/agent), so that a
// bootstrap session and an mTLS session are separate, explicit connections.
//
// The client speaks MQTT 3.1.1 itself (package internal/packet is its codec)
// and uses only crypto/tls and net: the device binary carries no HTTP,
// websocket or proxy code for its broker connection. It supports what the
// device needs and no more: a clean session, QoS 0 and 1 in both directions,
// one topic filter per SUBSCRIBE, keepalive, and DISCONNECT on Close. It
// never retries; a connection that fails is finished, and Done says so.
//
// Every packet from the broker is decoded strictly (see internal/packet) and
// bounded by MaxPacketSize; a broker that breaks the protocol loses the
// connection, and Err says why.
package link

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/device/link/internal/packet"
)

// MaxPacketSize bounds every MQTT packet sent or received, counted as its
// remaining length: a 1 MiB message (pkg/wire's MaxMessageSize) plus room for
// the longest topic.
const MaxPacketSize = 1<<20 + 64<<10

// Config describes one connection.
type Config struct {
	Broker   string // host:port of the broker's TLS listener
	ClientID string // MQTT client ID; for an enrolled device, its device ID
	// TLS holds the server trust and, for an enrolled device, the
	// TPM-backed client certificate. Required. It is used as is; only when
	// ServerName is empty is it cloned (Clone keeps certificates, signers
	// and callbacks) to set ServerName to Broker's host.
	TLS *tls.Config
	// KeepAlive is the interval between PINGREQs (announced to the broker
	// in whole seconds, rounded up). A PINGREQ still unanswered when the
	// next one is due declares the connection lost, so a dead connection
	// is noticed within two intervals. 0 means 60s.
	KeepAlive time.Duration
	Timeout   time.Duration // connect, publish and subscribe timeout, and the bound on each write; 0 means 15s
	Logger    *slog.Logger  // nil discards
	// Username and Password, when set, are sent in CONNECT: a bootstrap
	// client presents its enrollment token there when the fleet requires a
	// credential at connect. Never logged.
	Username string
	Password []byte
	// Dial opens the TCP connection to Broker; nil means a net.Dialer. A
	// simulator spreads its devices over local addresses with it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Observer, if set, is told of the connection's publishes and its
	// end, for a simulator's or a test's counters.
	Observer Observer
}

// Observer follows a connection. Its methods run on the connection's
// goroutines and must not block.
type Observer interface {
	// Published reports a publish of payload to topic that the broker
	// acknowledged (QoS 1 PUBACK). payload must not be kept or modified.
	Published(topic string, payload []byte)
	// Unacknowledged reports a publish of payload to topic that got no
	// PUBACK (the wait timed out, the connection ended): the broker may
	// have it all the same, as QoS 1 allows. payload must not be kept or
	// modified.
	Unacknowledged(topic string, payload []byte)
	// Received reports a message from the broker, before the handlers
	// of its subscriptions run. payload must not be kept or modified.
	Received(topic string, payload []byte)
	// Ended reports the end of the connection: err is nil when Close
	// ended it, else why it was lost (Conn.Err).
	Ended(err error)
}

// ErrRefused reports a subscription the broker refused.
var ErrRefused = errors.New("link: refused by broker")

// errClosed is the cause of a connection ended by Close.
var errClosed = errors.New("link: connection closed")

// CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3) that refuse a
// CONNECT.
const (
	ConnackBadProtocol        byte = 1 // unacceptable protocol version
	ConnackIdentifierRejected byte = 2
	ConnackServerUnavailable  byte = 3
	ConnackBadCredentials     byte = 4 // bad user name or password
	ConnackNotAuthorized      byte = 5
)

// ConnackError is a CONNECT the broker refused with a CONNACK return code.
// Dial returns it only after the TLS handshake completed, that is from a
// broker that Config.TLS authenticated: callers decide on Code (with
// errors.As), never on the text.
type ConnackError struct {
	Code byte // CONNACK return code, 1 to 255
}

func (e *ConnackError) Error() string {
	reasons := [...]string{ConnackBadProtocol: "unacceptable protocol version", ConnackIdentifierRejected: "identifier rejected",
		ConnackServerUnavailable: "server unavailable", ConnackBadCredentials: "bad user name or password", ConnackNotAuthorized: "not authorized"}
	r := "refused"
	if int(e.Code) < len(reasons) && reasons[e.Code] != "" {
		r = reasons[e.Code]
	}
	return fmt.Sprintf("%s (CONNACK %d)", r, e.Code)
}

// AlertError is a fatal TLS alert that the broker sent after the TLS
// handshake completed, while Dial waited for CONNACK: in TLS 1.3 a broker
// that refuses the client certificate says so then, in a record protected
// by the keys of the authenticated session, so only the broker Config.TLS
// verified can send it. An alert received during the handshake is never
// an AlertError: it is unauthenticated (in TLS 1.2 it is plaintext) and
// anyone on the path could have sent it.
type AlertError struct {
	Alert uint8 // the TLS AlertDescription (RFC 8446 section 6), e.g. 42 bad_certificate
	Err   error // the error crypto/tls returned
}

func (e *AlertError) Error() string {
	return fmt.Sprintf("the broker sent TLS alert %d (%v) after the handshake", e.Alert, tls.AlertError(e.Alert))
}

func (e *AlertError) Unwrap() error { return e.Err }

// remoteAlert returns the alert in an error of crypto/tls that reports an
// alert the peer sent. crypto/tls reports one as a *net.OpError whose Op is
// "remote error" and whose Err is a value of its unexported alert type (a
// uint8); tls.AlertError is what it uses only for QUIC. The check is on the
// types and the operation, not on any text the peer chose.
func remoteAlert(err error) (uint8, bool) {
	op, ok := errors.AsType[*net.OpError](err)
	if !ok || op.Op != "remote error" || op.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(op.Err)
	if t := v.Type(); t.PkgPath() != "crypto/tls" || t.Name() != "alert" || t.Kind() != reflect.Uint8 {
		return 0, false
	}
	return uint8(v.Uint()), true
}

// afterHandshake types an error met after the TLS handshake completed: an
// alert from the broker becomes an *AlertError.
func afterHandshake(err error) error {
	if a, ok := remoteAlert(err); ok {
		return &AlertError{Alert: a, Err: err}
	}
	return err
}

// Conn is a connected session. Its methods are safe for concurrent use.
type Conn struct {
	conn      *tls.Conn
	raw       net.Conn // under conn; closing it stops every read and write at once
	r         *bufio.Reader
	log       *slog.Logger
	timeout   time.Duration
	keepAlive time.Duration
	observer  Observer

	wlock chan struct{} // held (one element) while a packet is written

	mu      sync.Mutex
	nextID  uint16
	waiting map[uint16]*waiter
	routes  []*route
	err     error
	ping    *time.Timer // the keepalive's next PINGREQ (keepAlive)

	pingPending atomic.Bool
	closing     atomic.Bool // Close has begun: what fails now is its doing
	done        chan struct{}
	once        sync.Once
	wg          sync.WaitGroup // the reader goroutine
}

// waiter is a Publish or Subscribe waiting for the broker's answer.
type waiter struct {
	want packet.Type
	ch   chan *packet.Packet // buffered, one answer
}

// route is a subscription's handler.
type route struct {
	filter  string
	handler func(topic string, payload []byte)
}

// Dial connects once; it does not retry. It returns after the broker
// accepted the session (CONNACK 0), or with an error. A refusal by the
// broker that Config.TLS authenticated wraps a *ConnackError (it reads like
// "link: connect HOST:PORT: not authorized (CONNACK 5)") or an *AlertError;
// anything that fails before the TLS handshake completes (a server that
// does not verify, an alert inside the handshake, bytes that are not TLS)
// is neither.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Second
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.TLS == nil {
		return nil, errors.New("link: Config.TLS is required")
	}
	ka := (cfg.KeepAlive + time.Second - 1) / time.Second
	if ka > 0xffff {
		ka = 0xffff
	}
	connect, err := (&packet.Packet{Type: packet.Connect, ClientID: cfg.ClientID, CleanSession: true, KeepAlive: uint16(ka),
		Username: cfg.Username, Password: cfg.Password}).Append(nil)
	if err != nil {
		return nil, fmt.Errorf("link: connect %s: %w", cfg.Broker, err)
	}
	tc := cfg.TLS
	if tc.ServerName == "" && !tc.InsecureSkipVerify {
		host, _, err := net.SplitHostPort(cfg.Broker)
		if err != nil {
			return nil, fmt.Errorf("link: broker address: %w", err)
		}
		tc = tc.Clone() // Clone keeps the certificate callbacks and signers
		tc.ServerName = host
	}

	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Timeout, fmt.Errorf("timed out after %v", cfg.Timeout))
	defer cancel()
	fail := func(err error) (*Conn, error) {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return nil, fmt.Errorf("link: connect %s: %w", cfg.Broker, err)
	}
	dial := cfg.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	raw, err := dial(ctx, "tcp", cfg.Broker)
	if err != nil {
		return fail(err)
	}
	// Until the session is up, ctx bounds every read and write.
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	conn := tls.Client(raw, tc)
	c := &Conn{
		conn: conn, raw: raw, r: bufio.NewReaderSize(conn, 4096), log: cfg.Logger,
		timeout: cfg.Timeout, keepAlive: cfg.KeepAlive, observer: cfg.Observer,
		wlock: make(chan struct{}, 1), waiting: make(map[uint16]*waiter), done: make(chan struct{}),
	}
	ack, err := c.handshake(ctx, connect)
	if !stop() || err != nil {
		raw.Close()
		if err == nil {
			err = ctx.Err()
		}
		return fail(err)
	}
	if ack.ReturnCode != 0 {
		raw.Close()
		return fail(&ConnackError{Code: ack.ReturnCode})
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		raw.Close()
		return fail(err)
	}
	c.log.Debug("link: connected", "broker", cfg.Broker, "client_id", cfg.ClientID)
	c.mu.Lock()
	c.ping = time.AfterFunc(c.keepAlive, c.keepAliveTick)
	c.mu.Unlock()
	c.wg.Add(1)
	go c.readLoop()
	return c, nil
}

// handshake runs the TLS handshake, sends CONNECT and reads CONNACK.
func (c *Conn) handshake(ctx context.Context, connect []byte) (*packet.Packet, error) {
	if err := c.conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	// The broker is authenticated from here on: in TLS 1.3 it refuses the
	// client certificate with an alert that arrives now.
	if _, err := c.conn.Write(connect); err != nil {
		// A broker that refused the certificate and hung up may have
		// reset the connection before CONNECT went out; its alert can
		// still wait in what was received.
		if _, rerr := c.r.ReadByte(); rerr != nil {
			if a, ok := errors.AsType[*AlertError](afterHandshake(rerr)); ok {
				return nil, fmt.Errorf("send CONNECT: %w", a)
			}
		}
		return nil, fmt.Errorf("send CONNECT: %w", afterHandshake(err))
	}
	p, err := packet.Read(c.r, MaxPacketSize)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("broker closed the connection before CONNACK")
		}
		return nil, fmt.Errorf("read CONNACK: %w", afterHandshake(err))
	}
	if p.Type != packet.Connack {
		return nil, fmt.Errorf("broker sent %v instead of CONNACK", p.Type)
	}
	return p, nil
}

// Publish sends payload with QoS 1 and waits for the broker's PUBACK, at
// most Config.Timeout.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte) error {
	if n := 2 + len(topic) + 2 + len(payload); n > MaxPacketSize {
		return fmt.Errorf("link: publish %s: packet of %d bytes exceeds the limit of %d", topic, n, MaxPacketSize)
	}
	_, err := c.request(ctx, &packet.Packet{Type: packet.Publish, QoS: 1, Topic: topic, Payload: payload}, packet.Puback)
	if err != nil {
		if c.observer != nil {
			c.observer.Unacknowledged(topic, payload)
		}
		return fmt.Errorf("link: publish %s: %w", topic, err)
	}
	if c.observer != nil {
		c.observer.Published(topic, payload)
	}
	return nil
}

// Subscribe subscribes to filter with QoS 1 and waits for the broker's
// SUBACK, at most Config.Timeout. A refusal (SUBACK 0x80) is ErrRefused.
//
// handler runs on the connection's reader goroutine, one message at a time
// in the order they arrive, with a payload it may keep. A QoS 1 message is
// acknowledged after handler returns. While handler runs nothing else is
// read, not even the broker's keepalive answers, so it must not block for
// long: hand the message to another goroutine (the agent does a
// non-blocking send). It must not call Publish or Subscribe, whose answers
// the same goroutine would have to read.
func (c *Conn) Subscribe(ctx context.Context, filter string, handler func(topic string, payload []byte)) error {
	if handler == nil {
		return fmt.Errorf("link: subscribe %s: nil handler", filter)
	}
	r := &route{filter: filter, handler: handler}
	c.mu.Lock()
	c.routes = append(c.routes, r) // before SUBSCRIBE: a message may follow the SUBACK at once
	c.mu.Unlock()
	ack, err := c.request(ctx, &packet.Packet{Type: packet.Subscribe, Filters: []packet.Filter{{Topic: filter, QoS: 1}}}, packet.Suback)
	if err == nil && len(ack.Codes) != 1 {
		err = fmt.Errorf("SUBACK with %d return codes for one filter", len(ack.Codes))
		c.fail(fmt.Errorf("link: protocol error: %w", err))
	}
	if err == nil && ack.Codes[0] == packet.SubackFailure {
		err = ErrRefused
	}
	if err != nil {
		c.removeRoute(r)
		if errors.Is(err, ErrRefused) {
			return fmt.Errorf("%w: subscribe %s", ErrRefused, filter)
		}
		return fmt.Errorf("link: subscribe %s: %w", filter, err)
	}
	return nil
}

func (c *Conn) removeRoute(r *route) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.routes {
		if x == r {
			c.routes = append(c.routes[:i], c.routes[i+1:]...)
			return
		}
	}
}

// request sends p with a fresh packet identifier and waits for the answer
// of type want.
func (c *Conn) request(ctx context.Context, p *packet.Packet, want packet.Type) (*packet.Packet, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &waiter{want: want, ch: make(chan *packet.Packet, 1)}
	id, err := c.register(w)
	if err != nil {
		return nil, err
	}
	defer c.unregister(id)
	p.ID = id
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	if err := c.write(ctx, t.C, p); err != nil {
		return nil, err
	}
	select {
	case ack := <-w.ch:
		return ack, nil
	case <-c.done:
		select {
		case ack := <-w.ch:
			return ack, nil
		default:
		}
		return nil, c.Err()
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("no %v within %v", want, c.timeout)
	}
}

// register assigns w a packet identifier not in use.
func (c *Conn) register(w *waiter) (uint16, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for range 0xffff {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		if _, busy := c.waiting[c.nextID]; !busy {
			c.waiting[c.nextID] = w
			return c.nextID, nil
		}
	}
	return 0, errors.New("every packet identifier is in use")
}

func (c *Conn) unregister(id uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.waiting, id)
}

// write sends one packet. A write that fails or outlasts Config.Timeout
// ends the connection: part of a packet may have been sent. Waiting for
// another write to finish ends early with ctx or expired.
func (c *Conn) write(ctx context.Context, expired <-chan time.Time, p *packet.Packet) error {
	hdr, err := p.AppendHeader(make([]byte, 0, 64))
	if err != nil {
		return err
	}
	select {
	case c.wlock <- struct{}{}:
	case <-c.done:
		return c.Err()
	case <-ctx.Done():
		return ctx.Err()
	case <-expired:
		return fmt.Errorf("could not send %v within %v", p.Type, c.timeout)
	}
	defer func() { <-c.wlock }()
	if c.isDone() {
		return c.Err()
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	if len(p.Payload) <= 16<<10 {
		_, err = c.conn.Write(append(hdr, p.Payload...)) // one TLS record
	} else if _, err = c.conn.Write(hdr); err == nil {
		_, err = c.conn.Write(p.Payload)
	}
	if err != nil {
		if c.isDone() {
			return c.Err()
		}
		err = fmt.Errorf("link: send %v: %w", p.Type, err)
		c.fail(err)
	}
	return err
}

func (c *Conn) readLoop() {
	defer c.wg.Done()
	for {
		p, err := packet.Read(c.r, MaxPacketSize)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("link: broker closed the connection")
			} else {
				err = fmt.Errorf("link: receive: %w", err)
			}
			c.fail(err)
			return
		}
		if err := c.handle(p); err != nil {
			c.fail(err)
			return
		}
	}
}

// handle acts on one packet from the broker.
func (c *Conn) handle(p *packet.Packet) error {
	switch p.Type {
	case packet.Publish:
		if p.QoS > 1 {
			return errors.New("link: protocol error: broker sent QoS 2 to a QoS 1 subscription")
		}
		if c.observer != nil {
			c.observer.Received(p.Topic, p.Payload)
		}
		c.dispatch(p.Topic, p.Payload)
		if p.QoS == 1 {
			// The write bound (Config.Timeout) applies; a failure ends the connection.
			_ = c.write(context.Background(), nil, &packet.Packet{Type: packet.Puback, ID: p.ID})
		}
		return nil
	case packet.Puback, packet.Suback:
		c.mu.Lock()
		w, ok := c.waiting[p.ID]
		if ok {
			delete(c.waiting, p.ID)
		}
		c.mu.Unlock()
		if !ok {
			// An answer to a request that gave up (timeout, ctx).
			c.log.Debug("link: answer for no pending request", "type", p.Type.String(), "id", p.ID)
			return nil
		}
		if w.want != p.Type {
			return fmt.Errorf("link: protocol error: %v for packet %d, which awaits %v", p.Type, p.ID, w.want)
		}
		w.ch <- p
		return nil
	case packet.Pingresp:
		c.pingPending.Store(false)
		return nil
	}
	return fmt.Errorf("link: protocol error: unexpected %v from broker", p.Type)
}

// dispatch runs the handlers whose filter matches topic.
func (c *Conn) dispatch(topic string, payload []byte) {
	c.mu.Lock()
	var hs []func(string, []byte)
	for _, r := range c.routes {
		if match(r.filter, topic) {
			hs = append(hs, r.handler)
		}
	}
	c.mu.Unlock()
	if len(hs) == 0 {
		c.log.Debug("link: message matches no subscription", "topic", topic)
	}
	for i, h := range hs {
		if i > 0 {
			payload = append([]byte(nil), payload...) // each handler owns its payload
		}
		h(topic, payload)
	}
}

// match reports whether an MQTT topic filter matches a topic name. A shared
// subscription ($share/<group>/<filter>) matches as its filter; wildcards at
// the first level do not match topics that start with '$'.
func match(filter, topic string) bool {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			filter = f
		}
	}
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		switch {
		case !fmore:
			return !tmore
		case !tmore:
			return frest == "#" // "a/#" matches "a"
		}
		filter, topic = frest, trest
	}
}

// keepAliveTick sends a PINGREQ keepAlive after the previous one went out
// and declares the connection lost when that one is still unanswered. It
// runs on a timer, not on a goroutine of its own: a connection's one
// long-lived goroutine is its reader.
func (c *Conn) keepAliveTick() {
	if c.isDone() {
		return
	}
	if c.pingPending.Swap(true) {
		c.fail(fmt.Errorf("link: keepalive: no PINGRESP from broker within %v", c.keepAlive))
		return
	}
	if c.write(context.Background(), nil, &packet.Packet{Type: packet.Pingreq}) != nil {
		return
	}
	c.mu.Lock()
	if c.err == nil {
		c.ping.Reset(c.keepAlive) // from when it went out: a long write before it does not count
	}
	c.mu.Unlock()
}

// fail ends the connection with err as its cause; only the first call counts.
func (c *Conn) fail(err error) {
	if c.closing.Load() {
		err = errClosed // e.g. the broker hung up on our DISCONNECT first
	}
	c.once.Do(func() {
		c.mu.Lock()
		c.err = err
		if c.ping != nil {
			c.ping.Stop()
		}
		c.mu.Unlock()
		close(c.done)
		_ = c.raw.Close()
		closed := errors.Is(err, errClosed)
		if !closed {
			c.log.Debug("link: connection lost", "err", err)
		}
		if c.observer != nil {
			if closed {
				err = nil
			}
			c.observer.Ended(err)
		}
	})
}

func (c *Conn) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Done is closed when the connection ends: lost, refused by the broker's
// protocol checks, or closed with Close. It closes exactly once.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, once Done is closed, and nil before.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Connected reports whether the session is up.
func (c *Conn) Connected() bool { return !c.isDone() }

// Close sends DISCONNECT, unless a write in progress does not finish within
// 250ms, and closes the connection. Waiting publishes and subscriptions
// return at once. Calling it again does nothing.
func (c *Conn) Close() {
	if c.isDone() {
		return
	}
	c.closing.Store(true)
	t := time.NewTimer(250 * time.Millisecond)
	defer t.Stop()
	select {
	case c.wlock <- struct{}{}:
		if !c.isDone() {
			_ = c.conn.SetWriteDeadline(time.Now().Add(250 * time.Millisecond))
			_, _ = c.conn.Write([]byte{byte(packet.Disconnect) << 4, 0})
		}
		<-c.wlock
	case <-c.done:
	case <-t.C:
	}
	c.fail(errClosed)
}
