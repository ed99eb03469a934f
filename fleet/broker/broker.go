// Package broker is the fleet's embedded MQTT broker: mochi-mqtt behind a
// TLS listener of our own, with a hook that enforces Sigil's topic rules.
//
// Two kinds of remote clients connect:
//
//   - A device presents a certificate that chains to Config.ClientCAs (checked
//     by TLS). Its device ID is read from the certificate with
//     identity.FromCertificate; its MQTT client ID must equal that ID, and
//     Config.Gate must admit it. It may publish only to
//     <prefix>/v1/dev/<id>/up/<kind> and subscribe only to
//     <prefix>/v1/dev/<id>/down/<kind>, where <kind> may be "+" or "#".
//   - A bootstrap client presents no certificate (only if
//     Config.AllowBootstrap). Its client ID must pass wire.ValidID. It may
//     publish only to <prefix>/v1/enroll/<client-id>/up/<kind> and subscribe
//     only under <prefix>/v1/enroll/<client-id>/down/. Its session is always
//     clean and short: it must ask for a keepalive, publish its first
//     enrollment message promptly, and it is closed after a lifetime. At
//     most Config.MaxBootstrapClients such TLS connections share a pool
//     where newcomers displace the least active, and known devices that
//     re-enroll have a reserve of their own (bootstrap.go).
//
// Only the fleet's inline client (Publish, Subscribe) reaches other trees,
// $SYS included (mochi itself silently drops a client's publish to a topic
// starting with '$' before any hook sees it, so that one is not counted). Retained flags from clients are stripped and nothing is
// retained; a will is refused at CONNECT unless it targets the client's own
// up topic and is not retained.
//
// A forbidden subscription is answered with SUBACK failure (0x80 in MQTT
// 3.1.1, 0x87 in MQTT 5). A forbidden publish is dropped, counted, and the
// client is disconnected whatever the QoS: MQTT 3.1.1 has no negative PUBACK,
// so a silent drop would let a broken device believe it delivered, and a
// disconnect makes the failure visible in its logs.
//
// A client ID held by a connected device cannot be taken by a bootstrap
// client (an anonymous client cannot kick a device). When a client takes over
// a session that belongs to a different identity, that session's
// subscriptions and queued messages are dropped rather than inherited.
//
// Every message handed to a fleet subscription carries the Identity of the
// client that published it, as authenticated at the connection, and is
// checked against the topic rules once more before delivery.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sigil-iot/sigil/fleet/internal/loglimit"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Identity is who a client is, as established at its connection. Payload
// claims never change it.
type Identity struct {
	ClientID string            // MQTT client ID
	DeviceID string            // device ID from the certificate; "" for bootstrap clients
	Cert     *x509.Certificate // verified client certificate; nil for bootstrap clients
	Fleet    bool              // the fleet's own inline client
	Site     string            // the site of a bridge (bridge.go); "" for others
	UpKinds  []string          // Access.UpKinds granted at admission; nil = every kind
}

// Bootstrap reports whether the identity is a client without certificate.
func (id Identity) Bootstrap() bool { return !id.Fleet && id.DeviceID == "" && id.Site == "" }

// Gate decides whether a device with a valid certificate may connect. The
// fleet implements it with its inventory (refusing decommissioned devices or
// revoked serials, for example).
type Gate interface {
	// AdmitDevice returns the device's access to admit it; its error is logged and
	// reported in a Refused event, never sent to the client.
	AdmitDevice(deviceID string, cert *x509.Certificate) (Access, error)
}

// Access limits what an admitted device may do beyond the topic rules.
type Access struct {
	// UpKinds, when not nil, lists the only message kinds the device may
	// publish (its <prefix>/v1/dev/<id>/up/<kind> topics), e.g. a
	// quarantined device limited to "attest".
	UpKinds []string
}

// GateFunc adapts a function to Gate.
type GateFunc func(deviceID string, cert *x509.Certificate) (Access, error)

// AdmitDevice calls f.
func (f GateFunc) AdmitDevice(deviceID string, cert *x509.Certificate) (Access, error) {
	return f(deviceID, cert)
}

// EventKind says what happened to a connection.
type EventKind int

