// Package mqttpool connects the fleet to a pool of independent MQTT
// brokers (Mosquitto 2.0 configured by `sigil broker-config`) instead of
// its embedded broker. Every replica of the fleet connects to every
// broker of the pool and subscribes to the devices' up topics with a
// shared subscription ($share/<group>/...), so that each message reaches
// one replica (competing consumers). The brokers bind a device's client ID
// and topics to its certificate (use_identity_as_username,
// use_username_as_clientid and a pattern ACL on %u), and a bootstrap
// client's topics to its client ID (a pattern ACL on %c): the ID in the
// topic a message arrives on is therefore the sender's authenticated
// identity, and the pool reports it as such. A message to a device is
// published to every device broker: only the one holding its session has
// a subscriber.
//
// Transport (NewTransport) is the fleet's MQTT layer on the pool in place
// of the embedded broker: presence from what devices send, stale sessions
// ended, quarantines kept in step with the inventory on every broker.
// Complete and WriteConfig generate a broker's configuration from the
// fleet CA and the fleet's credentials (Secret).
package mqttpool

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Errors of Publish and Run.
var (
	// ErrNotConnected: no broker the message should go to is connected.
	ErrNotConnected = errors.New("mqttpool: no broker of the pool is connected")
	// ErrBusy: the send queue of every broker the message should go to
	// is full (those brokers are slow or stopped reading): the message
	// was not sent, as when a send fails.
	ErrBusy = errors.New("mqttpool: the brokers' send queues are full")
	// ErrConfig: the configuration is incomplete.
	ErrConfig = errors.New("mqttpool: invalid configuration")
)

// DefaultGroup is the shared subscription group of the fleet's replicas.
const DefaultGroup = "sigil"

// Config describes the pool and the fleet's credentials on it.
type Config struct {
	// Devices are the brokers enrolled devices connect to ("host:port" of
	// each broker's fleet listener).
	Devices []string
	// Bootstrap are the brokers bootstrap (enrollment) clients connect to
	// ("host:port" of each one's fleet listener). They are separate
	// instances: a broker's client IDs are shared by its listeners, and
	// an anonymous client must never take a device's.
	Bootstrap []string
	// Username and Password are the fleet's credentials on its listeners.
	Username string
	Password string
	// TLS verifies the brokers (RootCAs, ServerName if not the host).
	TLS *tls.Config
	// Topics names the topic tree; Group the shared subscription group
	// (DefaultGroup if empty).
	Topics wire.Topics
	Group  string
	// OnConnect, when set, is called with a broker's address after each
	// connection to it (on that connection's goroutine): to bring a
	// broker that was down, or new, up to date (Quarantine, QuarantineAt).
	OnConnect func(broker string)
	// PublishTimeout bounds the wait for a broker's PUBACK (default 5s),
	// by the broker's own sender (Publish does not wait for it): a message
	// unacknowledged by then is logged as lost.
	PublishTimeout time.Duration
	// Sessions, when set, gives this replica a persistent session on the
	// device brokers, held under a lease for as long as it runs, and lets
	// it drain the sessions of replicas that died (see Sessions). Nil:
	// clean sessions, as one process needs (what is in flight to a
	// replica when it stops is lost with it).
	Sessions Sessions
	// DrainEvery is how often a replica looks for dead replicas' sessions
	// to drain (default 10s); DrainQuiet how long a drained session stays
	// silent before it is taken to be empty (default 1s).
	DrainEvery, DrainQuiet time.Duration
	// OnSession, when set, is told of each device session a device broker
	// opens or closes, read from the broker's connection log (see
	// SessionEvent; Member configures the brokers to publish it). It runs
	// on the connection's goroutine: it must not block.
	OnSession func(SessionEvent)
	Logger    *slog.Logger
}

