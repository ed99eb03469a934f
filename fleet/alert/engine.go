package alert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// Bus tells the engines of every replica sharing the store that the rules
// changed (fleet/storage/notify: Bus).
type Bus interface {
	Subscribe(topic string, fn func(notify.Event)) error
	Notify(ctx context.Context, topic, payload string) error
}

// TopicRules is the notification a rule's change sends (its payload the
// rule's ID): every replica's engine then reads the rules again.
const TopicRules = "alert_rules"

// Actions carries out rule actions (Rule.Action) when an alert opens. The
// fleet server wires it to attestation's quarantine and the inventory's
// revocation. It runs on the goroutine that reported the input, bounded by
// Config.ActionTimeout, and must be safe for concurrent use.
type Actions interface {
	Act(ctx context.Context, action Action, a Alert) error
}

// ActionsFunc adapts a function to Actions.
type ActionsFunc func(ctx context.Context, action Action, a Alert) error

// Act calls f.
func (f ActionsFunc) Act(ctx context.Context, action Action, a Alert) error { return f(ctx, action, a) }

// Config configures Open. Durations and limits left zero take the default
// their comment names.
type Config struct {
	// Path is the bbolt file holding rules, alerts, dead letters and the
	// learned baselines (created with mode 0600). Required by Open;
	// OpenPostgres does not use it.
	Path string
	// Routes deliver notifications to sinks; each has its own queue and
	// worker. Names must be unique.
	Routes []Route
	// Actions carries out rule actions. Nil: alerts of rules with an action
	// record that it could not be carried out (Alert.ActionError).
	Actions Actions
	// Now is the clock for times the caller does not give: absence and
	// clear-after sweeps, acknowledgements, manual resolutions, dead
	// letters. Nil means time.Now.
	Now func() time.Time
	// Logger receives the engine's events (alert IDs, rules, devices,
	// routes; never sink credentials). Nil discards them.
	Logger *slog.Logger
	// SweepInterval is how often absence and event clear-after conditions
	// are checked. Default 10s.
	SweepInterval time.Duration
	// FlushInterval is how often learned state (baselines, known set
	// members, last-seen times, event windows) is written; Run also writes
	// it when it ends, and Close. Default 30s.
	FlushInterval time.Duration
	// Resend is how often open alerts are sent again to routes that select
	// TransitionRepeat (an Alertmanager expects it). Default 1m.
	Resend time.Duration
	// ActionTimeout bounds one Actions call. Default 30s.
	ActionTimeout time.Duration
	// MaxAlerts bounds the history: beyond it the oldest resolved alerts
	// are deleted. Default 100000.
	MaxAlerts int
	// MaxDeadLetters bounds the dead letters kept: beyond it the oldest are
	// deleted (counted in Stats and logged). Default 10000.
	MaxDeadLetters int
	// LockTimeout bounds the wait for the file lock; a file held by another
	// process then fails with ErrLocked. Default 1s.
	LockTimeout time.Duration
	// NoSync skips fsync on commit: faster, and a power loss may lose
	// recent commits. For tests and benchmarks.
	NoSync bool
	// OnTransition, when set, is called after each alert opens, is
	// acknowledged or resolves (not for re-sends), with the notification
	// the routes get. It runs on the goroutine that caused the transition,
	// sometimes with the alert's device locked: it must be quick, must not
	// block and must not call back into the Engine. The fleet uses it to
	// score a device's risk again when its open alerts change.
	OnTransition func(Notification)
	// Flood limits how many new alerts open per window, per rule and
	// fleet-wide, holding back and summarizing the rest (see Flood). The
	// zero value holds nothing back.
	Flood Flood
	// Bus, when set, carries rule changes between replicas sharing
	// the store: PutRule and DeleteRule send TopicRules once stored, and
	// the engine reads the rules again when it gets one (from any
	// replica) or a resync. Open subscribes; nil: one process, nothing to
	// tell.
	Bus Bus
	// Leases runs the work on the shared store — re-sends of open alerts
	// (TransitionRepeat) and the history's bound — under the lease
	// LeaseRepeat, so that replicas sharing the store re-send each alert
	// once per Resend between them (fleet/storage/lease: Holder). Nil:
	// Run does it itself, as one process does.
	Leases Leases
}

// Leases runs work under named leases (fleet/storage/lease: Holder):
// fn's context ends when the lease is lost.
type Leases interface {
	Hold(ctx context.Context, name string, fn func(context.Context) error) error
}

// LeaseRepeat is the lease under which Run re-sends open alerts and
// prunes the history.
const LeaseRepeat = "alert_repeat"

