package governance_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
)

// openBackend opens cfg in bbolt, or in PostgreSQL under
// TestConformance/postgres (the inventory stays in bbolt).
func openBackend(t testing.TB, cfg governance.Config) (*governance.Service, error) {
	return pgtest.OpenBackend(t, cfg.Path, cfg, governance.Open, governance.OpenPostgres)
}

// conformanceTests are the service's tests run against both backends
// (the others run in a synctest bubble or need no store).
var conformanceTests = []pgtest.Test{
	{Name: "EnrollOnlyWhatATPMCanProve", Fn: TestEnrollOnlyWhatATPMCanProve},
	{Name: "OrphanedDevicesAreFlaggedAndCleared", Fn: TestOrphanedDevicesAreFlaggedAndCleared},
	{Name: "DormantDeviceIsAlertedAndRevokedByPolicy", Fn: TestDormantDeviceIsAlertedAndRevokedByPolicy},
	{Name: "DormantWithoutPolicyOnlyAlerts", Fn: TestDormantWithoutPolicyOnlyAlerts},
	{Name: "CloneByEKIsQuarantined", Fn: TestCloneByEKIsQuarantined},
	{Name: "CloneByConcurrentCertificateUse", Fn: TestCloneByConcurrentCertificateUse},
	{Name: "CloneByTakeoverPingPong", Fn: TestCloneByTakeoverPingPong},
	{Name: "MovingDeviceIsNotAClone", Fn: TestMovingDeviceIsNotAClone},
	{Name: "StrictCloneGraceCountsAnyOverlap", Fn: TestStrictCloneGraceCountsAnyOverlap},
	{Name: "StatePersistsAcrossRestart", Fn: TestStatePersistsAcrossRestart},
	{Name: "BrokerPresenceOverridesAStaleConnectedFlag", Fn: TestBrokerPresenceOverridesAStaleConnectedFlag},
	{Name: "FailedCloneQuarantineIsRetried", Fn: TestFailedCloneQuarantineIsRetried},
	{Name: "RiskUsesRecordedIssueTimeAndPurpose", Fn: TestRiskUsesRecordedIssueTimeAndPurpose},
	{Name: "ClonePendingStaysPending", Fn: TestClonePendingStaysPending},
	{Name: "CloneQuarantineRevokesEverySerial", Fn: TestCloneQuarantineRevokesEverySerial},
	{Name: "DormantRevokeRevokesEverySerial", Fn: TestDormantRevokeRevokesEverySerial},
	{Name: "ScorePending", Fn: TestScorePending},
	{Name: "RiskMovesWithEachFactor", Fn: TestRiskMovesWithEachFactor},
	{Name: "RiskEvidenceNamesTheInputs", Fn: TestRiskEvidenceNamesTheInputs},
	{Name: "RiskIsDeterministicCappedAndWeighted", Fn: TestRiskIsDeterministicCappedAndWeighted},
	{Name: "RankingSortsTheFleetByRisk", Fn: TestRankingSortsTheFleetByRisk},
	{Name: "ShadowDevicesAreRecordedAndAggregated", Fn: TestShadowDevicesAreRecordedAndAggregated},
	{Name: "TriageDecisions", Fn: TestTriageDecisions},
	{Name: "BlockListIsBounded", Fn: TestBlockListIsBounded},
	{Name: "TriageIsBoundedUnderFlood", Fn: TestTriageIsBoundedUnderFlood},
}

// TestConformance runs the service's tests on PostgreSQL (pgtest:
// skipped without one unless CI=true); the package's tests run them on
// bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("ReplicasRaiseACloneOnce", func(t *testing.T) { testReplicasRaiseACloneOnce(t, srv) })
	t.Run("ReplicasSweepOnce", func(t *testing.T) { testReplicasSweepOnce(t, srv) })
	t.Run("ReplicasShareBlocks", func(t *testing.T) { testReplicasShareBlocks(t, srv) })
}

// countingQuarantiner counts the quarantines it passes on.
type countingQuarantiner struct {
	next governance.Quarantiner
	n    atomic.Int64
}

func (q *countingQuarantiner) Quarantine(deviceID, reason string) error {
	q.n.Add(1)
	return q.next.Quarantine(deviceID, reason)
}

