package alert

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/pkg/config"
)

// KindFlood is the Kind of a flood summary: the alert that stands for the
// alerts flood control held back (Alert.Held).
const KindFlood Kind = "flood-summary"

// Flood bounds how many new alerts open in each window of time, per rule
// and fleet-wide. A new alert past either limit is held back: it is not
// stored, listed or sent on its own; its rule's action still runs (a
// flood must not switch quarantines off), and while its condition holds
// it is absorbed as an open alert would be. Each rule's held alerts of a
// window are counted in one summary alert (Kind KindFlood, no device,
// Alert.Held says what was held: how many, of which severities, from
// which devices, when), listed at once and sent to the sinks once, when
// the window closes. Conditions held in a window that still hold after it
// fire again in the next one, within its limits. Nothing is lost
// silently: alerts opened plus alerts held is every alert the rules
// raised (Stats.Fired, Stats.Held).
//
// The zero Flood holds nothing back.
type Flood struct {
	// Window is the length of the fixed windows (aligned to the clock)
	// the limits count in. Default 10m when a limit is set.
	Window time.Duration
	// PerRule is how many new alerts one rule may open per window; 0 or
	// less means no limit per rule.
	PerRule int
	// Fleet is how many new alerts all rules together may open per
	// window; 0 or less means no fleet-wide limit.
	Fleet int
	// MaxDevices is how many devices a summary names (the rest are
	// counted). Default 50.
	MaxDevices int
}

func (f Flood) on() bool { return f.PerRule > 0 || f.Fleet > 0 }

// Held is what flood control held back of one rule in one window. A
// summary alert carries it.
type Held struct {
	WindowStart time.Time `json:"window_start"`
	WindowEnd   time.Time `json:"window_end"`
	// Limit is which limit was reached first: "rule" (Flood.PerRule) or
	// "fleet" (Flood.Fleet); PerRule and Fleet are the limits in force.
	Limit   string `json:"limit"`
	PerRule int    `json:"per_rule,omitempty"`
	Fleet   int    `json:"fleet,omitempty"`
	// Count is the alerts held back (distinct conditions), BySeverity the
	// same by severity; Firings counts their firings, repeats included.
	Count      int              `json:"count"`
	BySeverity map[Severity]int `json:"by_severity"`
	Firings    int              `json:"firings"`
	// Devices names up to Flood.MaxDevices of the devices concerned, in
	// the order they came; DeviceCount is how many distinct devices there
	// were (at least, once very many: see MaxHeldDevices).
	Devices     []string `json:"devices"`
	DeviceCount int      `json:"device_count"`
	// ActionsRun and ActionsFailed count the rule actions carried out for
	// held alerts.
	ActionsRun    int `json:"actions_run,omitempty"`
	ActionsFailed int `json:"actions_failed,omitempty"`
	// Closed says the window is over and the counts final; Notified that
	// the summary went to the sinks (once, when the window closed).
	Closed   bool `json:"closed,omitempty"`
	Notified bool `json:"notified,omitempty"`
}

// MaxHeldDevices bounds the distinct devices a window's summary counts
// exactly; past it DeviceCount is a lower bound.
const MaxHeldDevices = 10000

// floodState is the engine's flood control: the current window's counts.
// Lock order: a device's lock, then mu; never a device lock under mu.
type floodState struct {
	cfg Flood

	mu     sync.Mutex
	start  time.Time // current window
	fleet  int       // alerts opened in it
	rules  map[string]*ruleWindow
	closed []*heldWindow // windows over with held alerts, for the sweep
}

type ruleWindow struct {
	opened int
	held   *heldWindow
}

// heldWindow is one rule's held alerts in one window.
type heldWindow struct {
	rule      *compiled
	summaryID uint64 // 0 until stored
	h         Held
	devices   map[string]struct{}
	refs      []heldRef // conditions absorbed as held, released when the window closes
	first     time.Time
	last      time.Time
	dirty     bool
}

type heldRef struct{ device, key string } // key: openKey(rule, alert key)

func newFlood(f Flood) *floodState {
	if f.on() {
		setDefault(&f.Window, 10*time.Minute)
		setDefault(&f.MaxDevices, 50)
	}
	return &floodState{cfg: f, rules: map[string]*ruleWindow{}}
}

// rollover starts the window now falls in, closing the previous one. The
// caller holds mu.
func (fs *floodState) rollover(now time.Time) {
	start := now.Truncate(fs.cfg.Window)
	if start.Equal(fs.start) {
		return
	}
	for _, rw := range fs.rules {
		if rw.held != nil {
			fs.closed = append(fs.closed, rw.held)
		}
	}
	fs.start, fs.fleet = start, 0
	clear(fs.rules)
}

