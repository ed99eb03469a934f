package rollout

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/exposure"
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