// Sessions are the leases behind the replicas' persistent sessions
// (fleet/storage/lease.Postgres). Each replica holds the lease of its own
// session while it runs and names its session on the device brokers
// after it. A replica that dies stops renewing it; another one then
// takes the lease over, connects as the dead one's session to receive
// what the brokers kept for it (the messages queued for it and those it
// had not acknowledged, which they send again), disconnects, removes the
// session and retires the lease. Every device message is therefore
// handled by some replica: acknowledged only once handled, never lost
// with a replica.
type Sessions interface {
	Hold(ctx context.Context, name string, fn func(context.Context) error) error
	TryAcquire(ctx context.Context, name string) (lease.Lease, bool, error)
	Renew(ctx context.Context, l lease.Lease) error
	Expired(ctx context.Context, prefix string) ([]string, error)
	Retire(ctx context.Context, l lease.Lease) error
}

var _ Sessions = (*lease.Postgres)(nil)

// Message is a message a device or a bootstrap client sent.
type Message struct {
	Topic   wire.Topic // parsed; Topic.ID is the sender, as its broker bound it
	Name    string     // the topic name
	Payload []byte
	Broker  string // the broker it came through
}

// Pool is the fleet's connections to the brokers of a pool.
type Pool struct {
	cfg     Config
	log     *slog.Logger
	mu      sync.Mutex
	subs    map[string]func(Message) // by segment
	clients map[string]mqtt.Client   // by broker address
	ready   map[string]int           // by broker address: subscriptions granted since its last connect
	lost    map[string]chan struct{} // by broker address: its connection was lost
	queues  []chan job               // of the workers
	outs    map[string]chan outgoing // by broker address: its send queue (send)
	stop    chan struct{}            // closed when Run ends: workers and waiting deliveries stop
	running bool
	dynsec  sync.Mutex // one QuarantinedAt at a time: its subscription's handler is the pool's
	session string     // the suffix of this replica's device-broker client ID and its lease (Sessions set)
	sessLog sessionLog
}

// New checks cfg; Run connects.
func New(cfg Config) (*Pool, error) {
	if len(cfg.Devices) == 0 {
		return nil, fmt.Errorf("%w: no device broker", ErrConfig)
	}
	if cfg.TLS == nil {
		return nil, fmt.Errorf("%w: no TLS configuration", ErrConfig)
	}
	if cfg.Username == "" || cfg.Password == "" {
		return nil, fmt.Errorf("%w: the fleet's broker credentials are missing", ErrConfig)
	}
	for _, a := range append(slicesClone(cfg.Devices), cfg.Bootstrap...) {
		if !strings.Contains(a, ":") {
			return nil, fmt.Errorf("%w: broker %q is not host:port", ErrConfig, a)
		}
	}
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if strings.ContainsAny(cfg.Group, "/+#") {
		return nil, fmt.Errorf("%w: group %q", ErrConfig, cfg.Group)
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Pool{cfg: cfg, log: cfg.Logger, subs: map[string]func(Message){}, clients: map[string]mqtt.Client{}, ready: map[string]int{},
		lost: map[string]chan struct{}{}, stop: make(chan struct{}), queues: make([]chan job, workers)}
	for i := range p.queues {
		p.queues[i] = make(chan job, workerQueue)
	}
	p.outs = map[string]chan outgoing{}
	for _, a := range append(slicesClone(cfg.Devices), cfg.Bootstrap...) {
		p.outs[a] = make(chan outgoing, sendQueue)
	}
	if cfg.Sessions != nil {
		b := make([]byte, 12)
		_, _ = rand.Read(b)
		p.session = hex.EncodeToString(b)
	}
	if p.cfg.DrainEvery <= 0 {
		p.cfg.DrainEvery = 10 * time.Second
	}
	if p.cfg.DrainQuiet <= 0 {
		p.cfg.DrainQuiet = time.Second
	}
	return p, nil
}

// sessionPrefix is the lease name of the replicas' sessions, before each
// one's ID.
func (p *Pool) sessionPrefix() string { return "mqttpool/" + p.cfg.Group + "/session/" }

// sessionClientID is the client ID of a replica's persistent session on
// the device brokers (id: its session's ID, random hex). Devices' client
// IDs are their certificates' names, which the fleet issues: never one of
// these.
func (p *Pool) sessionClientID(id string) string { return p.cfg.Username + "-session-" + id }

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// Subscribe delivers every up message of a segment (wire.SegDevice from
// the device brokers, wire.SegEnroll from the bootstrap brokers) to
// handler, on the connection's goroutine. Call it before Run.
func (p *Pool) Subscribe(segment string, handler func(Message)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		return errors.New("mqttpool: subscribe before Run")
	}
	if segment != wire.SegDevice && segment != wire.SegEnroll {
		return fmt.Errorf("%w: segment %q", ErrConfig, segment)
	}
	p.subs[segment] = handler
	return nil
}

