package mqttpool

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Settings are the broker_pool configuration of `sigil serve`: the
// fleet's pool of Mosquitto brokers.
type Settings struct {
	// Devices are the fleet listeners ("host:port") of the brokers
	// enrolled devices connect to. Required.
	Devices []string `json:"devices"`
	// Bootstrap are the fleet listeners of the brokers bootstrap
	// (enrollment) clients connect to: separate instances, since a
	// broker's client IDs are shared by all its listeners. Default none
	// (no enrollment through the pool).
	Bootstrap []string `json:"bootstrap"`
	// ServerName is the name expected on the brokers' certificates.
	// Default: the host part of each address.
	ServerName string `json:"server_name"`
	// Group is the shared subscription group of the fleet's replicas.
	// Default "sigil".
	Group string `json:"group"`
}

// The fleet's credentials on the pool: its user name on the brokers'
// fleet listeners, and the file in the fleet's data directory holding its
// password (created by the first `sigil broker-config` or pool start).
const (
	Username   = "sigil-fleet"
	SecretFile = "broker-pool.secret"
)

// Secret returns the fleet's broker password from dataDir, creating it
// (256 random bits, mode 0600) the first time.
func Secret(dataDir string) (string, error) {
	path := filepath.Join(dataDir, SecretFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
		return "", fmt.Errorf("mqttpool: %s is empty", path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("mqttpool: broker pool secret: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	secret := hex.EncodeToString(raw)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("mqttpool: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return Secret(dataDir) // another process made it first
		}
		return "", fmt.Errorf("mqttpool: broker pool secret: %w", err)
	}
	if _, err := f.WriteString(secret + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("mqttpool: broker pool secret: %w", err)
	}
	return secret, f.Close()
}

// Inventory is what a Transport reads of the fleet's inventory
// (inventory.Store).
type Inventory interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
}

// TransportConfig is what NewTransport builds the fleet's side of a pool
// from.
type TransportConfig struct {
	Settings Settings
	// DataDir is the fleet's data directory, which holds its password
	// (Secret).
	DataDir string
	// Roots verify the brokers' certificates: the fleet CA's.
	Roots *x509.CertPool
	// RootsFunc, when set, replaces Roots: it is asked at each
	// connection, so that brokers whose certificates a new CA generation
	// issued are verified without a restart (ca.CA.Pool).
	RootsFunc func() *x509.CertPool
	Topics    wire.Topics
	// Inventory gives a device's state at Disconnect and the quarantined
	// devices a broker is brought up to date with when the fleet connects
	// to it.
	Inventory Inventory
	// Hello, when set, is told of each device's hello, the first message
	// it sends on each connection (Transport.hello).
	Hello func(deviceID string, at time.Time)
	// Sessions, when set, makes the replica's device-broker connections a
	// persistent session under a lease, drained by another replica if it
	// dies (Config.Sessions).
	Sessions Sessions
	// Events, when set, is told of each device session a device broker
	// opens or closes (Config.OnSession), as the embedded broker's
	// connection events: Connected and Disconnected, with the device's
	// address and an identity without certificate (the log does not name
	// it). For the fleet's clone detection (governance.Service.BrokerEvent);
	// it must not block.
	Events func(broker.Event)
	Logger *slog.Logger
}

