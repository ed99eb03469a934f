package alert

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Observe evaluates one telemetry sample of a device taken at at: numeric
// metrics (threshold, rate and baseline rules) and sets such as listening
// ports or process names (new-member rules; a set absent from sets is not
// evaluated, an empty one means "none"). It also counts as the device being
// seen. Non-finite values are skipped and reported in an error wrapping
// ErrInvalidInput; the rest of the sample is still evaluated.
func (e *Engine) Observe(deviceID string, at time.Time, metrics map[string]float64, sets map[string][]string) error {
	if err := checkDevice(deviceID); err != nil {
		return err
	}
	var bad []string
	for k, v := range metrics {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			bad = append(bad, k)
		}
	}
	d := e.lockDevice(deviceID)
	defer d.mu.Unlock()
	e.touch(d, at)
	for _, r := range e.ruleList() {
		if !r.applies(deviceID) {
			continue
		}
		switch {
		case r.Threshold != nil:
			if v, ok := finite(metrics, r.Threshold.Metric); ok {
				e.threshold(d, r, at, v)
			}
		case r.Rate != nil:
			if v, ok := finite(metrics, r.Rate.Metric); ok {
				e.rate(d, r, at, v)
			}
		case r.Baseline != nil:
			if v, ok := finite(metrics, r.Baseline.Metric); ok {
				e.baseline(d, r, at, v)
			}
		case r.NewMember != nil:
			if members, ok := sets[r.NewMember.Set]; ok {
				e.newMember(d, r, at, members)
			}
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		return fmt.Errorf("%w: non-finite values of %s ignored", ErrInvalidInput, strings.Join(bad, ", "))
	}
	return nil
}

func finite(m map[string]float64, k string) (float64, bool) {
	v, ok := m[k]
	return v, ok && !math.IsNaN(v) && !math.IsInf(v, 0)
}

// Event evaluates a security event of a device (EventAuthFailure,
// EventAttestationFailed, ...) against event rules. severity is the
// reporter's view ("info", "warning", "critical"), used by rules without
// their own. attrs describe it (a port, a peer address, a detail); they
// become evidence, and a rule's KeyAttr picks the one that keys its alerts.
// It does not count as the device being seen: many events are the fleet's
// findings about a device (dormant, clone, stale attestation), and a
// silent device must stay silent; Observe and Seen record contact.
func (e *Engine) Event(deviceID, kind, severity string, at time.Time, attrs map[string]string) error {
	if err := checkDevice(deviceID); err != nil {
		return err
	}
	if !validToken(kind) {
		return fmt.Errorf("%w: event kind must be 1-%d printable characters", ErrInvalidInput, maxNameLen)
	}
	d := e.lockDevice(deviceID)
	defer d.mu.Unlock()
	for _, r := range e.ruleList() {
		if r.Event != nil && r.applies(deviceID) {
			e.event(d, r, kind, Severity(severity), at, attrs)
		}
	}
	return nil
}

// Seen records that a device was heard from at at (a connection, a
// heartbeat) without data: absence rules resolve.
func (e *Engine) Seen(deviceID string, at time.Time) error {
	if err := checkDevice(deviceID); err != nil {
		return err
	}
	d := e.lockDevice(deviceID)
	defer d.mu.Unlock()
	e.touch(d, at)
	return nil
}

