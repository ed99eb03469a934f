// Package swarm runs a fleet of simulated devices in one process, each the
// real device agent (device/agent: the enrollment state machine, the
// device/link mTLS session, the attestation schedule, the telemetry
// outbox, renewal, firmware updates) on its own software TPM, whose EK a
// simulated manufacturer certifies (sim/softtpm). What a device holds
// besides its TPM is kept small: its state store in memory
// (sim/memstate), its firmware slots in memory (sim/memslots), its system
// telemetry synthetic (sim/synthetic). Devices are spread over loopback
// source addresses (127.0.0.2, 127.0.0.3, …: the fleet's broker caps
// clients without a certificate per source address), started at a set
// rate, and keep the agent's jittered schedules.
//
// Each device's outcome (enrolled and active, time to active, messages
// the broker acknowledged per kind, connections and disconnects, warnings
// its agent logged, its telemetry outbox) is there for the harness that
// reports figures, and for tests that compare them with the fleet's own
// bookkeeping.
//
// It is for simulation only and never reaches sigild.
package swarm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/memslots"
	"github.com/sigil-iot/sigil/sim/memstate"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/synthetic"
)

// Defaults of Config.
const (
	DefaultModel     = "sim-gw"
	DefaultFirmware  = "1.0.0"
	DefaultPerSource = 200 // below the broker's default of 256 bootstrap clients per source
)

// Config describes a swarm and the fleet it joins.
type Config struct {
	// Devices is how many devices to run. Required.
	Devices int
	// FirstIndex is the index of the first device: the swarm runs devices
	// FirstIndex to FirstIndex+Devices-1. A device's index decides its
	// TPM and serial (with Seed) and its source address, so swarms in
	// several processes that share a Seed and take consecutive ranges
	// make one fleet of distinct devices spread over distinct addresses.
	FirstIndex int
	// Broker is HOST:PORT of the fleet's MQTT TLS listener. Required.
	Broker string
	// ServerName is the TLS name of the broker and the update server;
	// "" means the host of Broker.
	ServerName string
	// FleetCA is the PEM file of the fleet CA a device trusts for its
	// first enrollment. Required.
	FleetCA string
	// UpdateServer is HOST:PORT of the fleet's HTTPS listener images are
	// downloaded from; "" means the agent's default (Broker's host, 8443).
	UpdateServer string
	// TopicPrefix is the fleet's first topic level; "" means the default.
	TopicPrefix string
	// Token, if set, returns the enrollment token device i presents ("":
	// none). Tokens are single-use; the fleet mints them with the model
	// and group it assigns. Without one the fleet trusts a device by its
	// EK certificate (CA), and assigns it no model.
	Token func(i int) string
	// CA is the manufacturer CA that certifies the devices' EKs: the
	// fleet's ek_ca_dir holds it (softtpm.OpenCA). Required.
	CA *softtpm.CA
	// Seed makes the devices: the same seed, the same devices (EKs, device
	// IDs, synthetic telemetry), so a swarm started again is the same
	// fleet. nil means a random one.
	Seed []byte
	// Model and Firmware are what devices report; defaults DefaultModel
	// and DefaultFirmware.
	Model, Firmware string
	// Rate is how many devices start per second (a ramp); 0 starts all at
	// once.
	Rate float64
	// PerSource is how many devices share one loopback source address,
	// from 127.0.0.2 on; 0 means DefaultPerSource.
	PerSource int
	// AttestInterval and TelemetryInterval are the agents' schedules (the
	// agent jitters attestation by ±10%); 0 keeps the agent's defaults
	// (10 minutes, one minute), negative turns them off.
	AttestInterval, TelemetryInterval time.Duration
	// RetryMin and RetryMax bound the agents' backoff; 0 keeps the
	// agent's defaults.
	RetryMin, RetryMax time.Duration
	// TelemetryChanges is the synthetic telemetry's chance of a change per
	// point (synthetic.Config.Changes).
	TelemetryChanges float64
	// Unhealthy, if set, reports whether device i's new firmware fails its
	// health check after an update (the update then rolls back).
	Unhealthy func(i int) bool
	// Tweak, if set, edits device i's agent configuration last.
	Tweak func(i int, c *agent.Config)
	// Dir holds each device's firmware download directory (a partial
	// image survives an agent restart there). Required.
	Dir string
	// Logger receives the agents' warnings and errors, with the device's
	// index; nil discards them (they are counted either way).
	Logger *slog.Logger
}