// Stats counts what the engine did since Open.
type Stats struct {
	Fired              uint64 // alerts opened
	Deduplicated       uint64 // firings absorbed by an open alert
	Resolved           uint64 // alerts resolved, automatically or by hand
	Delivered          uint64 // notifications a sink accepted
	Retried            uint64 // failed delivery attempts that were retried
	DeadLettered       uint64 // notifications recorded as dead letters
	DeadLettersDropped uint64 // dead letters deleted beyond MaxDeadLetters
	ActionsFailed      uint64 // rule actions that failed or had no Actions
	RepeatsSkipped     uint64 // re-sends that found a route's queue full
	Held               uint64 // new alerts flood control held back (counted in their summaries)
	Queued             int    // notifications waiting in route queues now
}

type counters struct {
	fired, deduplicated, resolved, delivered, retried, deadLettered, deadDropped, actionsFailed, repeatsSkipped, held atomic.Uint64
}

// Engine evaluates rules against device inputs (Observe, Event, Seen),
// keeps the alerts' lifecycle in its store and routes notifications to
// sinks. Its methods are safe for concurrent use; inputs of one device are
// evaluated one at a time.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	st      *store
	started time.Time
	routes  []*route

	rulesMu sync.Mutex // serializes rule changes
	rules   atomic.Pointer[[]*compiled]

	devMu   sync.RWMutex
	devices map[string]*deviceState

	alerts  atomic.Int64 // alerts in the store, for pruning
	running atomic.Bool
	closed  atomic.Bool
	stats   counters

	flood *floodState // flood control (flood.go)
	stale []uint64    // flood summaries a previous run left unsent
}

// compiled is a rule ready for evaluation.
type compiled struct {
	Rule
	digest  string
	devices map[string]bool // nil: every device
}

func (r *compiled) applies(deviceID string) bool {
	return !r.Disabled && (r.devices == nil || r.devices[deviceID])
}

// deviceState is what the engine learned about one device. Each rule's
// state is persisted on its own (flush writes only what changed); the open
// index is rebuilt from the store.
type deviceState struct {
	mu        sync.Mutex
	id        string
	LastSeen  time.Time
	Rules     map[string]*ruleState
	open      map[string]uint64 // openKey(rule, key) -> alert ID; 0 while flood control holds it back
	dirty     bool              // something below changed since the last flush
	seenDirty bool              // LastSeen changed
	dropped   []string          // rule states to delete from the store
	gone      bool              // forgotten: callers must look the device up again
}

// seenRecord is the persisted part of deviceState besides rule states.
type seenRecord struct {
	LastSeen time.Time `json:"last_seen"`
}

// mark records that rs changed.
func (d *deviceState) mark(rs *ruleState) {
	rs.dirty = true
	d.dirty = true
}

// ruleState is one rule's learned state on one device; which fields are
// used depends on the rule's kind.
type ruleState struct {
	Digest string `json:"digest"`
	// Since: threshold — condition true since; new-member — learning
	// started; absence — the last-seen time whose silence was resolved by
	// hand (not fired again until the device is seen again).
	Since time.Time `json:"since,omitzero"`
	// Rate: the previous observation.
	Prev   float64   `json:"prev,omitempty"`
	PrevAt time.Time `json:"prev_at,omitzero"`
	// Event: per key, the times of the newest matching events (at most
	// Count), oldest first.
	Events map[string][]time.Time `json:"events,omitempty"`
	// Baseline: learned mean and variance; observations in a row outside
	// and inside the band.
	EWMA *ewma `json:"ewma,omitempty"`
	Out  int   `json:"out,omitempty"`
	In   int   `json:"in,omitempty"`
	// NewMember: members learned, with when each was first seen.
	Known map[string]time.Time `json:"known,omitempty"`

	dirty bool // changed since the last flush
}

func openKey(ruleID, key string) string { return ruleID + "\x00" + key }

// stateKey names a device's persisted state: its seenRecord with rule "",
// else one rule's state.
func stateKey(deviceID, ruleID string) string { return deviceID + "\x00" + ruleID }

// state returns the device's state for r, reset when r's condition changed.
// The device must be locked.
func (d *deviceState) state(r *compiled) *ruleState {
	rs := d.Rules[r.ID]
	if rs == nil || rs.Digest != r.digest {
		rs = &ruleState{Digest: r.digest}
		d.Rules[r.ID] = rs
		d.mark(rs)
	}
	return rs
}

func (d *deviceState) isOpen(ruleID, key string) bool {
	_, ok := d.open[openKey(ruleID, key)]
	return ok
}

