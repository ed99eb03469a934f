package governance

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// Inventory flags the sweep sets and clears.
const (
	FlagOrphaned = "orphaned"
	FlagDormant  = "dormant"
	// FlagCloneSuspect is the flag the enrollment service sets on a device
	// whose EK was proven by a client claiming another identity.
	FlagCloneSuspect = "clone-suspect"
)

// Alert kinds.
const (
	KindOrphaned       = "orphaned"
	KindDormant        = "dormant"
	KindDormantRevoked = "dormant-revoked"
	KindClone          = "clone"
	KindShadow         = "shadow-device"
)

// Alert severities.
const (
	SeverityCritical = "critical"
	SeverityWarning  = "warning"
	SeverityInfo     = "info"
)

// Alert is a governance finding for operators.
type Alert struct {
	Time     time.Time
	DeviceID string // "" for fleet-wide findings (shadow devices)
	Kind     string // KindOrphaned, KindDormant, ...
	Severity string // SeverityCritical, SeverityWarning or SeverityInfo
	Summary  string
	// Attrs is the evidence, e.g. "owner", "last_seen", "hosts".
	Attrs map[string]string
	// Resolved reports that the condition of an earlier alert of this kind
	// and device has cleared.
	Resolved bool
}

// Alerter receives alerts. It is called from the sweep, Flush, Assign and
// EKConflict, never from SessionOpened, Observe or IsBlocked; it should not
// block for long and must not call back into the Service.
type Alerter interface {
	Alert(Alert)
}

// AlerterFunc adapts a function to Alerter.
type AlerterFunc func(Alert)

// Alert calls f.
func (f AlerterFunc) Alert(a Alert) { f(a) }

// Devices reads the inventory and sets its flags. *inventory.Store
// implements it.
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
	Update(ctx context.Context, id string, fn func(*inventory.Device) error) error
}

// Revoker revokes a device: every certificate it holds that has not
// expired, for reason (an inventory reason code), and closes its sessions;
// why is recorded with it. It returns the serials it revoked.
// InventoryRevoker implements it.
type Revoker interface {
	Revoke(deviceID string, reason int, why string) ([]string, error)
}

// Quarantiner isolates a device: afterwards it may only prove itself again.
// InventoryQuarantiner implements it.
type Quarantiner interface {
	Quarantine(deviceID, why string) error
}

// QuarantinerFunc adapts a function to Quarantiner.
type QuarantinerFunc func(deviceID, why string) error

// Quarantine calls f.
func (f QuarantinerFunc) Quarantine(deviceID, why string) error { return f(deviceID, why) }

// Attestations reads the outcomes of a device's newest verdicts, newest
// first. *attest.History implements it.
type Attestations interface {
	Outcomes(ctx context.Context, deviceID string, limit int) ([]attest.Outcome, error)
}

// Firmware tells which firmware version a device should run.
type Firmware interface {
	// Target returns the approved or campaign target version for the
	// device, or "" when none is set for it.
	Target(d *inventory.Device) (string, error)
}

// OpenAlert is an unresolved alert of a device.
type OpenAlert struct {
	Kind     string
	Severity string // SeverityCritical, SeverityWarning, anything else counts as info
}

// Anomalies lists a device's open alerts.
type Anomalies interface {
	OpenAlerts(deviceID string) ([]OpenAlert, error)
}

// Ports is what a device listens on, from its telemetry.
type Ports struct {
	Listening []string // e.g. "tcp/22"
	New       []string // of those, the ones never seen before on this device
}

// Exposure reports a device's listening ports.
type Exposure interface {
	Ports(deviceID string) (Ports, error)
}

// Enroller takes a shadow device an operator decided to enroll (for
// example by allow-listing its EK or pre-approving its client ID).
type Enroller interface {
	Enroll(s Shadow) error
}

// Errors. Compare with errors.Is.
var (
	// ErrNotFound: no such owner, triage entry, block or clone incident.
	ErrNotFound = errors.New("governance: not found")
	// ErrInvalid: a malformed argument; the error says which.
	ErrInvalid = errors.New("governance: invalid")
	// ErrLocked: the state file is held by another process.
	ErrLocked = errors.New("governance: database locked by another process")
	// ErrFull: the block list is at Config.MaxBlocks.
	ErrFull = errors.New("governance: block list full")
	// ErrNoEnroller: an enroll decision without a Config.Enroller.
	ErrNoEnroller = errors.New("governance: no enroller configured")
	// ErrNotEnrollable: an enroll decision on an entry that names no TPM
	// (Shadow.Enrollable); a *NotEnrollableError says why.
	ErrNotEnrollable = errors.New("governance: entry cannot be enrolled")
)

// Leases runs work under named leases (fleet/storage/lease: Holder):
// fn's context ends when the lease is lost.
type Leases interface {
	Hold(ctx context.Context, name string, fn func(context.Context) error) error
}

