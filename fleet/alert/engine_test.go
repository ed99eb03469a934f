package alert

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/internal/runtest"
)

func TestThresholdFiresAndResolves(t *testing.T) {
	rec := newRecorder()
	f := newFixture(t, Config{Routes: []Route{{Name: "rec", Notifier: rec}}})
	f.run(t)
	f.put(t, Rule{ID: "cpu-hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "cpu", Op: OpGT, Value: 90, For: dur(5 * time.Minute)}})
	t0 := f.clock.Now()
	obs := func(min int, v float64) {
		t.Helper()
		must(t, f.e.Observe("d1", t0.Add(time.Duration(min)*time.Minute), map[string]float64{"cpu": v}, nil))
	}
	obs(0, 95)
	obs(3, 97)
	obs(4, 50) // the condition broke: the 5 minutes start again
	obs(5, 95)
	obs(9, 95)
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatalf("fired before the condition held 5 minutes: %d open", n)
	}
	obs(10, 96)
	open := f.open(t, "d1")
	if len(open) != 1 || open[0].State != StateFiring || open[0].Evidence["value"] != "96" || open[0].Kind != KindThreshold {
		t.Fatalf("open alerts after 5 minutes above: %+v", open)
	}
	obs(11, 99) // still above: no second alert
	obs(12, 40)
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatalf("still open after the value dropped: %d", n)
	}
	all := f.all(t, "d1")
	if len(all) != 1 || all[0].State != StateResolved || all[0].ResolvedBy != "" || !all[0].ResolvedAt.Equal(t0.Add(12*time.Minute)) {
		t.Fatalf("history: %+v", all)
	}
	if n := rec.next(t); n.Transition != TransitionFiring || n.Alert.ID != all[0].ID {
		t.Fatalf("first notification %+v", n)
	}
	if n := rec.next(t); n.Transition != TransitionResolved || n.Alert.State != StateResolved {
		t.Fatalf("second notification %+v", n)
	}
	rec.none(t, f.e)
}

func TestRateFiresAndResolves(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "rx-burst", Severity: SeverityWarning, Rate: &Rate{Metric: "net_rx_bytes", Op: OpGT, Value: 1000}})
	t0 := f.clock.Now()
	v := 0.0
	step := func(sec int, delta float64) {
		t.Helper()
		v += delta
		must(t, f.e.Observe("d1", t0.Add(time.Duration(sec)*time.Second), map[string]float64{"net_rx_bytes": v}, nil))
	}
	for i := range 10 {
		step(i*30, 300) // 600 per minute
	}
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatalf("fired at 600/min: %d", n)
	}
	step(300, 900) // 1800 per minute
	open := f.open(t, "d1")
	if len(open) != 1 || open[0].Evidence["rate"] != "1800" || open[0].Evidence["per"] != "1m0s" {
		t.Fatalf("after a burst: %+v", open)
	}
	// An out-of-order sample has no rate and changes nothing.
	must(t, f.e.Observe("d1", t0, map[string]float64{"net_rx_bytes": 0}, nil))
	if n := len(f.open(t, "d1")); n != 1 {
		t.Fatalf("out-of-order sample changed the alert: %d open", n)
	}
	step(330, 300)
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatalf("still open after the rate fell: %d", n)
	}
}

func TestEventCountWithinWindowAndClearAfter(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "auth", Severity: SeverityWarning,
		Event: &EventMatch{Kind: EventAuthFailure, Count: 3, Window: dur(10 * time.Minute), ClearAfter: dur(30 * time.Minute)}})
	t0 := f.clock.Now()
	ev := func(min int, kind string) {
		t.Helper()
		must(t, f.e.Event("d1", kind, "warning", t0.Add(time.Duration(min)*time.Minute), map[string]string{"user": "root"}))
	}
	// Spread out: never 3 within 10 minutes.
	for _, m := range []int{0, 8, 16, 24, 32} {
		ev(m, EventAuthFailure)
	}
	ev(33, "something-else")
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatalf("fired on spread-out failures: %d", n)
	}
	ev(35, EventAuthFailure) // 32, 35 and ...
	ev(40, EventAuthFailure) // ... 40: three within 10 minutes
	open := f.open(t, "d1")
	if len(open) != 1 || open[0].Count != 1 || open[0].Evidence["count"] != "3" || open[0].Evidence["user"] != "root" {
		t.Fatalf("after 3 in a window: %+v", open)
	}
	ev(41, EventAuthFailure)
	ev(42, EventAuthFailure)
	open = f.open(t, "d1")
	if len(open) != 1 || open[0].Count != 3 || !open[0].LastFiredAt.Equal(t0.Add(42*time.Minute)) {
		t.Fatalf("repeated failures were not absorbed into one alert: %+v", open)
	}
	f.e.sweep(t0.Add(42*time.Minute + 29*time.Minute))
	if n := len(f.open(t, "d1")); n != 1 {
		t.Fatal("resolved before 30 quiet minutes")
	}
	f.e.sweep(t0.Add(42*time.Minute + 30*time.Minute))
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatal("not resolved after 30 quiet minutes")
	}
	if all := f.all(t, "d1"); len(all) != 1 || all[0].State != StateResolved {
		t.Fatalf("history %+v", all)
	}
}