// brokers are the addresses of a segment's brokers.
func (p *Pool) brokers(segment string) []string {
	if segment == wire.SegEnroll {
		return p.cfg.Bootstrap
	}
	return p.cfg.Devices
}

// Run connects to every broker (retrying, with a growing delay, those
// that are down or lost) and serves until ctx ends, then disconnects;
// it returns once every connection is closed.
func (p *Pool) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.running {
		p.mu.Unlock()
		return errors.New("mqttpool: Run called twice")
	}
	p.running = true
	for _, seg := range []string{wire.SegDevice, wire.SegEnroll} {
		for _, addr := range p.brokers(seg) {
			if _, ok := p.clients[addr]; !ok {
				p.lost[addr] = make(chan struct{}, 1)
				p.clients[addr] = p.client(addr)
			}
		}
	}
	type conn struct {
		addr string
		c    mqtt.Client
		lost chan struct{}
	}
	var conns []conn
	for a, c := range p.clients {
		conns = append(conns, conn{a, c, p.lost[a]})
	}
	p.mu.Unlock()
	var workersWG, wg sync.WaitGroup
	for _, q := range p.queues {
		workersWG.Go(func() { p.work(q) })
	}
	for _, c := range conns {
		workersWG.Go(func() { p.send(c.addr, c.c, p.outs[c.addr]) })
	}
	var persistent []conn
	for _, c := range conns {
		if p.session != "" && contains(p.cfg.Devices, c.addr) {
			persistent = append(persistent, c)
			continue
		}
		wg.Go(func() { p.keep(ctx, c.addr, c.c, c.lost) })
	}
	if len(persistent) > 0 {
		// The session is this replica's while it holds its lease: lost
		// (cut off from the database longer than the lease lives), the
		// connections end before another replica may drain the session,
		// and come back once the lease is held again.
		wg.Go(func() {
			err := p.cfg.Sessions.Hold(ctx, p.sessionPrefix()+p.session, func(ctx context.Context) error {
				var cw sync.WaitGroup
				for _, c := range persistent {
					cw.Go(func() { p.keep(ctx, c.addr, c.c, c.lost) })
				}
				cw.Wait()
				return nil
			})
			if err != nil {
				p.log.Error("the replica's session lease failed", "err", err)
			}
		})
		wg.Go(func() { p.drainLoop(ctx) })
	}
	<-ctx.Done()
	close(p.stop) // a delivery waiting for a full queue lets the connection close
	wg.Wait()
	workersWG.Wait()
	return nil
}

// Retry delays of a broker connection.
const (
	retryMin = time.Second
	retryMax = 10 * time.Second
)

// keep holds one broker's connection until ctx ends: it connects, and
// connects again when the connection fails or is lost.
func (p *Pool) keep(ctx context.Context, addr string, c mqtt.Client, lost chan struct{}) {
	delay := retryMin
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-lost: // of an earlier connection
		default:
		}
		tok := c.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			<-tok.Done() // bounded by the connect timeout
			if c.IsConnectionOpen() {
				c.Disconnect(250)
			}
			return
		}
		if err := tok.Error(); err != nil {
			p.log.Warn("connecting to a broker of the pool failed", "broker", addr, "err", err, "retry_in", delay)
			retry.Reset(delay)
			select {
			case <-ctx.Done():
				return
			case <-retry.C:
			}
			delay = min(2*delay, retryMax)
			continue
		}
		p.log.Info("connected to a broker of the pool", "broker", addr)
		delay = retryMin
		if p.cfg.OnConnect != nil {
			p.cfg.OnConnect(addr)
		}
		select {
		case <-ctx.Done():
			c.Disconnect(250)
			return
		case <-lost:
		}
	}
}