// Limits on what devices and callers can make the engine remember.
const (
	maxDeviceID      = 256
	maxKeyLen        = 256
	maxEvidenceAttrs = 16
	maxEventKeys     = 256 // per rule and device
	maxOpenPerRule   = 32  // new-member alerts open per rule and device
	defaultPageSize  = 100
	maxPageSize      = 1000
)

// Open opens (or creates) the engine's store and loads its rules, open
// alerts and learned state. Run starts delivery and the sweeps; Close
// releases the file after Run has returned.
func Open(cfg Config) (*Engine, error) {
	if cfg.Path == "" {
		return nil, errors.New("alert: Config.Path is required")
	}
	return open(cfg, func(cfg Config) (*store, error) { return openStore(cfg.Path, cfg.LockTimeout, cfg.NoSync) })
}

// OpenPostgres is Open with the store in the PostgreSQL database db,
// whose tables it brings up to date first (cfg.Path, LockTimeout and
// NoSync are unused). Close leaves db open. The store is shared by the
// replicas on db (an alert fired at once on two of them is stored once);
// each engine keeps its own learned state and open-alert index in
// memory, loaded here.
func OpenPostgres(ctx context.Context, db *postgres.DB, cfg Config) (*Engine, error) {
	return open(cfg, func(Config) (*store, error) { return openPostgresStore(ctx, db) })
}

func open(cfg Config, openSt func(Config) (*store, error)) (*Engine, error) {
	if cfg.SweepInterval < 0 || cfg.FlushInterval < 0 || cfg.Resend < 0 || cfg.ActionTimeout < 0 || cfg.LockTimeout < 0 ||
		cfg.MaxAlerts < 0 || cfg.MaxDeadLetters < 0 || cfg.Flood.Window < 0 || cfg.Flood.MaxDevices < 0 {
		return nil, errors.New("alert: Config intervals and limits must not be negative (zero means the default)")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&cfg.SweepInterval, 10*time.Second)
	setDefault(&cfg.FlushInterval, 30*time.Second)
	setDefault(&cfg.Resend, time.Minute)
	setDefault(&cfg.ActionTimeout, 30*time.Second)
	setDefault(&cfg.LockTimeout, time.Second)
	setDefault(&cfg.MaxAlerts, 100000)
	setDefault(&cfg.MaxDeadLetters, 10000)
	routes, err := newRoutes(cfg.Routes)
	if err != nil {
		return nil, err
	}
	st, err := openSt(cfg)
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, st: st, started: cfg.Now(), routes: routes, devices: map[string]*deviceState{},
		flood: newFlood(cfg.Flood)}
	if err := e.load(); err != nil {
		st.close()
		return nil, err
	}
	if cfg.Bus != nil {
		if err := cfg.Bus.Subscribe(TopicRules, e.rulesChanged); err != nil {
			st.close()
			return nil, fmt.Errorf("alert: %w", err)
		}
	}
	return e, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

func (e *Engine) load() error {
	rules, err := e.st.rules(context.Background())
	if err != nil {
		return fmt.Errorf("alert: load rules: %w", err)
	}
	list := make([]*compiled, 0, len(rules))
	for i := range rules {
		r := &rules[i]
		r.SetDefaults()
		if err := r.Validate(); err != nil {
			return fmt.Errorf("alert: stored rule: %w", err)
		}
		list = append(list, compile(r))
	}
	e.rules.Store(&list)
	state := func(id string) *deviceState {
		d := e.devices[id]
		if d == nil {
			d = newDeviceState(id)
			e.devices[id] = d
		}
		return d
	}
	err = e.st.loadStates(context.Background(),
		func(id string, s *seenRecord) { state(id).LastSeen = s.LastSeen },
		func(id, rule string, rs *ruleState) { state(id).Rules[rule] = rs })
	if err != nil {
		return fmt.Errorf("alert: load state: %w", err)
	}
	open, err := e.st.openAlerts(context.Background())
	if err != nil {
		return fmt.Errorf("alert: load open alerts: %w", err)
	}
	for _, a := range open {
		if a.Held != nil {
			if !a.Held.Notified {
				e.stale = append(e.stale, a.ID)
			}
			continue // a flood summary: no device's condition
		}
		state(a.DeviceID).open[openKey(a.RuleID, a.Key)] = a.ID
	}
	n, err := e.st.countAlerts(context.Background())
	if err != nil {
		return fmt.Errorf("alert: count alerts: %w", err)
	}
	e.alerts.Store(int64(n))
	return nil
}