func TestEventClearOnAndKeys(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "attest", Severity: SeverityCritical, Event: &EventMatch{Kind: EventAttestationFailed, ClearOn: EventAttestationPassed}})
	f.put(t, Rule{ID: "port", Event: &EventMatch{Kind: EventNewListeningPort, KeyAttr: "port", Attrs: map[string]string{"proto": "tcp"}}})
	at := f.clock.Now()
	must(t, f.e.Event("d1", EventAttestationFailed, "critical", at, map[string]string{"detail": "PCR 4 changed"}))
	must(t, f.e.Event("d1", EventNewListeningPort, "critical", at, map[string]string{"proto": "tcp", "port": "4444"}))
	must(t, f.e.Event("d1", EventNewListeningPort, "", at, map[string]string{"proto": "tcp", "port": "8080"}))
	must(t, f.e.Event("d1", EventNewListeningPort, "", at, map[string]string{"proto": "udp", "port": "53"}))
	open := f.open(t, "d1")
	if len(open) != 3 {
		t.Fatalf("want 3 open (attestation, two tcp ports), got %+v", open)
	}
	bySummary := map[string]Alert{}
	for _, a := range open {
		bySummary[a.Summary] = a
	}
	a, ok := bySummary["attestation-failed: PCR 4 changed"]
	if !ok || a.Severity != SeverityCritical {
		t.Fatalf("attestation alert: %+v", open)
	}
	p, ok := bySummary[EventNewListeningPort+" (port 4444)"]
	if !ok || p.Key != "4444" || p.Severity != SeverityCritical {
		t.Fatalf("port 4444 alert (severity from the event): %+v", open)
	}
	if q := bySummary[EventNewListeningPort+" (port 8080)"]; q.Severity != SeverityWarning {
		t.Fatalf("port 8080 alert should default to warning: %+v", q)
	}
	must(t, f.e.Event("d1", EventAttestationPassed, "info", at.Add(time.Minute), nil))
	open = f.open(t, "d1")
	if len(open) != 2 {
		t.Fatalf("attestation pass did not resolve its alert alone: %+v", open)
	}
}

func TestAbsenceFiresAndResolves(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := t.TempDir() + "/alerts.db"
		e, err := Open(Config{Path: path, NoSync: true, SweepInterval: time.Second})
		must(t, err)
		defer e.Close()
		_, err = e.PutRule(Rule{ID: "silent", Severity: SeverityWarning, Absence: &Absence{After: dur(15 * time.Minute)}})
		must(t, err)
		stop := runtest.Start(t, e.Run)

		must(t, e.Seen("d1", time.Now()))
		must(t, e.Observe("d2", time.Now(), map[string]float64{"cpu": 1}, nil))
		time.Sleep(14 * time.Minute)
		must(t, e.Seen("d2", time.Now())) // d2 keeps talking
		time.Sleep(90 * time.Second)
		synctest.Wait()
		open, _, err := e.Alerts(Query{Open: true})
		must(t, err)
		if len(open) != 1 || open[0].DeviceID != "d1" || open[0].Kind != KindAbsence || open[0].Evidence["after"] != "15m0s" {
			t.Fatalf("after 15.5 silent minutes: %+v", open)
		}
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if open, _, _ := e.Alerts(Query{Open: true}); len(open) != 1 {
			t.Fatalf("absence alert was not deduplicated: %+v", open)
		}
		must(t, e.Seen("d1", time.Now()))
		open, _, err = e.Alerts(Query{Open: true})
		must(t, err)
		if len(open) != 0 {
			t.Fatalf("still open after the device was seen: %+v", open)
		}
		must(t, stop())
	})
}

