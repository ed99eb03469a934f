package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// migratedStore seeds one more store's file in a data directory for
// TestMigrateToPostgres and checks it in the database after the copy.
type migratedStore struct {
	name  string
	seed  func(t *testing.T, dir string)
	want  []string // in sigil migrate's output
	check func(t *testing.T, ctx context.Context, db *postgres.DB)
}

// moreMigratedStores are the campaigns, telemetry cursors, alerts and
// governance stores.
var moreMigratedStores = []migratedStore{
	{name: "telemetry",
		seed: func(t *testing.T, dir string) {
			c, err := telemetry.OpenCursors(filepath.Join(dir, telemetry.File))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
				if err := c.SetCursor(t.Context(), id, telemetry.Cursor{Stream: []byte(strings.Repeat("s", 16)), Through: 41}); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.SetFlag(t.Context(), "default_rules_installed"); err != nil {
				t.Fatal(err)
			}
		},
		want: []string{"telemetry ", "cursors 3, meta 1"},
		check: func(t *testing.T, ctx context.Context, db *postgres.DB) {
			c, err := telemetry.OpenCursorsPostgres(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if cur, ok, err := c.Cursor(ctx, "dev-2"); err != nil || !ok || cur.Through != 41 {
				t.Fatalf("telemetry cursor in the database: %+v %v %v", cur, ok, err)
			}
			if set, err := c.Flag(ctx, "default_rules_installed"); err != nil || !set {
				t.Fatalf("telemetry flag in the database: %v %v", set, err)
			}
		}},
	{name: "alerts",
		seed: func(t *testing.T, dir string) {
			e, err := alert.Open(alert.Config{Path: filepath.Join(dir, alert.File), NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if _, err := e.PutRule(alert.Rule{ID: "hot", Severity: alert.SeverityWarning,
				Threshold: &alert.Threshold{Metric: "temp", Op: alert.OpGE, Value: 80}}); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"dev-1", "dev-2"} {
				if err := e.Observe(id, time.Now(), map[string]float64{"temp": 90}, nil); err != nil {
					t.Fatal(err)
				}
			}
		},
		want: []string{"alerts ", "alerts 2, bydev 2, open 2, rules 1"},
		check: func(t *testing.T, ctx context.Context, db *postgres.DB) {
			e, err := alert.OpenPostgres(ctx, db, alert.Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			open, _, err := e.Alerts(alert.Query{Open: true})
			if err != nil || len(open) != 2 || open[0].RuleID != "hot" {
				t.Fatalf("alerts in the database: %+v, %v", open, err)
			}
			// The alert IDs' sequence was copied: the next alert is the third.
			if err := e.Observe("dev-3", time.Now(), map[string]float64{"temp": 90}, nil); err != nil {
				t.Fatal(err)
			}
			if open, _, err := e.Alerts(alert.Query{DeviceID: "dev-3", Open: true}); err != nil || len(open) != 1 || open[0].ID != 3 {
				t.Fatalf("an alert opened after the copy: %+v, %v", open, err)
			}
		}},
	{name: "governance",
		seed: func(t *testing.T, dir string) {
			inv, err := inventory.Open(filepath.Join(t.TempDir(), inventory.File), inventory.WithNoSync())
			if err != nil {
				t.Fatal(err)
			}
			defer inv.Close()
			g, err := governance.Open(governance.Config{Path: filepath.Join(dir, governance.File), Devices: inv, NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			for _, id := range []string{"plant-a", "plant-b"} {
				if _, err := g.PutOwner(governance.Owner{ID: id, Name: "Plant"}); err != nil {
					t.Fatal(err)
				}
			}
			if err := g.Block(governance.Block{Kind: governance.BlockClientID, Value: "rogue-1", Reason: "probing", By: "alice"}); err != nil {
				t.Fatal(err)
			}
		},
		want: []string{"governance ", "blocks 1", "owners 2"},
		check: func(t *testing.T, ctx context.Context, db *postgres.DB) {
			inv, err := inventory.Open(filepath.Join(t.TempDir(), inventory.File), inventory.WithNoSync())
			if err != nil {
				t.Fatal(err)
			}
			defer inv.Close()
			g, err := governance.OpenPostgres(ctx, db, governance.Config{Devices: inv})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			if o, err := g.Owner("plant-b"); err != nil || o.Name != "Plant" {
				t.Fatalf("owner in the database: %+v, %v", o, err)
			}
			if b, blocked := g.Blocked("rogue-1", "", ""); !blocked || b.Reason != "probing" {
				t.Fatalf("block in the database: %+v, %v", b, blocked)
			}
		}},
	{name: "exposure",
		seed: func(t *testing.T, dir string) {
			fw := filepath.Join(dir, firmware.DataDir)
			if err := os.MkdirAll(fw, 0o700); err != nil {
				t.Fatal(err)
			}
			b, err := boltdb.Open(filepath.Join(fw, exposure.File), boltdb.Schema{Buckets: exposure.Buckets()}, boltdb.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			db := kv.Bolt(b)
			defer db.Close()
			svc := migratedExposure(t, db)
			if _, err := svc.SetSBOM(t.Context(), migratedRelease(), []byte(migratedSBOM)); err != nil {
				t.Fatal(err)
			}
			if _, err := svc.ImportAdvisory(t.Context(), []byte(migratedOSV)); err != nil {
				t.Fatal(err)
			}
		},
		want: []string{"exposure ", "advisories 1", "sboms 1"},
		check: func(t *testing.T, ctx context.Context, db *postgres.DB) {
			k, err := kv.Postgres(db, firmware.Table, kv.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			svc := migratedExposure(t, k)
			if cs, err := svc.Components(ctx, "rel-sbom"); err != nil || len(cs) != 1 || cs[0].Name != "openssl" {
				t.Fatalf("SBOM components in the database: %+v, %v", cs, err)
			}
			if ids, err := svc.Advisories(ctx); err != nil || !slices.Equal(ids, []string{"OSV-2026-0042"}) {
				t.Fatalf("advisories in the database: %v, %v", ids, err)
			}
			if _, err := svc.Report(ctx, "OSV-2026-0042"); err != nil {
				t.Fatalf("report from the database: %v", err)
			}
		}},
	{name: "bridges",
		seed: func(t *testing.T, dir string) {
			c, err := ca.Open(ca.Config{Dir: t.TempDir(), TrustDomain: "sigil.local"})
			if err != nil {
				t.Fatal(err)
			}
			s, err := bridge.Open(bridge.Config{Path: filepath.Join(dir, bridge.File), CA: c, NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			for _, site := range []string{"plant1", "plant2"} {
				if _, err := s.Create(t.Context(), audit.User("ana"), site, k.Public(), 0); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Revoke(t.Context(), audit.User("ana"), "plant2", 1, "test"); err != nil {
				t.Fatal(err)
			}
			if err := s.AssignSite(t.Context(), audit.User("ana"), "d1", "plant1"); err != nil {
				t.Fatal(err)
			}
			if err := s.AdvanceCounter(t.Context(), "d1", "0a", 7); err != nil {
				t.Fatal(err)
			}
		},
		want: []string{"bridges ", "bridges 2", "device_counters 1", "device_sites 1"},
		check: func(t *testing.T, ctx context.Context, db *postgres.DB) {
			c, err := ca.Open(ca.Config{Dir: t.TempDir(), TrustDomain: "sigil.local"})
			if err != nil {
				t.Fatal(err)
			}
			s, err := bridge.OpenPostgres(ctx, db, bridge.Config{CA: c})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if b, err := s.Get(ctx, "plant2"); err != nil || len(b.Certs) != 1 || b.Certs[0].Revoked.IsZero() {
				t.Fatalf("bridge in the database: %+v, %v", b, err)
			}
			if revs, err := s.Revocations(ctx, time.Time{}); err != nil || len(revs) != 1 {
				t.Fatalf("revocations in the database: %+v, %v", revs, err)
			}
			if site, err := s.Site(ctx, "d1"); err != nil || site != "plant1" {
				t.Fatalf("site assignment in the database: %q, %v", site, err)
			}
			if serial, last, err := s.Counter(ctx, "d1"); err != nil || serial != "0a" || last != 7 {
				t.Fatalf("envelope counter in the database: %q %d, %v", serial, last, err)
			}
		}},
	{name: "campaigns",
		seed: func(t *testing.T, dir string) {
			s, err := campaign.Open(filepath.Join(dir, campaign.File))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			m := newCampaigns(t, s)
			c, err := m.Create(t.Context(), campaign.Definition{Release: "rel-1", Targets: campaign.Selector{Group: "g"},
				Waves: campaign.Waves{Sizes: []int{1, 2}}}, "alice", "fleet update")
			if err != nil {
				t.Fatal(err)
			}
			migratedCampaign = c.ID
		},
		// campaigns: the campaign's def, meta, head, 3 devices, 3
		// positions, 2 waves; active: none (a draft).
		want: []string{"campaigns ", "campaigns 11"},
		check: func(t *testing.T, ctx context.Context, db *postgres.DB) {
			s, err := campaign.OpenPostgres(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			m := newCampaigns(t, s)
			c, err := m.Get(migratedCampaign)
			if err != nil || c.Total != 3 || c.State != campaign.StateDraft || len(c.Waves) != 2 {
				t.Fatalf("campaign in the database: %+v, %v", c, err)
			}
			if err := m.Start(c.ID, time.Time{}, "alice", ""); err != nil {
				t.Fatalf("starting the copied campaign: %v", err)
			}
		}},
}

// migratedSBOM and migratedOSV are the SBOM attached to a release and the
// advisory imported in the exposure store before the copy.
const (
	migratedSBOM = `{"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": [
  {"type": "library", "name": "openssl", "version": "3.0.1", "purl": "pkg:deb/debian/openssl@3.0.1"}]}`
	migratedOSV = `{"id": "OSV-2026-0042", "modified": "2026-12-02T00:00:00Z", "affected": [{"package": {"purl": "pkg:deb/debian/openssl"},
  "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "3.0.0"}, {"fixed": "3.0.8"}]}]}]}`
)

// migratedRelease is a release (ID "rel-sbom") whose manifest binds
// migratedSBOM.
func migratedRelease() *firmware.Release {
	return &firmware.Release{ID: "rel-sbom", Manifest: &manifest.Manifest{Version: "1.0.0",
		SBOM: &manifest.SBOM{Format: manifest.SBOMCycloneDX, SHA256: sha256.Sum256([]byte(migratedSBOM))}}}
}

// migratedExposure is the exposure service over db, whose only release is
// migratedRelease, with no device.
func migratedExposure(t *testing.T, db kv.DB) *exposure.Service {
	t.Helper()
	svc, err := exposure.New(exposure.Config{DB: db, Releases: exposureReleases{migratedRelease()}, Devices: noDevices{}, Attestations: noDevices{}})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

type exposureReleases []*firmware.Release

func (r exposureReleases) List(context.Context) ([]*firmware.Release, error) { return r, nil }

// noDevices is an empty inventory and attestation history.
type noDevices struct{}

func (noDevices) Device(context.Context, string) (*inventory.Device, error) {
	return nil, inventory.ErrNotFound
}

func (noDevices) ListDevices(context.Context, inventory.Filter) ([]inventory.Device, string, error) {
	return nil, "", nil
}

func (noDevices) List(context.Context, string, int) ([]attest.Record, error) { return nil, nil }

// migratedCampaign is the ID of the campaign the campaigns store is
// seeded with.
var migratedCampaign string

// newCampaigns is a campaign engine on s targeting three devices.
func newCampaigns(t *testing.T, s *campaign.Store) *campaign.Manager {
	t.Helper()
	m, err := campaign.New(campaign.Config{Store: s,
		Targets: campaign.TargetsFunc(func(context.Context, string, campaign.Selector) ([]string, error) {
			return []string{"dev-1", "dev-2", "dev-3"}, nil
		}),
		Announcer: campaign.AnnouncerFunc(func(context.Context, campaign.Announcement) error { return nil }),
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
