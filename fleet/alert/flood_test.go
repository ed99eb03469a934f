package alert

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/config"
)

// floodDevice names device i of a flood.
func floodDevice(i int) string { return fmt.Sprintf("dev-%04d", i) }

// TestFloodControl: a flood of 1,000 events from 600 devices (400 devices
// failing logins twice each, 200 failing attestation) under limits of 20
// new alerts per rule and 50 fleet-wide per 10-minute window opens 40
// alerts; the other 560 are held back and counted in one summary per rule
// that names the rule, the count, the devices and the window, listed at
// once and sent to the sink once, when the window closes. Every firing is
// accounted for (opened alerts' counts plus the summaries' firings is
// 1,000), the rule's quarantine action still runs for every held alert,
// and a held condition that still holds fires as a real alert in the next
// window.
func TestFloodControl(t *testing.T) {
	rec := newRecorder()
	var actions atomic.Int64
	f := newFixture(t, Config{
		Routes: []Route{{Name: "siem", Notifier: rec}},
		Flood:  Flood{Window: 10 * time.Minute, PerRule: 20, Fleet: 50},
		Actions: ActionsFunc(func(context.Context, Action, Alert) error {
			actions.Add(1)
			return nil
		}),
	})
	f.clock.Set(f.clock.Now().Truncate(10 * time.Minute)) // the window starts now
	f.put(t, Rule{ID: "logins", Severity: SeverityWarning, Event: &EventMatch{Kind: EventAuthFailure}})
	f.put(t, Rule{ID: "attest", Severity: SeverityCritical, Action: ActionQuarantine, Event: &EventMatch{Kind: EventAttestationFailed}})
	f.run(t)

	at := f.clock.Now()
	events := 0
	for i := range 400 {
		for range 2 {
			must(t, f.e.Event(floodDevice(i), EventAuthFailure, "warning", at, nil))
			events++
		}
	}
	for i := range 200 {
		must(t, f.e.Event(floodDevice(1000+i), EventAttestationFailed, "critical", at, nil))
		events++
	}
	if events != 1000 {
		t.Fatalf("%d events", events)
	}
	st := f.e.Stats()
	if st.Fired != 40 || st.Held != 560 {
		t.Fatalf("stats after the flood: %+v, want 40 fired and 560 held", st)
	}
	if n := actions.Load(); n != 200 {
		t.Fatalf("the quarantine action ran %d times, want once per attestation failure (200)", n)
	}
	// Summaries are listed at once, one per rule, not yet sent.
	sums, _, err := f.e.Alerts(Query{Open: true, Kind: KindFlood})
	must(t, err)
	if len(sums) != 2 {
		t.Fatalf("%d open flood summaries, want 2", len(sums))
	}
	waitFor(t, func() bool { return f.e.Stats().Queued == 0 && len(rec.ch) == 40 })
	for range 40 {
		if n := rec.next(t); n.Alert.Held != nil || n.Transition != TransitionFiring {
			t.Fatalf("before the window closed the sink got %s %+v", n.Transition, n.Alert.Held)
		}
	}

	// The window closes: each summary goes out once with its final counts.
	f.clock.Advance(10 * time.Minute)
	f.e.sweep(f.clock.Now())
	got := map[string]Notification{}
	for range 2 {
		n := rec.next(t)
		if n.Alert.Held == nil {
			t.Fatalf("after the window the sink got %+v", n.Alert)
		}
		got[n.Alert.RuleID] = n
	}
	rec.none(t, f.e)
	f.e.sweep(f.clock.Now()) // sent once, not again
	rec.none(t, f.e)
	logins, attest := got["logins"].Alert, got["attest"].Alert
	for name, c := range map[string]struct {
		a                   Alert
		held, firings, devs int
		limit               string
		sev                 Severity
	}{
		"logins": {logins, 380, 760, 380, "rule", SeverityWarning},
		"attest": {attest, 180, 180, 180, "rule", SeverityCritical},
	} {
		h := c.a.Held
		if h.Count != c.held || h.Firings != c.firings || h.DeviceCount != c.devs || h.Limit != c.limit || !h.Closed || !h.Notified ||
			c.a.Severity != c.sev || c.a.DeviceID != "" || c.a.Kind != KindFlood || len(h.Devices) != 50 ||
			!h.WindowEnd.Equal(h.WindowStart.Add(10*time.Minute)) || h.BySeverity[c.sev] != c.held {
			t.Errorf("%s summary: %+v %+v", name, c.a, h)
		}
	}
	if attest.Held.ActionsRun != 180 || attest.Held.ActionsFailed != 0 {
		t.Errorf("attest summary actions: %+v", attest.Held)
	}
	// Every firing is accounted for.
	var opened, firings int
	all, _, err := f.e.Alerts(Query{Limit: 1000})
	must(t, err)
	for _, a := range all {
		if a.Held != nil {
			firings += a.Held.Firings
			continue
		}
		opened++
		firings += a.Count
	}
	if opened != 40 || firings != 1000 {
		t.Fatalf("%d alerts opened, %d firings accounted for; want 40 and 1000", opened, firings)
	}

	// A held condition that still holds fires for real in the new window.
	must(t, f.e.Event(floodDevice(399), EventAuthFailure, "warning", f.clock.Now(), nil))
	if open := f.open(t, floodDevice(399)); len(open) != 1 || open[0].Held != nil {
		t.Fatalf("after the window, the held device's alerts: %+v", open)
	}
}