func TestAbsenceCountsFromEngineStart(t *testing.T) {
	// A device last seen long before the fleet restarted is not absent
	// until After has passed since the restart.
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "silent", Severity: SeverityWarning, Absence: &Absence{After: dur(15 * time.Minute)}})
	must(t, f.e.Seen("d1", f.clock.Now().Add(-24*time.Hour)))
	f.e.sweep(f.clock.Now().Add(10 * time.Minute))
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatal("absent before 15 minutes since start")
	}
	f.e.sweep(f.clock.Now().Add(16 * time.Minute))
	if n := len(f.open(t, "d1")); n != 1 {
		t.Fatal("not absent 16 minutes after start")
	}
}

func TestNewListeningPort(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "new-port", Severity: SeverityWarning, NewMember: &NewMember{Set: SetPorts, Learn: dur(time.Hour)}})
	t0 := f.clock.Now()
	ports := func(min int, ps ...string) {
		t.Helper()
		must(t, f.e.Observe("d1", t0.Add(time.Duration(min)*time.Minute), nil, map[string][]string{SetPorts: ps}))
	}
	// Learning: the device's usual ports, including one it opens now and then.
	for m := 0; m < 60; m += 5 {
		if m == 30 {
			ports(m, "tcp/22", "tcp/443", "udp/123")
		} else {
			ports(m, "tcp/22", "tcp/443")
		}
	}
	ports(61, "tcp/22", "tcp/443")
	ports(62, "tcp/22", "udp/123") // seen while learning: not new
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatalf("fired on learned ports: %d", n)
	}
	ports(63, "tcp/22", "tcp/443", "tcp/4444")
	open := f.open(t, "d1")
	if len(open) != 1 || open[0].Key != "tcp/4444" || open[0].Evidence["member"] != "tcp/4444" || open[0].Evidence["known"] != "3" {
		t.Fatalf("new port: %+v", open)
	}
	first := open[0].ID
	ports(64, "tcp/22", "tcp/443", "tcp/4444")
	if open := f.open(t, "d1"); len(open) != 1 || open[0].Count != 1 {
		t.Fatalf("a port still open must not alert again: %+v", open)
	}
	ports(65, "tcp/22", "tcp/443")
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatal("not resolved when the port closed")
	}
	ports(66, "tcp/22", "tcp/4444") // back again: still never accepted
	open = f.open(t, "d1")
	if len(open) != 1 || open[0].ID == first {
		t.Fatalf("reopened port did not fire a new alert: %+v", open)
	}
	// Resolving by hand accepts it.
	_, err := f.e.Resolve(open[0].ID, "alice", "our debug agent")
	must(t, err)
	ports(67, "tcp/22", "tcp/4444")
	ports(68, "tcp/22")
	ports(69, "tcp/22", "tcp/4444")
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatalf("accepted port fired again: %d", n)
	}
}