func newDeviceState(id string) *deviceState {
	return &deviceState{id: id, Rules: map[string]*ruleState{}, open: map[string]uint64{}}
}

func compile(r *Rule) *compiled {
	c := &compiled{Rule: *r, digest: r.digest()}
	if len(r.Devices) > 0 {
		c.devices = make(map[string]bool, len(r.Devices))
		for _, d := range r.Devices {
			c.devices[d] = true
		}
	}
	return c
}

// Close writes the learned state, dead-letters notifications still queued
// (marked Interrupted, so the next Run sends them) and closes the file.
// Call it after Run has returned.
func (e *Engine) Close() error {
	if !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	for _, rt := range e.routes {
		e.drain(rt)
	}
	ferr := e.flush()
	return errors.Join(ferr, e.st.close())
}

// Run delivers notifications and runs the sweeps (absence, clear-after,
// re-sends, history bound, state flush) until ctx ends. Dead letters left
// Interrupted by the previous run are sent first. It may be called once.
// With Config.Leases the re-sends and the history bound run under the
// lease LeaseRepeat, on one replica at a time.
func (e *Engine) Run(ctx context.Context) error {
	if !e.running.CompareAndSwap(false, true) {
		return errors.New("alert: Run called twice")
	}
	if _, err := e.redrive(func(d *DeadLetter) bool { return d.Interrupted }); err != nil {
		e.log.Error("alert: re-sending interrupted notifications", "err", err)
	}
	e.notifyStale(e.cfg.Now())
	var wg sync.WaitGroup
	for _, rt := range e.routes {
		wg.Go(func() { e.work(ctx, rt) })
	}
	sweep := time.NewTicker(e.cfg.SweepInterval)
	flush := time.NewTicker(e.cfg.FlushInterval)
	defer sweep.Stop()
	defer flush.Stop()
	var resendC <-chan time.Time // the re-sends' ticker, when they run here
	here := e.cfg.Leases == nil
	if here {
		resend := time.NewTicker(e.cfg.Resend)
		defer resend.Stop()
		resendC = resend.C
	} else {
		wg.Go(func() {
			if err := e.cfg.Leases.Hold(ctx, LeaseRepeat, e.repeats); err != nil {
				e.log.Error("alert: re-sends stopped", "err", err)
			}
		})
	}
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-sweep.C:
			e.sweep(e.cfg.Now())
			if here {
				e.prune()
			}
		case <-flush.C:
			if err := e.flush(); err != nil {
				e.log.Error("alert: writing learned state", "err", err)
			}
		case <-resendC:
			e.resend()
		}
	}
	wg.Wait()
	if err := e.flush(); err != nil {
		e.log.Error("alert: writing learned state", "err", err)
	}
	return nil
}

// repeats re-sends open alerts every Resend and bounds the history every
// SweepInterval until ctx ends (Run ends, or the lease is lost).
func (e *Engine) repeats(ctx context.Context) error {
	prune := time.NewTicker(e.cfg.SweepInterval)
	resend := time.NewTicker(e.cfg.Resend)
	defer prune.Stop()
	defer resend.Stop()
	// The other replicas open alerts too: the store holds at most the
	// alerts last counted plus the IDs given since (every replica's), so
	// every row is counted again only when that bound passes MaxAlerts.
	counted, countedSeq := -1, uint64(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-prune.C:
			seq, err := e.st.alertSeq(ctx)
			if err == nil && counted >= 0 && uint64(counted)+(seq-countedSeq) <= uint64(e.cfg.MaxAlerts) {
				continue
			}
			n := 0
			if err == nil {
				n, err = e.st.countAlerts(ctx)
			}
			if err != nil {
				if ctx.Err() == nil {
					e.log.Error("alert: counting alerts", "err", err)
				}
				continue
			}
			e.alerts.Store(int64(n))
			e.prune()
			counted, countedSeq = int(e.alerts.Load()), seq
		case <-resend.C:
			e.resend()
		}
	}
}

func (e *Engine) ruleList() []*compiled { return *e.rules.Load() }

// device returns the state of a device, creating it.
func (e *Engine) device(id string) *deviceState {
	e.devMu.RLock()
	d := e.devices[id]
	e.devMu.RUnlock()
	if d != nil {
		return d
	}
	e.devMu.Lock()
	defer e.devMu.Unlock()
	if d = e.devices[id]; d == nil {
		d = newDeviceState(id)
		e.devices[id] = d
	}
	return d
}