// NewTransport builds the fleet's connections to its broker pool (the
// replacement of the embedded broker); Run connects.
func NewTransport(cfg TransportConfig) (*Transport, error) {
	pc := cfg.Settings
	secret, err := Secret(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var t *Transport
	p, err := New(Config{
		OnConnect: func(broker string) {
			if slices.Contains(pc.Devices, broker) {
				t.resyncQuarantines(broker)
			}
		},
		Devices: pc.Devices, Bootstrap: pc.Bootstrap, Username: Username, Password: secret,
		TLS:    brokerTLS(cfg.Roots, cfg.RootsFunc, pc.ServerName),
		Topics: cfg.Topics, Group: pc.Group, Sessions: cfg.Sessions, Logger: log,
		OnSession: sessionEvents(cfg.Events),
	})
	if err != nil {
		return nil, fmt.Errorf("mqttpool: broker pool: %w", err)
	}
	hello := cfg.Hello
	if hello == nil {
		hello = func(string, time.Time) {}
	}
	t = &Transport{inv: cfg.Inventory, pool: p, hello: hello, topics: cfg.Topics, addr: pc.Devices[0],
		heard: map[string]time.Time{}, gone: map[string]time.Time{}, kicked: map[string]time.Time{}, pending: map[string]bool{}, log: log}
	return t, nil
}

// brokerTLS is the TLS configuration of the fleet's connections to the
// brokers: verified with roots, or, when rootsFunc is set, with the roots
// it gives at each handshake (the chain and the name, as crypto/tls
// would verify them with RootCAs).
func brokerTLS(roots *x509.CertPool, rootsFunc func() *x509.CertPool, serverName string) *tls.Config {
	c := &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if rootsFunc == nil {
		return c
	}
	c.RootCAs = nil
	c.InsecureSkipVerify = true // VerifyConnection verifies, with the roots of the moment
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || cs.ServerName == "" {
			return errors.New("mqttpool: broker certificate or name missing")
		}
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: rootsFunc(), Intermediates: inter, DNSName: cs.ServerName,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	return c
}

// ServerCertificates is Pool.ServerCertificates.
func (t *Transport) ServerCertificates(ctx context.Context) (map[string]*x509.Certificate, error) {
	return t.pool.ServerCertificates(ctx)
}

// sessionEvents gives the pool's session events to events as the
// embedded broker's connection events (nil: none).
func sessionEvents(events func(broker.Event)) func(SessionEvent) {
	if events == nil {
		return nil
	}
	return func(ev SessionEvent) {
		kind := broker.Disconnected
		if ev.Opened {
			kind = broker.Connected
		}
		events(broker.Event{Kind: kind, Identity: broker.Identity{ClientID: ev.DeviceID, DeviceID: ev.DeviceID}, Remote: ev.Remote, Time: ev.Time})
	}
}

// Ready reports whether the fleet can reach its devices: once it is
// connected to every broker and subscribed there.
func (t *Transport) Ready() bool { return t.pool.Ready() }

// staleKickInterval bounds how often a stale session is ended: each end
// is a command to every broker, which the plugin writes to its disk.
const staleKickInterval = 2 * time.Second

// KickStale handles a message a device sent on a session its
// certificate no longer allows: it ends the device's sessions now, or,
// when it did so less than staleKickInterval ago, once that interval has
// passed (a session the device opened in between must end too), until
// its broker refuses the certificate (its CRL updated) and the device
// enrolls again.
func (t *Transport) KickStale(deviceID string) {
	now := time.Now()
	t.mu.Lock()
	for id, at := range t.kicked { // bounded: only recent kicks matter
		if now.Sub(at) >= staleKickInterval && !t.pending[id] {
			delete(t.kicked, id)
		}
	}
	last, ok := t.kicked[deviceID]
	if !ok || now.Sub(last) >= staleKickInterval {
		t.kicked[deviceID] = now
		t.mu.Unlock()
		t.Disconnect(deviceID)
		return
	}
	defer t.mu.Unlock()
	if t.pending[deviceID] {
		return
	}
	t.pending[deviceID] = true
	time.AfterFunc(last.Add(staleKickInterval).Sub(now), func() {
		t.mu.Lock()
		delete(t.pending, deviceID)
		t.kicked[deviceID] = time.Now()
		t.mu.Unlock()
		t.Disconnect(deviceID)
	})
}

// presenceWindow is how long after its last message a device on the pool
// counts as connected: Mosquitto tells its clients' connections to no
// one, so the fleet knows them only by what they send.
const presenceWindow = 15 * time.Minute

// Transport is the fleet's MQTT layer on a broker pool, in place of the
// embedded broker (the Transport of fleet/server). The sender's identity
// is the ID in the topic, which the brokers bind to the client's
// certificate (devices) or client ID (bootstrap clients). What the pool
// cannot tell yet: connection events and the brokers' counters.
// Disconnect ends a device's sessions through the brokers' dynamic
// security plugin, and sets what the device may publish when it comes
// back from its state in the inventory: the quarantined kinds only, or
// what the pattern ACL allows.
type Transport struct {
	pool   *Pool
	topics wire.Topics
	addr   string
	log    *slog.Logger
	inv    Inventory
	// hello is told of a device's hello, the first message it sends on
	// each connection: Mosquitto tells no one of connections, so the
	// hello starts the device's session for the fleet (attest.Service.
	// SessionStarted: verdicts count from it on).
	hello func(deviceID string, at time.Time)

	mu      sync.Mutex
	heard   map[string]time.Time // device ID -> its last message
	gone    map[string]time.Time // device ID -> when this replica ended its sessions (within presenceWindow)
	pruned  time.Time            // when gone was last pruned
	kicked  map[string]time.Time // device ID -> when KickStale last ended its sessions
	pending map[string]bool      // device ID -> a KickStale is scheduled
}

func (t *Transport) Start() error                  { return nil }
func (t *Transport) Run(ctx context.Context) error { return t.pool.Run(ctx) }
func (t *Transport) Stats() broker.Stats           { return broker.Stats{} }
func (t *Transport) Addr() net.Addr                { return poolAddr(t.addr) }
func (t *Transport) Publish(topic string, payload []byte, qos byte) error {
	return t.pool.Publish(topic, payload, qos)
}

// Subscribe maps the fleet's two filters (every enroll or device up
// topic) to the pool's shared subscriptions.
func (t *Transport) Subscribe(filter string, handler func(id broker.Identity, topic string, payload []byte)) error {
	for _, seg := range []string{wire.SegEnroll, wire.SegDevice} {
		if filter != t.topics.Filter(seg, "+", wire.Up) {
			continue
		}
		return t.pool.Subscribe(seg, func(m Message) {
			id := broker.Identity{ClientID: m.Topic.ID}
			if seg == wire.SegDevice {
				id.DeviceID = m.Topic.ID
				now := time.Now()
				t.mu.Lock()
				t.heard[id.DeviceID] = now
				t.mu.Unlock()
				if m.Topic.Kind == "hello" {
					t.hello(id.DeviceID, now)
				}
			}
			handler(id, m.Name, m.Payload)
		})
	}
	return fmt.Errorf("mqttpool: the broker pool serves no subscription %q", filter)
}

// Disconnect ends the device's sessions on the brokers and forgets its
// presence. It may connect again unless its certificate is refused by
// then (the brokers' CRL, sigil broker-sync): quarantined (the services
// disconnect a device after they quarantine it, and after they release
// it), limited on every broker to inventory.QuarantinedKinds; otherwise
// as the pattern ACL allows.
func (t *Transport) Disconnect(deviceID string) {
	t.forget(deviceID)
	var err error
	if d, serr := t.inv.Device(context.TODO(), deviceID); serr == nil && d.State == inventory.StateQuarantined {
		err = t.pool.Quarantine(deviceID, inventory.QuarantinedKinds())
	} else {
		err = t.pool.Kick(deviceID)
	}
	if err != nil {
		t.log.Warn("ending a device's session on the broker pool failed", "device_id", deviceID, "err", err)
	}
}

// forget drops the device's presence: this replica ended its sessions
// now, so what the replicas recorded of it before does not count
// (Connected).
func (t *Transport) forget(deviceID string) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.heard, deviceID)
	t.gone[deviceID] = now
	if now.Sub(t.pruned) >= time.Minute { // bounded: only the window matters
		t.pruned = now
		for id, at := range t.gone {
			if now.Sub(at) >= presenceWindow {
				delete(t.gone, id)
			}
		}
	}
}