func TestAckResolveDedupe(t *testing.T) {
	rec := newRecorder()
	f := newFixture(t, Config{Routes: []Route{{Name: "rec", Notifier: rec,
		Transitions: []Transition{TransitionFiring, TransitionAcknowledged, TransitionResolved}}}})
	f.run(t)
	f.put(t, Rule{ID: "clone", Severity: SeverityCritical, Event: &EventMatch{Kind: EventCloneSuspect}})
	at := f.clock.Now()
	for i := range 3 {
		must(t, f.e.Event("d1", EventCloneSuspect, "", at.Add(time.Duration(i)*time.Second), nil))
	}
	open := f.open(t, "d1")
	if len(open) != 1 || open[0].Count != 3 || open[0].Fingerprint != Fingerprint("clone", "d1", "") {
		t.Fatalf("three firings should be one alert with count 3: %+v", open)
	}
	id := open[0].ID
	if _, err := f.e.Acknowledge(id, "", "x"); !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("anonymous acknowledgement: %v", err)
	}
	f.clock.Advance(time.Minute)
	a, err := f.e.Acknowledge(id, "alice", "looking")
	must(t, err)
	if a.State != StateAcknowledged || a.AckedBy != "alice" || a.AckNote != "looking" || !a.AckedAt.Equal(f.clock.Now()) {
		t.Fatalf("acknowledged: %+v", a)
	}
	// Acknowledged is still open: further firings are absorbed.
	must(t, f.e.Event("d1", EventCloneSuspect, "", at.Add(time.Hour), nil))
	if open := f.open(t, "d1"); len(open) != 1 || open[0].ID != id || open[0].Count != 4 || open[0].State != StateAcknowledged {
		t.Fatalf("after acknowledging: %+v", open)
	}
	a, err = f.e.Resolve(id, "bob", "re-enrolled")
	must(t, err)
	if a.State != StateResolved || a.ResolvedBy != "bob" {
		t.Fatalf("resolved: %+v", a)
	}
	if _, err := f.e.Resolve(id, "bob", ""); !errors.Is(err, ErrResolved) {
		t.Fatalf("resolving twice: %v", err)
	}
	if _, err := f.e.Acknowledge(id, "bob", ""); !errors.Is(err, ErrResolved) {
		t.Fatalf("acknowledging a resolved alert: %v", err)
	}
	if _, err := f.e.Resolve(12345, "bob", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("resolving a missing alert: %v", err)
	}
	// The same condition again opens a new alert.
	must(t, f.e.Event("d1", EventCloneSuspect, "", at.Add(2*time.Hour), nil))
	open = f.open(t, "d1")
	if len(open) != 1 || open[0].ID == id || open[0].Count != 1 {
		t.Fatalf("after resolution: %+v", open)
	}
	want := []Transition{TransitionFiring, TransitionAcknowledged, TransitionResolved, TransitionFiring}
	for _, w := range want {
		if n := rec.next(t); n.Transition != w {
			t.Fatalf("notification %s, want %s", n.Transition, w)
		}
	}
	rec.none(t, f.e)
}

func TestQueryPaging(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "ev", Severity: SeverityInfo, Event: &EventMatch{Kind: "x", KeyAttr: "n"}})
	at := f.clock.Now()
	for i := range 5 {
		must(t, f.e.Event("d1", "x", "", at, map[string]string{"n": fmt.Sprint(i)}))
		must(t, f.e.Event("d2", "x", "", at, map[string]string{"n": fmt.Sprint(i)}))
	}
	var ids []uint64
	var before uint64
	for page := 0; ; page++ {
		as, next, err := f.e.Alerts(Query{DeviceID: "d1", Before: before, Limit: 2})
		must(t, err)
		for _, a := range as {
			if a.DeviceID != "d1" {
				t.Fatalf("device filter leaked %s", a.DeviceID)
			}
			ids = append(ids, a.ID)
		}
		if next == 0 {
			break
		}
		before = next
		if page > 5 {
			t.Fatal("paging does not end")
		}
	}
	if len(ids) != 5 {
		t.Fatalf("paged %d alerts of d1, want 5: %v", len(ids), ids)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] >= ids[i-1] {
			t.Fatalf("not newest first: %v", ids)
		}
	}
	all, _, err := f.e.Alerts(Query{Open: true, Limit: 1000})
	must(t, err)
	if len(all) != 10 {
		t.Fatalf("open across devices: %d", len(all))
	}
	_, err = f.e.Resolve(ids[0], "ops", "")
	must(t, err)
	res, _, err := f.e.Alerts(Query{State: StateResolved})
	must(t, err)
	if len(res) != 1 || res[0].ID != ids[0] {
		t.Fatalf("resolved filter: %+v", res)
	}
	open, _, err := f.e.Alerts(Query{Open: true, Before: ids[0], Limit: 3})
	must(t, err)
	if len(open) != 3 || open[0].ID >= ids[0] {
		t.Fatalf("open page before %d: %+v", ids[0], open)
	}
}

// quarantiner records actions, as attestation's quarantine would act.
type quarantiner struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (q *quarantiner) Act(_ context.Context, action Action, a Alert) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.calls = append(q.calls, string(action)+" "+a.DeviceID)
	return q.err
}