// lockDevice returns the device's state, created if needed, locked.
func (e *Engine) lockDevice(id string) *deviceState {
	for {
		d := e.device(id)
		d.mu.Lock()
		if !d.gone {
			return d
		}
		d.mu.Unlock()
	}
}

func (e *Engine) deviceList() []*deviceState {
	e.devMu.RLock()
	defer e.devMu.RUnlock()
	return slices.Collect(maps.Values(e.devices))
}

func checkDevice(id string) error {
	if id == "" || len(id) > maxDeviceID || !utf8.ValidString(id) {
		return fmt.Errorf("%w: device ID must be 1-%d bytes of UTF-8", ErrInvalidInput, maxDeviceID)
	}
	for i := 0; i < len(id); i++ {
		if id[i] == 0 {
			return fmt.Errorf("%w: device ID contains NUL", ErrInvalidInput)
		}
	}
	return nil
}

// flush writes the learned state that changed since the last flush, in
// one transaction.
func (e *Engine) flush() error {
	batch := map[string][]byte{}
	type written struct {
		d  *deviceState
		rs []*ruleState
	}
	var done []written
	for _, d := range e.deviceList() {
		d.mu.Lock()
		if !d.dirty {
			d.mu.Unlock()
			continue
		}
		w := written{d: d}
		if d.seenDirty {
			v, err := encode(&seenRecord{LastSeen: d.LastSeen})
			if err != nil {
				d.mu.Unlock()
				return err
			}
			batch[stateKey(d.id, "")] = v
		}
		for id, rs := range d.Rules {
			if !rs.dirty {
				continue
			}
			v, err := encode(rs)
			if err != nil {
				d.mu.Unlock()
				return err
			}
			batch[stateKey(d.id, id)] = v
			rs.dirty = false
			w.rs = append(w.rs, rs)
		}
		for _, id := range d.dropped {
			if d.Rules[id] == nil {
				batch[stateKey(d.id, id)] = nil
			}
		}
		d.dropped, d.dirty, d.seenDirty = nil, false, false
		done = append(done, w)
		d.mu.Unlock()
	}
	if len(batch) == 0 {
		return nil
	}
	if err := e.st.saveStates(context.Background(), batch); err != nil {
		// Try again at the next flush.
		for _, w := range done {
			w.d.mu.Lock()
			w.d.dirty, w.d.seenDirty = true, true
			for _, rs := range w.rs {
				rs.dirty = true
			}
			w.d.mu.Unlock()
		}
		return fmt.Errorf("alert: save state: %w", err)
	}
	return nil
}

// Forget drops a device (decommissioned, deleted): its open alerts are
// resolved by "system" and its learned state is deleted, so absence rules
// stop watching it.
func (e *Engine) Forget(deviceID string) error {
	e.devMu.Lock()
	d := e.devices[deviceID]
	delete(e.devices, deviceID)
	e.devMu.Unlock()
	if d != nil {
		d.mu.Lock()
		d.gone = true
		now := e.cfg.Now()
		for k := range d.open {
			rule, key, _ := cutKey(k)
			e.resolve(d, rule, key, now, "system", "device forgotten")
		}
		d.mu.Unlock()
	}
	if err := e.st.deleteStates(context.Background(), deviceID); err != nil {
		return fmt.Errorf("alert: forget %s: %w", deviceID, err)
	}
	return nil
}

func cutKey(k string) (rule, key string, ok bool) {
	for i := 0; i < len(k); i++ {
		if k[i] == 0 {
			return k[:i], k[i+1:], true
		}
	}
	return k, "", false
}