// Swarm is a set of simulated devices.
type Swarm struct {
	cfg     Config
	devices []*Device
	ran     atomic.Bool
}

// New makes the devices (each TPM manufactured, its EK certified) and
// their agents; Run starts them.
func New(cfg Config) (*Swarm, error) {
	var errs []error
	if cfg.Devices < 1 {
		errs = append(errs, errors.New("swarm: Devices must be at least 1"))
	}
	if cfg.CA == nil {
		errs = append(errs, errors.New("swarm: CA is required"))
	}
	if cfg.Dir == "" {
		errs = append(errs, errors.New("swarm: Dir is required"))
	}
	if cfg.Rate < 0 || cfg.PerSource < 0 || cfg.FirstIndex < 0 {
		errs = append(errs, errors.New("swarm: Rate, PerSource and FirstIndex may not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Seed == nil {
		cfg.Seed = make([]byte, 32)
		if _, err := rand.Read(cfg.Seed); err != nil {
			return nil, fmt.Errorf("swarm: %w", err)
		}
	}
	if cfg.Model == "" {
		cfg.Model = DefaultModel
	}
	if cfg.Firmware == "" {
		cfg.Firmware = DefaultFirmware
	}
	if cfg.PerSource == 0 {
		cfg.PerSource = DefaultPerSource
	}
	s := &Swarm{cfg: cfg, devices: make([]*Device, cfg.Devices)}
	for i := range s.devices {
		d, err := s.newDevice(cfg.FirstIndex + i)
		if err != nil {
			return nil, err
		}
		s.devices[i] = d
	}
	return s, nil
}

// Source is the loopback address the device of index i connects from:
// 127.0.0.2 for devices 0 to PerSource-1, then 127.0.0.3, and so on
// (127.0.0.0/8 is all loopback on Linux).
func (s *Swarm) Source(i int) net.IP {
	n := 2 + i/s.cfg.PerSource
	return net.IPv4(127, byte(n>>16), byte(n>>8), byte(n))
}

// deviceSeed is the seed of device i.
func (s *Swarm) deviceSeed(i int) []byte {
	h := sha256.New()
	h.Write([]byte("sigil swarm device\x00"))
	h.Write(s.cfg.Seed)
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(i)))
	return h.Sum(nil)
}