func TestQuarantineAction(t *testing.T) {
	q := &quarantiner{}
	f := newFixture(t, Config{Actions: q})
	f.put(t, Rule{ID: "clone", Severity: SeverityCritical, Action: ActionQuarantine, Event: &EventMatch{Kind: EventCloneSuspect}})
	f.put(t, Rule{ID: "auth", Severity: SeverityWarning, Event: &EventMatch{Kind: EventAuthFailure}})
	at := f.clock.Now()
	must(t, f.e.Event("d1", EventAuthFailure, "", at, nil))
	must(t, f.e.Event("d1", EventCloneSuspect, "", at, nil))
	must(t, f.e.Event("d1", EventCloneSuspect, "", at.Add(time.Second), nil)) // absorbed: no second quarantine
	if len(q.calls) != 1 || q.calls[0] != "quarantine d1" {
		t.Fatalf("actions: %v", q.calls)
	}
	open := f.open(t, "d1")
	for _, a := range open {
		if a.RuleID == "clone" && (a.Action != ActionQuarantine || a.ActionError != "") {
			t.Fatalf("clone alert: %+v", a)
		}
	}
	q.err = errors.New("inventory unavailable")
	must(t, f.e.Event("d2", EventCloneSuspect, "", at, nil))
	if open := f.open(t, "d2"); len(open) != 1 || open[0].ActionError != "inventory unavailable" {
		t.Fatalf("failed action not recorded: %+v", open)
	}
	if f.e.Stats().ActionsFailed != 1 {
		t.Fatalf("stats: %+v", f.e.Stats())
	}

	g := newFixture(t, Config{}) // no Actions
	g.put(t, Rule{ID: "clone", Severity: SeverityCritical, Action: ActionQuarantine, Event: &EventMatch{Kind: EventCloneSuspect}})
	must(t, g.e.Event("d1", EventCloneSuspect, "", at, nil))
	if open := g.open(t, "d1"); len(open) != 1 || open[0].ActionError != "no actions configured" {
		t.Fatalf("missing Actions not recorded: %+v", open)
	}
}

func TestPersistAcrossRestart(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "temp", Op: OpGE, Value: 80}})
	f.put(t, Rule{ID: "cpu", Severity: SeverityWarning, Baseline: &Baseline{Metric: "cpu", Warmup: 20, Consecutive: 1}})
	f.put(t, Rule{ID: "ports", Severity: SeverityWarning, NewMember: &NewMember{Set: SetPorts, Learn: dur(time.Minute)}})
	t0 := f.clock.Now()
	for i := range 30 {
		must(t, f.e.Observe("d1", t0.Add(time.Duration(i)*time.Second), map[string]float64{"cpu": 10 + float64(i%3), "temp": 50}, map[string][]string{SetPorts: {"tcp/22"}}))
	}
	must(t, f.e.Observe("d1", t0.Add(time.Minute), map[string]float64{"temp": 85}, nil))
	if n := len(f.open(t, "d1")); n != 1 {
		t.Fatalf("before restart: %d open", n)
	}
	must(t, f.e.Close())

	e, err := openBackend(t, Config{Path: f.path, Now: f.clock.Now, NoSync: true})
	must(t, err)
	defer e.Close()
	if rs := e.Rules(); len(rs) != 3 || rs[0].ID != "cpu" {
		t.Fatalf("rules after restart: %+v", rs)
	}
	at := t0.Add(2 * time.Minute)
	// The open alert is known: the condition clearing resolves it.
	must(t, e.Observe("d1", at, map[string]float64{"temp": 60}, nil))
	// The baseline is still warm and the port still known.
	must(t, e.Observe("d1", at.Add(time.Second), map[string]float64{"cpu": 90}, map[string][]string{SetPorts: {"tcp/22"}}))
	open, _, err := e.Alerts(Query{Open: true})
	must(t, err)
	if len(open) != 1 || open[0].RuleID != "cpu" {
		t.Fatalf("after restart want only the cpu anomaly open: %+v", open)
	}
	all, _, err := e.Alerts(Query{DeviceID: "d1"})
	must(t, err)
	if len(all) != 2 || all[1].RuleID != "hot" || all[1].State != StateResolved {
		t.Fatalf("history after restart: %+v", all)
	}
}

func TestRouting(t *testing.T) {
	crit, ops, all := newRecorder(), newRecorder(), newRecorder()
	f := newFixture(t, Config{Routes: []Route{
		{Name: "pager", Notifier: crit, MinSeverity: SeverityCritical, Transitions: []Transition{TransitionFiring}},
		{Name: "ops", Notifier: ops, Match: map[string]string{"team": "ops"}},
		{Name: "all", Notifier: all},
	}})
	f.run(t)
	f.put(t, Rule{ID: "a", Severity: SeverityCritical, Event: &EventMatch{Kind: "a"}})
	f.put(t, Rule{ID: "b", Severity: SeverityWarning, Labels: map[string]string{"team": "ops"}, Event: &EventMatch{Kind: "b", ClearOn: "b-ok"}})
	at := f.clock.Now()
	must(t, f.e.Event("d1", "a", "", at, nil))
	must(t, f.e.Event("d1", "b", "", at, nil))
	must(t, f.e.Event("d1", "b-ok", "", at, nil))
	if n := crit.next(t); n.Alert.RuleID != "a" {
		t.Fatalf("pager got %+v", n)
	}
	crit.none(t, f.e)
	if n := ops.next(t); n.Alert.RuleID != "b" || n.Transition != TransitionFiring {
		t.Fatalf("ops got %+v", n)
	}
	if n := ops.next(t); n.Alert.RuleID != "b" || n.Transition != TransitionResolved {
		t.Fatalf("ops got %+v", n)
	}
	ops.none(t, f.e)
	for range 3 {
		all.next(t)
	}
	all.none(t, f.e)
}

