package campaign

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// openStore opens the store at path in bbolt, or in PostgreSQL under
// TestConformance/postgres.
func openStore(t testing.TB, path string) (*Store, error) {
	db, ok := pgtest.Database(t, path)
	if !ok {
		return Open(path)
	}
	return OpenPostgres(context.Background(), db)
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
	clk := &clock{t: start}
	fleet := &fakeFleet{}
	var amu sync.Mutex
	var audit []AuditEvent
	open := func() *Manager {
		db, err := postgres.Open(t.Context(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Close)
		s, err := OpenPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		m, err := New(Config{
			Store:     s,
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