// resyncQuarantines brings a device broker the fleet has just connected
// to to the fleet's full quarantine state (the broker may be new, or may
// have missed quarantines and releases while it was down): every device
// the inventory holds quarantined is quarantined there again, and every
// device the broker holds quarantined that the inventory no longer does
// is released there (its state read again first: a quarantine made
// meanwhile stays).
func (t *Transport) resyncQuarantines(broker string) {
	ctx := context.TODO()
	after, n := "", 0
	quarantined := map[string]bool{}
	for {
		devs, next, err := t.inv.ListDevices(ctx, inventory.Filter{State: inventory.StateQuarantined, After: after, Limit: 1000})
		if err != nil {
			t.log.Error("listing quarantined devices for a broker failed", "broker", broker, "err", err)
			return
		}
		for _, d := range devs {
			quarantined[d.ID] = true
			if err := t.pool.QuarantineAt(broker, d.ID, inventory.QuarantinedKinds()); err != nil {
				t.log.Warn("quarantine on a broker failed", "broker", broker, "device_id", d.ID, "err", err)
				continue
			}
			n++
		}
		if next == "" || len(devs) == 0 {
			break
		}
		after = next
	}
	if n > 0 {
		t.log.Info("quarantines brought up to date on a broker", "broker", broker, "devices", n)
	}
	held, err := t.pool.QuarantinedAt(ctx, broker)
	if err != nil {
		t.log.Warn("listing a broker's quarantines failed: releases it missed are not undone until it is connected again", "broker", broker, "err", err)
		return
	}
	released := 0
	for _, id := range held {
		if quarantined[id] {
			continue
		}
		if d, err := t.inv.Device(ctx, id); err == nil && d.State == inventory.StateQuarantined {
			continue // quarantined since the list was read
		} else if err != nil && !errors.Is(err, inventory.ErrNotFound) {
			t.log.Warn("reading a device a broker holds quarantined failed", "broker", broker, "device_id", id, "err", err)
			continue
		}
		if err := t.pool.ReleaseAt(broker, id); err != nil {
			t.log.Warn("release on a broker failed", "broker", broker, "device_id", id, "err", err)
			continue
		}
		released++
	}
	if released > 0 {
		t.log.Info("releases a broker missed undone", "broker", broker, "devices", released)
	}
}