func TestRetryThenDeadLetterThenRedrive(t *testing.T) {
	rec := newRecorder()
	var down sync.Mutex
	failing := true
	rec.fail = func(int, Notification) error {
		down.Lock()
		defer down.Unlock()
		if failing {
			return errDown
		}
		return nil
	}
	f := newFixture(t, Config{Routes: []Route{{Name: "hook", Notifier: rec, Attempts: 3, Backoff: time.Millisecond}}})
	f.run(t)
	f.put(t, Rule{ID: "a", Severity: SeverityCritical, Event: &EventMatch{Kind: "a"}})
	must(t, f.e.Event("d1", "a", "", f.clock.Now(), nil))
	waitFor(t, func() bool { return f.e.Stats().DeadLettered == 1 })
	if s := f.e.Stats(); s.Retried != 2 || s.Delivered != 0 {
		t.Fatalf("stats after 3 failed attempts: %+v", s)
	}
	dls, _, err := f.e.DeadLetters(0, 0)
	must(t, err)
	if len(dls) != 1 || dls[0].Attempts != 3 || dls[0].Route != "hook" || !strings.Contains(dls[0].Error, "receiver down") ||
		dls[0].Notification.Alert.RuleID != "a" || dls[0].Interrupted {
		t.Fatalf("dead letter: %+v", dls)
	}
	down.Lock()
	failing = false
	down.Unlock()
	must(t, f.e.Redrive(dls[0].ID))
	if n := rec.next(t); n.Alert.ID != dls[0].Notification.Alert.ID || n.Transition != TransitionFiring {
		t.Fatalf("re-driven: %+v", n)
	}
	if dls, _, _ := f.e.DeadLetters(0, 0); len(dls) != 0 {
		t.Fatalf("dead letter kept after re-drive: %+v", dls)
	}
	if err := f.e.Redrive(dls[0].ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("re-driving twice: %v", err)
	}
}

func TestPermanentFailureIsNotRetried(t *testing.T) {
	rec := newRecorder()
	rec.fail = func(int, Notification) error { return fmt.Errorf("%w: HTTP 400", ErrPermanent) }
	f := newFixture(t, Config{Routes: []Route{{Name: "hook", Notifier: rec, Attempts: 5, Backoff: time.Millisecond}}})
	f.run(t)
	f.put(t, Rule{ID: "a", Severity: SeverityCritical, Event: &EventMatch{Kind: "a"}})
	must(t, f.e.Event("d1", "a", "", f.clock.Now(), nil))
	waitFor(t, func() bool { return f.e.Stats().DeadLettered == 1 })
	if rec.attempts != 1 {
		t.Fatalf("%d attempts for a permanent failure", rec.attempts)
	}
}

