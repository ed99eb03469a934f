package campaign

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/clocktest"
)

// openStore opens the store at path in bbolt, or in PostgreSQL under
// TestConformance/postgres. These tests move a fake clock (Config.Now):
// the PostgreSQL store uses it as bbolt does rather than the database's
// clock (testSkewedReplicas covers that one).
func openStore(t testing.TB, path string) (*Store, error) {
	return pgtest.OpenBackend(t, path, path, Open, func(ctx context.Context, db *postgres.DB, _ string) (*Store, error) {
		s, err := OpenPostgres(ctx, db)
		if err == nil {
			s.shared = false
		}
		return s, err
	})
}

// conformanceTests are the engine's tests run against both backends (the
// others run in a synctest bubble or need no store).
var conformanceTests = []pgtest.Test{
	{Name: "WavesAdvanceOnSuccess", Fn: TestWavesAdvanceOnSuccess},
	{Name: "SuccessThresholdAndSizes", Fn: TestSuccessThresholdAndSizes},
	{Name: "FailureThresholdPauses", Fn: TestFailureThresholdPauses},
	{Name: "FailureThresholdAborts", Fn: TestFailureThresholdAborts},
	{Name: "SilentDeviceTimesOut", Fn: TestSilentDeviceTimesOut},
	{Name: "RetriesAnnounceSilentDevicesAgain", Fn: TestRetriesAnnounceSilentDevicesAgain},
	{Name: "UnreachableDevice", Fn: TestUnreachableDevice},
	{Name: "IneligibleDeviceFailsAtOnce", Fn: TestIneligibleDeviceFailsAtOnce},
	{Name: "MaintenanceWindowHoldsAnnouncements", Fn: TestMaintenanceWindowHoldsAnnouncements},
	{Name: "ScheduledStart", Fn: TestScheduledStart},
	{Name: "PauseResumeAbort", Fn: TestPauseResumeAbort},
	{Name: "RollbackTargetsCommittedDevices", Fn: TestRollbackTargetsCommittedDevices},
	{Name: "RestartResumes", Fn: TestRestartResumes},
	{Name: "CrashBeforeAnnouncing", Fn: TestCrashBeforeAnnouncing},
	{Name: "ReportsIgnoredSafely", Fn: TestReportsIgnoredSafely},
	{Name: "ConcurrentReports", Fn: TestConcurrentReports},
	{Name: "Queries", Fn: TestQueries},
	{Name: "CreateRefuses", Fn: TestCreateRefuses},
	{Name: "ResumeAfterTripMovesOn", Fn: TestResumeAfterTripMovesOn},
	{Name: "FailureWhilePausedTripsOnResume", Fn: TestFailureWhilePausedTripsOnResume},
	{Name: "AbortedCampaignTimesOutDevicesInFlight", Fn: TestAbortedCampaignTimesOutDevicesInFlight},
	{Name: "Submit", Fn: TestSubmit},
	{Name: "SubmitBounded", Fn: TestSubmitBounded},
}

// TestConformance runs the engine's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("ReplicasStepOnce", func(t *testing.T) { testReplicasStepOnce(t, srv) })
	t.Run("ReplicasRunOneStepper", func(t *testing.T) { testReplicasRunOneStepper(t, srv) })
	t.Run("PausedStepperIsFenced", func(t *testing.T) { testPausedStepperIsFenced(t, srv) })
	for _, skew := range []time.Duration{15 * time.Minute, -15 * time.Minute} {
		for _, first := range []bool{false, true} {
			t.Run(fmt.Sprintf("SkewedReplica%v/first=%v", skew, first), func(t *testing.T) { testSkewedReplicas(t, srv, skew, first) })
		}
	}
}