// Connected reports whether the device sent a message within the
// presence window. The brokers' shared subscriptions spread a device's
// messages over the replicas, so a replica that did not hear it asks what
// they share: the inventory's record of its last hello (LastSeen) or
// verdict (LastAttested), unless this replica ended its sessions since.
func (t *Transport) Connected(deviceID string) bool {
	t.mu.Lock()
	at, ok := t.heard[deviceID]
	gone, ended := t.gone[deviceID]
	t.mu.Unlock()
	if ok && time.Since(at) < presenceWindow {
		return true
	}
	if t.inv == nil {
		return false
	}
	d, err := t.inv.Device(context.TODO(), deviceID)
	if err != nil {
		return false
	}
	seen := d.LastSeen
	if d.LastAttested.After(seen) {
		seen = d.LastAttested
	}
	if ended && !seen.After(gone) {
		return false
	}
	return time.Since(seen) < presenceWindow
}

func (t *Transport) ConnectedDevices(keep func(string, *x509.Certificate) bool) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ids []string
	for id, at := range t.heard {
		if time.Since(at) >= presenceWindow {
			delete(t.heard, id)
			continue
		}
		if keep == nil { // the pool knows no device's certificate to filter on
			ids = append(ids, id)
		}
	}
	return ids
}

// poolAddr is a broker address of the pool as a net.Addr.
type poolAddr string

func (a poolAddr) Network() string { return "tcp" }
func (a poolAddr) String() string  { return string(a) }