// Bus tells the services of every replica sharing the database that the
// block list changed (fleet/storage/notify: Bus).
type Bus interface {
	Subscribe(topic string, fn func(notify.Event)) error
	Notify(ctx context.Context, topic, payload string) error
}

// TopicBlocks is the notification a block list change sends (its payload
// the entry's kind): every replica then reads the list again.
const TopicBlocks = "governance_blocks"

// LeaseSweep is the lease under which Run sweeps.
const LeaseSweep = "governance_sweep"

// Config configures a Service. Zero durations and counts take the defaults
// given with each field.
type Config struct {
	// Path is the bbolt file for governance records (mode 0600). Required
	// by Open; OpenPostgres does not use it.
	Path string
	// NoSync skips fsync on commit (tests and benchmarks only).
	NoSync bool
	// Devices is the inventory. Required.
	Devices Devices
	// Alerter receives alerts; nil logs them only.
	Alerter Alerter
	// Revoker revokes dormant devices (every unexpired certificate) when
	// RevokeDormant is set; nil with RevokeDormant is an error.
	Revoker Revoker
	// Quarantiner isolates clones; nil alerts only.
	Quarantiner Quarantiner
	// Enroller takes shadow devices an operator decides to enroll; nil
	// refuses enroll decisions with ErrNoEnroller.
	Enroller Enroller
	// Connected reports whether a device has a live session now
	// (broker.Connected); nil trusts the inventory's Connected field.
	Connected func(deviceID string) bool
	// Attestations, Firmware, Anomalies and Exposure feed the risk score;
	// a nil one contributes no factor.
	Attestations Attestations
	Firmware     Firmware
	Anomalies    Anomalies
	Exposure     Exposure
	// Weights of the risk factors; nil means DefaultWeights().
	Weights *Weights
	// DormantAfter is how long a device holding a valid credential may go
	// unseen before it is dormant. Default 30 days.
	DormantAfter time.Duration
	// RevokeDormant revokes a dormant device's certificates (policy).
	RevokeDormant bool
	// SilentAfter is how long a device may go unseen before silence
	// counts in its risk. Default 1h.
	SilentAfter time.Duration
	// CertLifetime is the fleet's device certificate lifetime, to judge
	// renewals. Default 24h (the fleet's default).
	CertLifetime time.Duration
	// RenewalDue is the fraction of CertLifetime after which a device
	// that has not renewed is overdue. Default 0.8 (devices renew at 2/3).
	RenewalDue float64
	// NearExpiry is the remaining lifetime under which a certificate is
	// near expiry. Default CertLifetime/10.
	NearExpiry time.Duration
	// AttestWindow is how many recent verdicts count in the history
	// factor. Default 10.
	AttestWindow int
	// AttestStale is the age of the last verdict after which attestation
	// is stale. Default 1h.
	AttestStale time.Duration
	// SweepInterval is how often Run sweeps. Default 1h.
	SweepInterval time.Duration
	// Leases runs the sweep (orphaned, dormant and clone-suspect
	// judgement, dormant revocation, stored risk scores) under the lease
	// LeaseSweep, so that replicas sharing the database sweep once
	// (fleet/storage/lease: Holder). Nil: Run sweeps itself, as one
	// process does.
	Leases Leases
	// Bus, when set, carries block list changes between the replicas
	// sharing the database: Block and Unblock send TopicBlocks once
	// stored, and the service reads the list again when it gets one (from
	// any replica) or a resync, so that every replica's broker screen
	// refuses a blocked client at once (fleet/storage/notify: Bus). Open
	// subscribes; nil: one process, nothing to tell.
	Bus Bus
	// RescoreDelay is the tick at which Run scores the devices whose
	// inputs changed (Rescore): each is scored one to two ticks after its
	// first mark, once however often it was marked. Default 2s.
	RescoreDelay time.Duration
	// MaxRescore bounds the devices waiting to be scored; past it the
	// next tick sweeps everything instead. Default 10000.
	MaxRescore int
	// FlushInterval is how often Run writes the triage aggregate and acts
	// on detected clones. Default 1s.
	FlushInterval time.Duration
	// MaxPending bounds the distinct identities waiting for a flush.
	// Default 4096.
	MaxPending int
	// MaxTriage bounds the triage list. Default 10000.
	MaxTriage int
	// MaxBlocks bounds the block list. Default 10000.
	MaxBlocks int
	// CloneGrace is how long two sessions with one serial from different
	// hosts may overlap before it counts as a clone. Default 30s; a
	// negative value counts any overlap at once.
	CloneGrace time.Duration
	// CloneWindow and CloneTakebacks: a host whose session with a serial
	// was taken over by another host and that takes the serial back,
	// CloneTakebacks times within CloneWindow, is a clone (two holders
	// kicking each other off). Defaults 10m and 2; a device flipping
	// between two networks that often within the window is reported too.
	CloneWindow    time.Duration
	CloneTakebacks int
	// MaxSessions bounds tracked sessions. Default 100000.
	MaxSessions int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
}

