package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestExposureAlerter: a new advisory's report raises one alert event per
// exposed device (not per component), keyed by the advisory, and one
// audit record.
func TestExposureAlerter(t *testing.T) {
	var alerts []attest.Alert
	var entries []audit.Entry
	now := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	a := exposureAlerter{
		alert: func(x attest.Alert) { alerts = append(alerts, x) },
		audit: audit.RecorderFunc(func(_ context.Context, e audit.Entry) error { entries = append(entries, e); return nil }),
		log:   slog.New(slog.DiscardHandler), now: func() time.Time { return now },
	}
	r := &exposure.Report{Advisory: exposure.Advisory{ID: "OSV-1"}, Devices: []exposure.Finding{
		{DeviceID: "dev-1", Version: "2.0.0", Component: exposure.Component{PURL: "pkg:generic/a@1"}},
		{DeviceID: "dev-1", Version: "2.0.0", Component: exposure.Component{PURL: "pkg:generic/b@1"}},
		{DeviceID: "dev-2", Version: "2.0.0", Component: exposure.Component{PURL: "pkg:generic/a@1"}},
	}}
	if err := a.Exposed(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if len(alerts) != 2 || alerts[0].DeviceID != "dev-1" || alerts[1].DeviceID != "dev-2" ||
		alerts[0].Kind != alert.EventVulnerabilityExposed || alerts[0].Severity != "warning" || !alerts[0].Time.Equal(now) ||
		alerts[1].Attrs["advisory"] != "OSV-1" {
		t.Fatalf("alerts %+v", alerts)
	}
	if len(entries) != 1 || entries[0].Action != "exposure.alert" || entries[0].Target != "OSV-1" {
		t.Fatalf("audit %+v", entries)
	}
}

// oneHistory is one device's attestation records, newest first.
type oneHistory struct {
	mu   sync.Mutex
	recs []attest.Record
}

func (h *oneHistory) List(_ context.Context, _ string, limit int) ([]attest.Record, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]attest.Record(nil), h.recs[:min(limit, len(h.recs))]...), nil
}

// TestAttestedRaisesExposure: a verdict handed to the firmware service
// (the server's attestVerdict) reaches the exposure worker, which raises
// vulnerability-exposed, keyed by the advisory, for a device that attests
// an affected release after the advisory was imported. A verdict without
// a verified quote is not queued, and a nil service ignores verdicts.
func TestAttestedRaisesExposure(t *testing.T) {
	ctx := t.Context()
	sbom, err := os.ReadFile("../exposure/testdata/gw-os-1.0.0.cdx.json")
	if err != nil {
		t.Fatal(err)
	}
	osv, err := os.ReadFile("../exposure/testdata/OSV-2026-0001.json")
	if err != nil {
		t.Fatal(err)
	}
	img := sha256.Sum256([]byte("gw-os 1.0.0"))
	rel := &firmware.Release{ID: "rel-1", Manifest: &manifest.Manifest{Version: "1.0.0", SHA256: img,
		SBOM: &manifest.SBOM{Format: manifest.SBOMCycloneDX, SHA256: sha256.Sum256(sbom)}}}
	f := newTestService(t, signtest.Signers(t, 1)...)
	inv := testInventory(t, f)
	if err := inv.PutDevice(ctx, &inventory.Device{ID: "dev-1", Model: "gw-1", State: inventory.StateActive}); err != nil {
		t.Fatal(err)
	}
	b, err := boltdb.Open(filepath.Join(t.TempDir(), exposure.File), boltdb.Schema{Buckets: exposure.Buckets()}, boltdb.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	db := kv.Bolt(b)
	defer db.Close()
	var mu sync.Mutex
	var alerts []attest.Alert
	hist := &oneHistory{}
	f.exposure, err = exposure.New(exposure.Config{DB: db, Releases: releaseList{rel}, Devices: inv, Attestations: hist,
		Alerter: exposureAlerter{log: f.log, now: time.Now, alert: func(a attest.Alert) { mu.Lock(); alerts = append(alerts, a); mu.Unlock() }}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.exposure.SetSBOM(ctx, rel, sbom); err != nil {
		t.Fatal(err)
	}
	if r, err := f.exposure.ImportAdvisory(ctx, osv); err != nil || len(r.Devices) != 0 {
		t.Fatalf("import before any attestation: %+v, %v", r, err)
	}

	f.verdicts = make(chan attest.Record, 4)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.verdictLoop(wctx) }()
	defer func() { cancel(); <-done }()

	f.Attested("dev-1", &attest.Record{Time: time.Now(), Result: "fail"}) // no verified quote
	if n := len(f.verdicts); n != 0 {
		t.Fatalf("%d verdicts without a quote queued", n)
	}
	(*Service)(nil).Attested("dev-1", &attest.Record{})

	var buf [64]byte
	copy(buf[32:], img[:])
	pcr := sha256.Sum256(buf[:])
	rec := attest.Record{Time: time.Now(), DeviceID: "dev-1", Result: "pass",
		PCRs: map[string]map[int]string{"sha256": {exposure.DefaultPCR: hex.EncodeToString(pcr[:])}}}
	hist.mu.Lock()
	hist.recs = []attest.Record{rec}
	hist.mu.Unlock()
	f.Attested("dev-1", &rec)
	wait.For(t, "a vulnerability-exposed alert for dev-1", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(alerts) > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if len(alerts) != 1 || alerts[0].DeviceID != "dev-1" || alerts[0].Kind != alert.EventVulnerabilityExposed || alerts[0].Attrs["advisory"] != "OSV-2026-0001" {
		t.Fatalf("alerts %+v", alerts)
	}
}
