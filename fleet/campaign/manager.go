package campaign

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Targets resolves a selector to the IDs of the devices it selects that
// may run release (the fleet's own knowledge decides: the model it
// assigned the device among those the release is built for), in an order
// that is the same each time for the same fleet (the order devices are
// put in waves).
type Targets interface {
	Resolve(ctx context.Context, release string, sel Selector) ([]string, error)
}

// TargetsFunc adapts a function to Targets.
type TargetsFunc func(ctx context.Context, release string, sel Selector) ([]string, error)

// Resolve calls f.
func (f TargetsFunc) Resolve(ctx context.Context, release string, sel Selector) ([]string, error) {
	return f(ctx, release, sel)
}

// Announcement is a release announcement for one device.
type Announcement struct {
	Campaign string
	Device   string
	Release  string
	Attempt  int // 1 for the first announcement to this device
}

// Announcer queues a release announcement for a device. An error means
// the announcement was not queued: the device is tried again later, unless
// the error is an *IneligibleError (the device must not get the release:
// it fails at once).
type Announcer interface {
	Announce(ctx context.Context, a Announcement) error
}

// IneligibleError is an Announcer's refusal of a device that must not get
// the release at all, say because its model is not one the release is
// built for (it changed since the campaign was created, or a rollback
// campaign took it along). The device fails at once with Reason (a wire
// reason code, 70–77), whatever retries are left, and is never announced
// again.
type IneligibleError struct {
	Reason  wire.Reason
	Message string // why, for people
}

func (e *IneligibleError) Error() string {
	return fmt.Sprintf("campaign: device may not get the release: %s: %s", e.Reason, e.Message)
}

// AnnouncerFunc adapts a function to Announcer.
type AnnouncerFunc func(ctx context.Context, a Announcement) error

// Announce calls f.
func (f AnnouncerFunc) Announce(ctx context.Context, a Announcement) error { return f(ctx, a) }

// AuditEvent is an operator or lifecycle action on a campaign.
type AuditEvent struct {
	Actor  string // the operator, or "system" for the engine's own actions
	Action string // campaign.create, .start, .pause, .resume, .abort, .rollback, .complete
	Target string // the campaign ID
	// Outcome is "ok" or "failed".
	Outcome       string
	Justification string
	Detail        string // e.g. the error of a refused action, or the release
}

// Auditor records audit events; it must not block for long.
type Auditor interface {
	Record(e AuditEvent)
}

// AuditorFunc adapts a function to Auditor.
type AuditorFunc func(e AuditEvent)

// Record calls f.
func (f AuditorFunc) Record(e AuditEvent) { f(e) }

// SystemActor is the actor of the engine's own actions.
const SystemActor = "system"

// Leases runs work under named leases (fleet/storage/lease: Holder):
// fn's context ends when the lease is lost.
type Leases interface {
	Hold(ctx context.Context, name string, fn func(context.Context) error) error
}

// LeaseStep is the lease under which Run steps the campaigns.
const LeaseStep = "campaign_step"

// Config configures a Manager.
type Config struct {
	// Store keeps the campaigns; required.
	Store *Store
	// Targets resolves selectors; required.
	Targets Targets
	// Announcer queues announcements; required.
	Announcer Announcer
	// Auditor records every operator and lifecycle action; nil records
	// nothing.
	Auditor Auditor
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Rand makes campaign IDs; nil means crypto/rand.
	Rand io.Reader
	// Tick is how often Run steps the engine; 0 means one second.
	Tick time.Duration
	// Leases runs the stepping under the lease LeaseStep, so that
	// replicas sharing the store step the campaigns once, at one Batch
	// per Tick between them (fleet/storage/lease: Holder). Nil: Run steps
	// them itself, as one process does.
	Leases Leases
	// Batch bounds the devices one step announces per campaign and the
	// devices one transaction times out; 0 means 1000.
	Batch int
	// AnnounceRetry is how long a device whose announcement could not be
	// queued waits before it is tried again (until its device timeout
	// runs out); 0 means 30 seconds.
	AnnounceRetry time.Duration
	// Logger receives the engine's log; nil discards it.
	Logger *slog.Logger
}

// Sentinel errors.
var (
	// ErrNotFound: no campaign has that ID.
	ErrNotFound = errors.New("campaign: no such campaign")
	// ErrNotTarget: the device is not one of the campaign's devices.
	ErrNotTarget = errors.New("campaign: device is not a target of the campaign")
	// ErrState: the action is not possible in the campaign's state.
	ErrState = errors.New("campaign: not possible in this state")
	// ErrNoTargets: the selector matched no device the release is for,
	// or no device committed the campaign to roll back.
	ErrNoTargets = errors.New("campaign: no target devices")
	// ErrInvalidReport: a device report is malformed (an unknown step, a
	// bad ID or version).
	ErrInvalidReport = errors.New("campaign: invalid device report")
	// ErrAccountability: an operator action lacks an actor or a
	// justification.
	ErrAccountability = errors.New("campaign: an actor and a justification are required")
)

