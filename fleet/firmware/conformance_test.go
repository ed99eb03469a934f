package firmware_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/clocktest"
)

// openBackend opens the store of cfg.Dir in bbolt, or its records in
// PostgreSQL under TestConformance/postgres (the images stay in cfg.Dir).
func openBackend(t testing.TB, cfg firmware.Config) (*firmware.Store, error) {
	return pgtest.OpenBackend(t, cfg.Dir, cfg, firmware.Open, firmware.OpenPostgres)
}

// conformanceTests are the store's tests run against both backends.
var conformanceTests = []pgtest.Test{
	{Name: "UploadStoresVerifiedRelease", Fn: TestUploadStoresVerifiedRelease},
	{Name: "UploadRefusals", Fn: TestUploadRefusals},
	{Name: "ContentAddressedImages", Fn: TestContentAddressedImages},
	{Name: "TwoPersonRule", Fn: TestTwoPersonRule},
	{Name: "Offerable", Fn: TestOfferable},
	{Name: "AuditFailureChangesNothing", Fn: TestAuditFailureChangesNothing},
	{Name: "LeftoverTempFilesRemoved", Fn: TestLeftoverTempFilesRemoved},
	{Name: "InvalidActor", Fn: TestInvalidActor},
	{Name: "DownloadNeedsIdentityAndAuthorization", Fn: TestDownloadNeedsIdentityAndAuthorization},
	{Name: "DownloadResume", Fn: TestDownloadResume},
}

// TestConformance runs the store's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("ReplicasCountEachApprovalOnce", func(t *testing.T) { testReplicasApproveOnce(t, srv) })
}

// testReplicasApproveOnce: replicas sharing the database and the images
// take approvals of one release at once: each person's approval counts
// once (a second one, through the other replica, is refused), none is
// lost, and each is audited once.
func testReplicasApproveOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	f := &fixture{approvals: 3, dir: t.TempDir(), clock: clocktest.New(t0), audit: &auditLog{}}
	f.keys = append(f.keys, signtest.Signer(t))
	f.trust = signtest.Trust(t, 1, 1, f.keys...)
	var replicas []*firmware.Store
	for range 2 {
		replicas = append(replicas, pgtest.Replica(t, url, func(db *postgres.DB) (*firmware.Store, error) {
			return firmware.OpenPostgres(t.Context(), db, firmware.Config{Dir: f.dir, Trust: f.trust, Approvals: f.approvals, Now: f.clock.Now, Auditor: f.audit})
		}))
	}
	rel := makeRelease(t, "1.0.0", t0.AddDate(1, 0, 0), image(4096, "a"), f.keys...)
	r, err := replicas[0].Upload(t.Context(), "alice", rel.manifest, rel.bundles, bytes.NewReader(rel.image))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := replicas[1].Upload(t.Context(), "alice", rel.manifest, rel.bundles, nil); !errors.Is(err, firmware.ErrExists) {
		t.Fatalf("the same release uploaded through the other replica: %v", err)
	}
	var wg sync.WaitGroup
	for _, who := range []string{"bob", "carol", "bob", "carol"} {
		for _, s := range replicas {
			wg.Go(func() {
				_, err := s.Approve(t.Context(), who, r.ID)
				if err != nil && !errors.Is(err, firmware.ErrAlreadyApproved) {
					t.Errorf("approve %s: %v", who, err)
				}
			})
		}
	}
	wg.Wait()
	got, err := replicas[1].Release(t.Context(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Approvals) != 2 || got.State != firmware.StateUploaded {
		t.Fatalf("approvals %+v, state %s: want bob and carol once each, still uploaded (3 needed)", got.Approvals, got.State)
	}
	f.audit.mu.Lock()
	defer f.audit.mu.Unlock()
	ok := 0
	for _, e := range f.audit.entries {
		if e.action == firmware.ActionApprove && e.outcome == firmware.OutcomeOK {
			ok++
		}
	}
	if ok != 2 {
		t.Fatalf("%d approvals audited as accepted, want 2", ok)
	}
}
