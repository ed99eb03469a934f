package campaign

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/clocktest"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// fakeFleet records announcements, refuses those to unreachable devices
// for now and those to ineligible ones for good.
type fakeFleet struct {
	mu          sync.Mutex
	log         []Announcement
	unreachable map[string]bool
	ineligible  map[string]bool
	refused     []Announcement // to ineligible devices
}

func (f *fakeFleet) Announce(_ context.Context, a Announcement) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ineligible[a.Device] {
		f.refused = append(f.refused, a)
		return fmt.Errorf("fleet: %w", &IneligibleError{Reason: wire.ReasonFirmwareModel, Message: "model gw-2 is not gw-1"})
	}
	if f.unreachable[a.Device] {
		return errors.New("not connected")
	}
	f.log = append(f.log, a)
	return nil
}

// take returns the announcements since the last take.
func (f *fakeFleet) take() []Announcement {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.log
	f.log = nil
	return out
}

func devices(announcements []Announcement) []string {
	var out []string
	for _, a := range announcements {
		out = append(out, a.Device)
	}
	return out
}

// env is a manager over a real store file, a fake clock and a fake fleet.
type env struct {
	t      testing.TB
	path   string
	clk    *clocktest.Clock
	fleet  *fakeFleet
	fleetT []string // what Targets resolves to
	store  *Store
	m      *Manager
	last   []Announcement // by the last step

	mu    sync.Mutex
	audit []AuditEvent

	resolvedFor string // the release of Targets' last call (under mu)
}

// start is a Monday, 12:00 UTC.
var start = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)

func newEnv(t testing.TB, n int) *env {
	t.Helper()
	e := &env{t: t, path: filepath.Join(t.TempDir(), "campaigns.db"), clk: clocktest.New(start),
		fleet: &fakeFleet{unreachable: map[string]bool{}, ineligible: map[string]bool{}}}
	for i := range n {
		e.fleetT = append(e.fleetT, fmt.Sprintf("dev-%03d", i))
	}
	e.open()
	t.Cleanup(func() { e.store.Close() })
	return e
}

