package campaign

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Waves open one after the other as the previous one commits: 1, 2, 4, 8
// devices with a canary of 1 and a growth of 2, in the order Targets gave.
func TestWavesAdvanceOnSuccess(t *testing.T) {
	e := newEnv(t, 15)
	d := def()
	d.Waves = Waves{Canary: 1, Growth: 2}
	id := e.started(d)
	c := e.get(id)
	if c.State != StateRunning || c.Wave != 1 || len(c.Waves) != 4 {
		t.Fatalf("after start: state %s wave %d waves %d", c.State, c.Wave, len(c.Waves))
	}
	for i, size := range []int{1, 2, 4, 8} {
		if c.Waves[i].Size != size || c.Waves[i].Need != size {
			t.Fatalf("wave %d: size %d need %d, want %d", i+1, c.Waves[i].Size, c.Waves[i].Need, size)
		}
	}

	wantDevices(t, "wave 1", e.step(), "dev-000")
	wantDevices(t, "wave 1 not committed yet", e.step())
	e.commit(id, "dev-000")
	if c := e.get(id); c.Wave != 2 {
		t.Fatalf("wave %d after the canary committed, want 2", c.Wave)
	}
	wantDevices(t, "wave 2", e.step(), "dev-001", "dev-002")
	e.commit(id, "dev-001")
	wantDevices(t, "wave 2 half committed", e.step())
	e.commit(id, "dev-002")
	wantDevices(t, "wave 3", e.step(), "dev-003", "dev-004", "dev-005", "dev-006")
	e.commit(id, "dev-003", "dev-004", "dev-005", "dev-006")
	wave4 := e.step()
	if len(wave4) != 8 {
		t.Fatalf("wave 4 announced %v", wave4)
	}
	e.commit(id, wave4...)
	c = e.get(id)
	if c.State != StateCompleted || c.Counts.Committed != 15 || c.Finished.IsZero() {
		t.Fatalf("at the end: state %s, counts %+v", c.State, c.Counts)
	}
	e.recount(id)
	if len(e.audited("campaign.complete", SystemActor)) != 1 || len(e.audited("campaign.create", "alice")) != 1 {
		t.Fatalf("audit trail: %+v", e.audit)
	}
	if wantDevices(t, "after completion", e.step()); e.get(id).State != StateCompleted {
		t.Fatal("completed campaign changed")
	}
}

// With a success threshold below 1 the next wave opens while the rest of
// the previous one is still in flight; explicit sizes repeat the last.
func TestSuccessThresholdAndSizes(t *testing.T) {
	e := newEnv(t, 10)
	d := def(2, 4)
	d.SuccessThreshold = 0.5
	id := e.started(d)
	c := e.get(id)
	var sizes []int
	for _, w := range c.Waves {
		sizes = append(sizes, w.Size)
	}
	if fmt.Sprint(sizes) != "[2 4 4]" || c.Waves[1].Need != 2 {
		t.Fatalf("waves %v, need %d", sizes, c.Waves[1].Need)
	}
	wantDevices(t, "wave 1", e.step(), "dev-000", "dev-001")
	e.commit(id, "dev-000")
	wantDevices(t, "wave 2 with one of wave 1 in flight", e.step(), "dev-002", "dev-003", "dev-004", "dev-005")
	if got := e.device(id, "dev-001").Step; got != StepAnnounced {
		t.Fatalf("dev-001 is %s", got)
	}
}

// Devices that fail their health check beyond the failure threshold pause
// the campaign: nothing more is announced until an operator resumes.
func TestFailureThresholdPauses(t *testing.T) {
	e := newEnv(t, 10)
	d := def(2, 8)
	d.SuccessThreshold = 0.5
	d.FailureThreshold = 0.25 // 2 of 8 may fail
	d.MaxInFlight = 5
	id := e.started(d)
	e.commit(id, e.step()...)
	wave2 := e.step()
	wantDevices(t, "wave 2 within max in flight", wave2, "dev-002", "dev-003", "dev-004", "dev-005", "dev-006")
	e.rollBack(id, "dev-002", "dev-003")
	if c := e.get(id); c.State != StateRunning {
		t.Fatalf("paused at 2 failures of 8: %s", c.Why)
	}
	wantDevices(t, "in-flight room after two failures", e.step(), "dev-007", "dev-008")
	e.rollBack(id, "dev-004")
	c := e.get(id)
	if c.State != StatePaused || c.ChangedBy != SystemActor || !strings.Contains(c.Why, "wave 2: 3 of 8") || !c.Waves[1].Tripped {
		t.Fatalf("after 3 of 8 failed: state %s by %s: %q", c.State, c.ChangedBy, c.Why)
	}
	if a := e.audited("campaign.pause", SystemActor); len(a) != 1 || a[0].Target != id {
		t.Fatalf("audit of the automatic pause: %+v", a)
	}
	e.commit(id, "dev-005")
	wantDevices(t, "paused", e.step())
	if got := e.device(id, "dev-004"); got.Step != StepRolledBack || got.Reason != wire.ReasonFirmwareHealth {
		t.Fatalf("dev-004: %+v", got)
	}
	if err := e.m.Resume(id, "bob", "3 health failures are a flaky sensor; continue"); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, "resumed", e.step(), "dev-009")
	e.commit(id, "dev-006", "dev-007", "dev-008", "dev-009")
	if c := e.get(id); c.State != StateCompleted || c.Counts.Committed != 7 || c.Counts.RolledBack != 3 {
		t.Fatalf("after resume: %s %+v", c.State, c.Counts)
	}
	e.recount(id)
}