// touch moves the device's last-seen time forward and resolves its absence
// alerts.
func (e *Engine) touch(d *deviceState, at time.Time) {
	if at.After(d.LastSeen) {
		d.LastSeen = at
		d.seenDirty, d.dirty = true, true
	}
	for _, r := range e.ruleList() {
		if r.Absence != nil {
			e.resolve(d, r.ID, "", at, "", "")
		}
	}
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

func (e *Engine) threshold(d *deviceState, r *compiled, at time.Time, v float64) {
	t := r.Threshold
	rs := d.state(r)
	if !t.Op.Compare(v, t.Value) {
		if !rs.Since.IsZero() {
			rs.Since = time.Time{}
			d.mark(rs)
		}
		e.resolve(d, r.ID, "", at, "", "")
		return
	}
	if rs.Since.IsZero() || at.Before(rs.Since) {
		rs.Since = at
		d.mark(rs)
	}
	held := at.Sub(rs.Since)
	if d.isOpen(r.ID, "") || held < time.Duration(t.For) {
		return
	}
	summary := fmt.Sprintf("%s %s %s (value %s)", t.Metric, t.Op, fmtFloat(t.Value), fmtFloat(v))
	if t.For > 0 {
		summary = fmt.Sprintf("%s %s %s for %s (value %s)", t.Metric, t.Op, fmtFloat(t.Value), held, fmtFloat(v))
	}
	e.fire(d, r, "", at, r.Severity, summary, map[string]string{
		"metric": t.Metric, "value": fmtFloat(v), "op": string(t.Op), "threshold": fmtFloat(t.Value),
		"since": rs.Since.UTC().Format(time.RFC3339Nano), "held": held.String(),
	})
}

func (e *Engine) rate(d *deviceState, r *compiled, at time.Time, v float64) {
	rt := r.Rate
	rs := d.state(r)
	if !rs.PrevAt.IsZero() && !at.After(rs.PrevAt) {
		return // out of order or repeated: no rate to compute
	}
	prev, prevAt := rs.Prev, rs.PrevAt
	rs.Prev, rs.PrevAt = v, at
	d.mark(rs)
	if prevAt.IsZero() {
		return
	}
	per := time.Duration(rt.Per)
	rate := (v - prev) / at.Sub(prevAt).Seconds() * per.Seconds()
	if !rt.Op.Compare(rate, rt.Value) {
		e.resolve(d, r.ID, "", at, "", "")
		return
	}
	if d.isOpen(r.ID, "") {
		return
	}
	e.fire(d, r, "", at, r.Severity,
		fmt.Sprintf("%s changed by %s per %s (%s to %s in %s), %s %s", rt.Metric, fmtFloat(rate), per, fmtFloat(prev), fmtFloat(v), at.Sub(prevAt), rt.Op, fmtFloat(rt.Value)),
		map[string]string{
			"metric": rt.Metric, "rate": fmtFloat(rate), "per": per.String(), "op": string(rt.Op), "threshold": fmtFloat(rt.Value),
			"previous": fmtFloat(prev), "value": fmtFloat(v), "interval": at.Sub(prevAt).String(),
		})
}

func (e *Engine) baseline(d *deviceState, r *compiled, at time.Time, v float64) {
	b := r.Baseline
	rs := d.state(r)
	if rs.EWMA == nil {
		rs.EWMA = &ewma{}
	}
	s := rs.EWMA
	out := s.outside(b, v)
	mean, sigma := s.Mean, s.sigma(b)
	lo, hi := s.band(b)
	n := s.N
	s.learn(b, v)
	d.mark(rs)
	if out {
		rs.Out++
		rs.In = 0
	} else {
		rs.In++
		rs.Out = 0
	}
	open := d.isOpen(r.ID, "")
	switch {
	case out && !open && rs.Out >= b.Consecutive:
		e.fire(d, r, "", at, r.Severity,
			fmt.Sprintf("%s %s outside its usual band %s to %s (mean %s, σ %s, k %s) for %d observations",
				b.Metric, fmtFloat(v), fmtFloat(lo), fmtFloat(hi), fmtFloat(mean), fmtFloat(sigma), fmtFloat(b.K), rs.Out),
			map[string]string{
				"metric": b.Metric, "value": fmtFloat(v), "mean": fmtFloat(mean), "sigma": fmtFloat(sigma),
				"band_low": fmtFloat(lo), "band_high": fmtFloat(hi), "k": fmtFloat(b.K),
				"samples": strconv.FormatInt(n, 10), "consecutive": strconv.Itoa(rs.Out),
			})
	case !out && open && rs.In >= b.Consecutive:
		e.resolve(d, r.ID, "", at, "", "")
	}
}

// member cleans a set member from a device: at most maxKeyLen bytes of
// valid UTF-8 without control characters; "" when nothing usable is left.
func member(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	return truncate(s, maxKeyLen)
}

func (e *Engine) newMember(d *deviceState, r *compiled, at time.Time, members []string) {
	m := r.NewMember
	rs := d.state(r)
	if rs.Known == nil {
		rs.Known = map[string]time.Time{}
	}
	if rs.Since.IsZero() {
		rs.Since = at
		d.mark(rs)
	}
	learning := at.Sub(rs.Since) < time.Duration(m.Learn)
	present := make(map[string]bool, len(members))
	openCount := 0
	for k := range d.open {
		if rule, _, _ := cutKey(k); rule == r.ID {
			openCount++
		}
	}
	for _, raw := range members {
		mem := member(raw)
		if mem == "" || present[mem] {
			continue
		}
		present[mem] = true
		if _, ok := rs.Known[mem]; ok {
			continue
		}
		if learning {
			if len(rs.Known) < m.MaxMembers {
				rs.Known[mem] = at
				d.mark(rs)
			}
			continue
		}
		if d.isOpen(r.ID, mem) {
			continue
		}
		if openCount >= maxOpenPerRule {
			e.log.Warn("alert: too many new members open; not alerting on more", "rule_id", r.ID, "device_id", d.id, "open", openCount)
			continue
		}
		openCount++
		e.fire(d, r, mem, at, r.Severity,
			fmt.Sprintf("%s member %q never seen before on this device", m.Set, mem),
			map[string]string{
				"set": m.Set, "member": mem, "known": strconv.Itoa(len(rs.Known)),
				"learned_since": rs.Since.UTC().Format(time.RFC3339Nano),
			})
	}
	for k := range d.open {
		if rule, key, _ := cutKey(k); rule == r.ID && !present[key] {
			e.resolve(d, rule, key, at, "", "")
		}
	}
}

func (e *Engine) event(d *deviceState, r *compiled, kind string, sev Severity, at time.Time, attrs map[string]string) {
	m := r.Event
	key := ""
	if m.KeyAttr != "" {
		key = member(attrs[m.KeyAttr])
	}
	if m.ClearOn != "" && kind == m.ClearOn {
		rs := d.state(r)
		_, keyed := attrs[m.KeyAttr]
		for k := range d.open {
			if rule, okey, _ := cutKey(k); rule == r.ID && (!keyed || m.KeyAttr == "" || okey == key) {
				e.resolve(d, rule, okey, at, "", "")
				delete(rs.Events, okey)
			}
		}
		return
	}
	if kind != m.Kind {
		return
	}
	for k, v := range m.Attrs {
		if attrs[k] != v {
			return
		}
	}
	rs := d.state(r)
	if rs.Events == nil {
		rs.Events = map[string][]time.Time{}
	}
	times := rs.Events[key]
	i, _ := slices.BinarySearchFunc(times, at, time.Time.Compare)
	times = slices.Insert(times, i, at)
	if m.Count > 1 {
		newest := times[len(times)-1]
		cut := 0
		for cut < len(times) && newest.Sub(times[cut]) > time.Duration(m.Window) {
			cut++
		}
		times = times[cut:]
	}
	if len(times) > m.Count {
		times = times[len(times)-m.Count:]
	}
	rs.Events[key] = slices.Clip(times)
	if len(rs.Events) > maxEventKeys {
		dropOldestKey(rs.Events, d, r.ID)
	}
	d.mark(rs)
	if len(times) < m.Count {
		return
	}
	if r.Severity != "" {
		sev = r.Severity
	} else if !sev.Valid() {
		sev = SeverityWarning
	}
	evidence := map[string]string{"event": kind, "count": strconv.Itoa(len(times))}
	summary := kind
	if m.Count > 1 {
		evidence["window"] = time.Duration(m.Window).String()
		summary = fmt.Sprintf("%d %s events within %s", len(times), kind, time.Duration(m.Window))
	}
	if key != "" {
		summary += " (" + m.KeyAttr + " " + key + ")"
	}
	if detail := member(attrs["detail"]); detail != "" {
		summary += ": " + detail
	}
	n := 0
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		if n == maxEvidenceAttrs {
			break
		}
		if ck := member(k); ck != "" && evidence[ck] == "" {
			evidence[ck] = member(attrs[k])
			n++
		}
	}
	e.fire(d, r, key, at, sev, summary, evidence)
}