func TestQueueFullAndShutdownDeadLetter(t *testing.T) {
	rec := newRecorder()
	f := newFixture(t, Config{Routes: []Route{{Name: "hook", Notifier: rec, QueueSize: 2}}})
	f.put(t, Rule{ID: "a", Severity: SeverityCritical, Event: &EventMatch{Kind: "a", KeyAttr: "n"}})
	// Not running: the queue fills.
	for i := range 3 {
		must(t, f.e.Event("d1", "a", "", f.clock.Now(), map[string]string{"n": fmt.Sprint(i)}))
	}
	dls, _, err := f.e.DeadLetters(0, 0)
	must(t, err)
	if len(dls) != 1 || !strings.Contains(dls[0].Error, ErrQueueFull.Error()) || dls[0].Notification.Alert.Key != "2" {
		t.Fatalf("queue overflow: %+v", dls)
	}
	// Closing with two queued: both become interrupted dead letters ...
	must(t, f.e.Close())
	e, err := openBackend(t, Config{Path: f.path, NoSync: true, Routes: []Route{{Name: "hook", Notifier: rec}}})
	must(t, err)
	defer e.Close()
	dls, _, err = e.DeadLetters(0, 0)
	must(t, err)
	if len(dls) != 3 || !dls[0].Interrupted || !dls[1].Interrupted {
		t.Fatalf("after close: %+v", dls)
	}
	// ... which the next Run sends, oldest first; the overflow one waits
	// for an operator.
	stop := runtest.Start(t, e.Run)
	for _, key := range []string{"0", "1"} {
		if n := rec.next(t); n.Alert.Key != key {
			t.Fatalf("re-sent key %q, want %q", n.Alert.Key, key)
		}
	}
	dls, _, err = e.DeadLetters(0, 0)
	must(t, err)
	if len(dls) != 1 || dls[0].Interrupted {
		t.Fatalf("left after restart: %+v", dls)
	}
	n, err := e.RedriveAll("hook")
	must(t, err)
	if n != 1 || rec.next(t).Alert.Key != "2" {
		t.Fatalf("RedriveAll sent %d", n)
	}
	must(t, stop())
}

func TestDeleteRuleAndForget(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "a", Severity: SeverityCritical, Event: &EventMatch{Kind: "a"}})
	f.put(t, Rule{ID: "b", Severity: SeverityCritical, Event: &EventMatch{Kind: "b"}})
	at := f.clock.Now()
	must(t, f.e.Event("d1", "a", "", at, nil))
	must(t, f.e.Event("d1", "b", "", at, nil))
	must(t, f.e.Event("d2", "a", "", at, nil))
	must(t, f.e.DeleteRule("a"))
	if err := f.e.DeleteRule("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting twice: %v", err)
	}
	open, _, err := f.e.Alerts(Query{Open: true})
	must(t, err)
	if len(open) != 1 || open[0].RuleID != "b" {
		t.Fatalf("after deleting rule a: %+v", open)
	}
	must(t, f.e.Forget("d1"))
	if open, _, _ := f.e.Alerts(Query{Open: true}); len(open) != 0 {
		t.Fatalf("after forgetting d1: %+v", open)
	}
	all := f.all(t, "d1")
	for _, a := range all {
		if a.ResolvedBy != "system" {
			t.Fatalf("resolution not attributed: %+v", a)
		}
	}
}

func TestBadInput(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "temp", Op: OpGT, Value: 80}})
	at := f.clock.Now()
	for _, id := range []string{"", "a\x00b", strings.Repeat("x", 300), "\xff"} {
		if err := f.e.Observe(id, at, nil, nil); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("device %q: %v", id, err)
		}
	}
	if err := f.e.Event("d1", "", "", at, nil); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("empty event kind: %v", err)
	}
	err := f.e.Observe("d1", at, map[string]float64{"temp": 90, "cpu": math.NaN(), "mem": math.Inf(1)}, nil)
	if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "cpu, mem") {
		t.Fatalf("non-finite values: %v", err)
	}
	if n := len(f.open(t, "d1")); n != 1 {
		t.Fatal("the finite value in the same sample was not evaluated")
	}
}

func TestHistoryBound(t *testing.T) {
	f := newFixture(t, Config{MaxAlerts: 5})
	f.put(t, Rule{ID: "a", Severity: SeverityInfo, Event: &EventMatch{Kind: "a", ClearOn: "ok"}})
	at := f.clock.Now()
	for range 8 {
		must(t, f.e.Event("d1", "a", "", at, nil))
		must(t, f.e.Event("d1", "ok", "", at, nil))
	}
	must(t, f.e.Event("d1", "a", "", at, nil)) // open: never pruned
	f.e.prune()
	all := f.all(t, "d1")
	if len(all) != 5 || !all[0].State.Open() || all[4].ID != 5 {
		t.Fatalf("after pruning to 5: %d alerts, newest %+v", len(all), all[0])
	}
}

