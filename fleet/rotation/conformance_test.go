package rotation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/internal/wait"
)

// openJobs opens the jobs at path in bbolt, or in PostgreSQL under
// TestConformance/postgres. These tests move a fake clock (Service's
// Now): the PostgreSQL store uses it as bbolt does rather than the
// database's clock (testSkewedReplicas covers that one).
func openJobs(t testing.TB, path string) (*Jobs, error) {
	db, ok := pgtest.Database(t, path)
	if !ok {
		return OpenJobs(path)
	}
	j, err := OpenJobsPostgres(context.Background(), db)
	if err == nil {
		j.shared = false
	}
	return j, err
}

// conformanceTests are the jobs' tests run against both backends.
var conformanceTests = []pgtest.Test{
	{Name: "JobSteps", Fn: TestJobSteps},
	{Name: "JobCancelAndPaging", Fn: TestJobCancelAndPaging},
	{Name: "DeadStepsClaimsExpire", Fn: TestDeadStepsClaimsExpire},
}

// TestConformance runs the jobs' tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("ReplicasAskEachDeviceOnce", func(t *testing.T) { testReplicasAskOnce(t, srv) })
	t.Run("ReplicasStepJobsOnce", func(t *testing.T) { testReplicasStepOnce(t, srv) })
	t.Run("PausedHolderIsFenced", func(t *testing.T) { testPausedHolderIsFenced(t, srv) })
	for _, skew := range []time.Duration{5 * time.Minute, -5 * time.Minute} {
		for _, first := range []bool{false, true} {
			t.Run(fmt.Sprintf("SkewedReplica%v/first=%v", skew, first), func(t *testing.T) { testSkewedReplicas(t, srv, skew, first) })
		}
	}
}

// TestMigrationIsKVSchema: the jobs' table is a kv table.
func TestMigrationIsKVSchema(t *testing.T) {
	b, err := os.ReadFile("migrations/0001_rotation.sql")
	if err != nil {
		t.Fatal(err)
	}
	var sql []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if !strings.HasPrefix(l, "--") {
			sql = append(sql, l)
		}
	}
	if got := strings.Join(sql, ""); got != kv.Schema(JobsTable) {
		t.Fatalf("migration:\n%s\nwant kv.Schema(%q):\n%s", got, JobsTable, kv.Schema(JobsTable))
	}
}

// testReplicasAskOnce: two replicas sharing the database step the same
// job at the same moment: every device is asked once, not once per
// replica, and the job's counts hold.
func testReplicasAskOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	dir := t.TempDir()
	inv, err := inventory.Open(dir+"/inventory.db", inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	const n = 40
	for i := range n {
		if err := inv.PutDevice(t.Context(), &inventory.Device{ID: fmt.Sprintf("%032x", i+1), EKFingerprint: fmt.Sprintf("%064x", i+1), State: inventory.StateActive, CertSerial: "01"}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	sent := map[string]int{}
	replica := func() *Service {
		db := pgtest.Open(t, url)
		jobs, err := OpenJobsPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { jobs.Close() })
		return &Service{cfg: Config{Inventory: inv, Jobs: jobs, Now: func() time.Time { return now },
			Send: func(id, _ string, _ []byte) error { mu.Lock(); sent[id]++; mu.Unlock(); return nil }}, log: slog.New(slog.DiscardHandler)}
	}
	a, b := replica(), replica()
	job, err := a.Start(Selector{All: true}, n, "test", "tester")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		var wg sync.WaitGroup
		for _, r := range []*Service{a, b, a, b} {
			wg.Go(func() { r.step(t.Context()) })
		}
		wg.Wait()
	}
	for id, k := range sent {
		if k != 1 {
			t.Errorf("device %s asked %d times", id, k)
		}
	}
	got, err := b.Job(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) != n || got.Progress() != (Progress{Total: n, Sent: n}) {
		t.Fatalf("%d devices asked, progress %+v (want %d asked, all sent)", len(sent), got.Progress(), n)
	}
}