// dropOldestKey forgets the event window whose newest event is oldest,
// among keys without an open alert.
func dropOldestKey(events map[string][]time.Time, d *deviceState, ruleID string) {
	var victim string
	var oldest time.Time
	found := false
	for k, ts := range events {
		if d.isOpen(ruleID, k) || len(ts) == 0 {
			continue
		}
		if last := ts[len(ts)-1]; !found || last.Before(oldest) {
			victim, oldest, found = k, last, true
		}
	}
	if found {
		delete(events, victim)
	}
}

func (e *Engine) absence(d *deviceState, r *compiled, now time.Time) {
	if d.LastSeen.IsZero() {
		return
	}
	rs := d.state(r)
	if !rs.Since.IsZero() && rs.Since.Equal(d.LastSeen) {
		return // resolved by hand; wait until the device is seen again
	}
	last := d.LastSeen
	if e.started.After(last) {
		last = e.started
	}
	silent := now.Sub(last)
	if silent < time.Duration(r.Absence.After) || d.isOpen(r.ID, "") {
		return
	}
	e.fire(d, r, "", now, r.Severity,
		fmt.Sprintf("no data for %s (last seen %s)", silent.Round(time.Second), d.LastSeen.UTC().Format(time.RFC3339)),
		map[string]string{
			"last_seen": d.LastSeen.UTC().Format(time.RFC3339Nano), "silent_for": silent.Round(time.Second).String(),
			"after": time.Duration(r.Absence.After).String(),
		})
}

func (e *Engine) sweepEvents(d *deviceState, r *compiled, now time.Time) {
	rs := d.Rules[r.ID]
	if rs == nil || rs.Digest != r.digest {
		return
	}
	m := r.Event
	for key, ts := range rs.Events {
		if len(ts) == 0 {
			delete(rs.Events, key)
			continue
		}
		quiet := now.Sub(ts[len(ts)-1])
		open := d.isOpen(r.ID, key)
		switch {
		case open && m.ClearAfter > 0 && quiet >= time.Duration(m.ClearAfter):
			e.resolve(d, r.ID, key, now, "", "")
			delete(rs.Events, key)
		case !open && quiet > time.Duration(m.Window):
			delete(rs.Events, key)
		default:
			continue
		}
		d.mark(rs)
	}
}