// Service is identity governance. Its methods are safe for concurrent use.
type Service struct {
	cfg Config
	w   Weights
	log *slog.Logger
	db  kv.DB

	blocks blockSet   // in memory, for IsBlocked
	blockW sync.Mutex // serializes changes to the block list

	pmu     sync.Mutex
	pending map[string]*pendingAttempt
	dropped uint64 // attempts lost because pending was full, not yet persisted

	sessions sessionTracker

	// judgeMu serializes judging devices (a sweep page, Assign, scoring
	// changed devices), so that a verdict is never written over a newer
	// one.
	judgeMu sync.Mutex

	rescore rescoreQueue // devices whose risk inputs changed (rescore.go)
}

const schemaVersion = 1

var (
	bucketMeta     = []byte("meta")
	bucketOwners   = []byte("owners")   // owner ID -> Owner
	bucketAssign   = []byte("assign")   // device ID -> Assignment
	bucketStatus   = []byte("status")   // device ID -> Status
	bucketTriage   = []byte("triage")   // key -> Shadow
	bucketTriageLR = []byte("triagelr") // last seen (8) + key -> nil
	bucketBlocks   = []byte("blocks")   // kind 0x00 value -> Block
	bucketClones   = []byte("clones")   // device ID 0x00 kind -> Clone
	bucketRisk     = []byte("risk")     // device ID -> Risk
	bucketRiskIdx  = []byte("riskidx")  // rank key -> device ID
	keyTriageN     = []byte("triage-n")
	keyDropped     = []byte("dropped")
	keyEvicted     = []byte("evicted")
)

// File is the governance store's file in the fleet's data directory.
const File = "governance.db"

// Buckets are the store's buckets, in the bbolt file and in PostgreSQL:
// what sigil migrate copies.
var Buckets = [][]byte{bucketMeta, bucketOwners, bucketAssign, bucketStatus, bucketTriage,
	bucketTriageLR, bucketBlocks, bucketClones, bucketRisk, bucketRiskIdx}

// Table is the PostgreSQL table holding the buckets (kv.Postgres).
const Table = "governance_kv"

// migrations are the store's tables in PostgreSQL (component
// "governance" in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// Open checks cfg, opens the state file and returns the service; Run
// starts its periodic work.
func Open(cfg Config) (*Service, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("%w: Path and Devices are required", ErrInvalid)
	}
	return open(cfg, func() (kv.DB, error) {
		db, err := boltdb.Open(cfg.Path, boltdb.Schema{Buckets: Buckets, Version: schemaVersion},
			boltdb.Options{Name: "governance", NoSync: cfg.NoSync, Locked: ErrLocked})
		if err != nil {
			return nil, err
		}
		return kv.Bolt(db), nil
	}, cfg.Path)
}

// OpenPostgres is Open with the records in the PostgreSQL database db,
// whose tables it brings up to date first (cfg.Path and NoSync are
// unused). Its writes run one at a time across the replicas sharing db,
// each once (kv.Options.Serialized): a clone incident raised at once on
// two replicas is opened, alerted and quarantined once. Close leaves db
// open.
func OpenPostgres(ctx context.Context, db *postgres.DB, cfg Config) (*Service, error) {
	return open(cfg, func() (kv.DB, error) {
		return kv.PostgresMigrated(ctx, db, "governance", migrations, Table, kv.Options{Serialized: true})
	}, "database")
}

func open(cfg Config, openDB func() (kv.DB, error), where string) (*Service, error) {
	if cfg.Devices == nil {
		return nil, fmt.Errorf("%w: Path and Devices are required", ErrInvalid)
	}
	if cfg.RevokeDormant && cfg.Revoker == nil {
		return nil, fmt.Errorf("%w: RevokeDormant needs a Revoker", ErrInvalid)
	}
	if cfg.RenewalDue < 0 || cfg.RenewalDue > 1 {
		return nil, fmt.Errorf("%w: RenewalDue %v not in [0,1]", ErrInvalid, cfg.RenewalDue)
	}
	setDefaults(&cfg)
	w := DefaultWeights()
	if cfg.Weights != nil {
		w = *cfg.Weights
		if err := w.validate(); err != nil {
			return nil, err
		}
	}
	db, err := openDB()
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, w: w, log: cfg.Logger, db: db, pending: map[string]*pendingAttempt{},
		rescore: rescoreQueue{young: map[string]struct{}{}, ripe: map[string]struct{}{}}}
	s.sessions.init()
	if err := s.loadBlocks(); err != nil {
		db.Close()
		return nil, fmt.Errorf("governance: initialize %s: %w", where, err)
	}
	if cfg.Bus != nil {
		if err := cfg.Bus.Subscribe(TopicBlocks, s.blocksChanged); err != nil {
			db.Close()
			return nil, fmt.Errorf("governance: %w", err)
		}
	}
	return s, nil
}