// Event kinds.
const (
	// Connected: a client was admitted. A device that reconnects before its
	// old connection is gone is reported Connected again.
	Connected EventKind = iota + 1
	// Disconnected: the last connection of a client ID ended.
	Disconnected
	// Refused: a CONNECT was refused, or the TLS handshake refused a
	// client certificate (Presented); Reason says why.
	Refused
	// Closed: an admitted connection ended while another connection of
	// its client ID stays open (a session taken over). With Disconnected,
	// the end of every admitted connection is reported exactly once.
	Closed
)

func (k EventKind) String() string {
	switch k {
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	case Refused:
		return "refused"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event reports a change in a client's connection.
type Event struct {
	Kind     EventKind
	Identity Identity
	Reason   string // why a connection was refused or ended, for logs
	Time     time.Time
	// Remote is the client's address ("host:port").
	Remote string
	// Presented is the client certificate a TLS handshake refused (it does
	// not chain to a trusted CA): unverified, set only in such Refused
	// events, whose Identity is empty.
	Presented *x509.Certificate
}

// Stats are the broker's counters.
type Stats struct {
	Connections          int64  // MQTT clients admitted and connected now
	DeviceConnections    int64  // of which devices
	BootstrapConnections int64  // TLS connections without certificate open now (admitted or not yet)
	AuthRefusals         uint64 // CONNECTs refused
	ACLDenials           uint64 // publishes and subscriptions refused (and deliveries not allowed)
	BootstrapOverCap     uint64 // bootstrap connections displaced, or closed at CONNECT without a slot, because a cap was reached
	BootstrapReserved    int64  // of BootstrapConnections, reserved sessions of known devices open now
	BootstrapReserveUsed uint64 // bootstrap sessions given a reserved slot so far
	BootstrapExpired     uint64 // bootstrap connections closed at BootstrapFirstMessage or BootstrapLifetime
	HandshakeFailures    uint64 // TLS handshakes that failed or timed out
	AcceptErrors         uint64 // failed accepts (the listener backs off and retries)
	DroppedInline        uint64 // messages withheld from fleet subscriptions (sender gone or not allowed)
	LogSuppressed        uint64 // log lines about clients without certificate counted instead of written
	MalformedPackets     uint64 // connections ended by a malformed MQTT packet or a protocol violation
}

// Config configures a Broker.
type Config struct {
	// Addr is the TCP address of the TLS listener, e.g. "127.0.0.1:8883".
	// A port of 0 picks a free port; Addr() tells which after Start.
	Addr string
	// TLS holds the server certificate. The broker works on a clone and sets
	// ClientAuth (VerifyClientCertIfGiven, or RequireAndVerifyClientCert
	// when AllowBootstrap is false), ClientCAs and, if Now is set, Time.
	TLS *tls.Config
	// ClientCAs verifies device certificates. Required unless ClientCAsFunc
	// is set.
	ClientCAs *x509.CertPool
	// ClientCAsFunc, when set, is asked for the pool at each handshake, for
	// a CA whose roots change (rotation). It must return the same pool
	// pointer while nothing changed; the TLS configuration derived from it
	// is cached by that pointer.
	ClientCAsFunc func() *x509.CertPool
	// ClaimCAs are CAs of claim certificates: batch credentials a device
	// maker installs so that devices may open a bootstrap session. A client
	// presenting one is a bootstrap client (enrollment topics only), never
	// a device. Optional.
	ClaimCAs []*x509.Certificate
	// BootstrapAuth, when set, must accept every bootstrap CONNECT: the
	// client's ID, its MQTT user name and password (an enrollment token),
	// and its verified claim certificate (nil without one). Nil admits
	// bootstrap clients without a credential (they are limited to their
	// own enrollment topics either way).
	BootstrapAuth func(clientID, username string, password []byte, claim *x509.Certificate) error
	// TrustDomain is the SPIFFE trust domain of device certificates. Required.
	TrustDomain string
	// Topics names the topic tree (default prefix wire.DefaultPrefix).
	Topics wire.Topics
	// Gate admits devices; nil admits every device with a valid certificate.
	Gate Gate
	// Bridges admits plant brokers' bridges (bridge.go); nil refuses them.
	Bridges BridgeGate
	// AllowBootstrap lets clients without certificate connect, restricted to
	// their own enrollment topics. The zero value refuses them; the fleet
	// server enables it by default.
	AllowBootstrap bool
	// MaxBootstrapClients caps concurrent TLS connections without
	// certificate (the bootstrap pool, bootstrap.go). At the cap, a new
	// one displaces the least recently active connection of the source
	// that holds most, if that one has been inactive for
	// BootstrapDisplaceIdle. Default 1000.
	MaxBootstrapClients int
	// MaxBootstrapPerSource caps them per source (IPv4 address, IPv6
	// /64), so one host cannot hold the whole allowance; at the cap a new
	// connection from that source displaces its least recently active
	// one, on the same condition. Default 256 (devices behind one NAT
	// enroll in bursts).
	MaxBootstrapPerSource int
	// BootstrapDisplaceIdle is how long a bootstrap connection must have
	// been inactive (no handshake, CONNECT or enrollment publish) before
	// a newcomer may displace it. Default 10s.
	BootstrapDisplaceIdle time.Duration
	// BootstrapReserve is the bootstrap sessions kept, beyond the pool,
	// for known devices that re-enroll (KnownDevice), at most one per
	// device: a reserved session is never displaced. As many connections
	// that found no slot may wait for their CONNECT in an overflow, which
	// they keep only by being a known device. Default 64.
	BootstrapReserve int
	// KnownDevice, if set, is asked at each bootstrap CONNECT whether the
	// client ID names a device the fleet knows, and which (sigild names
	// its bootstrap client "e-<first 16 hex digits of its device
	// ID>-<random>"). Such a session moves from the pool to the reserve
	// while the reserve has room and the device holds no other reserved
	// session. It runs on the connection's goroutine and must not block.
	KnownDevice func(clientID string) (device string, ok bool)
	// MaxBootstrapKeepalive bounds the keepalive a bootstrap client asks
	// for: a CONNECT without keepalive (0) or with a longer one is
	// refused. Default 2m.
	MaxBootstrapKeepalive time.Duration
	// BootstrapFirstMessage is how long a bootstrap client may stay
	// connected after its CONNECT without publishing to its enrollment
	// topic; then it is disconnected. Default 30s.
	BootstrapFirstMessage time.Duration
	// BootstrapLifetime is the longest a bootstrap connection stays open,
	// from its TLS handshake, however busy; a device that still needs one
	// connects again. Default 5m.
	BootstrapLifetime time.Duration
	// HandshakeTimeout bounds the TLS handshake and the wait for CONNECT.
	// Default 10s.
	HandshakeTimeout time.Duration
	// MaxWritesPending is the per-client outbound queue, in packets: a
	// client whose queue is full loses messages. Default 1024 (mochi's own
	// default, 8192, costs ~64 KiB per idle connection).
	MaxWritesPending int
	// BufferSize is each client's read and write buffer. Default 1024.
	BufferSize int
	// MaxPacketSize bounds an MQTT packet. Default wire.MaxMessageSize + 4 KiB.
	MaxPacketSize int
	// SessionExpiry is how long a device's session (subscriptions, queued
	// QoS 1 messages) outlives its connection when it connects without clean
	// session. Default 24h.
	SessionExpiry time.Duration
	// Screen, if set, is asked about every CONNECT before the other
	// checks: the client ID, the device ID of a device certificate ("" for
	// bootstrap clients) and the client's address ("host:port"). An error
	// refuses the client (a Refused event): the fleet's block list. It runs
	// on the connection's goroutine and must not block.
	Screen func(clientID, deviceID, remote string) error
	// Events, if set, is called for every Connected, Disconnected, Closed
	// and Refused event, on the connection's goroutine: it must not block.
	Events func(Event)
	// Logger receives the broker's and mochi's logs; nil discards them.
	// mochi's records never carry packet contents (see libraryHandler),
	// and lines that clients without certificate cause (refusals,
	// malformed packets) are rate-limited per source address: a few per
	// interval, then one summary line with the count.
	Logger *slog.Logger
	// Now is the clock for events and TLS verification; nil means time.Now.
	Now func() time.Time
}

const listenerID = "sigil-tls"

// Broker is a running embedded MQTT broker.
type Broker struct {
	cfg    Config
	log    *slog.Logger
	anon   *loglimit.Limiter // lines clients without certificate cause
	now    func() time.Time
	srv    *mqtt.Server
	ln     *listener
	subID  atomic.Int64
	start  sync.Once
	serr   error
	closed atomic.Bool

	mu          sync.Mutex
	devConns    map[string]map[*conn]struct{} // admitted connections per device ID
	bridgeConns map[string]map[*conn]struct{} // admitted connections per bridge site
	gen         map[string]uint64             // fleet disconnects per device ID (admission race guard)
	bootBySrc   map[string]map[*conn]struct{} // the bootstrap pool by source address (bootstrap.go)
	poolSize    int                           // connections in bootBySrc
	overflow    map[*conn]struct{}            // bootstrap connections waiting for CONNECT without a slot
	reserved    map[string]*conn              // reserved bootstrap sessions by device
	epoch       time.Time                     // for bootstrap activity times
	ids         map[string]int                // admitted connections per client ID

	connections       atomic.Int64
	deviceConnections atomic.Int64
	bootstrap         atomic.Int64
	authRefusals      atomic.Uint64
	aclDenials        atomic.Uint64
	overCap           atomic.Uint64
	handshakeFailures atomic.Uint64
	acceptErrors      atomic.Uint64
	droppedInline     atomic.Uint64
	malformedPackets  atomic.Uint64
	bootExpired       atomic.Uint64
	reservations      atomic.Uint64
	activity          atomic.Uint64 // orders bootstrap connections' activity
}

// New checks cfg and builds a broker; Start or Run serves it.
func New(cfg Config) (*Broker, error) {
	if cfg.TLS == nil || (len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil) {
		return nil, errors.New("broker: TLS config with a server certificate is required")
	}
	if cfg.ClientCAs == nil && cfg.ClientCAsFunc == nil {
		return nil, errors.New("broker: ClientCAs is required")
	}
	if cfg.TrustDomain == "" {
		return nil, errors.New("broker: TrustDomain is required")
	}
	if p := cfg.Topics.Prefix; p != "" && (strings.ContainsAny(p, "+#\x00") || strings.HasPrefix(p, "$") ||
		strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || strings.Contains(p, "//")) {
		return nil, fmt.Errorf("broker: invalid topic prefix %q", p)
	}
	if cfg.MaxBootstrapClients <= 0 {
		cfg.MaxBootstrapClients = 1000
	}
	if cfg.MaxBootstrapPerSource <= 0 {
		cfg.MaxBootstrapPerSource = 256
	}
	if cfg.BootstrapReserve <= 0 {
		cfg.BootstrapReserve = 64
	}
	if cfg.BootstrapDisplaceIdle <= 0 {
		cfg.BootstrapDisplaceIdle = 10 * time.Second
	}
	if cfg.MaxBootstrapKeepalive <= 0 {
		cfg.MaxBootstrapKeepalive = 2 * time.Minute
	}
	if cfg.BootstrapFirstMessage <= 0 {
		cfg.BootstrapFirstMessage = 30 * time.Second
	}
	if cfg.BootstrapLifetime <= 0 {
		cfg.BootstrapLifetime = 5 * time.Minute
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxWritesPending <= 0 {
		cfg.MaxWritesPending = 1024
	}
	if cfg.BufferSize <= 0 {
		cfg.BufferSize = 1024
	}
	if cfg.MaxPacketSize <= 0 {
		cfg.MaxPacketSize = wire.MaxMessageSize + 4<<10
	}
	if cfg.SessionExpiry <= 0 {
		cfg.SessionExpiry = 24 * time.Hour
	}
	b := &Broker{
		cfg:         cfg,
		log:         cfg.Logger,
		now:         cfg.Now,
		devConns:    make(map[string]map[*conn]struct{}),
		bridgeConns: make(map[string]map[*conn]struct{}),
		gen:         make(map[string]uint64),
		bootBySrc:   make(map[string]map[*conn]struct{}),
		overflow:    make(map[*conn]struct{}),
		reserved:    make(map[string]*conn),
		epoch:       time.Now(),
		ids:         make(map[string]int),
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.now == nil {
		b.now = time.Now
	}
	b.anon = loglimit.New(b.log, loglimit.Config{Now: b.now})

	tc := cfg.TLS.Clone()
	withClaims := func(p *x509.CertPool) *x509.CertPool {
		if len(cfg.ClaimCAs) == 0 {
			return p
		}
		p = p.Clone()
		for _, c := range cfg.ClaimCAs {
			p.AddCert(c)
		}
		return p
	}
	if cfg.ClientCAs != nil {
		tc.ClientCAs = withClaims(cfg.ClientCAs)
	}
	tc.ClientAuth = tls.VerifyClientCertIfGiven
	if !cfg.AllowBootstrap {
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	if cfg.Now != nil {
		tc.Time = cfg.Now
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	if cfg.ClientCAsFunc != nil {
		base := tc.Clone()
		type derived struct {
			src *x509.CertPool
			tc  *tls.Config
		}
		var cache atomic.Pointer[derived]
		tc.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			p := cfg.ClientCAsFunc()
			if d := cache.Load(); d != nil && d.src == p {
				return d.tc, nil
			}
			c := base.Clone()
			c.ClientCAs = withClaims(p)
			cache.Store(&derived{src: p, tc: c})
			return c, nil
		}
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = int32(cfg.MaxWritesPending)
	caps.MaximumPacketSize = uint32(cfg.MaxPacketSize)
	caps.MaximumSessionExpiryInterval = uint32(cfg.SessionExpiry / time.Second)
	// RetainAvailable stays on: with it off mochi answers a retained will
	// with a CONNACK code MQTT 3.1.1 does not have. The hook refuses
	// retained wills and strips the retain flag from clients' publishes.
	caps.SharedSubAvailable = 1
	caps.TopicAliasMaximum = 16
	caps.MaximumQos = 1 // the protocol uses QoS 1; QoS 2 is downgraded
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		ClientNetWriteBufferSize: cfg.BufferSize,
		ClientNetReadBufferSize:  cfg.BufferSize,
		Logger:                   slog.New(libraryHandler{inner: b.log.Handler(), limit: b.anon}),
		InlineClient:             true,
		SysTopicResendInterval:   60,
	})
	if err := b.srv.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	b.ln = newListener(listenerID, cfg.Addr, tc, b)
	return b, nil
}

// Start binds the listener and starts serving in the background. It is
// called by Run if needed; call it first when the address must be known
// (Addr) before Run. Calling it again returns the first result.
func (b *Broker) Start() error {
	b.start.Do(func() {
		if err := b.srv.AddListener(b.ln); err != nil {
			b.serr = fmt.Errorf("broker: listen on %s: %w", b.cfg.Addr, err)
			return
		}
		if err := b.srv.Serve(); err != nil {
			b.serr = fmt.Errorf("broker: serve: %w", err)
		}
	})
	return b.serr
}

// Run serves until ctx is done, then disconnects every client and closes the
// listener. It returns nil on a clean stop.
func (b *Broker) Run(ctx context.Context) error {
	if err := b.Start(); err != nil {
		return err
	}
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		_ = b.anon.Run(ctx)
	}()
	<-ctx.Done()
	err := b.close()
	<-flushed
	return err
}

// logAnon writes a line that a client without certificate (or a peer
// before its handshake) caused, through the rate limiter: each message has
// its own budget per source address.
func (b *Broker) logAnon(level slog.Level, src, msg string, args ...any) {
	b.anon.Log(context.Background(), level, msg+"|"+src, msg, args...)
}

func (b *Broker) close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	if err := b.srv.Close(); err != nil {
		return fmt.Errorf("broker: close: %w", err)
	}
	return nil
}

// Addr is the bound listener address, or nil before Start.
func (b *Broker) Addr() net.Addr { return b.ln.addr() }

// Publish sends a message from the fleet to every matching subscriber. The
// fleet may publish to any topic. QoS is the delivery QoS (0 or 1).
func (b *Broker) Publish(topic string, payload []byte, qos byte) error {
	if err := b.srv.Publish(topic, payload, false, qos); err != nil {
		return fmt.Errorf("broker: publish %s: %w", topic, err)
	}
	return nil
}

// Subscribe registers a fleet handler for a topic filter (wildcards and
// shared subscriptions allowed). The handler runs on the publishing client's
// goroutine, before the client's PUBACK: it must not block for long. id is
// the publisher as authenticated at its connection; payload is the handler's
// own copy.
func (b *Broker) Subscribe(filter string, handler func(id Identity, topic string, payload []byte)) error {
	if handler == nil {
		return errors.New("broker: nil handler")
	}
	sid := int(b.subID.Add(1))
	err := b.srv.Subscribe(filter, sid, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		id, ok := b.sender(pk)
		if !ok {
			b.droppedInline.Add(1)
			b.log.Warn("broker: message withheld from fleet", "topic", pk.TopicName, "origin", pk.Origin)
			return
		}
		handler(id, pk.TopicName, append([]byte(nil), pk.Payload...))
	})
	if err != nil {
		return fmt.Errorf("broker: subscribe %s: %w", filter, err)
	}
	return nil
}

// sender finds the identity of the client that published pk and checks that
// it may publish there (the client ID could have been taken over meanwhile).
func (b *Broker) sender(pk packets.Packet) (Identity, bool) {
	if pk.Origin == mqtt.InlineClientId {
		return Identity{ClientID: mqtt.InlineClientId, Fleet: true}, true
	}
	cl, ok := b.srv.Clients.Get(pk.Origin)
	if !ok {
		return Identity{}, false
	}
	id, ok := identityOf(cl)
	if !ok || id.Fleet || !b.allowed(id, pk.TopicName, true) {
		return Identity{}, false
	}
	return id, true
}

// Disconnect closes every connection of a device now. To keep it out, make
// the Gate refuse it first. Whether the device's will is published is up to
// mochi: it is not when the close lands between two packets.
func (b *Broker) Disconnect(deviceID string) {
	b.mu.Lock()
	b.gen[deviceID]++ // a CONNECT being admitted right now is refused too
	var cs []*conn
	for c := range b.devConns[deviceID] {
		cs = append(cs, c)
	}
	b.mu.Unlock()
	b.closeConns(cs)
	if len(cs) > 0 {
		b.log.Info("broker: device disconnected by fleet", "device_id", deviceID, "connections", len(cs))
	}
}

// closeConns disconnects and closes admitted connections.
func (b *Broker) closeConns(cs []*conn) {
	for _, c := range cs {
		if cl := c.client(); cl != nil {
			_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		}
		_ = c.Close()
	}
}

// ConnectedDevices returns the devices with an admitted connection whose
// certificate satisfies keep (every connected device when keep is nil).
func (b *Broker) ConnectedDevices(keep func(deviceID string, cert *x509.Certificate) bool) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for id, m := range b.devConns {
		for c := range m {
			if keep == nil || keep(id, c.cert) {
				out = append(out, id)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// Connected reports whether a device has an admitted connection.
func (b *Broker) Connected(deviceID string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.devConns[deviceID]) > 0
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	b.mu.Lock()
	reserved := int64(len(b.reserved))
	b.mu.Unlock()
	return Stats{
		BootstrapReserved:    reserved,
		BootstrapExpired:     b.bootExpired.Load(),
		BootstrapReserveUsed: b.reservations.Load(),
		Connections:          b.connections.Load(),
		DeviceConnections:    b.deviceConnections.Load(),
		BootstrapConnections: b.bootstrap.Load(),
		AuthRefusals:         b.authRefusals.Load(),
		ACLDenials:           b.aclDenials.Load(),
		BootstrapOverCap:     b.overCap.Load(),
		HandshakeFailures:    b.handshakeFailures.Load(),
		AcceptErrors:         b.acceptErrors.Load(),
		DroppedInline:        b.droppedInline.Load(),
		LogSuppressed:        b.anon.Suppressed(),
		MalformedPackets:     b.malformedPackets.Load(),
	}
}

func (b *Broker) emit(kind EventKind, id Identity, reason, remote string) {
	if b.cfg.Events != nil {
		b.cfg.Events(Event{Kind: kind, Identity: id, Reason: reason, Time: b.now(), Remote: remote})
	}
}

// refusedCertificate reports a client certificate the TLS handshake
// refused.
func (b *Broker) refusedCertificate(cve *tls.CertificateVerificationError, remote string) {
	if b.cfg.Events != nil {
		b.cfg.Events(Event{Kind: Refused, Reason: cve.Error(),
			Time: b.now(), Remote: remote, Presented: cve.UnverifiedCertificates[0]})
	}
}

// admit records an admitted connection.
// generation is the count of fleet disconnects of a device; s.mu is taken.
func (b *Broker) generation(deviceID string) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gen[deviceID]
}

// admit registers an admitted client. It refuses (false) a device the fleet
// disconnected since its admission began at generation gen, so a quarantine
// racing a CONNECT cannot leave a session with the old access.
func (b *Broker) admit(c *conn, cl *mqtt.Client, id Identity, gen uint64) bool {
	b.mu.Lock()
	if (id.DeviceID != "" || id.Site != "") && b.gen[id.connKey()] != gen {
		b.mu.Unlock()
		return false
	}
	c.admitted(cl, id)
	if id.Site != "" {
		addConn(b.bridgeConns, id.Site, c)
	}
	if id.DeviceID != "" {
		m := b.devConns[id.DeviceID]
		if m == nil {
			m = make(map[*conn]struct{})
			b.devConns[id.DeviceID] = m
		}
		m[c] = struct{}{}
		b.deviceConnections.Add(1)
	}
	b.ids[id.ClientID]++
	b.connections.Add(1)
	b.mu.Unlock()
	b.emit(Connected, id, "", c.RemoteAddr().String())
	return true
}

// addConn adds c to m[key].
func addConn(m map[string]map[*conn]struct{}, key string, c *conn) {
	if m[key] == nil {
		m[key] = make(map[*conn]struct{})
	}
	m[key][c] = struct{}{}
}

// release is called once when an admitted connection closes.
func (b *Broker) release(c *conn, id Identity) {
	b.mu.Lock()
	if id.DeviceID != "" {
		if m := b.devConns[id.DeviceID]; m != nil {
			delete(m, c)
			if len(m) == 0 {
				delete(b.devConns, id.DeviceID)
			}
		}
		b.deviceConnections.Add(-1)
	}
	if m := b.bridgeConns[id.Site]; id.Site != "" && m != nil {
		delete(m, c)
		if len(m) == 0 {
			delete(b.bridgeConns, id.Site)
		}
	}
	b.ids[id.ClientID]--
	last := b.ids[id.ClientID] <= 0
	if last {
		delete(b.ids, id.ClientID)
	}
	b.connections.Add(-1)
	b.mu.Unlock()
	kind := Closed
	if last {
		kind = Disconnected
	}
	b.emit(kind, id, "", c.RemoteAddr().String())
}

// allowed applies the topic rules to a topic name (write) or a topic filter
// or delivered topic name (read).
func (b *Broker) allowed(id Identity, topic string, write bool) bool {
	if id.Fleet {
		return true
	}
	if id.Site != "" {
		return b.allowedBridge(id, topic, write)
	}
	seg, owner := wire.SegEnroll, id.ClientID
	if id.DeviceID != "" {
		seg, owner = wire.SegDevice, id.DeviceID
	}
	if !wire.ValidID(owner) {
		return false
	}
	dir := wire.Down
	if write {
		dir = wire.Up
	} else if strings.HasSuffix(topic, "/+") || strings.HasSuffix(topic, "/#") {
		// A wildcard in the kind position only: check the rest as a name.
		topic = topic[:len(topic)-1] + "x"
	}
	t, err := b.cfg.Topics.Parse(topic)
	if err != nil || t.Segment != seg || t.ID != owner || t.Dir != dir {
		return false
	}
	return !write || id.UpKinds == nil || slices.Contains(id.UpKinds, t.Kind)
}

// identityOf returns the identity bound to a client's connection.
func identityOf(cl *mqtt.Client) (Identity, bool) {
	if cl.Net.Inline {
		return Identity{ClientID: cl.ID, Fleet: true}, true
	}
	c, ok := cl.Net.Conn.(*conn)
	if !ok {
		return Identity{}, false
	}
	if c.site != "" {
		return Identity{ClientID: identity.BridgeClientID(c.site), Site: c.site, Cert: c.cert}, true
	}
	if c.cert != nil {
		if c.idErr != nil {
			return Identity{}, false
		}
		id := Identity{ClientID: c.deviceID, DeviceID: c.deviceID, Cert: c.cert}
		c.mu.Lock()
		if c.id != nil {
			id.UpKinds = c.id.UpKinds
		}
		c.mu.Unlock()
		return id, true
	}
	return Identity{ClientID: cl.ID}, true
}