// TestGroupsAndBulkAcknowledge: alerts group by rule and by device with
// their counts (a flood summary counts in its rule's group and brings its
// held count along), filter by severity, and are acknowledged in bulk by
// selection, by group and by filter — only firing ones, each once.
func TestGroupsAndBulkAcknowledge(t *testing.T) {
	f := newFixture(t, Config{Flood: Flood{Window: time.Hour, PerRule: 5}})
	f.clock.Set(f.clock.Now().Truncate(time.Hour))
	f.put(t, Rule{ID: "logins", Severity: SeverityWarning, Event: &EventMatch{Kind: EventAuthFailure}})
	f.put(t, Rule{ID: "attest", Severity: SeverityCritical, Event: &EventMatch{Kind: EventAttestationFailed}})
	f.put(t, Rule{ID: "reboot", Severity: SeverityInfo, Event: &EventMatch{Kind: "reboot"}})
	at := f.clock.Now()
	for i := range 8 { // 5 alerts, 3 held
		must(t, f.e.Event(floodDevice(i), EventAuthFailure, "", at, nil))
	}
	for i := range 3 {
		must(t, f.e.Event(floodDevice(i), EventAttestationFailed, "", at, nil))
		must(t, f.e.Event(floodDevice(i), "reboot", "", at, nil))
	}

	byRule, trunc, err := f.e.Groups(Query{Open: true}, GroupByRule)
	must(t, err)
	want := map[string][3]int{"logins": {6, 5, 3}, "attest": {3, 3, 0}, "reboot": {3, 3, 0}} // count, devices, held
	if len(byRule) != 3 || trunc || byRule[0].Key != "logins" {
		t.Fatalf("groups by rule: %+v", byRule)
	}
	for _, g := range byRule {
		if w := want[g.Key]; g.Count != w[0] || g.Devices != w[1] || g.Held != w[2] || g.ByState[StateFiring] != g.Count {
			t.Errorf("group %s: %+v, want count/devices/held %v", g.Key, g, w)
		}
	}
	byDev, _, err := f.e.Groups(Query{Open: true}, GroupByDevice)
	must(t, err)
	counts := map[string]int{}
	for _, g := range byDev {
		counts[g.Key] = g.Count
	}
	if counts[floodDevice(0)] != 3 || counts[floodDevice(4)] != 1 || counts[""] != 1 || counts[floodDevice(7)] != 0 {
		t.Fatalf("groups by device: %v", counts)
	}
	if _, _, err := f.e.Groups(Query{}, "owner"); err == nil {
		t.Fatal("grouping by owner accepted")
	}

	crit, _, err := f.e.Alerts(Query{Open: true, Severities: []Severity{SeverityCritical}})
	must(t, err)
	if len(crit) != 3 {
		t.Fatalf("%d critical alerts, want 3", len(crit))
	}

	// By selection.
	rep, err := f.e.AcknowledgeMany([]uint64{crit[0].ID, crit[1].ID, crit[1].ID, 99999}, Query{}, "olga", "on it")
	must(t, err)
	if rep.Acknowledged != 2 || rep.NotFound != 1 || rep.Skipped != 0 {
		t.Fatalf("ack by selection: %+v", rep)
	}
	// By group (a device), then again: the acknowledged ones are skipped.
	rep, err = f.e.AcknowledgeMany(nil, Query{DeviceID: floodDevice(0)}, "olga", "")
	must(t, err)
	if rep.Acknowledged != 3 { // its login, attestation (not among the two above: newest first) and reboot alerts
		t.Fatalf("ack by device group: %+v", rep)
	}
	rep, err = f.e.AcknowledgeMany(nil, Query{DeviceID: floodDevice(0)}, "olga", "")
	must(t, err)
	if rep.Acknowledged != 0 {
		t.Fatalf("ack by device group again: %+v", rep)
	}
	// By filter: every firing info alert.
	rep, err = f.e.AcknowledgeMany(nil, Query{Severities: []Severity{SeverityInfo}}, "olga", "reboots are expected")
	must(t, err)
	if rep.Acknowledged != 2 {
		t.Fatalf("ack by severity filter: %+v", rep)
	}
	a, err := f.e.Alert(rep.IDs[0])
	if err != nil || a.State != StateAcknowledged || a.AckedBy != "olga" || a.AckNote != "reboots are expected" {
		t.Fatalf("acknowledged alert: %+v %v", a, err)
	}
	byRule, _, err = f.e.Groups(Query{Open: true, State: StateFiring}, GroupByRule)
	must(t, err)
	firing := 0
	for _, g := range byRule {
		firing += g.Count
	}
	if firing != 12-7 {
		t.Fatalf("%d alerts still firing, want 5", firing)
	}
	if _, err := f.e.AcknowledgeMany(make([]uint64, MaxAckIDs+1), Query{}, "olga", ""); err == nil {
		t.Fatal("too many IDs accepted")
	}
	if _, err := f.e.AcknowledgeMany(nil, Query{}, "", ""); err == nil {
		t.Fatal("an anonymous bulk acknowledgement was accepted")
	}
}