// testReplicasRaiseACloneOnce: an EK conflict reported at once to two
// services sharing the database opens one incident, alerted and
// quarantined once.
func testReplicasRaiseACloneOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	f := newFleet(t, nil) // the inventory, and a service on bbolt left idle
	q := &countingQuarantiner{next: governance.InventoryQuarantiner{Inventory: f.inv, Now: f.clock.Now}}
	open := func() *governance.Service {
		cfg := f.cfg
		cfg.Path, cfg.Quarantiner = "", q
		return pgtest.Replica(t, url, func(db *postgres.DB) (*governance.Service, error) {
			return governance.OpenPostgres(t.Context(), db, cfg)
		})
	}
	replicas := []*governance.Service{open(), open()}
	const devices = 4
	for n := range devices {
		d := f.device(n+1, nil)
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Go(func() {
				if err := replicas[i%2].EKConflict(d.ID, "EK proven by a client claiming another identity"); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if a := f.alerts.of(governance.KindClone, d.ID); len(a) != 1 {
			t.Fatalf("device %d: %d clone alerts, want 1", n, len(a))
		}
	}
	if q.n.Load() != devices {
		t.Fatalf("%d quarantines for %d devices, want one each", q.n.Load(), devices)
	}
	for _, r := range replicas {
		if clones, err := r.Clones(false); err != nil || len(clones) != devices {
			t.Fatalf("incidents: %d, %v; want %d", len(clones), err, devices)
		}
	}
}

// sweepCounter counts the sweeps of one service (each lists the devices).
type sweepCounter struct {
	governance.Devices
	n atomic.Int64
}

func (c *sweepCounter) ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error) {
	if f.After == "" {
		c.n.Add(1)
	}
	return c.Devices.ListDevices(ctx, f)
}

// testReplicasSweepOnce: two services sharing the database run at once;
// only the holder of the sweep's lease sweeps, so a dormant device is
// alerted once; when the holder stops, the other one sweeps.
func testReplicasSweepOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	f := newFleet(t, nil) // the inventory, and a service on bbolt left idle
	d := f.device(1, func(d *inventory.Device) {
		d.Connected, d.LastSeen, d.CertExpiry = false, t0.Add(-31*24*time.Hour), t0.Add(90*24*time.Hour)
	})
	var counters []*sweepCounter
	open := func(i int) *governance.Service {
		c := &sweepCounter{Devices: f.inv}
		counters = append(counters, c)
		cfg := f.cfg
		cfg.Path, cfg.Devices = "", c
		cfg.SweepInterval = 20 * time.Millisecond
		return pgtest.Replica(t, url, func(db *postgres.DB) (*governance.Service, error) {
			cfg.Leases = pgtest.Lease(t, db, i)
			return governance.OpenPostgres(t.Context(), db, cfg)
		})
	}
	replicas := []*governance.Service{open(0), open(1)}
	pgtest.OneHolder(t, pgtest.Leased{
		Run:    []func(context.Context) error{replicas[0].Run, replicas[1].Run},
		Done:   func(i int) int64 { return counters[i].n.Load() },
		Enough: 10, Work: "swept", Unit: "sweeps",
	}, func() {
		if a := f.alerts.of(governance.KindDormant, d.ID); len(a) != 1 {
			t.Fatalf("%d dormant alerts, want 1", len(a))
		}
	})
	if a := f.alerts.of(governance.KindDormant, d.ID); len(a) != 1 {
		t.Fatalf("%d dormant alerts after the takeover, want 1", len(a))
	}
}

// testReplicasShareBlocks: a client blocked on replica A is refused by
// replica B's screen at once, and let in again once A unblocks it.
func testReplicasShareBlocks(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	f := newFleet(t, nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	open := func() *governance.Service {
		var bus *notify.Postgres
		s := pgtest.Replica(t, url, func(db *postgres.DB) (*governance.Service, error) {
			bus = notify.NewPostgres(db, nil)
			cfg := f.cfg
			cfg.Path, cfg.Bus = "", bus
			return governance.OpenPostgres(t.Context(), db, cfg)
		})
		wg.Go(func() {
			if err := bus.Run(ctx); err != nil {
				t.Error(err)
			}
		})
		return s
	}
	a, b := open(), open()
	if err := a.Block(governance.Block{Kind: governance.BlockClientID, Value: "intruder", Reason: "test", By: "alice"}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "B to refuse the client A blocked", func() bool { return b.IsBlocked("intruder", "", "") })
	if err := a.Block(governance.Block{Kind: governance.BlockAddress, Value: "192.0.2.0/24", Reason: "test", By: "alice"}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "B to refuse the prefix A blocked", func() bool { return b.IsBlocked("", "192.0.2.7:1883", "") })
	if err := a.Unblock(governance.BlockClientID, "intruder"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "B to let the client A unblocked in", func() bool { return !b.IsBlocked("intruder", "", "") })
	if !b.IsBlocked("", "192.0.2.7:1883", "") {
		t.Error("B forgot the prefix still blocked")
	}
}
