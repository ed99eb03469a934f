package exposure_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
)

// TestConformance runs the package's tests with the release records and
// the exposure buckets in PostgreSQL (pgtest: skipped without one unless
// CI=true); the plain tests run them on bbolt.
func TestConformance(t *testing.T) {
	pgtest.Conformance(t, []pgtest.Test{{Name: "Exposure", Fn: TestExposure}, {Name: "NoSBOM", Fn: TestNoSBOM}, {Name: "SPDXRelease", Fn: TestSPDXRelease},
		{Name: "AttestedRollback", Fn: TestAttestedRollback}, {Name: "SBOMAfterAdvisory", Fn: TestSBOMAfterAdvisory}})
}

// devices is a fixed inventory.
type devices []inventory.Device

func (d devices) Device(_ context.Context, id string) (*inventory.Device, error) {
	for i := range d {
		if d[i].ID == id {
			return &d[i], nil
		}
	}
	return nil, inventory.ErrNotFound
}

func (d devices) ListDevices(_ context.Context, f inventory.Filter) ([]inventory.Device, string, error) {
	var out []inventory.Device
	for _, x := range d {
		if x.ID > f.After {
			out = append(out, x)
		}
	}
	return out, "", nil
}

// history holds attestation records per device, newest first, as
// fleet/attest writes them: PCR values only from a verified quote.
type history map[string][]attest.Record

func (h history) List(_ context.Context, id string, limit int) ([]attest.Record, error) {
	r := h[id]
	return r[:min(limit, len(r))], nil
}

// attested records a verified quote of a device whose firmware PCR holds
// the measurement of image (device/update: SHA-256(zeros || digest)),
// while the device claims the firmware version claimed.
func (h history) attested(id string, image []byte, at time.Time, claimed string) {
	d := sha256.Sum256(image)
	var buf [64]byte
	copy(buf[32:], d[:])
	pcr := sha256.Sum256(buf[:])
	rec := attest.Record{Time: at, DeviceID: id, Result: "pass", Firmware: claimed,
		PCRs: map[string]map[int]string{"sha256": {0: "00", exposure.DefaultPCR: hexs(pcr[:])}}}
	h[id] = append([]attest.Record{rec}, h[id]...)
}