// TestFloodSummarySentAfterRestart: a summary whose window the engine did
// not see close (it stopped) is sent once when the engine runs again.
func TestFloodSummarySentAfterRestart(t *testing.T) {
	path := t.TempDir() + "/alerts.db"
	f := newFixture(t, Config{Path: path, Flood: Flood{Window: time.Hour, PerRule: 1}})
	f.put(t, Rule{ID: "logins", Severity: SeverityWarning, Event: &EventMatch{Kind: EventAuthFailure}})
	for i := range 3 {
		must(t, f.e.Event(floodDevice(i), EventAuthFailure, "", f.clock.Now(), nil))
	}
	must(t, f.e.Close())

	rec := newRecorder()
	g := newFixture(t, Config{Path: path, Flood: Flood{Window: time.Hour, PerRule: 1}, Routes: []Route{{Name: "siem", Notifier: rec}}})
	g.run(t)
	n := rec.next(t)
	if n.Alert.Held == nil || n.Alert.Held.Count != 2 || !n.Alert.Held.Notified {
		t.Fatalf("after the restart the sink got %+v", n.Alert)
	}
	rec.none(t, g.e)
}

// TestFloodConfigDefaults: alert_flood's zero fields take 10 minutes, 20
// per rule and 100 fleet-wide; a negative limit (no limit) is kept.
func TestFloodConfigDefaults(t *testing.T) {
	if f := (FloodConfig{}).Flood(); f.Window != 10*time.Minute || f.PerRule != 20 || f.Fleet != 100 {
		t.Errorf("defaults: %+v", f)
	}
	f := FloodConfig{Window: config.Duration(time.Minute), PerRule: -1, Fleet: 7}.Flood()
	if f.Window != time.Minute || f.PerRule != -1 || f.Fleet != 7 {
		t.Errorf("configured: %+v", f)
	}
}
