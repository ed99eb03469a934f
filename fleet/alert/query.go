package alert

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"
)

// Query selects alerts for Alerts. Empty fields match any alert.
type Query struct {
	DeviceID string
	RuleID   string
	Open     bool  // only firing or acknowledged alerts
	State    State // only alerts in this state
	// Severities keeps alerts of any of these severities.
	Severities []Severity
	// Kind keeps alerts of this kind (KindFlood: flood summaries).
	Kind Kind
	// Before is the page cursor: alerts with smaller IDs (0: from the
	// newest).
	Before uint64
	// Limit is the page size: default 100, at most 1000.
	Limit int
}

// Alerts pages the alerts that match q, newest first, and returns the
// cursor for the next page (0 when there is none).
func (e *Engine) Alerts(q Query) (alerts []Alert, next uint64, err error) {
	q.Limit = pageSize(q.Limit)
	return e.st.query(context.Background(), q)
}

// Alert returns one alert.
func (e *Engine) Alert(id uint64) (*Alert, error) {
	a, err := e.st.alert(context.Background(), id)
	if err != nil {
		return nil, fmt.Errorf("alert: %w", err)
	}
	return a, nil
}

func checkOperator(by, note string) error {
	if !validToken(by) {
		return fmt.Errorf("%w: who acts must be named (1-%d printable characters)", ErrInvalidInput, maxNameLen)
	}
	if len(note) > maxTextLen || !utf8.ValidString(note) {
		return fmt.Errorf("%w: note longer than %d bytes or not UTF-8", ErrInvalidInput, maxTextLen)
	}
	return nil
}

// Acknowledge records that by is handling open alert id. The alert stays
// open (and resolves by itself when its condition clears); acknowledging
// again replaces who and the note. ErrResolved for a resolved alert.
func (e *Engine) Acknowledge(id uint64, by, note string) (*Alert, error) {
	if err := checkOperator(by, note); err != nil {
		return nil, err
	}
	now := e.cfg.Now()
	a, err := e.st.update(context.Background(), id, func(a *Alert) error {
		if !a.State.Open() {
			return fmt.Errorf("%w: alert %d", ErrResolved, id)
		}
		a.State, a.AckedBy, a.AckNote, a.AckedAt = StateAcknowledged, by, note, now
		return nil
	})
	if err != nil {
		return nil, err
	}
	e.log.Info("alert acknowledged", "alert_id", id, "by", by)
	e.dispatch(Notification{Transition: TransitionAcknowledged, At: now, Alert: *a})
	return a, nil
}

// Resolve closes open alert id by hand. If its condition still holds it
// fires again as a new alert — except that a new-member alert's member is
// accepted as normal for the device, and an absence alert waits until the
// device is seen again. ErrResolved for a resolved alert.
func (e *Engine) Resolve(id uint64, by, note string) (*Alert, error) {
	if err := checkOperator(by, note); err != nil {
		return nil, err
	}
	cur, err := e.st.alert(context.Background(), id)
	if err != nil {
		return nil, err
	}
	if !cur.State.Open() {
		return nil, fmt.Errorf("%w: alert %d", ErrResolved, id)
	}
	if cur.Held != nil {
		return e.resolveSummary(id, by, note)
	}
	d := e.lockDevice(cur.DeviceID)
	defer d.mu.Unlock()
	now := e.cfg.Now()
	a, err := e.st.update(context.Background(), id, func(a *Alert) error {
		if !a.State.Open() {
			return fmt.Errorf("%w: alert %d", ErrResolved, id)
		}
		a.State, a.ResolvedAt, a.ResolvedBy, a.ResolveNote = StateResolved, now, by, note
		return nil
	})
	if err != nil {
		return nil, err
	}
	if k := openKey(a.RuleID, a.Key); d.open[k] == id {
		delete(d.open, k)
	}
	e.afterManualResolve(d, a, now)
	e.stats.resolved.Add(1)
	e.log.Info("alert resolved", "alert_id", id, "rule_id", a.RuleID, "device_id", a.DeviceID, "by", by)
	e.dispatch(Notification{Transition: TransitionResolved, At: now, Alert: *a})
	return a, nil
}

// resolveSummary closes a flood summary by hand: it stands for no
// device's condition, so nothing learned changes.
func (e *Engine) resolveSummary(id uint64, by, note string) (*Alert, error) {
	now := e.cfg.Now()
	a, err := e.st.update(context.Background(), id, func(a *Alert) error {
		if !a.State.Open() {
			return fmt.Errorf("%w: alert %d", ErrResolved, id)
		}
		a.State, a.ResolvedAt, a.ResolvedBy, a.ResolveNote = StateResolved, now, by, note
		return nil
	})
	if err != nil {
		return nil, err
	}
	e.stats.resolved.Add(1)
	e.log.Info("flood summary resolved", "alert_id", id, "rule_id", a.RuleID, "by", by)
	e.dispatch(Notification{Transition: TransitionResolved, At: now, Alert: *a})
	return a, nil
}

// afterManualResolve adjusts the learned state so that the resolution
// means what Resolve documents. The device must be locked.
func (e *Engine) afterManualResolve(d *deviceState, a *Alert, now time.Time) {
	var r *compiled
	for _, c := range e.ruleList() {
		if c.ID == a.RuleID {
			r = c
		}
	}
	if r == nil {
		return
	}
	rs := d.state(r)
	switch {
	case r.Threshold != nil:
		rs.Since = time.Time{}
	case r.Baseline != nil:
		rs.Out = 0
	case r.Event != nil:
		delete(rs.Events, a.Key)
	case r.Absence != nil:
		rs.Since = d.LastSeen
	case r.NewMember != nil:
		if rs.Known == nil {
			rs.Known = map[string]time.Time{}
		}
		if len(rs.Known) < r.NewMember.MaxMembers {
			rs.Known[a.Key] = now
		}
	}
	d.mark(rs)
}
