package console_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestExposurePage: the exposure page lists the imported advisories and,
// for the one chosen, the devices whose attested release holds the
// affected component (a device that only claims the release is not
// listed), with the fixed version, the campaign column and the CSV
// export, which the API serves to the same session.
func TestExposurePage(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	vera := ff.login("vera", auth.RoleViewer)
	ctx := context.Background()

	image := []byte("gw-os 3.0.0 image")
	sbom := []byte(`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"openssl","version":"3.0.1","purl":"pkg:deb/debian/openssl@3.0.1"}]}`)
	m := &manifest.Manifest{Name: "gw-os", Version: "3.0.0", SecurityVersion: 1, Models: []string{"gw-1"}, Size: int64(len(image)),
		SHA256: sha256.Sum256(image), Expires: ff.clock.Now().Add(24 * time.Hour).UTC().Truncate(time.Second),
		SBOM: &manifest.SBOM{Format: manifest.SBOMCycloneDX, SHA256: sha256.Sum256(sbom)}}
	raw, bundles := signtest.Release(t, m, ff.signer)
	rel, err := ff.releases.Upload(ctx, "ada", raw, bundles, bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ff.exposure.SetSBOM(ctx, rel, sbom); err != nil {
		t.Fatal(err)
	}
	runs := ff.addDevice(1, inventory.StateActive, func(d *inventory.Device) { d.Group = "kiosks" })
	claims := ff.addDevice(2, inventory.StateActive, func(d *inventory.Device) { d.Firmware = "3.0.0" })
	d := sha256.Sum256(image)
	pcr := sha256.Sum256(append(make([]byte, 32), d[:]...))
	ff.attested[runs.ID] = []attest.Record{{Time: ff.clock.Now(), DeviceID: runs.ID, Result: "pass",
		PCRs: map[string]map[int]string{"sha256": {14: hex.EncodeToString(pcr[:])}}}}

	mustContain(t, body(t, vera.get("/exposure"), http.StatusOK), "No advisory imported yet")
	if _, err := ff.exposure.ImportAdvisory(ctx, []byte(`{"id":"OSV-2026-7","aliases":["CVE-2026-7"],"summary":"openssl overrun",`+
		`"affected":[{"package":{"purl":"pkg:deb/debian/openssl"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.8"}]}]}]}`)); err != nil {
		t.Fatal(err)
	}
	mustContain(t, body(t, vera.get("/exposure"), http.StatusOK), `href="/exposure?advisory=OSV-2026-7"`)
	page := body(t, vera.get("/exposure?advisory=OSV-2026-7"), http.StatusOK)
	mustContain(t, page, "CVE-2026-7", "openssl overrun", "1 exposed", "1 of unknown release", "pkg:deb/debian/openssl@3.0.1", "3.0.8",
		"kiosks", "none available", `href="/api/v1/advisories/OSV-2026-7/report?format=csv"`)
	mustNotContain(t, page, "/devices/"+claims.ID)
	mustContain(t, body(t, vera.get("/exposure?advisory=OSV-2099-1"), http.StatusNotFound))

	csv := vera.get("/api/v1/advisories/OSV-2026-7/report?format=csv")
	if csv.Code != http.StatusOK || csv.Header().Get("Content-Type") != "text/csv" {
		t.Fatalf("CSV export: %d %s", csv.Code, csv.Header().Get("Content-Type"))
	}
	mustContain(t, csv.Body.String(), "advisory,aliases,device_id", "OSV-2026-7,CVE-2026-7,"+runs.ID)
}