func (e *env) open() {
	e.t.Helper()
	s, err := openStore(e.t, e.path)
	if err != nil {
		e.t.Fatal(err)
	}
	e.store = s
	m, err := New(Config{
		Store: s,
		Targets: TargetsFunc(func(_ context.Context, release string, sel Selector) ([]string, error) {
			e.mu.Lock()
			e.resolvedFor = release
			e.mu.Unlock()
			if len(sel.DeviceIDs) > 0 {
				return sel.DeviceIDs, nil
			}
			return slices.Clone(e.fleetT), nil
		}),
		Announcer: e.fleet,
		Auditor: AuditorFunc(func(a AuditEvent) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.audit = append(e.audit, a)
		}),
		Now:           e.clk.Now,
		Rand:          &seqRand{},
		AnnounceRetry: time.Minute,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.m = m
}

// reopen closes the store and opens it with a new Manager, as a fleet
// restart does.
func (e *env) reopen() {
	e.t.Helper()
	if err := e.store.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

func (e *env) audited(action, actor string) []AuditEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []AuditEvent
	for _, a := range e.audit {
		if a.Action == action && (actor == "" || a.Actor == actor) {
			out = append(out, a)
		}
	}
	return out
}

// def is a definition over the fleet with a fixed wave plan.
func def(sizes ...int) Definition {
	return Definition{Release: "rel-b", Targets: Selector{Group: "g"}, Waves: Waves{Sizes: sizes},
		DeviceTimeout: config.Duration(10 * time.Minute)}
}

// started creates and starts a campaign.
func (e *env) started(d Definition) string {
	e.t.Helper()
	c, err := e.m.Create(context.Background(), d, "alice", "test")
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.m.Start(c.ID, time.Time{}, "alice", ""); err != nil {
		e.t.Fatal(err)
	}
	return c.ID
}

// step runs one engine step and returns the devices it announced.
func (e *env) step() []string {
	e.t.Helper()
	if err := e.m.step(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.last = e.fleet.take()
	return devices(e.last)
}

func (e *env) report(id, dev string, s Step, reason wire.Reason) bool {
	e.t.Helper()
	ok, err := e.m.Report(DeviceReport{DeviceID: dev, Campaign: id, Step: s, Reason: reason, RunningVersion: "2.0.0", At: e.clk.Now()})
	if err != nil {
		e.t.Fatalf("report %s %s: %v", dev, s, err)
	}
	return ok
}

// commit walks devices through every step to committed.
func (e *env) commit(id string, devs ...string) {
	e.t.Helper()
	for _, d := range devs {
		for _, s := range []Step{StepDownloading, StepVerifying, StepInstalling, StepSwitching, StepHealth, StepCommitted} {
			if !e.report(id, d, s, 0) {
				e.t.Fatalf("report %s %s was not applied", d, s)
			}
		}
	}
}

// rollBack walks devices to a failed health check.
func (e *env) rollBack(id string, devs ...string) {
	e.t.Helper()
	for _, d := range devs {
		for _, s := range []Step{StepDownloading, StepVerifying, StepInstalling, StepSwitching, StepHealth} {
			e.report(id, d, s, 0)
		}
		if !e.report(id, d, StepRolledBack, wire.ReasonFirmwareHealth) {
			e.t.Fatalf("rollback of %s was not applied", d)
		}
	}
}

func (e *env) get(id string) *Campaign {
	e.t.Helper()
	c, err := e.m.Get(id)
	if err != nil {
		e.t.Fatal(err)
	}
	checkCounts(e.t, c)
	return c
}

func (e *env) device(id, dev string) *Device {
	e.t.Helper()
	d, err := e.m.Device(id, dev)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// checkCounts checks that the counts add up: per wave, in total, and
// against the waves.
func checkCounts(t testing.TB, c *Campaign) {
	t.Helper()
	sum := func(n Counts) int { return n.Pending + n.InFlight() + n.Finished() }
	if sum(c.Counts) != c.Total {
		t.Fatalf("counts %+v add up to %d, not %d", c.Counts, sum(c.Counts), c.Total)
	}
	var all Counts
	for _, w := range c.Waves {
		if sum(w.Counts) != w.Size {
			t.Fatalf("wave %d counts %+v add up to %d, not %d", w.Number, w.Counts, sum(w.Counts), w.Size)
		}
		for _, s := range allSteps {
			all.add(s, w.Counts.get(s))
		}
	}
	if len(c.Waves) > 0 && all != c.Counts {
		t.Fatalf("waves add up to %+v, campaign says %+v", all, c.Counts)
	}
}

var allSteps = []Step{StepPending, StepAnnounced, StepDownloading, StepVerifying, StepInstalling, StepSwitching,
	StepHealth, StepCommitted, StepFailed, StepRolledBack, StepTimedOut}

func (c Counts) get(s Step) int {
	return map[Step]int{
		StepPending: c.Pending, StepAnnounced: c.Announced, StepDownloading: c.Downloading,
		StepVerifying: c.Verifying, StepInstalling: c.Installing, StepSwitching: c.Switching,
		StepHealth: c.Health, StepCommitted: c.Committed, StepFailed: c.Failed,
		StepRolledBack: c.RolledBack, StepTimedOut: c.TimedOut,
	}[s]
}

func wantDevices(t testing.TB, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

// recount counts the campaign's device records one by one and checks the
// kept counts against them.
func (e *env) recount(id string) Counts {
	e.t.Helper()
	var got Counts
	after := ""
	for {
		page, next, err := e.m.Devices(id, DeviceFilter{After: after, Limit: 7})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, d := range page {
			got.add(d.Step, 1)
		}
		if next == "" {
			break
		}
		after = next
	}
	if c := e.get(id); c.Counts != got {
		e.t.Fatalf("campaign counts %+v, device records %+v", c.Counts, got)
	}
	return got
}

// seqRand is a deterministic Rand: campaign IDs are cmp_0001020304050607,
// cmp_08090a0b0c0d0e0f, …
type seqRand struct {
	mu sync.Mutex
	n  byte
}

func (r *seqRand) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range p {
		p[i] = r.n
		r.n++
	}
	return len(p), nil
}