// extended records a verified quote after the device measured image into
// the firmware PCR in the same TPM boot as its previous record (an update
// without a TPM reset: the PCR extends the previous value).
func (h history) extended(id string, image []byte, at time.Time, claimed string) {
	prev, _ := hex.DecodeString(h[id][0].PCRs["sha256"][exposure.DefaultPCR])
	d := sha256.Sum256(image)
	pcr := sha256.Sum256(append(prev, d[:]...))
	rec := attest.Record{Time: at, DeviceID: id, Result: "pass", Firmware: claimed,
		PCRs: map[string]map[int]string{"sha256": {exposure.DefaultPCR: hex.EncodeToString(pcr[:])}}}
	h[id] = append([]attest.Record{rec}, h[id]...)
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// campaigns is a fixed set of campaigns and their devices' steps.
type campaigns struct {
	list  []campaign.Campaign
	steps map[string]map[string]campaign.Step // campaign -> device -> step
}

func (c campaigns) List() ([]campaign.Campaign, error) { return c.list, nil }

func (c campaigns) Device(id, deviceID string) (*campaign.Device, error) {
	st, ok := c.steps[id][deviceID]
	if !ok {
		return nil, campaign.ErrNotTarget
	}
	return &campaign.Device{ID: deviceID, Step: st}, nil
}

type fixture struct {
	store  *firmware.Store
	signer *sign.Signer
	svc    *exposure.Service
	hist   history
	alerts []*exposure.Report
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{hist: history{}}
	var ts *verify.TrustSet
	f.signer, ts = signtest.Key(t)
	dir := t.TempDir()
	st, err := pgtest.OpenBackend(t, dir, firmware.Config{Dir: dir, Trust: ts, NoSync: true}, firmware.Open, firmware.OpenPostgres)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f.store = st
	// The exposure buckets beside the release records, as fleet/rollout
	// opens them: a bbolt file of their own, or the records' table.
	var db kv.DB
	if pg, ok := pgtest.Database(t, dir); ok {
		db, err = kv.Postgres(pg, firmware.Table, kv.Options{})
	} else {
		var bdb *boltdb.DB
		bdb, err = boltdb.Open(filepath.Join(dir, "exposure.db"), boltdb.Schema{Buckets: exposure.Buckets()}, boltdb.Options{NoSync: true})
		if err == nil {
			db = kv.Bolt(bdb)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	inv := devices{
		{ID: "dev-a", Group: "north", Model: "gw-1", Owner: "acme"},
		{ID: "dev-b", Group: "south", Model: "gw-1", Owner: "acme"},
		{ID: "dev-c", Group: "south", Model: "gw-1", Owner: "globex"},
		{ID: "dev-d", Group: "north", Model: "gw-1"},
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	camps := campaigns{
		list: []campaign.Campaign{
			{ID: "cmp-done", State: campaign.StateCompleted, Created: t0},
			{ID: "cmp-old", State: campaign.StatePaused, Created: t0},
			{ID: "cmp-new", State: campaign.StateRunning, Created: t0.Add(time.Hour)},
		},
		steps: map[string]map[string]campaign.Step{
			"cmp-done": {"dev-a": campaign.StepCommitted, "dev-b": campaign.StepCommitted},
			"cmp-old":  {"dev-b": campaign.StepFailed},
			"cmp-new":  {"dev-b": campaign.StepDownloading},
		},
	}
	f.svc, err = exposure.New(exposure.Config{DB: db, Releases: st, Devices: inv, Attestations: f.hist, Campaigns: camps,
		Alerter: exposure.AlerterFunc(func(_ context.Context, r *exposure.Report) error { f.alerts = append(f.alerts, r); return nil })})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// release uploads and approves a release of image whose manifest binds
// the SBOM file.
func (f *fixture) release(t *testing.T, version string, sv uint64, image []byte, sbomFile string) (*firmware.Release, []byte) {
	t.Helper()
	sbom, err := os.ReadFile(sbomFile)
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Name: "gw-os", Version: version, SecurityVersion: sv, Models: []string{"gw-1"}, Size: int64(len(image)),
		SHA256: sha256.Sum256(image), Expires: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second),
		SBOM: &manifest.SBOM{Format: manifest.SBOMCycloneDX, SHA256: sha256.Sum256(sbom)}}
	raw, bundles := signtest.Release(t, m, f.signer)
	ctx := context.Background()
	r, err := f.store.Upload(ctx, "alice", raw, bundles, bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	if r, err = f.store.Approve(ctx, "bob", r.ID); err != nil {
		t.Fatal(err)
	}
	return r, sbom
}

// TestExposure: a release with an SBOM bound into its signed manifest; an
// OSV advisory matching one of its components; the devices that attested
// running it are listed (not the one that only claims its version, not the
// one that never attested), with the fixed release; once one of them
// attests the fixed release (after its campaign) it drops off; the report
// exported as JSON and CSV parses back to the same devices.
func TestExposure(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	img1, img2 := bytes.Repeat([]byte("gw-os 1.0.0 "), 100), bytes.Repeat([]byte("gw-os 1.1.0 "), 100)
	r1, sbom1 := f.release(t, "1.0.0", 1, img1, "testdata/gw-os-1.0.0.cdx.json")
	r2, sbom2 := f.release(t, "1.1.0", 2, img2, "testdata/gw-os-1.1.0.cdx.json")

	// The SBOM must be the one the signed manifest binds.
	if _, err := f.svc.SetSBOM(ctx, r1, sbom2); !errors.Is(err, exposure.ErrSBOMDigest) {
		t.Fatalf("SetSBOM with another release's SBOM: %v, want ErrSBOMDigest", err)
	}
	cs, err := f.svc.SetSBOM(ctx, r1, sbom1)
	if err != nil {
		t.Fatal(err)
	}
	var purls []string
	for _, c := range cs {
		purls = append(purls, c.PURL)
	}
	want := []string{"pkg:generic/sigil-example/gw-os@1.0.0", "pkg:deb/debian/openssl@3.0.1?arch=arm64", "pkg:generic/busybox@1.36.1", "pkg:generic/zlib@1.2.13"}
	if !slices.Equal(purls, want) {
		t.Fatalf("components %v, want %v", purls, want)
	}
	if _, err := f.svc.SetSBOM(ctx, r2, sbom2); err != nil {
		t.Fatal(err)
	}

	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	f.hist.attested("dev-a", img1, t0, "1.0.0")
	f.hist.attested("dev-b", img1, t0.Add(time.Minute), "1.0.0")
	f.hist.attested("dev-b", img1, t0.Add(time.Hour), "1.0.0")
	f.hist.attested("dev-c", []byte("an image of no release"), t0, "1.0.0") // claims 1.0.0: not trusted
	// dev-d never attested.

	// Query by package URL and version range.
	for _, q := range []struct {
		purl, rng string
		want      []string
	}{
		{"pkg:deb/debian/openssl", ">= 3.0.0, < 3.0.8", []string{"dev-a", "dev-b"}},
		{"pkg:deb/debian/openssl@9?arch=amd64", "", []string{"dev-a", "dev-b"}}, // version and qualifiers of the query ignored
		{"pkg:deb/debian/openssl", ">= 3.0.8", nil},
		{"pkg:generic/zlib", "~1.2", []string{"dev-a", "dev-b"}},
		{"pkg:generic/curl", "", nil},
	} {
		fs, err := f.svc.Query(ctx, q.purl, q.rng)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(fs); !slices.Equal(got, q.want) {
			t.Errorf("Query(%s, %q) = %v, want %v", q.purl, q.rng, got, q.want)
		}
	}
	for _, bad := range [][2]string{{"openssl", ""}, {"pkg:deb/debian/openssl", ">>= 1"}} {
		if _, err := f.svc.Query(ctx, bad[0], bad[1]); !errors.Is(err, exposure.ErrQuery) {
			t.Errorf("Query(%q, %q) = %v, want ErrQuery", bad[0], bad[1], err)
		}
	}

	// The advisory: dev-a and dev-b exposed, fixed in 3.0.8, release 1.1.0
	// available; dev-c and dev-d unknown.
	raw, err := os.ReadFile("testdata/OSV-2026-0001.json")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := f.svc.ImportAdvisory(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(rep.Devices); !slices.Equal(got, []string{"dev-a", "dev-b"}) || rep.Unknown != 2 {
		t.Fatalf("exposed %v (unknown %d), want [dev-a dev-b] (unknown 2)", got, rep.Unknown)
	}
	a, b := rep.Devices[0], rep.Devices[1]
	if a.Campaign != "" || b.Campaign != "cmp-new" || b.CampaignStep != "downloading" {
		t.Errorf("campaign status: dev-a %q %q, dev-b %q %q; want none, and the newest open campaign for dev-b", a.Campaign, a.CampaignStep, b.Campaign, b.CampaignStep)
	}
	if b.Release != r1.ID || b.Version != "1.0.0" || b.Fixed != "3.0.8" || b.FixRelease != r2.ID ||
		!b.FirstSeen.Equal(t0.Add(time.Minute)) || !b.Attested.Equal(t0.Add(time.Hour)) || b.Component.Version != "3.0.1" {
		t.Errorf("dev-b finding %+v", b)
	}
	if rep.ByGroup["north"] != 1 || rep.ByGroup["south"] != 1 || rep.ByModel["gw-1"] != 2 || rep.ByOwner["acme"] != 2 {
		t.Errorf("counts by group %v, model %v, owner %v", rep.ByGroup, rep.ByModel, rep.ByOwner)
	}
	if len(f.alerts) != 1 || f.alerts[0].Advisory.ID != "OSV-2026-0001" {
		t.Fatalf("alerts %d, want one for the new advisory", len(f.alerts))
	}

	// dev-a installs 1.1.0 (its campaign) and attests it, in the same TPM
	// boot (the PCR extends the 1.0.0 measurement): it drops off. A record
	// without a verified quote changes nothing.
	f.hist.extended("dev-a", img2, t0.Add(2*time.Hour), "1.1.0")
	f.hist["dev-a"] = append([]attest.Record{{Time: t0.Add(3 * time.Hour), DeviceID: "dev-a", Result: "fail", Firmware: "1.0.0"}}, f.hist["dev-a"]...)
	rep, err = f.svc.Report(ctx, "OSV-2026-0001")
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(rep.Devices); !slices.Equal(got, []string{"dev-b"}) {
		t.Fatalf("after dev-a attested 1.1.0: exposed %v, want [dev-b]", got)
	}
	fs, err := f.svc.Query(ctx, "pkg:deb/debian/openssl", ">= 3.0.8")
	if err != nil || !slices.Equal(ids(fs), []string{"dev-a"}) || !fs[0].FirstSeen.Equal(t0.Add(2*time.Hour)) || fs[0].Release != r2.ID {
		t.Fatalf("devices on openssl >= 3.0.8: %+v (%v), want dev-a on %s since its update", fs, err, r2.ID)
	}
	// Importing the same advisory again raises no second alert.
	if _, err := f.svc.ImportAdvisory(ctx, raw); err != nil || len(f.alerts) != 1 {
		t.Fatalf("re-import: %v, %d alerts", err, len(f.alerts))
	}
	if _, err := f.svc.Report(ctx, "OSV-2099-0"); !errors.Is(err, exposure.ErrNotFound) {
		t.Errorf("Report of an unknown advisory: %v", err)
	}

	// dev-b then measures an image of no release in the same boot: its
	// release becomes unknown, whatever it claims.
	hb := history{"dev-b": f.hist["dev-b"]}
	hb.extended("dev-b", []byte("not a release"), t0.Add(4*time.Hour), "1.0.0")
	f.hist["dev-b"] = hb["dev-b"]
	if r, err := f.svc.Report(ctx, "OSV-2026-0001"); err != nil || len(r.Devices) != 0 || r.Unknown != 3 {
		t.Fatalf("after dev-b measured an unknown image: %+v, %v; want no exposed device, 3 unknown", r, err)
	}

	// Exported and parsed back.
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back exposure.Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Devices) != 1 || back.Devices[0] != rep.Devices[0] || back.Advisory.ID != "OSV-2026-0001" {
		t.Errorf("JSON round trip: %+v", back.Devices)
	}
	var cb bytes.Buffer
	if err := rep.WriteCSV(&cb); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&cb).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0][2] != "device_id" || rows[1][0] != "OSV-2026-0001" || rows[1][1] != "CVE-2026-0001" ||
		rows[1][2] != "dev-b" || rows[1][8] != "pkg:deb/debian/openssl@3.0.1?arch=arm64" || rows[1][10] != "3.0.8" || rows[1][11] != r2.ID ||
		rows[1][14] != "cmp-new" || rows[1][15] != "downloading" {
		t.Errorf("CSV rows %q", rows)
	}
}

func ids(fs []exposure.Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.DeviceID)
	}
	return out
}