// testReplicasStepOnce: two replicas run at once on one database; only
// the holder of the lease LeaseJobs steps the job, so that it keeps its
// rate (one device a second, not one per replica); when the holder
// stops, the other one steps it.
func testReplicasStepOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	inv, err := inventory.Open(t.TempDir()+"/inventory.db", inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	const n = 20
	for i := range n {
		if err := inv.PutDevice(t.Context(), &inventory.Device{ID: fmt.Sprintf("%032x", i+1), EKFingerprint: fmt.Sprintf("%064x", i+1), State: inventory.StateActive, CertSerial: "01"}); err != nil {
			t.Fatal(err)
		}
	}
	var sent [2]atomic.Int64
	replica := func(i int) *Service {
		db := pgtest.Open(t, url)
		jobs, err := OpenJobsPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { jobs.Close() })
		ls, err := lease.Open(t.Context(), db, lease.Config{Holder: fmt.Sprintf("replica-%d", i), TTL: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return &Service{cfg: Config{Inventory: inv, Jobs: jobs, Now: time.Now, Leases: ls,
			Send: func(string, string, []byte) error { sent[i].Add(1); return nil }}, log: slog.New(slog.DiscardHandler)}
	}
	replicas := []*Service{replica(0), replica(1)}
	if _, err := replicas[0].Start(Selector{All: true}, 1, "test", "tester"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	cancels := make([]context.CancelFunc, 2)
	for i, r := range replicas {
		ctx, cancel := context.WithCancel(t.Context())
		cancels[i] = cancel
		defer cancel()
		wg.Go(func() {
			if err := r.Run(ctx); err != nil {
				t.Errorf("replica %d: Run: %v", i, err)
			}
		})
	}
	wait.For(t, "three devices asked", func() bool { return sent[0].Load()+sent[1].Load() >= 3 })
	holder := 0
	if sent[1].Load() > 0 {
		holder = 1
	}
	other := 1 - holder
	if sent[other].Load() != 0 {
		t.Fatalf("both replicas stepped the job: %d and %d devices asked", sent[0].Load(), sent[1].Load())
	}
	cancels[holder]()
	wait.For(t, "the other replica to step the job", func() bool { return sent[other].Load() > 0 })
}

// testPausedHolderIsFenced: replica A steps the jobs under the lease
// LeaseJobs, then pauses (a long GC, SIGSTOP) past the lease's expiry,
// and replica B takes the lease over. A's record of the step it began
// and its next step are refused (lease.ErrFenced) in their transactions:
// A neither overwrites B's progress nor claims and asks devices B asks.
func testPausedHolderIsFenced(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	inv, err := inventory.Open(t.TempDir()+"/inventory.db", inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	const n = 2 + scanSlack + 4 // A's claim leaves devices for B to ask
	for i := range n {
		if err := inv.PutDevice(t.Context(), &inventory.Device{ID: fmt.Sprintf("%032x", i+1), EKFingerprint: fmt.Sprintf("%064x", i+1), State: inventory.StateActive, CertSerial: "01"}); err != nil {
			t.Fatal(err)
		}
	}
	var sent [2]atomic.Int64
	type replica struct {
		svc    *Service
		leases *lease.Postgres
	}
	open := func(i int) replica {
		db := pgtest.Open(t, url)
		jobs, err := OpenJobsPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { jobs.Close() })
		ls, err := lease.Open(t.Context(), db, lease.Config{Holder: fmt.Sprintf("replica-%d", i), TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return replica{&Service{cfg: Config{Inventory: inv, Jobs: jobs, Now: time.Now,
			Send: func(string, string, []byte) error { sent[i].Add(1); return nil }}, log: slog.New(slog.DiscardHandler)}, ls}
	}
	a, b := open(0), open(1)
	job, err := a.svc.Start(Selector{All: true}, 2, "test", "tester")
	if err != nil {
		t.Fatal(err)
	}
	la, ok, err := a.leases.TryAcquire(t.Context(), LeaseJobs)
	if err != nil || !ok {
		t.Fatalf("A's lease: ok %v, err %v", ok, err)
	}
	actx := a.leases.Fenced(t.Context(), la)
	// A claims the first devices, and pauses before it records them.
	_, cands, now, err := a.svc.cfg.Jobs.due(actx, job.ID, time.Now().UTC())
	if err != nil || len(cands) == 0 {
		t.Fatalf("A's claim while it holds the lease: %d devices, %v", len(cands), err)
	}
	// A pauses past its lease's time to live (made instant: the expiry
	// set as the hour would), and B takes the lease over.
	if _, err := pgtest.Open(t, url).Pool().Exec(t.Context(), `UPDATE lease SET expires = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	lb, ok, err := b.leases.TryAcquire(t.Context(), LeaseJobs)
	if err != nil || !ok {
		t.Fatalf("B's takeover: ok %v, err %v", ok, err)
	}
	if err := b.svc.step(b.leases.Fenced(t.Context(), lb)); err != nil {
		t.Fatalf("B's step: %v", err)
	}
	before, err := b.svc.Job(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	// A resumes: its record and its next step are refused.
	for i := range cands {
		cands[i].outcome = outcomeSent
	}
	if _, err := a.svc.cfg.Jobs.record(actx, job.ID, now, cands); !errors.Is(err, lease.ErrFenced) {
		t.Errorf("A's record after B took the lease over = %v, want lease.ErrFenced", err)
	}
	if err := a.svc.step(actx); !errors.Is(err, lease.ErrLost) {
		t.Errorf("A's step after B took the lease over = %v, want lease.ErrLost", err)
	}
	if k := sent[0].Load(); k != 0 {
		t.Errorf("A asked %d devices after it lost the lease", k)
	}
	after, err := b.svc.Job(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.Progress() != before.Progress() || sent[1].Load() != 2 {
		t.Errorf("progress %+v after A resumed, %+v before; B asked %d (want 2, and A changing nothing)", after.Progress(), before.Progress(), sent[1].Load())
	}
}

// testSkewedReplicas: two replicas share the jobs, one of them with its
// clock off by skew (review N4). A device asked by one is due again a
// minute later on the database's clock, whichever replica's clock runs
// ahead or behind: a step of the other replica right after asks it no
// second time (a clock ahead took it as due at once; a clock behind
// claimed and re-queued it in the past, where the other replica's next
// step found it due).
func testSkewedReplicas(t *testing.T, srv *pgtest.Server, skew time.Duration, skewedFirst bool) {
	url := srv.NewDatabase(t)
	inv, err := inventory.Open(t.TempDir()+"/inventory.db", inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	const n = 4
	for i := range n {
		if err := inv.PutDevice(t.Context(), &inventory.Device{ID: fmt.Sprintf("%032x", i+1), EKFingerprint: fmt.Sprintf("%064x", i+1), State: inventory.StateActive, CertSerial: "01"}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	sent := map[string]int{}
	replica := func(skew time.Duration) *Service {
		jobs, err := OpenJobsPostgres(t.Context(), pgtest.Open(t, url))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { jobs.Close() })
		return &Service{cfg: Config{Inventory: inv, Jobs: jobs, Now: func() time.Time { return time.Now().Add(skew) },
			Send: func(id, _ string, _ []byte) error { mu.Lock(); sent[id]++; mu.Unlock(); return nil }}, log: slog.New(slog.DiscardHandler)}
	}
	skewed, right := replica(skew), replica(0)
	order := []*Service{right, skewed, right}
	if skewedFirst {
		order = []*Service{skewed, right, skewed}
	}
	if _, err := order[0].Start(Selector{All: true}, n, "test", "tester"); err != nil {
		t.Fatal(err)
	}
	for _, r := range order {
		if err := r.step(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	for id, k := range sent {
		if k != 1 {
			t.Errorf("device %s asked %d times within a minute (a replica's clock off by %v)", id, k, skew)
		}
	}
	if len(sent) != n {
		t.Errorf("%d devices asked, want %d", len(sent), n)
	}
}