func (s *Swarm) newDevice(i int) (*Device, error) {
	seed := s.deviceSeed(i)
	tp, err := softtpm.New(softtpm.WithSeed(seed), softtpm.WithCA(s.cfg.CA))
	if err != nil {
		return nil, fmt.Errorf("swarm: device %d: %w", i, err)
	}
	d := &Device{Index: i, Serial: fmt.Sprintf("SIM-%06d", i), tpm: tp, volume: memstate.New()}
	d.store = d.volume.Store()
	var health func(context.Context, string, *memslots.Image) error
	if s.cfg.Unhealthy != nil && s.cfg.Unhealthy(i) {
		health = func(context.Context, string, *memslots.Image) error { return memslots.ErrUnhealthy }
	}
	d.slots = memslots.New(memslots.Config{Health: health})
	d.system = synthetic.New(synthetic.Config{Seed: binary.BigEndian.Uint64(seed), Changes: s.cfg.TelemetryChanges})

	dir := filepath.Join(s.cfg.Dir, fmt.Sprintf("%06d", i))
	token := ""
	if s.cfg.Token != nil {
		token = s.cfg.Token(i)
	}
	ac := agent.Config{
		State:  filepath.Join(dir, "state.db"), // never opened: the store is in memory
		Broker: s.cfg.Broker, ServerName: s.cfg.ServerName, FleetCA: s.cfg.FleetCA,
		Model: s.cfg.Model, Firmware: s.cfg.Firmware, Serial: d.Serial, Token: token, TopicPrefix: s.cfg.TopicPrefix,
		RetryMin: agent.Duration(s.cfg.RetryMin), RetryMax: agent.Duration(s.cfg.RetryMax),
		AttestInterval: agent.Duration(s.cfg.AttestInterval), TelemetryInterval: agent.Duration(s.cfg.TelemetryInterval),
		EventLog: "-", Control: "-", TelemetryAuthLog: "-",
		UpdateServer: s.cfg.UpdateServer, UpdateDir: filepath.Join(dir, "update"),
	}
	if s.cfg.Tweak != nil {
		s.cfg.Tweak(i, &ac)
	}
	local := &net.TCPAddr{IP: s.Source(i)}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		d.c.dials.Add(1)
		return (&net.Dialer{LocalAddr: local}).DialContext(ctx, network, addr)
	}
	log := slog.New(&logCounter{c: &d.c, next: s.deviceHandler(i)})
	d.agent, err = agent.New(ac, log, agent.WithTPM(tp), agent.WithState(d.store), agent.WithUpdateBackend(d.slots),
		agent.WithSystemTelemetry(d.system), agent.WithDial(dial), agent.WithLinkObserver(&observer{c: &d.c}))
	if err != nil {
		return nil, fmt.Errorf("swarm: device %d: %w", i, err)
	}
	return d, nil
}

func (s *Swarm) deviceHandler(i int) slog.Handler {
	if s.cfg.Logger == nil {
		return nil
	}
	return s.cfg.Logger.With("device_index", i).Handler()
}

// Devices returns the devices, in the order of their indexes (the first
// is FirstIndex's).
func (s *Swarm) Devices() []*Device { return s.devices }