// testSkewedReplicas: two engines share a campaign, one of them with its
// clock off by skew, more than the devices' timeout (10 minutes). The
// devices one replica announces have until 10 minutes later on the
// database's clock, whichever replica's clock runs ahead or behind: a
// step of the other replica right after times none of them out and
// announces none again (before, a replica whose clock ran ahead of the
// announcer's by more than the timeout timed every device out at once).
func testSkewedReplicas(t *testing.T, srv *pgtest.Server, skew time.Duration, skewedFirst bool) {
	url := srv.NewDatabase(t)
	const n = 4
	var targets []string
	for i := range n {
		targets = append(targets, fmt.Sprintf("dev-%03d", i))
	}
	fleet := &fakeFleet{}
	open := func(skew time.Duration) *Manager {
		m, err := New(Config{
			Store:     pgtest.Replica(t, url, func(db *postgres.DB) (*Store, error) { return OpenPostgres(t.Context(), db) }),
			Targets:   TargetsFunc(func(context.Context, string, Selector) ([]string, error) { return targets, nil }),
			Announcer: fleet,
			Now:       func() time.Time { return time.Now().Add(skew) },
			Batch:     n,
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	replicas := []*Manager{open(0), open(skew)}
	if skewedFirst {
		replicas[0], replicas[1] = replicas[1], replicas[0]
	}
	c, err := replicas[0].Create(t.Context(), def(n), "alice", "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := replicas[0].Start(c.ID, time.Time{}, "alice", ""); err != nil {
		t.Fatal(err)
	}
	if err := replicas[0].step(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := devices(fleet.take()); len(got) != n {
		t.Fatalf("the first replica announced %v, want all %d devices", got, n)
	}
	for range 2 {
		if err := replicas[1].step(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if got := devices(fleet.take()); len(got) != 0 {
		t.Errorf("the other replica announced %v again", got)
	}
	got, err := replicas[1].Get(c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Counts.Announced != n || got.Counts.TimedOut != 0 {
		t.Fatalf("counts %+v after the other replica's steps; want %d announced, none timed out", got.Counts, n)
	}
}

// testReplicasStepOnce: two engines sharing the database step one
// campaign at once: every device is announced once, and its reports,
// arriving at both, count once; the campaign completes once.
func testReplicasStepOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	const n = 24
	var targets []string
	for i := range n {
		targets = append(targets, fmt.Sprintf("dev-%03d", i))
	}
	clk := clocktest.New(start)
	fleet := &fakeFleet{}
	var amu sync.Mutex
	var audit []AuditEvent
	open := func() *Manager {
		m, err := New(Config{
			Store:     pgtest.Replica(t, url, func(db *postgres.DB) (*Store, error) { return OpenPostgres(t.Context(), db) }),
			Targets:   TargetsFunc(func(context.Context, string, Selector) ([]string, error) { return targets, nil }),
			Announcer: fleet,
			Auditor: AuditorFunc(func(a AuditEvent) {
				amu.Lock()
				defer amu.Unlock()
				audit = append(audit, a)
			}),
			Now:   clk.Now,
			Batch: 5,
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	replicas := []*Manager{open(), open()}
	c, err := replicas[0].Create(t.Context(), def(n/2, n/2), "alice", "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := replicas[1].Start(c.ID, start, "alice", ""); err != nil {
		t.Fatal(err)
	}
	announced := map[string]int{}
	for round := 0; len(announced) < n; round++ {
		if round > 4*n {
			t.Fatalf("after %d rounds %d of %d devices announced", round, len(announced), n)
		}
		var gate, wg sync.WaitGroup
		gate.Add(1)
		for i := range 6 { // three steps on each replica, at once
			wg.Go(func() {
				gate.Wait()
				if err := replicas[i%2].step(t.Context()); err != nil {
					t.Error(err)
				}
			})
		}
		gate.Done()
		wg.Wait()
		var fresh []string
		for _, a := range fleet.take() {
			announced[a.Device]++
			fresh = append(fresh, a.Device)
		}
		// Each device reports every step to both replicas at once.
		for _, dev := range fresh {
			for _, s := range []Step{StepDownloading, StepVerifying, StepInstalling, StepSwitching, StepHealth, StepCommitted} {
				for _, m := range replicas {
					wg.Go(func() {
						if _, err := m.Report(DeviceReport{DeviceID: dev, Campaign: c.ID, Step: s, RunningVersion: "2.0.0", At: clk.Now()}); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
			}
		}
	}
	for dev, k := range announced {
		if k != 1 {
			t.Errorf("%s announced %d times", dev, k)
		}
	}
	got, err := replicas[1].Get(c.ID)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, got)
	if got.State != StateCompleted || got.Counts.Committed != n {
		t.Fatalf("campaign %s, counts %+v; want completed, %d committed", got.State, got.Counts, n)
	}
	completed := 0
	for _, a := range audit {
		if a.Action == "campaign.complete" {
			completed++
		}
	}
	if completed != 1 {
		t.Fatalf("campaign completed %d times", completed)
	}
}

// testReplicasRunOneStepper: two engines sharing the database run at once;
// only the holder of the lease LeaseStep steps the campaign, so that it
// announces one Batch per Tick, not one per replica; when the holder
// stops, the other one steps it.
func testReplicasRunOneStepper(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	const n = 40
	var targets []string
	for i := range n {
		targets = append(targets, fmt.Sprintf("dev-%03d", i))
	}
	clk := clocktest.New(start)
	fleets := []*fakeFleet{{}, {}}
	open := func(i int) *Manager {
		var ls *lease.Postgres
		s := pgtest.Replica(t, url, func(db *postgres.DB) (*Store, error) {
			ls = pgtest.Lease(t, db, i)
			return OpenPostgres(t.Context(), db)
		})
		m, err := New(Config{
			Store:     s,
			Targets:   TargetsFunc(func(context.Context, string, Selector) ([]string, error) { return targets, nil }),
			Announcer: fleets[i],
			Now:       clk.Now,
			Batch:     1,
			Tick:      10 * time.Millisecond,
			Leases:    ls,
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	replicas := []*Manager{open(0), open(1)}
	c, err := replicas[0].Create(t.Context(), def(n), "alice", "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := replicas[1].Start(c.ID, start, "alice", ""); err != nil {
		t.Fatal(err)
	}
	count := func(i int) int64 {
		fleets[i].mu.Lock()
		defer fleets[i].mu.Unlock()
		return int64(len(fleets[i].log))
	}
	pgtest.OneHolder(t, pgtest.Leased{
		Run:    []func(context.Context) error{replicas[0].Run, replicas[1].Run},
		Done:   count,
		Enough: 10, Work: "stepped the campaign", Unit: "announcements",
	}, nil)
}

// testPausedStepperIsFenced: replica A steps a campaign under the lease
// LeaseStep, then pauses (a long GC, SIGSTOP) past the lease's expiry
// and replica B takes the lease over and steps it. When A resumes, its
// step is refused in its first transaction (lease.ErrFenced): it marks
// and announces nothing, and every device is announced once.
func testPausedStepperIsFenced(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	const n = 6
	var targets []string
	for i := range n {
		targets = append(targets, fmt.Sprintf("dev-%03d", i))
	}
	clk := clocktest.New(start)
	fleets := []*fakeFleet{{}, {}}
	type replica struct {
		m      *Manager
		leases *lease.Postgres
	}
	open := func(i int) replica {
		db := pgtest.Open(t, url)
		s, err := OpenPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		ls, err := lease.Open(t.Context(), db, lease.Config{Holder: fmt.Sprintf("replica-%d", i), TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		m, err := New(Config{
			Store:     s,
			Targets:   TargetsFunc(func(context.Context, string, Selector) ([]string, error) { return targets, nil }),
			Announcer: fleets[i],
			Now:       clk.Now,
			Batch:     2,
		})
		if err != nil {
			t.Fatal(err)
		}
		return replica{m, ls}
	}
	a, b := open(0), open(1)
	c, err := a.m.Create(t.Context(), def(n), "alice", "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.m.Start(c.ID, start, "alice", ""); err != nil {
		t.Fatal(err)
	}
	la, ok, err := a.leases.TryAcquire(t.Context(), LeaseStep)
	if err != nil || !ok {
		t.Fatalf("A's lease: ok %v, err %v", ok, err)
	}
	actx := a.leases.Fenced(t.Context(), la)
	if err := a.m.step(actx); err != nil {
		t.Fatalf("A's step while it holds the lease: %v", err)
	}
	// A pauses past its lease's time to live (made instant: the expiry
	// set as the hour would), and B takes the lease over.
	if _, err := pgtest.Open(t, url).Pool().Exec(t.Context(), `UPDATE lease SET expires = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	lb, ok, err := b.leases.TryAcquire(t.Context(), LeaseStep)
	if err != nil || !ok {
		t.Fatalf("B's takeover: ok %v, err %v", ok, err)
	}
	if err := b.m.step(b.leases.Fenced(t.Context(), lb)); err != nil {
		t.Fatalf("B's step: %v", err)
	}
	if err := a.m.step(actx); !errors.Is(err, lease.ErrFenced) || !errors.Is(err, lease.ErrLost) {
		t.Errorf("A's step after B took the lease over = %v, want lease.ErrFenced (and ErrLost)", err)
	}
	if err := b.m.step(b.leases.Fenced(t.Context(), lb)); err != nil {
		t.Fatalf("B's step: %v", err)
	}
	announced := map[string]int{}
	for i, f := range fleets {
		as := f.take()
		if want := map[int]int{0: 2, 1: 4}[i]; len(as) != want {
			t.Errorf("replica %d announced %d devices, want %d", i, len(as), want)
		}
		for _, a := range as {
			announced[a.Device]++
		}
	}
	for dev, k := range announced {
		if k != 1 {
			t.Errorf("%s announced %d times", dev, k)
		}
	}
	if len(announced) != n {
		t.Errorf("%d devices announced, want %d", len(announced), n)
	}
}