// client builds the connection to one broker. Its client ID is random
// (per replica and broker): on the bootstrap brokers, clients choose
// their own IDs, and one that knew the fleet's could take its session.
// With Sessions, a device broker's connection is this replica's
// persistent session instead (sessionClientID): only the fleet's
// credentials reach that listener, and devices' IDs are bound to their
// certificates.
func (p *Pool) client(addr string) mqtt.Client {
	o := p.options(addr, randomID())
	if p.session != "" && contains(p.cfg.Devices, addr) {
		o.SetClientID(p.sessionClientID(p.session))
		o.SetCleanSession(false)
		// What the kept session sends before this connection subscribes
		// again goes where the subscription would take it.
		if h := p.subs[wire.SegDevice]; h != nil {
			o.SetDefaultPublishHandler(p.deliver(wire.SegDevice, addr, h))
		}
	}
	lost := p.lost[addr]
	o.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		p.mu.Lock()
		delete(p.ready, addr)
		p.mu.Unlock()
		if p.cfg.OnSession != nil {
			// Their end will not be heard of.
			for _, ev := range p.sessLog.lost(addr, time.Now()) {
				p.cfg.OnSession(ev)
			}
		}
		p.log.Warn("connection to a broker of the pool lost", "broker", addr, "err", err)
		select {
		case lost <- struct{}{}:
		default:
		}
	})
	o.SetOnConnectHandler(func(c mqtt.Client) { p.subscribe(c, addr) })
	c := mqtt.NewClient(o)
	if p.cfg.OnSession != nil && contains(p.cfg.Devices, addr) {
		// Routed before the subscription is made again: a persistent
		// session may deliver first.
		c.AddRoute(logNotice, func(_ mqtt.Client, m mqtt.Message) {
			for _, ev := range p.sessLog.line(addr, m.Payload(), time.Now()) {
				p.cfg.OnSession(ev)
			}
			m.Ack()
		})
	}
	return c
}

// ServerCertificates returns the certificate each broker of the pool
// presents (by address), from a TLS handshake with its fleet listener,
// verified as the pool's connections verify it; a broker's listeners
// share it, so it is the one its devices (or bootstrap clients) are
// shown. A broker that cannot be reached, or whose certificate does not
// verify, is an error.
func (p *Pool) ServerCertificates(ctx context.Context) (map[string]*x509.Certificate, error) {
	out := map[string]*x509.Certificate{}
	var errs []error
	for _, addr := range append(slicesClone(p.cfg.Devices), p.cfg.Bootstrap...) {
		cfg := p.cfg.TLS.Clone()
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				errs = append(errs, fmt.Errorf("mqttpool: broker %s: %w", addr, err))
				continue
			}
			cfg.ServerName = host
		}
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := (&tls.Dialer{Config: cfg}).DialContext(dctx, "tcp", addr)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("mqttpool: broker %s: %w", addr, err))
			continue
		}
		out[addr] = conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		conn.Close()
	}
	return out, errors.Join(errs...)
}

// options are a connection's to the broker at addr as clientID: a clean
// session, acknowledged by the pool once each message is handled (work),
// reconnected by keep.
func (p *Pool) options(addr, clientID string) *mqtt.ClientOptions {
	o := mqtt.NewClientOptions()
	o.AddBroker("tls://" + addr)
	o.SetTLSConfig(p.cfg.TLS.Clone())
	o.SetUsername(p.cfg.Username)
	o.SetPassword(p.cfg.Password)
	o.SetClientID(clientID)
	o.SetCleanSession(true)
	o.SetAutoAckDisabled(true)
	o.SetProtocolVersion(4)
	o.SetAutoReconnect(false) // keep reconnects, and stops when Run ends
	o.SetConnectRetry(false)
	o.SetConnectTimeout(10 * time.Second)
	o.SetOrderMatters(true) // deliver only queues (workers): a device's messages stay in order
	return o
}