// admit decides whether a new alert of r may open now. When it may not,
// it records the held alert in the rule's window, stores the window's
// summary with the new count (creating it at the first) and returns the
// window. The caller holds the device's lock; the store write happens
// under mu so that one summary is made per window.
func (e *Engine) admit(r *compiled, deviceID, key string, sev Severity, at, now time.Time) *heldWindow {
	fs := e.flood
	if !fs.cfg.on() || r.Kind() == KindFlood {
		return nil
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.rollover(now)
	rw := fs.rules[r.ID]
	if rw == nil {
		rw = &ruleWindow{}
		fs.rules[r.ID] = rw
	}
	ruleOver := fs.cfg.PerRule > 0 && rw.opened >= fs.cfg.PerRule
	fleetOver := fs.cfg.Fleet > 0 && fs.fleet >= fs.cfg.Fleet
	if !ruleOver && !fleetOver {
		rw.opened++
		fs.fleet++
		return nil
	}
	hw := rw.held
	if hw == nil {
		limit := "rule"
		if !ruleOver {
			limit = "fleet"
		}
		hw = &heldWindow{rule: r, devices: map[string]struct{}{}, first: at, h: Held{
			WindowStart: fs.start, WindowEnd: fs.start.Add(fs.cfg.Window), Limit: limit,
			PerRule: max(fs.cfg.PerRule, 0), Fleet: max(fs.cfg.Fleet, 0), BySeverity: map[Severity]int{}}}
		rw.held = hw
	}
	h := &hw.h
	h.Count++
	h.Firings++
	h.BySeverity[sev]++
	if _, ok := hw.devices[deviceID]; !ok {
		if len(hw.devices) < MaxHeldDevices {
			hw.devices[deviceID] = struct{}{}
		}
		h.DeviceCount++
		if len(h.Devices) < fs.cfg.MaxDevices {
			h.Devices = append(h.Devices, deviceID)
		}
	}
	if at.Before(hw.first) {
		hw.first = at
	}
	if at.After(hw.last) {
		hw.last = at
	}
	hw.refs = append(hw.refs, heldRef{device: deviceID, key: openKey(r.ID, key)})
	hw.dirty = true
	// The summary shows the count at once, as an alert absorbing a firing
	// does: one write per held alert.
	e.saveSummary(hw, false)
	return hw
}

// repeat counts a firing absorbed by a held condition.
func (e *Engine) repeat(ruleID string) {
	fs := e.flood
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if rw := fs.rules[ruleID]; rw != nil && rw.held != nil {
		rw.held.h.Firings++
		rw.held.dirty = true
	}
}

// heldAction records the outcome of a held alert's rule action.
func (e *Engine) heldAction(hw *heldWindow, failed bool) {
	e.flood.mu.Lock()
	defer e.flood.mu.Unlock()
	hw.h.ActionsRun++
	if failed {
		hw.h.ActionsFailed++
	}
	hw.dirty = true
}

// summaryOf builds the summary alert of a window from its counts. The
// caller holds mu.
func (hw *heldWindow) summaryOf() *Alert {
	h := hw.h
	h.BySeverity = maps.Clone(h.BySeverity)
	h.Devices = slices.Clone(h.Devices)
	sev := SeverityInfo
	for s := range h.BySeverity {
		if s.Rank() > sev.Rank() {
			sev = s
		}
	}
	limit := fmt.Sprintf("%d new alerts per rule", h.PerRule)
	if h.Limit == "fleet" {
		limit = fmt.Sprintf("%d new alerts fleet-wide", h.Fleet)
	}
	devices := fmt.Sprintf("%d devices", h.DeviceCount)
	if h.DeviceCount == 1 {
		devices = "1 device"
	}
	alerts := fmt.Sprintf("%d new alerts", h.Count)
	if h.Count == 1 {
		alerts = "1 new alert"
	}
	summary := fmt.Sprintf("flood control held back %s of rule %s from %s between %s and %s (limit: %s per %s)",
		alerts, hw.rule.ID, devices, h.WindowStart.UTC().Format("15:04"), h.WindowEnd.UTC().Format("15:04 MST"), limit, durText(h.WindowEnd.Sub(h.WindowStart)))
	names := h.Devices
	evidence := map[string]string{
		"held": fmt.Sprint(h.Count), "firings": fmt.Sprint(h.Firings), "devices": fmt.Sprint(h.DeviceCount),
		"window_start": h.WindowStart.UTC().Format(time.RFC3339), "window_end": h.WindowEnd.UTC().Format(time.RFC3339),
		"limit": h.Limit, "device_ids": strings.Join(names, " "),
	}
	for s, n := range h.BySeverity {
		evidence["held_"+string(s)] = fmt.Sprint(n)
	}
	return &Alert{
		Fingerprint: Fingerprint(hw.rule.ID, "", "flood/"+h.WindowStart.UTC().Format(time.RFC3339)),
		RuleID:      hw.rule.ID, RuleName: hw.rule.Name, Kind: KindFlood, Key: "flood/" + h.WindowStart.UTC().Format(time.RFC3339),
		Severity: sev, State: StateFiring, Summary: summary, Description: hw.rule.Description,
		Labels: maps.Clone(hw.rule.Labels), Evidence: evidence, Count: h.Count,
		StartsAt: hw.first, LastFiredAt: hw.last, Held: &h,
	}
}

// storeSummary stores a window's summary for the first time. The caller
// holds mu. A failure is logged; the next sweep tries again.
func (e *Engine) storeSummary(hw *heldWindow) {
	a, _, err := e.st.create(context.Background(), hw.summaryOf())
	if err != nil {
		e.log.Error("alert: could not record a flood summary", "rule_id", hw.rule.ID, "err", err)
		return
	}
	hw.summaryID, hw.dirty = a.ID, false
	e.alerts.Add(1)
	e.log.Warn("alert: flood control is holding back new alerts", "rule_id", hw.rule.ID, "alert_id", a.ID,
		"limit", hw.h.Limit, "window_end", hw.h.WindowEnd)
}

// floodSweep brings the summaries up to date and closes the windows that
// ended: their summaries get their final counts and go to the sinks once,
// and the conditions they held may fire again. It takes no device lock
// while holding the flood lock.
func (e *Engine) floodSweep(now time.Time) {
	fs := e.flood
	if !fs.cfg.on() {
		return
	}
	fs.mu.Lock()
	fs.rollover(now)
	closed := fs.closed
	fs.closed = nil
	for _, rw := range fs.rules {
		if hw := rw.held; hw != nil && hw.dirty {
			e.saveSummary(hw, false)
		}
	}
	var final []Alert
	for _, hw := range closed {
		hw.h.Closed = true
		if a := e.saveSummary(hw, true); a != nil {
			final = append(final, *a)
		}
	}
	fs.mu.Unlock()
	for _, a := range final {
		e.log.Warn("alert: flood control held back new alerts", "rule_id", a.RuleID, "alert_id", a.ID,
			"held", a.Held.Count, "devices", a.Held.DeviceCount, "window_start", a.Held.WindowStart, "window_end", a.Held.WindowEnd)
		e.dispatch(Notification{Transition: TransitionFiring, At: now, Alert: a})
	}
	for _, hw := range closed {
		for _, ref := range hw.refs {
			d := e.lockDevice(ref.device)
			if id, ok := d.open[ref.key]; ok && id == 0 {
				delete(d.open, ref.key)
			}
			d.mu.Unlock()
		}
	}
}

// saveSummary writes a window's counts into its summary alert (creating
// it if that failed before); with final it marks it notified and returns
// it for dispatch. The caller holds mu.
func (e *Engine) saveSummary(hw *heldWindow, final bool) *Alert {
	if hw.summaryID == 0 {
		e.storeSummary(hw)
		if hw.summaryID == 0 {
			return nil
		}
	}
	fresh := hw.summaryOf()
	a, err := e.st.update(context.Background(), hw.summaryID, func(a *Alert) error {
		if a.Held != nil && a.Held.Notified {
			return ErrResolved // already sent (cannot happen twice; be safe)
		}
		a.Summary, a.Evidence, a.Count, a.Severity, a.StartsAt, a.LastFiredAt = fresh.Summary, fresh.Evidence, fresh.Count, fresh.Severity, fresh.StartsAt, fresh.LastFiredAt
		a.Held = fresh.Held
		a.Held.Notified = final
		return nil
	})
	if err != nil {
		e.log.Error("alert: could not update a flood summary", "alert_id", hw.summaryID, "err", err)
		return nil
	}
	hw.dirty = false
	if !final {
		return nil
	}
	return a
}

// notifyStale sends the summaries of windows a previous run left unsent
// (it stopped before they closed): with the counts they had.
func (e *Engine) notifyStale(now time.Time) {
	stale := e.stale
	e.stale = nil
	for _, id := range stale {
		up, err := e.st.update(context.Background(), id, func(x *Alert) error {
			if x.Held == nil || x.Held.Notified {
				return ErrResolved
			}
			x.Held.Closed, x.Held.Notified = true, true
			return nil
		})
		if errors.Is(err, ErrResolved) {
			continue
		}
		if err != nil {
			e.log.Error("alert: could not close a flood summary", "alert_id", id, "err", err)
			continue
		}
		e.dispatch(Notification{Transition: TransitionFiring, At: now, Alert: *up})
	}
}

// durText writes a window length for people: "10m", "1h", "1h30m".
func durText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// FloodConfig is the alert_flood configuration of `sigil serve`: flood
// control of new alerts (Flood). Past a limit, new alerts are held back:
// counted in one summary alert per rule and window (which names the
// rule, the count, the devices and the window, and goes to the sinks once,
// when the window closes); their rules' actions still run.
type FloodConfig struct {
	// Window is the length of the windows the limits count in. Default
	// 10m.
	Window config.Duration `json:"window"`
	// PerRule is how many new alerts one rule may open per window.
	// Default 20; negative means no limit per rule.
	PerRule int `json:"per_rule"`
	// Fleet is how many new alerts all rules together may open per
	// window. Default 100; negative means no fleet-wide limit.
	Fleet int `json:"fleet"`
}

// Flood is the engine's Flood for the configuration, with its defaults.
func (c FloodConfig) Flood() Flood {
	f := Flood{Window: time.Duration(c.Window), PerRule: c.PerRule, Fleet: c.Fleet}
	if f.Window <= 0 {
		f.Window = 10 * time.Minute
	}
	if f.PerRule == 0 {
		f.PerRule = 20
	}
	if f.Fleet == 0 {
		f.Fleet = 100
	}
	return f
}