// fire opens an alert of r on d for key, or, when one is open, lets it
// absorb the firing. The device must be locked.
func (e *Engine) fire(d *deviceState, r *compiled, key string, at time.Time, sev Severity, summary string, evidence map[string]string) {
	ok := openKey(r.ID, key)
	if id, open := d.open[ok]; open && id == 0 {
		e.repeat(r.ID) // held back: absorbed, counted in the summary
		e.stats.deduplicated.Add(1)
		return
	} else if open {
		_, err := e.st.update(context.Background(), id, func(a *Alert) error {
			if !a.State.Open() {
				return ErrResolved
			}
			absorb(a, at, evidence)
			return nil
		})
		if err == nil {
			e.stats.deduplicated.Add(1)
			return
		}
		delete(d.open, ok)
		if !errors.Is(err, ErrResolved) {
			e.log.Error("alert: updating open alert", "alert_id", id, "err", err)
			return
		}
	}
	if hw := e.admit(r, d.id, key, sev, at, e.cfg.Now()); hw != nil {
		d.open[ok] = 0
		e.stats.held.Add(1)
		if r.Action != "" {
			e.actHeld(hw, r, d.id, key, sev, summary, evidence, at)
		}
		return
	}
	a := &Alert{
		Fingerprint: Fingerprint(r.ID, d.id, key),
		RuleID:      r.ID, RuleName: r.Name, Kind: r.Kind(), DeviceID: d.id, Key: key,
		Severity: sev, State: StateFiring, Summary: summary, Description: r.Description,
		Labels: maps.Clone(r.Labels), Evidence: evidence,
		Count: 1, StartsAt: at, LastFiredAt: at, Action: r.Action,
	}
	stored, created, err := e.st.create(context.Background(), a)
	if err != nil {
		e.log.Error("alert: could not record alert", "rule_id", r.ID, "device_id", d.id, "err", err)
		return
	}
	d.open[ok] = stored.ID
	if !created {
		e.stats.deduplicated.Add(1)
		return
	}
	e.stats.fired.Add(1)
	e.alerts.Add(1)
	e.log.Info("alert firing", "alert_id", stored.ID, "rule_id", r.ID, "device_id", d.id, "severity", string(sev), "summary", summary)
	if r.Action != "" {
		e.act(stored)
	}
	e.dispatch(Notification{Transition: TransitionFiring, At: e.cfg.Now(), Alert: *stored})
}

// actHeld runs the rule's action for an alert flood control held back:
// a flood must not switch actions off. The action sees the alert as it
// would have opened, with the summary's ID; the outcome is counted in the
// summary and logged.
func (e *Engine) actHeld(hw *heldWindow, r *compiled, deviceID, key string, sev Severity, summary string, evidence map[string]string, at time.Time) {
	a := Alert{ID: hw.summaryID, Fingerprint: Fingerprint(r.ID, deviceID, key), RuleID: r.ID, RuleName: r.Name, Kind: r.Kind(),
		DeviceID: deviceID, Key: key, Severity: sev, State: StateFiring, Summary: summary, Description: r.Description,
		Labels: maps.Clone(r.Labels), Evidence: evidence, Count: 1, StartsAt: at, LastFiredAt: at, Action: r.Action}
	var err error
	if e.cfg.Actions == nil {
		err = errors.New("no actions configured")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.ActionTimeout)
		err = e.cfg.Actions.Act(ctx, r.Action, a)
		cancel()
	}
	e.heldAction(hw, err != nil)
	if err != nil {
		e.stats.actionsFailed.Add(1)
		e.log.Warn("alert action failed (alert held back by flood control)", "summary_id", hw.summaryID, "rule_id", r.ID,
			"action", string(r.Action), "device_id", deviceID, "err", truncate(err.Error(), 512))
		return
	}
	e.log.Info("alert action done (alert held back by flood control)", "summary_id", hw.summaryID, "rule_id", r.ID,
		"action", string(r.Action), "device_id", deviceID)
}

// act runs a's action and records a failure on the alert.
func (e *Engine) act(a *Alert) {
	var msg string
	if e.cfg.Actions == nil {
		msg = "no actions configured"
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.ActionTimeout)
		err := e.cfg.Actions.Act(ctx, a.Action, *a)
		cancel()
		if err != nil {
			msg = truncate(err.Error(), 512)
		}
	}
	if msg == "" {
		e.log.Info("alert action done", "alert_id", a.ID, "action", string(a.Action), "device_id", a.DeviceID)
		return
	}
	e.stats.actionsFailed.Add(1)
	e.log.Warn("alert action failed", "alert_id", a.ID, "action", string(a.Action), "device_id", a.DeviceID, "err", msg)
	a.ActionError = msg
	if _, err := e.st.update(context.Background(), a.ID, func(s *Alert) error { s.ActionError = msg; return nil }); err != nil {
		e.log.Error("alert: recording action failure", "alert_id", a.ID, "err", err)
	}
}

// resolve closes the open alert of rule on d for key, if any (a condition
// flood control held back is only forgotten). The device must be locked.
func (e *Engine) resolve(d *deviceState, ruleID, key string, at time.Time, by, note string) {
	ok := openKey(ruleID, key)
	id, open := d.open[ok]
	if !open {
		return
	}
	delete(d.open, ok)
	if id == 0 {
		return
	}
	a, err := e.st.update(context.Background(), id, func(a *Alert) error {
		if !a.State.Open() {
			return ErrResolved
		}
		a.State, a.ResolvedAt, a.ResolvedBy, a.ResolveNote = StateResolved, at, by, note
		return nil
	})
	if err != nil {
		if !errors.Is(err, ErrResolved) {
			e.log.Error("alert: could not resolve alert", "alert_id", id, "err", err)
		}
		return
	}
	e.stats.resolved.Add(1)
	e.log.Info("alert resolved", "alert_id", id, "rule_id", ruleID, "device_id", d.id, "by", by)
	e.dispatch(Notification{Transition: TransitionResolved, At: e.cfg.Now(), Alert: *a})
}