// In abort mode a tripped wave ends the campaign; devices in flight still
// report, and the campaign leaves the engine once they finished.
func TestFailureThresholdAborts(t *testing.T) {
	e := newEnv(t, 6)
	d := def(3, 3)
	d.OnFailure = ActionAbort
	d.SuccessThreshold = 0.6 // 2 of 3
	d.FailureThreshold = 0.34
	id := e.started(d)
	wantDevices(t, "wave 1", e.step(), "dev-000", "dev-001", "dev-002")
	e.rollBack(id, "dev-000")
	if c := e.get(id); c.State != StateRunning {
		t.Fatalf("aborted at 1 of 3: %s", c.Why)
	}
	e.report(id, "dev-001", StepFailed, wire.ReasonFirmwareDigest)
	c := e.get(id)
	if c.State != StateAborted || c.Finished.IsZero() || len(e.audited("campaign.abort", SystemActor)) != 1 {
		t.Fatalf("after 2 of 3 failed: %s (%s)", c.State, c.Why)
	}
	wantDevices(t, "aborted", e.step())
	if got := e.device(id, "dev-001"); got.Reason != wire.ReasonFirmwareDigest {
		t.Fatalf("dev-001 reason %v", got.Reason)
	}
	e.commit(id, "dev-002")
	if c := e.get(id); c.Counts.Committed != 1 || c.Counts.Pending != 3 || c.State != StateAborted {
		t.Fatalf("a device in flight after the abort: %s %+v", c.State, c.Counts)
	}
	if ids := e.active(); len(ids) != 0 {
		t.Fatalf("aborted campaign with nothing in flight is still active: %v", ids)
	}
}