// TestNoSBOM: a release whose manifest binds no SBOM takes none.
func TestNoSBOM(t *testing.T) {
	f := newFixture(t)
	img := []byte("image")
	m := &manifest.Manifest{Name: "gw-os", Version: "1.0.0", SecurityVersion: 1, Models: []string{"gw-1"}, Size: int64(len(img)),
		SHA256: sha256.Sum256(img), Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
	raw, bundles := signtest.Release(t, m, f.signer)
	r, err := f.store.Upload(context.Background(), "alice", raw, bundles, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	sbom, _ := os.ReadFile("testdata/gw-os-1.0.0.cdx.json")
	if _, err := f.svc.SetSBOM(context.Background(), r, sbom); !errors.Is(err, exposure.ErrNoSBOM) {
		t.Fatalf("SetSBOM on a release without SBOM: %v, want ErrNoSBOM", err)
	}
}

// TestSPDXRelease: a release whose manifest binds an SPDX JSON SBOM takes
// that SBOM, read as SPDX; its components match advisories as CycloneDX
// ones do.
func TestSPDXRelease(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	img := []byte("gw-os spdx image")
	sbom, err := os.ReadFile("testdata/gw-os-1.0.0.spdx.json")
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Name: "gw-os", Version: "1.0.0", SecurityVersion: 1, Models: []string{"gw-1"}, Size: int64(len(img)),
		SHA256: sha256.Sum256(img), Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second),
		SBOM: &manifest.SBOM{Format: manifest.SBOMSPDX, SHA256: sha256.Sum256(sbom)}}
	raw, bundles := signtest.Release(t, m, f.signer)
	r, err := f.store.Upload(ctx, "alice", raw, bundles, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := f.svc.SetSBOM(ctx, r, sbom)
	if err != nil || len(cs) != 2 || cs[0].Name != "openssl" {
		t.Fatalf("SetSBOM of an SPDX release: %+v, %v", cs, err)
	}
	f.hist.attested("dev-a", img, time.Now(), "1.0.0")
	raw, err = os.ReadFile("testdata/OSV-2026-0001.json")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := f.svc.ImportAdvisory(ctx, raw)
	if err != nil || !slices.Equal(ids(rep.Devices), []string{"dev-a"}) {
		t.Fatalf("advisory against the SPDX release: %+v, %v", rep, err)
	}
}

// TestAttestedRollback: a device becomes exposed after the advisory was
// imported — it rolls back to the affected release, or attests it for the
// first time — and its verdict raises the alert for that advisory, once
// per change of release: the same release attested again, or a verdict
// without a verified quote, raises nothing more.
func TestAttestedRollback(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	img1, img2 := bytes.Repeat([]byte("gw-os 1.0.0 "), 100), bytes.Repeat([]byte("gw-os 1.1.0 "), 100)
	r1, sbom1 := f.release(t, "1.0.0", 1, img1, "testdata/gw-os-1.0.0.cdx.json")
	r2, sbom2 := f.release(t, "1.1.0", 2, img2, "testdata/gw-os-1.1.0.cdx.json")
	for _, x := range []struct {
		r    *firmware.Release
		sbom []byte
	}{{r1, sbom1}, {r2, sbom2}} {
		if _, err := f.svc.SetSBOM(ctx, x.r, x.sbom); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	f.hist.attested("dev-a", img2, t0, "1.1.0") // fixed release
	raw, err := os.ReadFile("testdata/OSV-2026-0001.json")
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := f.svc.ImportAdvisory(ctx, raw); err != nil || len(rep.Devices) != 0 || len(f.alerts) != 0 {
		t.Fatalf("import with no exposed device: %+v, %v, %d alerts", rep, err, len(f.alerts))
	}
	attested := func(id string) {
		t.Helper()
		if err := f.svc.Attested(ctx, &f.hist[id][0]); err != nil {
			t.Fatal(err)
		}
	}
	attested("dev-a") // the release seen at import: nothing new
	if len(f.alerts) != 0 {
		t.Fatalf("%d alerts for a device on the fixed release", len(f.alerts))
	}

	// dev-a rolls back to 1.0.0 (a TPM reset: a new boot).
	f.hist.attested("dev-a", img1, t0.Add(time.Hour), "1.0.0")
	attested("dev-a")
	if len(f.alerts) != 1 {
		t.Fatalf("after dev-a rolled back: %d alerts, want 1", len(f.alerts))
	}
	r := f.alerts[0]
	if r.Advisory.ID != "OSV-2026-0001" || !slices.Equal(ids(r.Devices), []string{"dev-a"}) || r.Devices[0].Release != r1.ID ||
		r.Devices[0].Group != "north" || r.Devices[0].Fixed != "3.0.8" || r.ByModel["gw-1"] != 1 {
		t.Fatalf("alert %+v", r)
	}
	// The same release attested again, and a verdict without a verified
	// quote: no second alert.
	f.hist.attested("dev-a", img1, t0.Add(2*time.Hour), "1.0.0")
	attested("dev-a")
	f.hist["dev-a"] = append([]attest.Record{{Time: t0.Add(3 * time.Hour), DeviceID: "dev-a", Result: "fail"}}, f.hist["dev-a"]...)
	attested("dev-a")
	if len(f.alerts) != 1 {
		t.Fatalf("dev-a attested the same release again: %d alerts, want 1", len(f.alerts))
	}

	// dev-d attests for the first time, running 1.0.0.
	f.hist.attested("dev-d", img1, t0.Add(4*time.Hour), "1.0.0")
	attested("dev-d")
	if len(f.alerts) != 2 || !slices.Equal(ids(f.alerts[1].Devices), []string{"dev-d"}) {
		t.Fatalf("after dev-d first attested 1.0.0: %d alerts", len(f.alerts))
	}

	// dev-a updates to 1.1.0 (no alert), then rolls back again (one more).
	f.hist.attested("dev-a", img2, t0.Add(5*time.Hour), "1.1.0")
	attested("dev-a")
	if len(f.alerts) != 2 {
		t.Fatalf("after dev-a updated: %d alerts, want 2", len(f.alerts))
	}
	f.hist.attested("dev-a", img1, t0.Add(6*time.Hour), "1.0.0")
	attested("dev-a")
	if len(f.alerts) != 3 || f.alerts[2].Devices[0].DeviceID != "dev-a" {
		t.Fatalf("after dev-a rolled back again: %d alerts, want 3", len(f.alerts))
	}
}

// TestSBOMAfterAdvisory: devices run a release whose SBOM is attached only
// after the advisory was imported (their release's components were
// unknown): attaching it raises the advisory for them, once.
func TestSBOMAfterAdvisory(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	img1 := bytes.Repeat([]byte("gw-os 1.0.0 "), 100)
	r1, sbom1 := f.release(t, "1.0.0", 1, img1, "testdata/gw-os-1.0.0.cdx.json")
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	f.hist.attested("dev-a", img1, t0, "1.0.0")
	f.hist.attested("dev-c", img1, t0, "1.0.0")
	raw, err := os.ReadFile("testdata/OSV-2026-0001.json")
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := f.svc.ImportAdvisory(ctx, raw); err != nil || len(rep.Devices) != 0 || rep.Unknown != 4 {
		t.Fatalf("import before the SBOM: %+v, %v", rep, err)
	}
	for range 2 {
		if _, err := f.svc.SetSBOM(ctx, r1, sbom1); err != nil {
			t.Fatal(err)
		}
	}
	if len(f.alerts) != 1 {
		t.Fatalf("%d alerts after attaching the SBOM (twice), want 1", len(f.alerts))
	}
	r := f.alerts[0]
	if r.Advisory.ID != "OSV-2026-0001" || !slices.Equal(ids(r.Devices), []string{"dev-a", "dev-c"}) || r.ByOwner["acme"] != 1 || r.ByOwner["globex"] != 1 {
		t.Fatalf("alert %+v", r)
	}
}