func setDefaults(c *Config) {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	def(&c.DormantAfter, 30*24*time.Hour)
	def(&c.SilentAfter, time.Hour)
	def(&c.CertLifetime, 24*time.Hour)
	def(&c.NearExpiry, c.CertLifetime/10)
	def(&c.AttestStale, time.Hour)
	def(&c.SweepInterval, time.Hour)
	def(&c.RescoreDelay, 2*time.Second)
	def(&c.FlushInterval, time.Second)
	def(&c.CloneGrace, 30*time.Second)
	def(&c.CloneWindow, 10*time.Minute)
	if c.RenewalDue == 0 {
		c.RenewalDue = 0.8
	}
	defInt(&c.AttestWindow, 10)
	defInt(&c.MaxPending, 4096)
	defInt(&c.MaxTriage, 10000)
	defInt(&c.MaxBlocks, 10000)
	defInt(&c.MaxSessions, 100000)
	defInt(&c.MaxRescore, 10000)
	defInt(&c.CloneTakebacks, 2)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Close writes what is pending and closes the state file.
func (s *Service) Close() error {
	ferr := s.Flush()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("governance: close: %w", err)
	}
	return ferr
}

// Run sweeps, flushes, checks sessions and scores the devices whose risk
// inputs changed (Rescore) until ctx ends; it flushes once more before
// returning. A failing sweep is logged and retried at the next
// interval: the fleet keeps running without governance findings rather
// than stopping. With Config.Leases the sweep runs under the lease
// LeaseSweep, on one replica at a time.
func (s *Service) Run(ctx context.Context) error {
	var sweepC <-chan time.Time // the sweep's ticker, when it runs here
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.cfg.Leases == nil {
		sweep := time.NewTicker(s.cfg.SweepInterval)
		defer sweep.Stop()
		sweepC = sweep.C
	} else {
		wg.Go(func() {
			if err := s.cfg.Leases.Hold(ctx, LeaseSweep, s.sweepLoop); err != nil {
				s.log.Error("governance: sweeps stopped", "err", err)
			}
		})
	}
	flush := time.NewTicker(s.cfg.FlushInterval)
	defer flush.Stop()
	check := s.cfg.CloneGrace
	if check <= 0 {
		check = s.cfg.FlushInterval
	}
	sessions := time.NewTicker(check)
	defer sessions.Stop()
	rescore := time.NewTicker(s.cfg.RescoreDelay)
	defer rescore.Stop()

	if sweepC != nil {
		s.sweepLogged(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			if err := s.Flush(); err != nil {
				s.log.Error("governance: final flush failed", "err", err)
			}
			return nil
		case <-sweepC:
			s.sweepLogged(ctx)
		case <-flush.C:
			if err := s.Flush(); err != nil {
				s.log.Error("governance: flush failed", "err", err)
			}
		case <-sessions.C:
			s.CheckSessions()
		case <-rescore.C:
			s.rescoreTick(ctx)
		}
	}
}

// sweepLoop sweeps at once and then every SweepInterval until ctx ends
// (the lease LeaseSweep is lost, or Run ends).
func (s *Service) sweepLoop(ctx context.Context) error {
	sweep := time.NewTicker(s.cfg.SweepInterval)
	defer sweep.Stop()
	s.sweepLogged(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sweep.C:
			s.sweepLogged(ctx)
		}
	}
}

func (s *Service) sweepLogged(ctx context.Context) {
	rep, err := s.Sweep(ctx)
	if err != nil && ctx.Err() == nil {
		s.log.Error("governance: sweep failed", "err", err)
		return
	}
	s.log.Debug("governance: sweep done", "devices", rep.Devices, "orphaned", rep.Orphaned, "dormant", rep.Dormant, "revoked", rep.Revoked, "clones", rep.Clones)
}

// alert logs a and hands it to the Alerter.
func (s *Service) alert(a Alert) {
	if a.Time.IsZero() {
		a.Time = s.cfg.Now()
	}
	lvl := slog.LevelWarn
	if a.Resolved || a.Severity == SeverityInfo {
		lvl = slog.LevelInfo
	}
	s.log.Log(context.Background(), lvl, "governance: alert", "kind", a.Kind, "severity", a.Severity,
		"device_id", a.DeviceID, "resolved", a.Resolved, "summary", a.Summary)
	if s.cfg.Alerter != nil {
		s.cfg.Alerter.Alert(a)
	}
}