func (e *env) active() []string {
	e.t.Helper()
	var ids []string
	err := e.store.db.View(context.Background(), func(tx kv.Tx) error {
		return tx.Bucket(bucketActive).ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// A device that stops reporting, or never reports, times out and counts
// as failed; it is never in progress forever. A late report of how it
// finished is still recorded.
func TestSilentDeviceTimesOut(t *testing.T) {
	e := newEnv(t, 3)
	d := def(3)
	d.SuccessThreshold = 0.3
	d.FailureThreshold = 1
	id := e.started(d)
	wantDevices(t, "wave 1", e.step(), "dev-000", "dev-001", "dev-002")
	e.commit(id, "dev-000")
	e.report(id, "dev-001", StepDownloading, 0)
	dl := e.device(id, "dev-002").Deadline
	if want := start.Add(10 * time.Minute); !dl.Equal(want) {
		t.Fatalf("deadline %v, want %v", dl, want)
	}

	e.clk.Advance(10*time.Minute - time.Second)
	e.step()
	if c := e.get(id); c.Counts.TimedOut != 0 || c.Counts.InFlight() != 2 {
		t.Fatalf("before the deadline: %+v", c.Counts)
	}
	e.clk.Advance(time.Second)
	e.step()
	for _, dev := range []string{"dev-001", "dev-002"} {
		got := e.device(id, dev)
		if got.Step != StepTimedOut || got.Reason != wire.ReasonFirmwareTimeout || !got.Deadline.IsZero() {
			t.Fatalf("%s after the deadline: %+v", dev, got)
		}
	}
	c := e.get(id)
	if c.State != StateCompleted || c.Counts.TimedOut != 2 || c.Waves[0].Counts.Failures() != 2 {
		t.Fatalf("after timeouts: %s %+v", c.State, c.Counts)
	}
	if e.report(id, "dev-001", StepInstalling, 0) {
		t.Fatal("a progress report revived a timed-out device")
	}
	if !e.report(id, "dev-001", StepCommitted, 0) {
		t.Fatal("late commit not recorded")
	}
	if got := e.device(id, "dev-001"); got.Step != StepCommitted || !got.Late || got.Reason != 0 {
		t.Fatalf("late commit: %+v", got)
	}
	e.recount(id)
}

// A timed-out device that never answered is announced again when retries
// are configured; one that reported something is not.
func TestRetriesAnnounceSilentDevicesAgain(t *testing.T) {
	e := newEnv(t, 2)
	d := def(2)
	d.Retries = 1
	d.FailureThreshold = 1
	d.SuccessThreshold = 0.5
	id := e.started(d)
	e.step()
	e.report(id, "dev-000", StepDownloading, 0)
	e.clk.Advance(10 * time.Minute)
	wantDevices(t, "retry of the silent device", e.step(), "dev-001")
	// The timeout moved dev-001 to the retry queue; the same step announced it.
	if got := e.device(id, "dev-001"); got.Step != StepAnnounced || got.Attempts != 2 {
		t.Fatalf("dev-001 after its first timeout: %+v", got)
	}
	if got := e.device(id, "dev-000"); got.Step != StepTimedOut {
		t.Fatalf("dev-000 reported and went silent: %+v", got)
	}
	e.clk.Advance(10 * time.Minute)
	wantDevices(t, "no retry left", e.step())
	if got := e.device(id, "dev-001"); got.Step != StepTimedOut || got.Attempts != 2 {
		t.Fatalf("dev-001 after its second timeout: %+v", got)
	}
}

// An announcement the Announcer could not queue is tried again later, and
// a device unreachable for the whole device timeout times out.
func TestUnreachableDevice(t *testing.T) {
	e := newEnv(t, 2)
	d := def(2)
	d.FailureThreshold = 1
	d.SuccessThreshold = 0.5
	e.fleet.unreachable["dev-001"] = true
	id := e.started(d)
	wantDevices(t, "first step", e.step(), "dev-000")
	got := e.device(id, "dev-001")
	if got.Step != StepPending || got.Attempts != 0 || !got.RetryAt.Equal(start.Add(time.Minute)) {
		t.Fatalf("unreachable device: %+v", got)
	}
	e.clk.Advance(30 * time.Second)
	e.step()
	e.clk.Advance(30 * time.Second)
	delete(e.fleet.unreachable, "dev-001")
	wantDevices(t, "retry", e.step(), "dev-001")
	if got := e.device(id, "dev-001"); got.Step != StepAnnounced || got.Attempts != 1 {
		t.Fatalf("after the retry: %+v", got)
	}

	e2 := newEnv(t, 1)
	e2.fleet.unreachable["dev-000"] = true
	id2 := e2.started(def(1))
	for range 11 {
		e2.step()
		e2.clk.Advance(time.Minute)
	}
	if got := e2.device(id2, "dev-000"); got.Step != StepTimedOut || got.Reason != wire.ReasonFirmwareTimeout || got.Attempts != 0 {
		t.Fatalf("unreachable for the device timeout: %+v", got)
	}
	if c := e2.get(id2); c.State != StatePaused {
		t.Fatalf("campaign with its only device unreachable: %s", c.State)
	}
}

// TestIneligibleDeviceFailsAtOnce: a device the Announcer refuses for good
// (its model is not one the release is built for) fails at once with the
// reason, counted among the wave's failures, and is never announced
// again, whatever retries, windows or timeouts follow; Targets resolves
// for the campaign's release.
func TestIneligibleDeviceFailsAtOnce(t *testing.T) {
	e := newEnv(t, 3)
	d := def(3)
	d.Retries = 2
	d.FailureThreshold = 1
	d.SuccessThreshold = 0.5
	e.fleet.ineligible["dev-001"] = true
	id := e.started(d)
	e.mu.Lock()
	resolved := e.resolvedFor
	e.mu.Unlock()
	if resolved != d.Release {
		t.Fatalf("targets resolved for release %q, want %q", resolved, d.Release)
	}
	wantDevices(t, "first step", e.step(), "dev-000", "dev-002")
	got := e.device(id, "dev-001")
	if got.Step != StepFailed || got.Reason != wire.ReasonFirmwareModel || got.Attempts != 0 || !got.RetryAt.IsZero() || !got.Deadline.IsZero() {
		t.Fatalf("ineligible device: %+v", got)
	}
	if c := e.get(id); c.Counts.Failed != 1 || c.Waves[0].Counts.Failed != 1 || c.Counts.Announced != 2 {
		t.Fatalf("counts with an ineligible device: %+v", c.Counts)
	}
	e.commit(id, "dev-000", "dev-002")
	for range 3 {
		e.clk.Advance(11 * time.Minute)
		wantDevices(t, "later steps", e.step())
	}
	if n := len(e.fleet.refused); n != 1 {
		t.Fatalf("the ineligible device was offered the release %d times, want 1", n)
	}
	if c := e.get(id); c.State != StateCompleted || c.Counts.Committed != 2 || c.Counts.Failed != 1 {
		t.Fatalf("campaign: %s %+v", c.State, c.Counts)
	}
	e.recount(id)
}

// Announcements wait for a maintenance window: 02:00–04:00 in Berlin
// (UTC+1 in March before the switch to summer time).
func TestMaintenanceWindowHoldsAnnouncements(t *testing.T) {
	e := newEnv(t, 2)
	d := def(1)
	d.Windows = []Window{{Start: "02:00", End: "04:00", Location: "Europe/Berlin"}}
	id := e.started(d)
	wantDevices(t, "at 13:00 Berlin", e.step())
	if c := e.get(id); c.State != StateRunning || c.InWindow {
		t.Fatalf("outside the window: %s in window %v", c.State, c.InWindow)
	}
	e.clk.Set(time.Date(2026, 3, 3, 0, 59, 59, 0, time.UTC))
	wantDevices(t, "at 01:59:59 Berlin", e.step())
	e.clk.Set(time.Date(2026, 3, 3, 1, 0, 0, 0, time.UTC))
	wantDevices(t, "at 02:00 Berlin", e.step(), "dev-000")
	e.commit(id, "dev-000")
	e.clk.Set(time.Date(2026, 3, 3, 3, 0, 0, 0, time.UTC))
	wantDevices(t, "at 04:00 Berlin", e.step())
	e.clk.Set(time.Date(2026, 3, 4, 1, 30, 0, 0, time.UTC))
	wantDevices(t, "next night", e.step(), "dev-001")
}

func TestWindowOpen(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	at := func(loc *time.Location, day, h, m int) time.Time { return time.Date(2026, 3, day, h, m, 0, 0, loc) }
	// 2026-03-06 is a Friday; summer time starts on Sunday 2026-03-29.
	cases := []struct {
		w    Window
		t    time.Time
		open bool
	}{
		{Window{Start: "22:00", End: "02:00", Days: []string{"fri"}}, at(time.UTC, 6, 23, 0), true},
		{Window{Start: "22:00", End: "02:00", Days: []string{"fri"}}, at(time.UTC, 7, 1, 59), true}, // Friday's window, Saturday morning
		{Window{Start: "22:00", End: "02:00", Days: []string{"fri"}}, at(time.UTC, 7, 2, 0), false},
		{Window{Start: "22:00", End: "02:00", Days: []string{"fri"}}, at(time.UTC, 7, 23, 0), false},
		{Window{Start: "22:00", End: "02:00", Days: []string{"fri"}}, at(time.UTC, 6, 1, 0), false}, // Thursday's window
		{Window{Start: "09:00", End: "09:00"}, at(time.UTC, 6, 3, 0), true},                         // 24 hours
		{Window{Start: "01:00", End: "04:00", Location: "Europe/Berlin"}, at(berlin, 29, 3, 30), true},
		{Window{Start: "01:00", End: "04:00", Location: "Europe/Berlin"}, at(time.UTC, 29, 2, 0), false}, // 04:00 summer time
		{Window{Start: "01:00", End: "04:00", Location: "Europe/Berlin"}, at(time.UTC, 28, 2, 59), true}, // 03:59 winter time
	}
	for i, c := range cases {
		w, err := parseWindow(&c.w)
		if err != nil {
			t.Fatal(err)
		}
		if got := w.open(c.t); got != c.open {
			t.Errorf("case %d: %+v at %v: open %v, want %v", i, c.w, c.t, got, c.open)
		}
	}
}

// A scheduled campaign starts at its start time.
func TestScheduledStart(t *testing.T) {
	e := newEnv(t, 1)
	c, err := e.m.Create(context.Background(), def(1), "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.Start(c.ID, start.Add(time.Hour), "alice", ""); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, "before the start time", e.step())
	if got := e.get(c.ID); got.State != StateScheduled || got.Wave != 0 {
		t.Fatalf("%s wave %d", got.State, got.Wave)
	}
	e.clk.Advance(time.Hour)
	wantDevices(t, "at the start time", e.step(), "dev-000")
	if a := e.audited("campaign.start", SystemActor); len(a) != 1 || a[0].Target != c.ID {
		t.Fatalf("scheduled start audit: %+v", a)
	}
	if err := e.m.Start(c.ID, time.Time{}, "alice", ""); !errors.Is(err, ErrState) {
		t.Fatalf("second start: %v", err)
	}
}

// Operators pause, resume and abort with an actor and a justification;
// each action is audited, and impossible ones are refused.
func TestPauseResumeAbort(t *testing.T) {
	e := newEnv(t, 6)
	id := e.started(def(1, 1))
	wantDevices(t, "canary", e.step(), "dev-000")
	if err := e.m.Pause(id, "bob", ""); !errors.Is(err, ErrAccountability) {
		t.Fatalf("pause without justification: %v", err)
	}
	if err := e.m.Pause(id, "", "why"); !errors.Is(err, ErrAccountability) {
		t.Fatalf("pause without actor: %v", err)
	}
	if err := e.m.Pause(id, "bob", "investigating a support ticket"); err != nil {
		t.Fatal(err)
	}
	c := e.get(id)
	if c.State != StatePaused || c.ChangedBy != "bob" || c.Why != "investigating a support ticket" {
		t.Fatalf("paused: %+v", c)
	}
	e.commit(id, "dev-000") // devices in flight still report while paused
	wantDevices(t, "paused", e.step())
	if err := e.m.Pause(id, "bob", "again"); !errors.Is(err, ErrState) {
		t.Fatalf("pause a paused campaign: %v", err)
	}
	if err := e.m.Resume(id, "carol", "ticket closed"); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, "resumed", e.step(), "dev-001")
	if err := e.m.Abort(id, "carol", "customer asked to stop"); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, "aborted", e.step())
	if err := e.m.Resume(id, "carol", "oops"); !errors.Is(err, ErrState) {
		t.Fatalf("resume an aborted campaign: %v", err)
	}
	if err := e.m.Abort(id, "carol", "twice"); !errors.Is(err, ErrState) {
		t.Fatalf("abort twice: %v", err)
	}
	if err := e.m.Pause("cmp_0000000000000000", "bob", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pause unknown: %v", err)
	}
	for _, want := range []struct{ action, actor, outcome string }{
		{"campaign.pause", "bob", "ok"}, {"campaign.pause", "bob", "failed"}, {"campaign.pause", "", "failed"},
		{"campaign.resume", "carol", "ok"}, {"campaign.abort", "carol", "ok"}, {"campaign.resume", "carol", "failed"},
	} {
		found := false
		for _, a := range e.audited(want.action, want.actor) {
			found = found || a.Outcome == want.outcome
		}
		if !found {
			t.Errorf("no audit event %+v", want)
		}
	}
	if a := e.audited("campaign.abort", "carol"); a[0].Justification != "customer asked to stop" || a[0].Target != id {
		t.Fatalf("abort audit: %+v", a[0])
	}
}

// A rollback campaign announces the previous release to exactly the
// devices that committed the bad one.
func TestRollbackTargetsCommittedDevices(t *testing.T) {
	e := newEnv(t, 8)
	d := def(6, 2)
	d.FailureThreshold = 1
	d.SuccessThreshold = 0.1
	id := e.started(d)
	wantDevices(t, "wave 1", e.step(), "dev-000", "dev-001", "dev-002", "dev-003", "dev-004", "dev-005")
	e.commit(id, "dev-004", "dev-001")
	e.rollBack(id, "dev-002")
	e.report(id, "dev-003", StepFailed, wire.ReasonFirmwareDownload)
	e.report(id, "dev-005", StepInstalling, 0)

	back := Definition{Release: "rel-a", Waves: Waves{Sizes: []int{1}}}
	if _, err := e.m.Rollback(context.Background(), id, back, "dave", ""); !errors.Is(err, ErrAccountability) {
		t.Fatalf("rollback without justification: %v", err)
	}
	same := back
	same.Release = "rel-b"
	if _, err := e.m.Rollback(context.Background(), id, same, "dave", "bad"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rollback to the same release: %v", err)
	}
	targeted := back
	targeted.Targets.Group = "g"
	if _, err := e.m.Rollback(context.Background(), id, targeted, "dave", "bad"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rollback with targets: %v", err)
	}
	rb, err := e.m.Rollback(context.Background(), id, back, "dave", "2.0 bricks the modem")
	if err != nil {
		t.Fatal(err)
	}
	if orig := e.get(id); orig.State != StateAborted || orig.ChangedBy != "dave" {
		t.Fatalf("rolled-back campaign: %s by %s", orig.State, orig.ChangedBy)
	}
	if rb.State != StateDraft || rb.Total != 2 || rb.Definition.RollbackOf != id || rb.Definition.Release != "rel-a" {
		t.Fatalf("rollback campaign: %+v", rb)
	}
	if err := e.m.Start(rb.ID, time.Time{}, "dave", ""); err != nil {
		t.Fatal(err)
	}
	e.step()
	if a := e.last; len(a) != 1 || a[0].Device != "dev-001" || a[0].Release != "rel-a" || a[0].Campaign != rb.ID {
		t.Fatalf("rollback wave 1: %+v", a)
	}
	e.commit(rb.ID, "dev-001")
	wantDevices(t, "rollback wave 2", e.step(), "dev-004")
	// The device in flight in the aborted campaign still reports.
	if !e.report(id, "dev-005", StepCommitted, 0) {
		t.Fatal("commit after the abort not recorded")
	}
	if got := e.device(id, "dev-005"); got.Step != StepCommitted {
		t.Fatalf("dev-005: %+v", got)
	}
	outcomes := map[string]int{}
	for _, a := range e.audited("campaign.rollback", "dave") {
		outcomes[a.Outcome]++
		if a.Target != id {
			t.Fatalf("rollback audit names %s", a.Target)
		}
	}
	if outcomes["ok"] != 1 || outcomes["failed"] != 3 {
		t.Fatalf("rollback audit outcomes: %v", outcomes)
	}

	draft, err := e.m.Create(context.Background(), def(1), "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Rollback(context.Background(), draft.ID, back, "dave", "x"); !errors.Is(err, ErrState) {
		t.Fatalf("rollback of a draft: %v", err)
	}
	none := e.started(def(8))
	e.step()
	if _, err := e.m.Rollback(context.Background(), none, back, "dave", "x"); !errors.Is(err, ErrNoTargets) {
		t.Fatalf("rollback with nothing committed: %v", err)
	}
}

// A fleet restart resumes a campaign where it was: no device is announced
// twice, reports keep counting, the campaign completes.
func TestRestartResumes(t *testing.T) {
	e := newEnv(t, 20)
	d := def()
	d.Waves = Waves{Canary: 2, Growth: 2} // 2, 4, 8, 6
	d.MaxInFlight = 6
	id := e.started(d)
	announced := map[string]int{}
	count := func(devs []string) []string {
		for _, d := range devs {
			announced[d]++
		}
		return devs
	}
	e.commit(id, count(e.step())...)
	wave2 := count(e.step())
	e.commit(id, wave2[:2]...)
	e.report(id, wave2[2], StepInstalling, 0)

	e.reopen()
	if got := count(e.step()); len(got) != 0 {
		t.Fatalf("after restart the step announced %v again", got)
	}
	if got := e.device(id, wave2[2]); got.Step != StepInstalling {
		t.Fatalf("%s after restart: %+v", wave2[2], got)
	}
	if e.report(id, wave2[2], StepInstalling, 0) {
		t.Fatal("a repeated report after restart was applied")
	}
	e.report(id, wave2[2], StepCommitted, 0)
	e.commit(id, wave2[3:]...)
	for range 10 {
		devs := count(e.step())
		e.reopen()
		e.commit(id, devs...)
	}
	c := e.get(id)
	if c.State != StateCompleted || c.Counts.Committed != 20 {
		t.Fatalf("after restarts: %s %+v", c.State, c.Counts)
	}
	for dev, n := range announced {
		if n != 1 {
			t.Errorf("%s announced %d times", dev, n)
		}
	}
	if len(announced) != 20 {
		t.Fatalf("%d devices announced", len(announced))
	}
	e.recount(id)
}

// A crash after devices were marked announced and before the Announcer
// ran: the devices are not announced again at restart; they time out and
// are announced again only because retries are configured.
func TestCrashBeforeAnnouncing(t *testing.T) {
	e := newEnv(t, 2)
	d := def(2)
	d.Retries = 1
	id := e.started(d)
	err := e.store.db.Update(context.Background(), func(tx kv.Tx) error {
		tc, err := e.m.openTx(tx, id)
		if err != nil {
			return err
		}
		if _, err := tc.announce(e.clk.Now(), 10); err != nil {
			return err
		}
		return tc.flush(tx)
	})
	if err != nil {
		t.Fatal(err)
	}
	e.reopen()
	wantDevices(t, "after the crash", e.step())
	e.clk.Advance(10 * time.Minute)
	e.step()
	if a := e.last; len(a) != 2 || a[0].Attempt != 2 || a[1].Attempt != 2 {
		t.Fatalf("after the timeout: %+v", a)
	}
}

// Duplicate, out-of-order, unknown and malformed reports change nothing.
func TestReportsIgnoredSafely(t *testing.T) {
	e := newEnv(t, 3)
	d := def(2, 1)
	d.FailureThreshold = 1
	id := e.started(d)
	e.step()
	before := e.recount(id)
	rep := func(r DeviceReport) (bool, error) { return e.m.Report(r) }
	if ok, err := rep(DeviceReport{DeviceID: "dev-002", Campaign: id, Step: StepCommitted}); ok || err != nil {
		t.Fatalf("report from a device not yet announced: %v %v", ok, err)
	}
	if _, err := rep(DeviceReport{DeviceID: "dev-999", Campaign: id, Step: StepCommitted}); !errors.Is(err, ErrNotTarget) {
		t.Fatalf("unknown device: %v", err)
	}
	if _, err := rep(DeviceReport{DeviceID: "dev-000", Campaign: "cmp_ffffffffffffffff", Step: StepCommitted}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown campaign: %v", err)
	}
	for _, bad := range []DeviceReport{
		{DeviceID: "dev-000", Campaign: id, Step: "exploded"},
		{DeviceID: "dev-000", Campaign: id, Step: StepPending},
		{DeviceID: "dev-000", Campaign: id, Step: StepTimedOut},
		{DeviceID: "DEV/+", Campaign: id, Step: StepCommitted},
		{DeviceID: "dev-000", Campaign: "", Step: StepCommitted},
		{DeviceID: "dev-000", Campaign: id, Step: StepCommitted, RunningVersion: "1\n2"},
		{DeviceID: "dev-000", Campaign: id, Step: StepCommitted, RunningVersion: strings.Repeat("9", 65)},
	} {
		if _, err := rep(bad); !errors.Is(err, ErrInvalidReport) {
			t.Fatalf("%+v: %v", bad, err)
		}
	}
	if got := e.recount(id); got != before {
		t.Fatalf("refused reports changed counts: %+v → %+v", before, got)
	}
	if !e.report(id, "dev-000", StepInstalling, 0) {
		t.Fatal("skipping steps forward is allowed")
	}
	for _, s := range []Step{StepInstalling, StepDownloading, StepAnnounced} {
		if e.report(id, "dev-000", s, 0) {
			t.Fatalf("%s after installing was applied", s)
		}
	}
	if !e.report(id, "dev-000", StepCommitted, 0) || e.report(id, "dev-000", StepCommitted, 0) {
		t.Fatal("commit not applied once")
	}
	if e.report(id, "dev-000", StepFailed, wire.ReasonFirmwareInstall) || e.report(id, "dev-000", StepHealth, 0) {
		t.Fatal("report after commit applied")
	}
	if got := e.device(id, "dev-000"); got.Step != StepCommitted || got.RunningVersion != "2.0.0" {
		t.Fatalf("dev-000: %+v", got)
	}
	if got := e.recount(id); got.Committed != 1 || got.Announced != 1 || got.Pending != 1 {
		t.Fatalf("counts: %+v", got)
	}
}

// Many devices reporting at once share transactions and lose nothing.
func TestConcurrentReports(t *testing.T) {
	const n = 200
	e := newEnv(t, n)
	id := e.started(def(n))
	e.m.cfg.Batch = n
	if got := e.step(); len(got) != n {
		t.Fatalf("announced %d", len(got))
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			dev := fmt.Sprintf("dev-%03d", i)
			for _, s := range []Step{StepDownloading, StepHealth, StepHealth, StepCommitted, StepCommitted} {
				if _, err := e.m.Report(DeviceReport{DeviceID: dev, Campaign: id, Step: s}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if c := e.get(id); c.State != StateCompleted || c.Counts.Committed != n {
		t.Fatalf("%s %+v", c.State, c.Counts)
	}
	e.recount(id)
}

// Queries page through devices with filters and say where a device is in
// flight.
func TestQueries(t *testing.T) {
	e := newEnv(t, 5)
	d := def(2, 3)
	d.FailureThreshold = 1
	id := e.started(d)
	e.step()
	e.report(id, "dev-001", StepVerifying, 0)
	in, err := e.m.InFlight("dev-001")
	if err != nil || len(in) != 1 || in[0] != (Assignment{Campaign: id, Release: "rel-b", Step: StepVerifying, Attempt: 1}) {
		t.Fatalf("in flight: %+v %v", in, err)
	}
	if in, _ := e.m.InFlight("dev-004"); len(in) != 0 {
		t.Fatalf("pending device in flight: %+v", in)
	}
	page, next, err := e.m.Devices(id, DeviceFilter{Step: StepPending})
	if err != nil || next != "" || len(page) != 3 || page[0].ID != "dev-002" || page[0].Wave != 2 {
		t.Fatalf("pending devices: %+v %q %v", page, next, err)
	}
	page, _, _ = e.m.Devices(id, DeviceFilter{Wave: 1})
	if len(page) != 2 {
		t.Fatalf("wave 1: %+v", page)
	}
	list, err := e.m.List()
	if err != nil || len(list) != 1 || list[0].ID != id || list[0].Waves != nil || list[0].Total != 5 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if _, err := e.m.Get("cmp_nope"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := e.m.Device(id, "dev-777"); !errors.Is(err, ErrNotTarget) {
		t.Fatal(err)
	}
}

// Create refuses what it cannot run.
func TestCreateRefuses(t *testing.T) {
	e := newEnv(t, 3)
	ctx := context.Background()
	if _, err := e.m.Create(ctx, Definition{}, "alice", ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty definition: %v", err)
	}
	e.fleetT = nil
	if _, err := e.m.Create(ctx, def(1), "alice", ""); !errors.Is(err, ErrNoTargets) {
		t.Fatalf("no targets: %v", err)
	}
	e.fleetT = []string{"dev-1", "Bad ID"}
	if _, err := e.m.Create(ctx, def(1), "alice", ""); err == nil || !strings.Contains(err.Error(), "invalid device ID") {
		t.Fatalf("invalid resolved ID: %v", err)
	}
	e.fleetT = []string{"dev-1", "dev-2", "dev-1"}
	c, err := e.m.Create(ctx, def(5), "alice", "")
	if err != nil || c.Total != 2 {
		t.Fatalf("repeated IDs: %+v %v", c, err)
	}
	e.fleetT = make([]string, 2000)
	for i := range e.fleetT {
		e.fleetT[i] = fmt.Sprintf("d%d", i)
	}
	if _, err := e.m.Create(ctx, def(1), "alice", ""); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "waves") {
		t.Fatalf("2000 waves: %v", err)
	}
	withRollback := def(1)
	withRollback.RollbackOf = "cmp_x"
	if _, err := e.m.Create(ctx, withRollback, "alice", ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rollback_of in Create: %v", err)
	}
	if len(e.audited("campaign.create", "alice")) != 6 {
		t.Fatalf("create audit: %+v", e.audited("campaign.create", ""))
	}
}

// After an operator resumes a campaign paused by a tripped wave, the next
// wave opens once the tripped wave's devices have all finished.
func TestResumeAfterTripMovesOn(t *testing.T) {
	e := newEnv(t, 6)
	id := e.started(def(2, 2, 2)) // every device must commit
	wantDevices(t, "wave 1", e.step(), "dev-000", "dev-001")
	e.report(id, "dev-000", StepFailed, wire.ReasonFirmwareModel)
	if c := e.get(id); c.State != StatePaused || !c.Waves[0].Tripped {
		t.Fatalf("one failure with a success threshold of 1: %s", c.State)
	}
	if err := e.m.Resume(id, "bob", "model mismatch is a catalogue error"); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, "tripped wave not finished", e.step())
	if c := e.get(id); c.State != StateRunning || c.Wave != 1 {
		t.Fatalf("resumed: %s wave %d", c.State, c.Wave)
	}
	e.commit(id, "dev-001")
	wantDevices(t, "wave 2", e.step(), "dev-002", "dev-003")
	e.commit(id, "dev-002")
	e.report(id, "dev-003", StepFailed, wire.ReasonFirmwareModel)
	if c := e.get(id); c.State != StatePaused || !c.Waves[1].Tripped || c.Wave != 2 {
		t.Fatalf("a later wave trips again: %s wave %d", c.State, c.Wave)
	}
}

// A wave that fails while an operator has the campaign paused trips when
// the campaign resumes, rather than holding it forever.
func TestFailureWhilePausedTripsOnResume(t *testing.T) {
	e := newEnv(t, 4)
	id := e.started(def(2, 2))
	e.step()
	if err := e.m.Pause(id, "bob", "lunch"); err != nil {
		t.Fatal(err)
	}
	e.rollBack(id, "dev-000", "dev-001")
	if c := e.get(id); c.State != StatePaused || c.ChangedBy != "bob" {
		t.Fatalf("while paused: %s by %s", c.State, c.ChangedBy)
	}
	if err := e.m.Resume(id, "bob", "back"); err != nil {
		t.Fatal(err)
	}
	c := e.get(id)
	if c.State != StatePaused || c.ChangedBy != SystemActor || !c.Waves[0].Tripped {
		t.Fatalf("after resume: %s by %s (%s)", c.State, c.ChangedBy, c.Why)
	}
}

// An aborted campaign still times out the devices it left in flight, and
// leaves the engine once none is.
func TestAbortedCampaignTimesOutDevicesInFlight(t *testing.T) {
	e := newEnv(t, 2)
	id := e.started(def(2))
	e.step()
	e.report(id, "dev-000", StepDownloading, 0)
	if err := e.m.Abort(id, "bob", "wrong release"); err != nil {
		t.Fatal(err)
	}
	if got := e.active(); len(got) != 1 {
		t.Fatalf("aborted campaign with devices in flight not active: %v", got)
	}
	e.clk.Advance(10 * time.Minute)
	e.step()
	c := e.get(id)
	if c.State != StateAborted || c.Counts.TimedOut != 2 {
		t.Fatalf("after the timeout: %s %+v", c.State, c.Counts)
	}
	if got := e.active(); len(got) != 0 {
		t.Fatalf("still active: %v", got)
	}
}

// Reports submitted from one goroutine are written in order, together,
// by Run; those still queued when Run stops are written before it
// returns.
func TestSubmit(t *testing.T) {
	const n = 50
	e := newEnv(t, n)
	id := e.started(def(n))
	e.m.cfg.Batch = n
	e.step()

	var mu sync.Mutex
	var results []error
	applied := 0
	done := func(ok bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		results = append(results, err)
		if ok {
			applied++
		}
	}
	e.m.Submit(DeviceReport{DeviceID: "dev-000", Campaign: id, Step: "bogus"}, done)
	if len(results) != 1 || !errors.Is(results[0], ErrInvalidReport) {
		t.Fatalf("invalid report: %v", results)
	}
	results = nil
	for i := range n {
		dev := fmt.Sprintf("dev-%03d", i)
		for _, s := range []Step{StepDownloading, StepInstalling, StepHealth, StepCommitted} {
			e.m.Submit(DeviceReport{DeviceID: dev, Campaign: id, Step: s}, done)
		}
	}
	if got := e.device(id, "dev-000"); got.Step != StepAnnounced {
		t.Fatalf("written before Run: %+v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.m.Run(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(results) != 4*n || applied != 4*n {
		t.Fatalf("%d callbacks, %d applied; want %d each", len(results), applied, 4*n)
	}
	for _, err := range results {
		if err != nil {
			t.Fatal(err)
		}
	}
	if c := e.get(id); c.State != StateCompleted || c.Counts.Committed != n {
		t.Fatalf("%s %+v", c.State, c.Counts)
	}
}

// Submit refuses reports beyond MaxQueuedReports instead of growing
// without bound.
func TestSubmitBounded(t *testing.T) {
	e := newEnv(t, 1)
	var busy int
	for range MaxQueuedReports + 3 {
		e.m.Submit(DeviceReport{DeviceID: "dev-000", Campaign: "cmp_0001020304050607", Step: StepCommitted}, func(_ bool, err error) {
			if errors.Is(err, ErrBusy) {
				busy++
			}
		})
	}
	if busy != 3 {
		t.Fatalf("%d refused as busy, want 3", busy)
	}
}