// Run starts the devices, Config.Rate per second, and runs them until ctx
// ends; it returns once every agent has stopped. A swarm runs once.
func (s *Swarm) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return errors.New("swarm: Run called twice")
	}
	var wg sync.WaitGroup
	start := time.Now()
	for i, d := range s.devices {
		if s.cfg.Rate > 0 && i > 0 {
			at := start.Add(time.Duration(float64(i) / s.cfg.Rate * float64(time.Second)))
			if !sleepUntil(ctx, at) {
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
		d.c.started.Store(time.Now().UnixNano())
		wg.Go(func() {
			err := d.agent.Run(ctx)
			d.exit.Store(&err)
		})
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

func sleepUntil(ctx context.Context, at time.Time) bool {
	d := time.Until(at)
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Device is one simulated device.
type Device struct {
	Index  int
	Serial string

	tpm    *softtpm.TPM
	volume *memstate.Volume
	store  *state.Store
	slots  *memslots.Backend
	system *synthetic.System
	agent  *agent.Agent
	c      counters
	exit   atomic.Pointer[error]
}

// TPM is the device's software TPM: a test tampers with a device by
// extending one of its PCRs.
func (d *Device) TPM() *softtpm.TPM { return d.tpm }

// Slots is the device's firmware slots.
func (d *Device) Slots() *memslots.Backend { return d.slots }

// State is the device's state volume.
func (d *Device) State() *memstate.Volume { return d.volume }

// Status is the agent's status (`sigild status`).
func (d *Device) Status() agent.Status { return d.agent.Status() }

// Outbox returns the bookkeeping of the device's telemetry outbox.
func (d *Device) Outbox() (state.OutboxStats, error) {
	return d.store.Outbox(state.OutboxOptions{}).Stats()
}

// Outcome is what a device did, as far as it knows.
type Outcome struct {
	Index    int
	DeviceID string // "" before the agent knows it
	// Enrollment and Connected are the agent's status: enrolled, and
	// connected over mTLS now.
	Enrollment string
	Connected  bool
	CertSerial string
	Firmware   string
	Verdict    string // the fleet's last attestation verdict
	// Started is when the agent started (zero before); Active when the
	// broker first acknowledged its hello on an mTLS session (zero
	// before); TimeToActive between the two.
	Started, Active time.Time
	TimeToActive    time.Duration
	// Sent counts the messages the broker acknowledged, by wire message
	// type (wire.TypeAttestEvidence, …); TelemetryPoints the points in
	// the acknowledged telemetry batches (a batch sent again counts
	// again).
	Sent            map[string]uint64
	TelemetryPoints uint64
	// Unacknowledged counts, by type, the publishes the broker did not
	// acknowledge (timed out, connection lost): the fleet may have
	// received them all the same, so what it counts lies between Sent and
	// Sent + Unacknowledged.
	Unacknowledged map[string]uint64
	// Received counts the messages the fleet sent the device, by type.
	// Unjudged counts the answers that refused evidence without judging
	// the device's state — attestation verdicts for a nonce expired,
	// already used or dropped for a newer one, or for malformed evidence;
	// renewals refused because the fleet was busy, the request malformed
	// or stale, or the device not active: the fleet answers those but
	// keeps them out of the device's attestation history.
	Received map[string]uint64
	Unjudged uint64
	// Dials counts the TCP connections the device opened (sessions and
	// image downloads); Disconnects the broker sessions lost rather than
	// closed by the device, the last of them at LastDisconnect.
	Dials, Disconnects uint64
	LastDisconnect     time.Time
	// Warnings counts the warnings and errors the agent logged; LastWarning
	// is the latest, with its err attribute.
	Warnings    uint64
	LastWarning string
	// Exited is the agent's Run error once it returned (nil while it runs
	// or after a clean stop).
	Exited error
}

// Outcome returns what the device did so far.
func (d *Device) Outcome() Outcome {
	st := d.agent.Status()
	o := Outcome{Index: d.Index, DeviceID: st.DeviceID, Enrollment: st.Enrollment, Connected: st.Connected,
		CertSerial: st.CertSerial, Firmware: st.Firmware, Verdict: st.LastVerdict,
		Sent: map[string]uint64{}, Unacknowledged: map[string]uint64{}, Received: map[string]uint64{}, TelemetryPoints: d.c.points.Load(), Unjudged: d.c.unjudged.Load(), Dials: d.c.dials.Load(), Disconnects: d.c.lost.Load(),
		Warnings: d.c.warnings.Load()}
	if t := d.c.started.Load(); t != 0 {
		o.Started = time.Unix(0, t)
	}
	if t := d.c.active.Load(); t != 0 {
		o.Active = time.Unix(0, t)
		o.TimeToActive = o.Active.Sub(o.Started)
	}
	if t := d.c.lostAt.Load(); t != 0 {
		o.LastDisconnect = time.Unix(0, t)
	}
	for i := range d.c.sent {
		if n := d.c.sent[i].Load(); n > 0 {
			o.Sent[kinds[i]] = n
		}
		if n := d.c.unacked[i].Load(); n > 0 {
			o.Unacknowledged[kinds[i]] = n
		}
		if n := d.c.received[i].Load(); n > 0 {
			o.Received[kinds[i]] = n
		}
	}
	if w := d.c.lastWarning.Load(); w != nil {
		o.LastWarning = *w
	}
	if e := d.exit.Load(); e != nil {
		o.Exited = *e
	}
	return o
}

// Outcomes returns every device's outcome, by index.
func (s *Swarm) Outcomes() []Outcome {
	out := make([]Outcome, len(s.devices))
	for i, d := range s.devices {
		out[i] = d.Outcome()
	}
	return out
}

// kinds are the message types counted, both ways; the last is everything
// else.
var kinds = [...]string{
	wire.TypeEnrollRequest, wire.TypeEnrollProof, wire.TypeHello, wire.TypeAttestRequest, wire.TypeAttestEvidence,
	wire.TypeRenewRequest, wire.TypeTelemetryBatch, wire.TypeFirmwareReport, wire.TypeSecretAck, wire.TypeSSHRequest,
	wire.TypeEnrollChallenge, wire.TypeEnrollResult, wire.TypeAttestChallenge, wire.TypeAttestVerdict, wire.TypeRenewResult,
	wire.TypeRotate, wire.TypeTelemetryAck, wire.TypeFirmwareAnnounce, wire.TypeFirmwareTrust, wire.TypeSecretDeliver,
	wire.TypeSSHCerts, wire.TypeTrustBundle, "other"}

// kind is the index of typ in kinds.
func kind(typ string) int {
	for i, name := range kinds[:len(kinds)-1] {
		if typ == name {
			return i
		}
	}
	return len(kinds) - 1
}

// counters are a device's counts, updated from its agent's goroutines.
type counters struct {
	started, active atomic.Int64 // Unix nanoseconds
	lostAt          atomic.Int64 // Unix nanoseconds of the last lost session
	sent, received  [len(kinds)]atomic.Uint64
	unacked         [len(kinds)]atomic.Uint64
	points          atomic.Uint64
	unjudged        atomic.Uint64
	dials, lost     atomic.Uint64
	warnings        atomic.Uint64
	lastWarning     atomic.Pointer[string]
}

// observer counts what the device's broker sessions carried.
type observer struct{ c *counters }

func (o *observer) Published(_ string, payload []byte) {
	env, err := wire.Decode(payload)
	if err != nil {
		o.c.sent[len(kinds)-1].Add(1)
		return
	}
	o.c.sent[kind(env.Type)].Add(1)
	switch env.Type {
	case wire.TypeHello:
		o.c.active.CompareAndSwap(0, time.Now().UnixNano())
	case wire.TypeTelemetryBatch:
		var b wire.TelemetryBatch
		if wire.DecodeBody(env, wire.TypeTelemetryBatch, &b) == nil {
			o.c.points.Add(uint64(len(b.Points)))
		}
	}
}

func (o *observer) Received(_ string, payload []byte) {
	env, err := wire.Decode(payload)
	if err != nil {
		o.c.received[len(kinds)-1].Add(1)
		return
	}
	o.c.received[kind(env.Type)].Add(1)
	switch env.Type {
	case wire.TypeAttestVerdict:
		var v wire.AttestVerdict
		if wire.DecodeBody(env, wire.TypeAttestVerdict, &v) == nil && (v.Reason == wire.ReasonNonceInvalid || v.Reason == wire.ReasonBadRequest) {
			o.c.unjudged.Add(1)
		}
	case wire.TypeRenewResult:
		// A renewal refused before its evidence was judged: the fleet was
		// busy (its queue full), the request malformed or on a stale
		// nonce, or the device not active.
		var r wire.RenewResult
		if wire.DecodeBody(env, wire.TypeRenewResult, &r) == nil && r.Status == wire.StatusRefused {
			switch r.Reason {
			case wire.ReasonRateLimited, wire.ReasonNonceInvalid, wire.ReasonBadRequest, wire.ReasonQuarantined:
				o.c.unjudged.Add(1)
			}
		}
	}
}

func (o *observer) Unacknowledged(_ string, payload []byte) {
	typ := "other"
	if env, err := wire.Decode(payload); err == nil {
		typ = env.Type
	}
	o.c.unacked[kind(typ)].Add(1)
}

func (o *observer) Ended(err error) {
	if err != nil {
		o.c.lostAt.Store(time.Now().UnixNano())
		o.c.lost.Add(1)
	}
}

// logCounter counts an agent's warnings and errors and hands them on.
type logCounter struct {
	c    *counters
	next slog.Handler // nil: none
}

func (h *logCounter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next != nil && h.next.Enabled(ctx, l)
}

func (h *logCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		if h.next != nil && h.next.Enabled(ctx, r.Level) {
			return h.next.Handle(ctx, r)
		}
		return nil
	}
	h.c.warnings.Add(1)
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			msg += ": " + a.Value.String()
			return false
		}
		return true
	})
	h.c.lastWarning.Store(&msg)
	if h.next != nil && h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *logCounter) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	if h.next != nil {
		n.next = h.next.WithAttrs(as)
	}
	return &n
}

func (h *logCounter) WithGroup(name string) slog.Handler {
	n := *h
	if h.next != nil {
		n.next = h.next.WithGroup(name)
	}
	return &n
}