// Manager runs campaigns. Its methods are safe for concurrent use; Run
// drives the engine.
type Manager struct {
	cfg   Config
	store *Store
	log   *slog.Logger

	mu    sync.Mutex
	plans map[string]*plan // immutable per campaign; loaded once

	rmu      sync.Mutex
	rdone    *sync.Cond // on rmu: a batch of reports was written
	reports  []*pendingReport
	flushing bool          // a caller is writing the queued reports
	kick     chan struct{} // Submit queued a report
}

// New returns a Manager; Run starts its engine.
func New(cfg Config) (*Manager, error) {
	if cfg.Store == nil || cfg.Targets == nil || cfg.Announcer == nil {
		return nil, errors.New("campaign: Store, Targets and Announcer are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 1000
	}
	if cfg.AnnounceRetry <= 0 {
		cfg.AnnounceRetry = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, store: cfg.Store, log: cfg.Logger, plans: map[string]*plan{}, kick: make(chan struct{}, 1)}
	m.rdone = sync.NewCond(&m.rmu)
	return m, nil
}

// plan is a campaign's immutable part: its compiled definition and its
// waves.
type plan struct {
	*compiled
	meta    meta
	sizes   []int // devices in each wave
	starts  []int // position of each wave's first device
	need    []int
	allowed []int
}

func newPlan(c *compiled, mt meta) *plan {
	p := &plan{compiled: c, meta: mt}
	pos := 0
	for _, n := range mt.Sizes {
		p.starts = append(p.starts, pos)
		p.need = append(p.need, c.need(n))
		p.allowed = append(p.allowed, c.allowed(n))
		pos += n
	}
	p.sizes = mt.Sizes
	return p
}

// waveEnd is the position after wave i's last device.
func (p *plan) waveEnd(i int) int { return p.starts[i] + p.sizes[i] }

// plan returns a campaign's plan from the cache or its bucket.
func (m *Manager) plan(id string, b kv.Bucket) (*plan, error) {
	m.mu.Lock()
	p := m.plans[id]
	m.mu.Unlock()
	if p != nil {
		return p, nil
	}
	var def Definition
	var mt meta
	if _, err := getJSON(b, keyDef, &def); err != nil {
		return nil, fmt.Errorf("campaign: %s: reading definition: %w", id, err)
	}
	if _, err := getJSON(b, keyMeta, &mt); err != nil {
		return nil, fmt.Errorf("campaign: %s: reading plan: %w", id, err)
	}
	c, err := compile(&def)
	if err != nil {
		return nil, fmt.Errorf("campaign: %s: stored definition: %w", id, err)
	}
	if len(mt.Sizes) == 0 || slices.ContainsFunc(mt.Sizes, func(n int) bool { return n < 1 }) {
		return nil, fmt.Errorf("campaign: %s: stored wave plan %v is not valid", id, mt.Sizes)
	}
	c.def.Targets.DeviceIDs = nil // the engine never needs them; Get reads them from the store
	p = newPlan(c, mt)
	m.mu.Lock()
	m.plans[id] = p
	m.mu.Unlock()
	return p, nil
}

// event is an action to audit and log once its transaction committed.
type event struct {
	AuditEvent
	level slog.Level
	msg   string
}

func (m *Manager) emit(events []event) {
	for _, e := range events {
		if m.cfg.Auditor != nil {
			m.cfg.Auditor.Record(e.AuditEvent)
		}
		m.log.Log(context.Background(), e.level, e.msg, "campaign", e.Target, "actor", e.Actor,
			"action", e.Action, "outcome", e.Outcome, "why", e.Justification, "detail", e.Detail)
	}
}

// refused audits an operator action that failed and returns err.
func (m *Manager) refused(action, actor, id, why string, err error) error {
	m.emit([]event{{AuditEvent: AuditEvent{Actor: actor, Action: action, Target: id, Outcome: "failed",
		Justification: why, Detail: err.Error()}, level: slog.LevelWarn, msg: "campaign action refused"}})
	return err
}

func accountable(actor, why string, needWhy bool) error {
	if actor == "" || len(actor) > maxLabel || !printable(actor) || len(why) > maxWhy || !printable(why) || needWhy && why == "" {
		return ErrAccountability
	}
	return nil
}

// Create resolves the definition's targets and stores a draft campaign;
// Start starts it.
func (m *Manager) Create(ctx context.Context, def Definition, actor, justification string) (*Campaign, error) {
	if def.RollbackOf != "" {
		return nil, m.refused("campaign.create", actor, "", justification, fmt.Errorf("%w: rollback_of is set by Rollback", ErrInvalid))
	}
	id, err := m.create(ctx, def, nil, actor, justification)
	if err != nil {
		return nil, m.refused("campaign.create", actor, id, justification, err)
	}
	return m.Get(id)
}

// create validates def, resolves its targets unless ids are given, and
// stores a draft campaign.
func (m *Manager) create(ctx context.Context, def Definition, ids []string, actor, justification string) (string, error) {
	if err := accountable(actor, justification, false); err != nil {
		return "", err
	}
	c, err := compile(&def)
	if err != nil {
		return "", err
	}
	if ids == nil {
		if ids, err = m.cfg.Targets.Resolve(ctx, c.def.Release, c.def.Targets); err != nil {
			return "", fmt.Errorf("campaign: resolving targets: %w", err)
		}
		if ids, err = cleanTargets(ids); err != nil {
			return "", err
		}
	}
	if len(ids) == 0 {
		return "", ErrNoTargets
	}
	sizes, err := c.plan(len(ids))
	if err != nil {
		return "", err
	}
	raw := make([]byte, 8)
	if _, err := io.ReadFull(m.cfg.Rand, raw); err != nil {
		return "", fmt.Errorf("campaign: making an ID: %w", err)
	}
	id := "cmp_" + hex.EncodeToString(raw)
	local := m.cfg.Now().UTC()
	err = m.store.db.Update(ctx, func(tx kv.Tx) error {
		now, err := m.store.clock(tx, local)
		if err != nil {
			return err
		}
		mt := meta{Created: now, CreatedBy: actor, Justification: justification, Sizes: sizes}
		h := &header{State: StateDraft, Total: len(ids), Counts: Counts{Pending: len(ids)}, Changed: now, ChangedBy: actor, Why: justification}
		root := tx.Bucket(bucketCampaigns)
		if campaignBucket(tx, id) != nil {
			return fmt.Errorf("campaign: %s exists", id)
		}
		b, err := root.CreateBucketIfNotExists([]byte(id))
		if err != nil {
			return err
		}
		if err := putJSON(b, keyDef, &c.def); err != nil {
			return err
		}
		if err := putJSON(b, keyMeta, &mt); err != nil {
			return err
		}
		if err := putJSON(b, keyHead, h); err != nil {
			return err
		}
		var bs [5]kv.Bucket
		for i, name := range [][]byte{bucketDevices, bucketOrder, bucketWaves, bucketDeadlines, bucketRetry} {
			if bs[i], err = b.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		devs, order, waves := bs[0], bs[1], bs[2]
		wave, end := 0, sizes[0]
		for pos, dev := range ids {
			if pos == end {
				wave++
				end += sizes[wave]
			}
			if err := putJSON(devs, []byte(dev), &devRec{Pos: pos, Wave: wave, Step: StepPending}); err != nil {
				return err
			}
			if err := order.Put(posKey(pos), []byte(dev)); err != nil {
				return err
			}
		}
		for i, n := range sizes {
			if err := putJSON(waves, posKey(i), &waveRec{Counts: Counts{Pending: n}}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("campaign: saving: %w", err)
	}
	m.emit([]event{{AuditEvent: AuditEvent{Actor: actor, Action: "campaign.create", Target: id, Outcome: "ok",
		Justification: justification, Detail: fmt.Sprintf("release %s, %d devices in %d waves", c.def.Release, len(ids), len(sizes))},
		level: slog.LevelInfo, msg: "campaign created"}})
	return id, nil
}

// cleanTargets checks resolved device IDs and drops repeats, keeping the
// first.
func cleanTargets(ids []string) ([]string, error) {
	if len(ids) > MaxTargets {
		return nil, fmt.Errorf("%w: %d devices match; at most %d", ErrInvalid, len(ids), MaxTargets)
	}
	seen := make(map[string]bool, len(ids))
	out := ids[:0:0]
	for _, id := range ids {
		if !wire.ValidID(id) {
			return nil, fmt.Errorf("campaign: targets resolved to an invalid device ID %q", clip(id))
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out, nil
}

// Start starts a draft campaign at at (zero or past: now; the engine's
// next step announces the first wave).
func (m *Manager) Start(id string, at time.Time, actor, justification string) error {
	if err := accountable(actor, justification, false); err != nil {
		return m.refused("campaign.start", actor, id, justification, err)
	}
	return m.change("campaign.start", id, actor, justification, func(t *txc) error {
		if t.h.State != StateDraft {
			return fmt.Errorf("%w: campaign %s is %s, not draft", ErrState, id, t.h.State)
		}
		if at.After(t.now) {
			t.h.State, t.h.StartAt = StateScheduled, at.UTC()
			return nil
		}
		return t.start(t.now)
	})
}

// Pause stops announcements of a running or scheduled campaign; devices
// in flight still report and time out.
func (m *Manager) Pause(id, actor, justification string) error {
	return m.operate("campaign.pause", id, actor, justification, func(t *txc) error {
		if t.h.State != StateRunning && t.h.State != StateScheduled {
			return fmt.Errorf("%w: campaign %s is %s; only a running or scheduled campaign pauses", ErrState, id, t.h.State)
		}
		t.h.State = StatePaused
		return nil
	})
}

// Resume continues a paused campaign. A wave that tripped the failure
// action no longer holds the campaign back once its devices have all
// finished; a wave that trips later pauses it again.
func (m *Manager) Resume(id, actor, justification string) error {
	return m.operate("campaign.resume", id, actor, justification, func(t *txc) error {
		if t.h.State != StatePaused {
			return fmt.Errorf("%w: campaign %s is %s, not paused", ErrState, id, t.h.State)
		}
		if t.h.Started.IsZero() {
			t.h.State = StateScheduled
			if !t.h.StartAt.After(t.now) {
				return t.start(t.now)
			}
			return nil
		}
		t.h.State = StateRunning
		return nil
	})
}

// Abort ends a campaign that has not finished. Nothing more is announced;
// devices in flight still report and time out, so their outcome is known.
func (m *Manager) Abort(id, actor, justification string) error {
	return m.operate("campaign.abort", id, actor, justification, func(t *txc) error {
		return t.abort(t.now)
	})
}

func (t *txc) abort(now time.Time) error {
	switch t.h.State {
	case StateCompleted, StateAborted:
		return fmt.Errorf("%w: campaign %s is already %s", ErrState, t.id, t.h.State)
	}
	t.h.State, t.h.Finished = StateAborted, now
	return nil
}

func (t *txc) start(now time.Time) error {
	t.h.State, t.h.Started, t.h.Wave = StateRunning, now, 0
	w, err := t.wave(0)
	if err != nil {
		return err
	}
	w.Opened = now
	return nil
}

// operate runs an operator action that needs a justification.
func (m *Manager) operate(action, id, actor, justification string, fn func(*txc) error) error {
	if err := accountable(actor, justification, true); err != nil {
		return m.refused(action, actor, id, justification, err)
	}
	return m.change(action, id, actor, justification, fn)
}

// change applies fn to campaign id in one transaction, records who did it
// and why, settles the campaign and audits the outcome.
func (m *Manager) change(action, id, actor, justification string, fn func(*txc) error) error {
	local := m.cfg.Now().UTC()
	var events []event
	err := m.store.db.Update(context.Background(), func(tx kv.Tx) error {
		now, err := m.store.clock(tx, local)
		if err != nil {
			return err
		}
		t, err := m.openTx(tx, id)
		if err != nil {
			return err
		}
		t.now = now
		if err := fn(t); err != nil {
			return err
		}
		t.h.Changed, t.h.ChangedBy, t.h.Why = now, actor, justification
		if err := t.settle(now); err != nil {
			return err
		}
		events = t.events
		return t.flush(tx)
	})
	if err != nil {
		return m.refused(action, actor, id, justification, err)
	}
	m.emit(append([]event{{AuditEvent: AuditEvent{Actor: actor, Action: action, Target: id, Outcome: "ok", Justification: justification},
		level: slog.LevelInfo, msg: "campaign " + action[len("campaign."):]}}, events...))
	return nil
}

// Rollback creates a draft campaign that announces def.Release to the
// devices that committed campaign id, in the order that campaign
// announced them; def.Targets must be empty. A campaign still running,
// paused or scheduled is aborted first, so that no more device takes its
// release (a device that commits it afterwards needs another rollback).
func (m *Manager) Rollback(ctx context.Context, id string, def Definition, actor, justification string) (*Campaign, error) {
	if err := accountable(actor, justification, true); err != nil {
		return nil, m.refused("campaign.rollback", actor, id, justification, err)
	}
	if def.RollbackOf != "" && def.RollbackOf != id {
		return nil, m.refused("campaign.rollback", actor, id, justification,
			fmt.Errorf("%w: rollback_of %q is not the campaign rolled back", ErrInvalid, clip(def.RollbackOf)))
	}
	def.RollbackOf = id
	if err := def.Validate(); err != nil {
		return nil, m.refused("campaign.rollback", actor, id, justification, err)
	}
	var ids []string
	var events []event
	local := m.cfg.Now().UTC()
	err := m.store.db.Update(ctx, func(tx kv.Tx) error {
		ids = ids[:0]
		now, err := m.store.clock(tx, local)
		if err != nil {
			return err
		}
		t, err := m.openTx(tx, id)
		if err != nil {
			return err
		}
		if def.Release == t.c.def.Release {
			return fmt.Errorf("%w: a rollback announces another release than %s", ErrInvalid, def.Release)
		}
		if t.h.State == StateDraft {
			return fmt.Errorf("%w: campaign %s never started", ErrState, id)
		}
		if t.h.active() && t.h.State != StateAborted {
			if err := t.abort(now); err != nil {
				return err
			}
			why := "rolled back: " + justification
			t.h.Changed, t.h.ChangedBy, t.h.Why = now, actor, why
			t.events = append(t.events, event{AuditEvent: AuditEvent{Actor: actor, Action: "campaign.abort", Target: id, Outcome: "ok",
				Justification: why}, level: slog.LevelInfo, msg: "campaign abort"})
			if err := t.flush(tx); err != nil {
				return err
			}
		}
		events = t.events
		c := t.order.Cursor()
		for _, dev := c.First(); dev != nil; _, dev = c.Next() {
			d, err := t.dev(string(dev))
			if err != nil {
				return err
			}
			if d != nil && d.Step == StepCommitted {
				ids = append(ids, string(dev))
			}
		}
		return nil
	})
	if err != nil {
		return nil, m.refused("campaign.rollback", actor, id, justification, err)
	}
	m.emit(events)
	if len(ids) == 0 {
		return nil, m.refused("campaign.rollback", actor, id, justification,
			fmt.Errorf("%w: no device committed campaign %s", ErrNoTargets, id))
	}
	nid, err := m.create(ctx, def, ids, actor, justification)
	if err != nil {
		return nil, m.refused("campaign.rollback", actor, id, justification, err)
	}
	m.emit([]event{{AuditEvent: AuditEvent{Actor: actor, Action: "campaign.rollback", Target: id, Outcome: "ok",
		Justification: justification, Detail: fmt.Sprintf("rollback campaign %s announces %s to %d devices", nid, def.Release, len(ids))},
		level: slog.LevelInfo, msg: "campaign rollback"}})
	return m.Get(nid)
}

// settle applies what the counts imply: a wave that failed trips the
// failure action; the next wave opens once the newest one succeeded (or
// tripped, was resumed and finished); the campaign completes when every
// device finished.
func (t *txc) settle(now time.Time) error {
	h, p := t.h, t.c
	if h.State == StateRunning {
		for i := h.Settled; i <= h.Wave && i < len(p.sizes); i++ {
			w, err := t.wave(i)
			if err != nil {
				return err
			}
			fails := w.Counts.Failures()
			if w.Tripped || fails <= p.allowed[i] && p.sizes[i]-fails >= p.need[i] {
				continue
			}
			w.Tripped = true
			why := fmt.Sprintf("wave %d: %d of %d devices failed (at most %d may fail; %d must commit)",
				i+1, fails, p.sizes[i], p.allowed[i], p.need[i])
			action := "campaign.pause"
			h.State = StatePaused
			if p.def.OnFailure == ActionAbort {
				action, h.State, h.Finished = "campaign.abort", StateAborted, now
			}
			h.Changed, h.ChangedBy, h.Why = now, SystemActor, why
			t.events = append(t.events, event{AuditEvent: AuditEvent{Actor: SystemActor, Action: action, Target: t.id, Outcome: "ok",
				Justification: why}, level: slog.LevelWarn, msg: "campaign failure threshold tripped"})
			break
		}
	}
	for h.State == StateRunning && h.Wave < len(p.sizes)-1 {
		w, err := t.wave(h.Wave)
		if err != nil {
			return err
		}
		done, err := t.finished(h.Wave)
		if err != nil {
			return err
		}
		if w.Counts.Committed < p.need[h.Wave] && !(w.Tripped && done) {
			break
		}
		h.Wave++
		next, err := t.wave(h.Wave)
		if err != nil {
			return err
		}
		next.Opened = now
	}
	// Waves are checked above from Settled on, so Settled moves only
	// while running: a wave that failed while the campaign was paused
	// still trips when it resumes.
	for h.State == StateRunning && h.Settled < len(p.sizes) && h.Settled <= h.Wave {
		done, err := t.finished(h.Settled)
		if err != nil || !done {
			return err
		}
		h.Settled++
	}
	if h.State == StateRunning && h.Counts.Finished() == h.Total {
		h.State, h.Finished = StateCompleted, now
		h.Changed, h.ChangedBy, h.Why = now, SystemActor, "every device finished"
		t.events = append(t.events, event{AuditEvent: AuditEvent{Actor: SystemActor, Action: "campaign.complete", Target: t.id, Outcome: "ok",
			Detail: fmt.Sprintf("%d committed, %d failed of %d", h.Counts.Committed, h.Counts.Failures(), h.Total)},
			level: slog.LevelInfo, msg: "campaign completed"})
	}
	return nil
}

// Run steps the engine every Config.Tick until ctx ends: it starts
// scheduled campaigns, times out devices, and announces the open waves
// inside maintenance windows (under the lease LeaseStep with
// Config.Leases). It also writes the reports Submit queues, and writes
// those still queued when ctx ends before it returns nil. Run it once per
// Manager.
func (m *Manager) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				m.flush()
				return
			case <-m.kick:
				m.flush()
			}
		}
	})
	if m.cfg.Leases == nil {
		return m.steps(ctx)
	}
	return m.cfg.Leases.Hold(ctx, LeaseStep, m.steps)
}

// steps steps the engine at once and then every Tick until ctx ends, or
// until a step's write is refused because the lease it runs under was
// taken over (lease.ErrLost, returned: the holder stops the work; the
// step's transactions are fenced by the lease, fleet/storage/lease).
func (m *Manager) steps(ctx context.Context) error {
	tick := time.NewTicker(m.cfg.Tick)
	defer tick.Stop()
	for {
		if err := m.step(ctx); errors.Is(err, lease.ErrLost) {
			m.log.Warn("campaign steps: the lease was taken over; this replica stops stepping", "err", err)
			return err
		} else if err != nil && ctx.Err() == nil {
			m.log.Warn("campaign step failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// step visits every active campaign once.
func (m *Manager) step(ctx context.Context) error {
	var ids []string
	err := m.store.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketActive).ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("campaign: reading active campaigns: %w", err)
	}
	var errs []error
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		if err := m.stepCampaign(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stepCampaign times out the campaign's overdue devices, starts it if
// its time came, and announces up to Batch devices. A device is marked
// announced before the Announcer is called, so that a crash in between
// never announces it twice: it times out instead (and is announced again
// if the definition allows retries).
func (m *Manager) stepCampaign(ctx context.Context, id string) error {
	for {
		n, err := m.timeouts(ctx, id)
		if err != nil {
			return err
		}
		if n < m.cfg.Batch {
			break
		}
	}
	local := m.cfg.Now().UTC()
	var batch []Announcement
	var events []event
	err := m.store.db.Update(ctx, func(tx kv.Tx) error {
		batch = batch[:0]
		now, err := m.store.clock(tx, local)
		if err != nil {
			return err
		}
		t, err := m.openTx(tx, id)
		if err != nil {
			return err
		}
		if t.h.State == StateScheduled && !t.h.StartAt.After(now) {
			if err := t.start(now); err != nil {
				return err
			}
			t.h.Changed, t.h.ChangedBy, t.h.Why = now, SystemActor, "start time reached"
			t.events = append(t.events, event{AuditEvent: AuditEvent{Actor: SystemActor, Action: "campaign.start", Target: id, Outcome: "ok",
				Justification: t.h.Why}, level: slog.LevelInfo, msg: "campaign started"})
		}
		if err := t.settle(now); err != nil {
			return err
		}
		if t.h.State == StateRunning && t.c.open(now) {
			if batch, err = t.announce(now, m.cfg.Batch); err != nil {
				return err
			}
		}
		if !t.changed() {
			return errUnchanged
		}
		events = t.events
		return t.flush(tx)
	})
	if errors.Is(err, errUnchanged) {
		return nil
	}
	if err != nil {
		return err
	}
	m.emit(events)
	if len(batch) == 0 {
		return nil
	}
	var failed []undone
	for i, a := range batch {
		if ctx.Err() != nil {
			for _, a := range batch[i:] {
				failed = append(failed, undone{a: a})
			}
			break
		}
		err := m.cfg.Announcer.Announce(ctx, a)
		if ie, ok := errors.AsType[*IneligibleError](err); ok {
			m.log.Warn("device may not get the release; failed", "campaign", id, "device_id", a.Device, "release", a.Release,
				"reason", ie.Reason.String(), "why", ie.Message)
			failed = append(failed, undone{a: a, ineligible: ie})
		} else if err != nil {
			m.log.Info("announcement not queued", "campaign", id, "device_id", a.Device, "err", err)
			failed = append(failed, undone{a: a})
		}
	}
	if len(failed) == 0 {
		return nil
	}
	// Put back even when ctx ended meanwhile (its values, the lease's
	// fence, still apply).
	return m.unannounce(context.WithoutCancel(ctx), id, failed)
}

// undone is an announcement the Announcer did not queue: to be tried
// again, or refused for good when ineligible is set.
type undone struct {
	a          Announcement
	ineligible *IneligibleError
}

// announce marks up to limit devices announced, within MaxInFlight:
// first those waiting to be announced again whose time came, then the next
// never announced in the open waves.
func (t *txc) announce(now time.Time, limit int) ([]Announcement, error) {
	if m := t.c.def.MaxInFlight; m > 0 {
		limit = min(limit, m-t.h.Counts.InFlight())
	}
	if limit <= 0 {
		return nil, nil
	}
	var out []Announcement
	mark := func(id string, d *devRec) error {
		if err := t.move(d, StepAnnounced); err != nil {
			return err
		}
		d.Attempts++
		d.Announced, d.Updated = now, now
		d.Deadline = now.Add(t.c.timeout).UnixNano()
		if err := t.deadlines.Put(timeKey(d.Deadline, id), nil); err != nil {
			return err
		}
		out = append(out, Announcement{Campaign: t.id, Device: id, Release: t.c.def.Release, Attempt: d.Attempts})
		return t.putDev(id, d)
	}
	for _, k := range due(t.retry, now, limit) {
		if err := t.retry.Delete(k); err != nil {
			return nil, err
		}
		id := string(k[8:])
		d, err := t.dev(id)
		if err != nil {
			return nil, err
		}
		if d == nil || !d.InRetry || d.Step != StepPending {
			continue
		}
		d.InRetry, d.Retry = false, 0
		if err := mark(id, d); err != nil {
			return nil, err
		}
	}
	end := t.c.waveEnd(t.h.Wave)
	c := t.order.Cursor()
	for k, v := c.Seek(posKey(t.h.Next)); k != nil && len(out) < limit && t.h.Next < end; k, v = c.Next() {
		t.h.Next++
		id := string(v)
		d, err := t.dev(id)
		if err != nil {
			return nil, err
		}
		if d == nil || d.Step != StepPending || d.InRetry {
			continue
		}
		if err := mark(id, d); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// unannounce puts back devices whose announcement was not queued: they
// are tried again after AnnounceRetry, or time out once they have been
// unreachable for the device timeout; a device the Announcer refused for
// good fails with its reason.
func (m *Manager) unannounce(ctx context.Context, id string, failed []undone) error {
	local := m.cfg.Now().UTC()
	var events []event
	err := m.store.db.Update(ctx, func(tx kv.Tx) error {
		now, err := m.store.clock(tx, local)
		if err != nil {
			return err
		}
		t, err := m.openTx(tx, id)
		if err != nil {
			return err
		}
		for _, u := range failed {
			a := u.a
			d, err := t.dev(a.Device)
			if err != nil {
				return err
			}
			if d == nil || d.Step != StepAnnounced || d.Attempts != a.Attempt {
				continue // it reported meanwhile
			}
			if err := t.deadlines.Delete(timeKey(d.Deadline, a.Device)); err != nil {
				return err
			}
			d.Deadline, d.Updated = 0, now
			d.Attempts--
			if d.Unreachable.IsZero() && u.ineligible == nil {
				d.Unreachable = now
			}
			switch {
			case u.ineligible != nil:
				d.Reason = u.ineligible.Reason
				err = t.move(d, StepFailed)
			case now.Sub(d.Unreachable) >= t.c.timeout:
				d.Reason = wire.ReasonFirmwareTimeout
				err = t.move(d, StepTimedOut)
			default:
				err = t.wait(a.Device, d, now.Add(m.cfg.AnnounceRetry))
			}
			if err != nil {
				return err
			}
			if err := t.putDev(a.Device, d); err != nil {
				return err
			}
		}
		if err := t.settle(now); err != nil {
			return err
		}
		events = t.events
		return t.flush(tx)
	})
	if err != nil {
		return err
	}
	m.emit(events)
	return nil
}

// wait makes a device pending again, to be announced at or after at.
func (t *txc) wait(id string, d *devRec, at time.Time) error {
	if err := t.move(d, StepPending); err != nil {
		return err
	}
	d.InRetry, d.Retry = true, at.UnixNano()
	return t.retry.Put(timeKey(d.Retry, id), nil)
}

// timeouts handles up to Batch devices of campaign id whose deadline
// passed and returns how many it handled. A device that reported nothing
// since its announcement is announced again if retries are left (and the
// campaign is not aborted); any other times out.
func (m *Manager) timeouts(ctx context.Context, id string) (int, error) {
	local := m.cfg.Now().UTC()
	var events []event
	n := 0
	err := m.store.db.Update(ctx, func(tx kv.Tx) error {
		now, err := m.store.clock(tx, local)
		if err != nil {
			return err
		}
		t, err := m.openTx(tx, id)
		if err != nil {
			return err
		}
		keys := due(t.deadlines, now, m.cfg.Batch)
		n = len(keys)
		if n == 0 {
			return errUnchanged
		}
		for _, k := range keys {
			if err := t.deadlines.Delete(k); err != nil {
				return err
			}
			dev := string(k[8:])
			d, err := t.dev(dev)
			if err != nil {
				return err
			}
			if d == nil || !d.Step.InFlight() || d.Deadline != binaryTime(k) {
				continue
			}
			d.Deadline, d.Updated = 0, now
			if d.Step == StepAnnounced && d.Attempts <= t.c.def.Retries && t.h.State != StateAborted {
				d.Unreachable = time.Time{}
				err = t.wait(dev, d, now)
			} else {
				d.Reason = wire.ReasonFirmwareTimeout
				err = t.move(d, StepTimedOut)
			}
			if err != nil {
				return err
			}
			if err := t.putDev(dev, d); err != nil {
				return err
			}
		}
		if err := t.settle(now); err != nil {
			return err
		}
		events = t.events
		return t.flush(tx)
	})
	if errors.Is(err, errUnchanged) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	m.emit(events)
	return n, nil
}

// clock is the time a transaction of the store decides with: the
// database's clock in tx (kv.Now) when replicas share the store
// (PostgreSQL), so that replicas whose clocks differ agree on when a
// campaign starts, a wave opens, a device's deadline passes or a retry is
// due; else local, the Manager's Config.Now (bbolt: one process).
func (s *Store) clock(tx kv.Tx, local time.Time) (time.Time, error) {
	if !s.shared {
		return local, nil
	}
	now, ok, err := kv.Now(tx)
	if err != nil {
		return time.Time{}, fmt.Errorf("campaign: %w", err)
	}
	if !ok {
		return local, nil
	}
	return now, nil
}

func binaryTime(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[:8])) }

// Get returns a campaign with every wave's progress.
func (m *Manager) Get(id string) (*Campaign, error) {
	var out *Campaign
	err := m.store.db.View(context.Background(), func(tx kv.Tx) error {
		t, err := m.openTx(tx, id)
		if err != nil {
			return err
		}
		out, err = t.campaign(m.cfg.Now(), true)
		return err
	})
	return out, err
}

// List returns every campaign without its waves, in ID order.
func (m *Manager) List() ([]Campaign, error) {
	var out []Campaign
	now := m.cfg.Now()
	err := m.store.db.View(context.Background(), func(tx kv.Tx) error {
		return tx.Bucket(bucketCampaigns).ForEachBucket(func(k []byte) error {
			t, err := m.openTx(tx, string(k))
			if err != nil {
				return err
			}
			c, err := t.campaign(now, false)
			if err != nil {
				return err
			}
			out = append(out, *c)
			return nil
		})
	})
	return out, err
}

func (t *txc) campaign(now time.Time, waves bool) (*Campaign, error) {
	var def Definition
	if _, err := getJSON(t.b, keyDef, &def); err != nil {
		return nil, fmt.Errorf("campaign: %s: reading definition: %w", t.id, err)
	}
	h, p := t.h, t.c
	c := &Campaign{
		ID: t.id, Definition: def, State: h.State, Created: p.meta.Created, CreatedBy: p.meta.CreatedBy,
		StartAt: h.StartAt, Started: h.Started, Finished: h.Finished,
		Changed: h.Changed, ChangedBy: h.ChangedBy, Why: h.Why,
		Total: h.Total, Counts: h.Counts, InWindow: p.open(now), ClaimedFetchedBytes: h.Fetched,
	}
	if !h.Started.IsZero() {
		c.Wave = h.Wave + 1
	}
	if !waves {
		return c, nil
	}
	for i, n := range p.sizes {
		w, err := t.wave(i)
		if err != nil {
			return nil, err
		}
		c.Waves = append(c.Waves, Wave{Number: i + 1, Size: n, Need: p.need[i], MaxFailures: p.allowed[i],
			Opened: w.Opened, Tripped: w.Tripped, Counts: w.Counts})
	}
	return c, nil
}

// DeviceFilter selects a page of a campaign's devices.
type DeviceFilter struct {
	Step  Step   // only devices at this step; "" means all
	Wave  int    // only devices of this wave (from 1); 0 means all
	After string // start after this device ID
	Limit int    // 0 means 100; at most 1000
}

// Devices returns a page of a campaign's devices in ID order and the ID
// to pass as After for the next page ("" at the end).
func (m *Manager) Devices(id string, f DeviceFilter) ([]Device, string, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var out []Device
	next := ""
	err := m.store.db.View(context.Background(), func(tx kv.Tx) error {
		t, err := m.openTx(tx, id)
		if err != nil {
			return err
		}
		c := t.devs.Cursor()
		k, v := c.First()
		if f.After != "" {
			k, v = c.Seek([]byte(f.After))
			if k != nil && string(k) == f.After {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			var d devRec
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("campaign: %s: reading device %s: %w", id, k, err)
			}
			if f.Step != "" && d.Step != f.Step || f.Wave != 0 && d.Wave+1 != f.Wave {
				continue
			}
			if len(out) == f.Limit {
				next = out[len(out)-1].ID
				return nil
			}
			out = append(out, d.public(string(k)))
		}
		return nil
	})
	return out, next, err
}

// Device returns one device's progress in a campaign.
func (m *Manager) Device(id, deviceID string) (*Device, error) {
	var out *Device
	err := m.store.db.View(context.Background(), func(tx kv.Tx) error {
		t, err := m.openTx(tx, id)
		if err != nil {
			return err
		}
		d, err := t.dev(deviceID)
		if err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("%w: %s in %s", ErrNotTarget, clip(deviceID), id)
		}
		p := d.public(deviceID)
		out = &p
		return nil
	})
	return out, err
}

func (d *devRec) public(id string) Device {
	out := Device{ID: id, Wave: d.Wave + 1, Step: d.Step, Reason: d.Reason, Attempts: d.Attempts, Announced: d.Announced,
		Updated: d.Updated, Reported: d.Reported, RunningVersion: d.Version, Late: d.Late, ClaimedFetchedBytes: d.Fetched}
	if d.Deadline != 0 {
		out.Deadline = time.Unix(0, d.Deadline).UTC()
	}
	if d.InRetry {
		out.RetryAt = time.Unix(0, d.Retry).UTC()
	}
	return out
}

// InFlight returns the campaigns in which the device was announced and
// has not finished: what it may download now.
func (m *Manager) InFlight(deviceID string) ([]Assignment, error) {
	var out []Assignment
	err := m.store.db.View(context.Background(), func(tx kv.Tx) error {
		return tx.Bucket(bucketActive).ForEach(func(k, _ []byte) error {
			t, err := m.openTx(tx, string(k))
			if err != nil {
				return err
			}
			d, err := t.dev(deviceID)
			if err != nil || d == nil || !d.Step.InFlight() {
				return err
			}
			out = append(out, Assignment{Campaign: t.id, Release: t.c.def.Release, Step: d.Step, Attempt: d.Attempts})
			return nil
		})
	})
	return out, err
}