// sweep checks the conditions that time alone changes: absence and event
// clear-after; it also forgets event windows nobody needs.
func (e *Engine) sweep(now time.Time) {
	rules := e.ruleList()
	for _, d := range e.deviceList() {
		d.mu.Lock()
		for _, r := range rules {
			switch {
			case r.Absence != nil && r.applies(d.id):
				e.absence(d, r, now)
			case r.Event != nil:
				e.sweepEvents(d, r, now)
			}
		}
		d.mu.Unlock()
	}
	e.floodSweep(now)
}

// prune keeps the history within MaxAlerts.
func (e *Engine) prune() {
	excess := int(e.alerts.Load()) - e.cfg.MaxAlerts
	if excess <= 0 {
		return
	}
	n, err := e.st.prune(context.Background(), excess)
	if err != nil {
		e.log.Error("alert: pruning history", "err", err)
		return
	}
	e.alerts.Add(-int64(n))
}

// resend sends every open alert again to routes that select repeats.
func (e *Engine) resend() {
	if !slices.ContainsFunc(e.routes, func(rt *route) bool { return rt.transitions[TransitionRepeat] }) {
		return
	}
	open, err := e.st.openAlerts(context.Background())
	if err != nil {
		e.log.Error("alert: listing open alerts", "err", err)
		return
	}
	now := e.cfg.Now()
	for _, a := range open {
		if a.Held != nil && !a.Held.Notified {
			continue // a flood summary goes out once, when its window closes
		}
		e.dispatch(Notification{Transition: TransitionRepeat, At: now, Alert: a})
	}
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	s := Stats{
		Fired: e.stats.fired.Load(), Deduplicated: e.stats.deduplicated.Load(), Resolved: e.stats.resolved.Load(),
		Delivered: e.stats.delivered.Load(), Retried: e.stats.retried.Load(), DeadLettered: e.stats.deadLettered.Load(),
		DeadLettersDropped: e.stats.deadDropped.Load(), ActionsFailed: e.stats.actionsFailed.Load(),
		RepeatsSkipped: e.stats.repeatsSkipped.Load(), Held: e.stats.held.Load(),
	}
	for _, rt := range e.routes {
		s.Queued += len(rt.q)
	}
	return s
}

// PutRule validates r (with defaults filled), stores it — replacing a rule
// with the same ID — and applies it to the next inputs. It returns the rule
// as stored. Learned state survives changes of anything but the condition.
// Open alerts of a rule whose condition changed or that becomes disabled,
// and those on devices it no longer covers, are resolved by "system".
// With Config.Bus the other replicas are told (TopicRules).
func (e *Engine) PutRule(r Rule) (*Rule, error) {
	r = cloneRule(r)
	r.SetDefaults()
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if err := e.putRule(&r); err != nil {
		return nil, err
	}
	e.tell(r.ID)
	out := cloneRule(r)
	return &out, nil
}

func (e *Engine) putRule(r *Rule) error {
	e.rulesMu.Lock()
	defer e.rulesMu.Unlock()
	if err := e.st.putRule(context.Background(), r); err != nil {
		return fmt.Errorf("alert: store rule: %w", err)
	}
	c := compile(r)
	old := e.ruleList()
	list := slices.DeleteFunc(slices.Clone(old), func(x *compiled) bool { return x.ID == r.ID })
	list = append(list, c)
	slices.SortFunc(list, func(a, b *compiled) int { return strings.Compare(a.ID, b.ID) })
	e.rules.Store(&list)
	e.ruleChanged(ruleByID(old, r.ID), c)
	return nil
}

// ruleByID returns the rule id of list, nil if none.
func ruleByID(list []*compiled, id string) *compiled {
	for _, x := range list {
		if x.ID == id {
			return x
		}
	}
	return nil
}

// ruleChanged resolves what a rule's change ends: with the condition
// changed, its open alerts; else those on devices c no longer covers
// (disabled, or its device list changed). old is nil for a new rule.
// rulesMu must be held.
func (e *Engine) ruleChanged(old, c *compiled) {
	changed := old != nil && old.digest != c.digest
	note := "rule disabled or no longer covers the device"
	if changed {
		note = "rule condition changed"
	}
	e.closeRule(c.ID, func(deviceID string) bool { return changed || !c.applies(deviceID) }, note, false)
}