// subscribe (re)subscribes a connection to the up topics of the segments
// its broker serves, after each connect (a clean session has none; a
// persistent one keeps them, and subscribing again changes nothing).
func (p *Pool) subscribe(c mqtt.Client, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.ready, addr)
	if p.cfg.OnSession != nil && contains(p.cfg.Devices, addr) {
		tok := c.Subscribe(logNotice, 0, nil) // routed in client
		go func() {
			if tok.Wait(); tok.Error() != nil {
				p.log.Error("subscription to a device broker's connection log failed: clones on it go unseen", "broker", addr, "err", tok.Error())
			}
		}()
	}
	for seg, h := range p.subs {
		if !contains(p.brokers(seg), addr) {
			continue
		}
		filter := "$share/" + p.cfg.Group + "/" + p.cfg.Topics.Filter(seg, "+", wire.Up)
		tok := c.Subscribe(filter, 1, p.deliver(seg, addr, h))
		go func() {
			tok.Wait()
			if err := tok.Error(); err != nil {
				p.log.Error("subscription to a broker of the pool failed", "broker", addr, "err", err)
				return
			}
			p.mu.Lock()
			p.ready[addr]++
			p.mu.Unlock()
			p.log.Info("subscribed to a broker of the pool", "broker", addr, "segment", seg)
		}()
	}
}

// deliver hands a message to h if its topic is one of the segment's up
// topics: the ID in it is then the one the broker bound to its sender.
func (p *Pool) deliver(seg, addr string, h func(Message)) mqtt.MessageHandler {
	return func(_ mqtt.Client, m mqtt.Message) {
		tp, err := p.cfg.Topics.Parse(m.Topic())
		if err != nil || tp.Segment != seg || tp.Dir != wire.Up {
			p.log.Warn("message outside the subscribed topics dropped", "broker", addr)
			m.Ack()
			return
		}
		j := job{h: h, m: Message{Topic: tp, Name: m.Topic(), Payload: m.Payload(), Broker: addr}, ack: m.Ack}
		select {
		case p.queue(tp.ID) <- j: // waits when full: the broker holds back
		case <-p.stop:
		}
	}
}

// job is a message for a handler, and its acknowledgement to the broker.
type job struct {
	h   func(Message)
	m   Message
	ack func()
}

// Messages are handled by workers, each with its own queue; a sender's
// messages always go to the same one, so they are handled in the order
// its broker delivered them, as the embedded broker does, while
// different senders' are handled side by side.
const (
	workers     = 16
	workerQueue = 1024
)

// queue is the queue of a sender's messages.
func (p *Pool) queue(id string) chan job {
	h := fnv.New32a()
	h.Write([]byte(id))
	return p.queues[h.Sum32()%uint32(len(p.queues))]
}