func TestRepeatsAreSkippedNotDeadLettered(t *testing.T) {
	rec := newRecorder()
	f := newFixture(t, Config{Routes: []Route{{Name: "am", Notifier: rec, QueueSize: 2,
		Transitions: []Transition{TransitionFiring, TransitionRepeat}}}})
	f.put(t, Rule{ID: "a", Severity: SeverityCritical, Event: &EventMatch{Kind: "a"}})
	must(t, f.e.Event("d1", "a", "", f.clock.Now(), nil))
	f.e.resend() // fills the queue
	f.e.resend() // finds it full
	if s := f.e.Stats(); s.RepeatsSkipped != 1 || s.DeadLettered != 0 || s.Queued != 2 {
		t.Fatalf("stats %+v", s)
	}
	f.run(t)
	if n := rec.next(t); n.Transition != TransitionFiring {
		t.Fatalf("first %s", n.Transition)
	}
	if n := rec.next(t); n.Transition != TransitionRepeat || n.Alert.State != StateFiring {
		t.Fatalf("second %+v", n)
	}
}

func TestForgetDropsLearnedState(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "silent", Severity: SeverityWarning, Absence: &Absence{After: dur(time.Minute)}})
	f.put(t, Rule{ID: "cpu", Severity: SeverityWarning, Baseline: &Baseline{Metric: "cpu"}})
	for _, d := range []string{"d1", "d2"} {
		must(t, f.e.Observe(d, f.clock.Now(), map[string]float64{"cpu": 1}, nil))
	}
	must(t, f.e.flush())
	must(t, f.e.Forget("d1"))
	must(t, f.e.Close())
	e, err := openBackend(t, Config{Path: f.path, NoSync: true, Now: f.clock.Now})
	must(t, err)
	defer e.Close()
	e.sweep(f.clock.Now().Add(time.Hour))
	open, _, err := e.Alerts(Query{Open: true})
	must(t, err)
	if len(open) != 1 || open[0].DeviceID != "d2" {
		t.Fatalf("after forgetting d1 and restarting, want only d2 absent: %+v", open)
	}
	if d := e.devices["d2"]; d == nil || d.Rules["cpu"] == nil || d.Rules["cpu"].EWMA.N != 1 {
		t.Fatal("d2's baseline was not kept")
	}
}

func TestOpenRefusesBadConfig(t *testing.T) {
	path := t.TempDir() + "/alerts.db"
	for name, cfg := range map[string]Config{
		"no path":        {},
		"negative sweep": {Path: path, SweepInterval: -time.Second},
		"route no name":  {Path: path, Routes: []Route{{Notifier: newRecorder()}}},
		"route twice":    {Path: path, Routes: []Route{{Name: "a", Notifier: newRecorder()}, {Name: "a", Notifier: newRecorder()}}},
		"route severity": {Path: path, Routes: []Route{{Name: "a", Notifier: newRecorder(), MinSeverity: "loud"}}},
		"route backoff":  {Path: path, Routes: []Route{{Name: "a", Notifier: newRecorder(), Backoff: time.Minute, MaxBackoff: time.Second}}},
		"transition":     {Path: path, Routes: []Route{{Name: "a", Notifier: newRecorder(), Transitions: []Transition{"paged"}}}},
	} {
		if e, err := Open(cfg); err == nil {
			e.Close()
			t.Errorf("%s: accepted", name)
		} else if !strings.HasPrefix(err.Error(), "alert: ") {
			t.Errorf("%s: error %q does not name the package", name, err)
		}
	}
	e, err := Open(Config{Path: path})
	must(t, err)
	defer e.Close()
	if _, err := Open(Config{Path: path, LockTimeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open of a held file: %v", err)
	}
}

// TestEventsDoNotCountAsContact: the fleet's findings about a silent device
// (dormant, clone, stale attestation) are events, and must not resolve its
// absence alert; only contact (Seen, Observe) does.
func TestEventsDoNotCountAsContact(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "silent", Severity: SeverityWarning, Absence: &Absence{After: dur(15 * time.Minute)}})
	t0 := f.clock.Now()
	must(t, f.e.Seen("d1", t0))
	f.e.sweep(t0.Add(16 * time.Minute))
	if n := len(f.open(t, "d1")); n != 1 {
		t.Fatalf("%d open alerts after 16 silent minutes", n)
	}
	must(t, f.e.Event("d1", "dormant", "warning", t0.Add(17*time.Minute), map[string]string{"detail": "not seen"}))
	f.e.sweep(t0.Add(18 * time.Minute))
	if n := len(f.open(t, "d1")); n != 1 {
		t.Fatal("a fleet event about the silent device resolved its absence alert")
	}
	must(t, f.e.Seen("d1", t0.Add(19*time.Minute)))
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatal("contact did not resolve the absence alert")
	}
}