// DeleteRule deletes a rule, resolves its open alerts (by "system") and
// forgets what it learned. With Config.Bus the other replicas are
// told (TopicRules).
func (e *Engine) DeleteRule(id string) error {
	if err := e.deleteRule(id); err != nil {
		return err
	}
	e.tell(id)
	return nil
}

func (e *Engine) deleteRule(id string) error {
	e.rulesMu.Lock()
	defer e.rulesMu.Unlock()
	if err := e.st.deleteRule(context.Background(), id); err != nil {
		return err
	}
	list := slices.DeleteFunc(slices.Clone(e.ruleList()), func(x *compiled) bool { return x.ID == id })
	e.rules.Store(&list)
	e.closeRule(id, func(string) bool { return true }, "rule deleted", true)
	return nil
}

// tell sends TopicRules for rule id once its change is stored. A failure
// is logged: the other replicas then see the change at their next resync.
func (e *Engine) tell(id string) {
	if e.cfg.Bus == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.cfg.Bus.Notify(ctx, TopicRules, id); err != nil {
		e.log.Error("alert: telling the other replicas of a rule change failed", "rule_id", id, "err", err)
	}
}

// rulesChanged reads the rules again on a notification or a resync.
func (e *Engine) rulesChanged(ev notify.Event) {
	if err := e.reloadRules(); err != nil {
		e.log.Error("alert: reading the rules again failed", "rule_id", ev.Payload, "resync", ev.Resync, "err", err)
	}
}

// reloadRules replaces the rules with those stored (another replica
// changed them) and, as PutRule and DeleteRule do, resolves the open
// alerts that a change or a deletion ends and forgets what a deleted
// rule learned. An alert another replica already resolved is not
// resolved again.
func (e *Engine) reloadRules() error {
	e.rulesMu.Lock()
	defer e.rulesMu.Unlock()
	rules, err := e.st.rules(context.Background())
	if err != nil {
		return fmt.Errorf("alert: load rules: %w", err)
	}
	list := make([]*compiled, 0, len(rules))
	for i := range rules {
		r := &rules[i]
		r.SetDefaults()
		if err := r.Validate(); err != nil {
			return fmt.Errorf("alert: stored rule: %w", err)
		}
		list = append(list, compile(r))
	}
	slices.SortFunc(list, func(a, b *compiled) int { return strings.Compare(a.ID, b.ID) })
	old := e.ruleList()
	e.rules.Store(&list)
	for _, o := range old {
		if ruleByID(list, o.ID) == nil {
			e.closeRule(o.ID, func(string) bool { return true }, "rule deleted", true)
		}
	}
	for _, c := range list {
		if o := ruleByID(old, c.ID); o == nil || !reflect.DeepEqual(o.Rule, c.Rule) {
			e.ruleChanged(o, c)
		}
	}
	return nil
}

// closeRule resolves the open alerts of a rule on the devices sel picks
// and, with forget, drops the rule's learned state everywhere.
func (e *Engine) closeRule(ruleID string, sel func(deviceID string) bool, note string, forget bool) {
	now := e.cfg.Now()
	for _, d := range e.deviceList() {
		d.mu.Lock()
		if sel(d.id) {
			for k := range d.open {
				if rule, key, _ := cutKey(k); rule == ruleID {
					e.resolve(d, rule, key, now, "system", note)
				}
			}
		}
		if forget && d.Rules[ruleID] != nil {
			delete(d.Rules, ruleID)
			d.dropped = append(d.dropped, ruleID)
			d.dirty = true
		}
		d.mu.Unlock()
	}
}

// Rules returns the rules in ID order, with defaults filled.
func (e *Engine) Rules() []Rule {
	list := e.ruleList()
	out := make([]Rule, len(list))
	for i, c := range list {
		out[i] = cloneRule(c.Rule)
	}
	return out
}

// Rule returns one rule.
func (e *Engine) Rule(id string) (*Rule, error) {
	for _, c := range e.ruleList() {
		if c.ID == id {
			r := cloneRule(c.Rule)
			return &r, nil
		}
	}
	return nil, fmt.Errorf("%w: rule %q", ErrNotFound, id)
}

// cloneRule deep-copies r (its conditions are pointers).
func cloneRule(r Rule) Rule {
	b, err := json.Marshal(&r)
	if err != nil {
		return r
	}
	var out Rule
	if json.Unmarshal(b, &out) != nil {
		return r
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