// work handles the jobs of q until stop is closed.
func (p *Pool) work(q chan job) {
	for {
		select {
		case <-p.stop:
			return
		case j := <-q:
			j.h(j.m)
			j.ack() // once handled: a replica that dies before leaves it to its broker to send again
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Publish sends a message to every broker of the topic's segment that is
// connected (only the one holding the recipient's session delivers it)
// through each one's send queue, without waiting for their PUBACKs: a
// slow or stopped broker backs up its own queue only, never the caller
// (the workers handling devices' messages). It fails when no broker is
// connected (ErrNotConnected) or every one's queue is full (ErrBusy).
// Each broker gets a caller's messages in the order it published them.
// Messages go at QoS 1 whatever qos says: the protocol's are all QoS 1.
func (p *Pool) Publish(topic string, payload []byte, _ byte) error {
	tp, err := p.cfg.Topics.Parse(topic)
	if err != nil || tp.Dir != wire.Down {
		return fmt.Errorf("mqttpool: not a down topic: %q", topic)
	}
	return p.publishTo(tp.Segment, topic, payload)
}

// publishTo publishes at QoS 1 to every connected broker of a segment.
func (p *Pool) publishTo(segment, topic string, payload []byte) error {
	return p.publishAt(p.brokers(segment), topic, payload)
}

// publishAt queues a message for those of brokers that are connected.
func (p *Pool) publishAt(brokers []string, topic string, payload []byte) error {
	p.mu.Lock()
	var targets []string
	for _, addr := range brokers {
		if c := p.clients[addr]; c != nil && c.IsConnectionOpen() {
			targets = append(targets, addr)
		}
	}
	p.mu.Unlock()
	if len(targets) == 0 {
		return ErrNotConnected
	}
	queued := 0
	for _, addr := range targets {
		select {
		case p.outs[addr] <- outgoing{topic: topic, payload: payload}:
			queued++
		default:
			p.log.Warn("a broker's send queue is full: message to it dropped", "broker", addr)
		}
	}
	if queued == 0 {
		return ErrBusy
	}
	return nil
}

// outgoing is a message queued for a broker.
type outgoing struct {
	topic   string
	payload []byte
}

// A broker's send queue, and how many of its messages may await their
// PUBACK: when it is slow, both fill, and what more is published to it
// fails at once (ErrBusy) instead of waiting.
const (
	sendQueue    = 4096
	sendInflight = 1024
)

// inflight is a message sent to a broker, awaiting its PUBACK until by.
type inflight struct {
	tok mqtt.Token
	by  time.Time
}

// send publishes the messages of q, in order, on c (the connection to
// addr) until stop is closed; a second goroutine waits for their PUBACKs
// and logs those that fail or do not come in time.
func (p *Pool) send(addr string, c mqtt.Client, q chan outgoing) {
	const qos = 1
	pending := make(chan inflight, sendInflight)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { p.acks(addr, pending) })
	for {
		select {
		case <-p.stop:
			return
		case m := <-q:
			f := inflight{tok: c.Publish(m.topic, qos, false, m.payload), by: time.Now().Add(p.cfg.PublishTimeout)}
			select {
			case pending <- f:
			case <-p.stop:
				return
			}
		}
	}
}

// acks waits for the PUBACKs of what send sent to addr until stop is
// closed.
func (p *Pool) acks(addr string, pending chan inflight) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		var f inflight
		select {
		case <-p.stop:
			return
		case f = <-pending:
		}
		timer.Reset(time.Until(f.by))
		select {
		case <-p.stop:
			return
		case <-f.tok.Done():
			if err := f.tok.Error(); err != nil {
				p.log.Warn("a message to a broker of the pool was lost", "broker", addr, "err", err)
			}
		case <-timer.C:
			p.log.Warn("a message to a broker of the pool was lost: no PUBACK in time", "broker", addr)
		}
	}
}

// Kick ends deviceID's session on every device broker that has one,
// through the dynamic security plugin (Member.DynsecPlugin): the plugin
// ends the sessions of a client it deletes, so the device is made known
// to it (unless it is, quarantined) and deleted at once. A quarantine
// (Quarantine) ends with it. The device may connect again, unless its
// certificate is refused by then (CRL). It fails when no device broker
// took the command.
func (p *Pool) Kick(deviceID string) error {
	cmd, err := kickCommand(deviceID)
	if err != nil {
		return err
	}
	return p.publishTo(wire.SegDevice, dynsecTopic, cmd)
}

// kickCommand is the plugin's commands that end deviceID's sessions and
// its quarantine.
func kickCommand(deviceID string) ([]byte, error) {
	if !wire.ValidID(deviceID) {
		return nil, fmt.Errorf("mqttpool: kick: invalid device ID %q", deviceID)
	}
	return json.Marshal(map[string]any{"commands": []map[string]string{
		{"command": "createClient", "username": deviceID},
		{"command": "deleteClient", "username": deviceID},
		{"command": "deleteRole", "rolename": quarantineRole(deviceID)}, // a quarantine's, if any
	}})
}

// quarantineRolePrefix names the dynamic security roles of quarantined
// devices.
const quarantineRolePrefix = "sigil-quarantine-"

// quarantineRole is the dynamic security role of a quarantined device.
func quarantineRole(deviceID string) string { return quarantineRolePrefix + deviceID }

// Quarantine limits deviceID, on every device broker, to publishing on
// the up topics of kinds (and to its down topics), and ends its sessions
// so that it reconnects under the limit: the dynamic security plugin
// gets a role for the device and the device as its client (a client it
// knows, its ACLs decide over the pattern ACL's). Release undoes it.
func (p *Pool) Quarantine(deviceID string, kinds []string) error {
	cmd, err := p.quarantineCommand(deviceID, kinds)
	if err != nil {
		return err
	}
	return p.publishTo(wire.SegDevice, dynsecTopic, cmd)
}

// QuarantineAt is Quarantine on one device broker, by its address in
// Config.Devices: to bring it up to date after it was down (OnConnect).
func (p *Pool) QuarantineAt(broker, deviceID string, kinds []string) error {
	cmd, err := p.quarantineCommand(deviceID, kinds)
	if err != nil {
		return err
	}
	if !contains(p.cfg.Devices, broker) {
		return fmt.Errorf("mqttpool: %q is not a device broker of the pool", broker)
	}
	return p.publishAt([]string{broker}, dynsecTopic, cmd)
}

// quarantineCommand is the plugin's commands that quarantine deviceID.
func (p *Pool) quarantineCommand(deviceID string, kinds []string) ([]byte, error) {
	if !wire.ValidID(deviceID) {
		return nil, fmt.Errorf("mqttpool: quarantine: invalid device ID %q", deviceID)
	}
	type acl struct {
		Type     string `json:"acltype"`
		Topic    string `json:"topic"`
		Allow    bool   `json:"allow"`
		Priority int    `json:"priority"`
	}
	acls := []acl{
		{"publishClientSend", p.cfg.Topics.Filter(wire.SegDevice, deviceID, wire.Up), false, 0},
		{"subscribePattern", p.cfg.Topics.Filter(wire.SegDevice, deviceID, wire.Down), true, 0},
		{"publishClientReceive", p.cfg.Topics.Filter(wire.SegDevice, deviceID, wire.Down), true, 0},
	}
	for _, k := range kinds {
		acls = append(acls, acl{"publishClientSend", p.cfg.Topics.DeviceUp(deviceID, k), true, 10})
	}
	role := quarantineRole(deviceID)
	return json.Marshal(map[string]any{"commands": []map[string]any{
		{"command": "deleteClient", "username": deviceID},
		{"command": "deleteRole", "rolename": role},
		{"command": "createRole", "rolename": role, "acls": acls},
		{"command": "createClient", "username": deviceID, "roles": []map[string]any{{"rolename": role}}},
		// createClient leaves a session open: end it.
		{"command": "disableClient", "username": deviceID},
		{"command": "enableClient", "username": deviceID},
	}})
}

// Release lifts Quarantine: the device is deleted from the plugin (which
// ends its sessions) with its role, and the pattern ACL decides again.
func (p *Pool) Release(deviceID string) error {
	return p.Kick(deviceID)
}

// Connected reports how many brokers of the pool the fleet is connected
// to now, of how many.
func (p *Pool) Connected() (up, all int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.clients {
		if c.IsConnectionOpen() {
			up++
		}
	}
	return up, len(p.clients)
}

// Ready reports whether the fleet is connected to every broker of the
// pool and holds all its subscriptions there.
func (p *Pool) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.clients) == 0 {
		return false
	}
	for addr, c := range p.clients {
		want := 0
		for seg := range p.subs {
			if contains(p.brokers(seg), addr) {
				want++
			}
		}
		if !c.IsConnectionOpen() || p.ready[addr] < want {
			return false
		}
	}
	return true
}

func randomID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "sigil-fleet-" + hex.EncodeToString(b)
}
