package console_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// BenchmarkCampaignPage renders a running campaign of 1,000 devices in
// waves of 1, 10, 100, ... with a mix of steps: its definition, every
// wave's bars and the first page of devices.
func BenchmarkCampaignPage(b *testing.B) {
	ff := newFleetFixture(b, fleetOptions{noApprovals: true})
	op := ff.login("olga", auth.RoleOperator)
	for i := range 1000 {
		ff.addDevice(i, inventory.StateActive, func(d *inventory.Device) { d.Group = "fleet" })
	}
	rel := ff.approved("ada", "rita", "2.0.0", 2)
	c, err := ff.campaigns.Create(context.Background(), campaign.Definition{Name: "big", Release: rel.ID,
		Targets: campaign.Selector{Group: "fleet"}, Waves: campaign.Waves{Canary: 1, Growth: 10}, FailureThreshold: 1,
		SuccessThreshold: 0.5}, "olga", "bench")
	if err != nil {
		b.Fatal(err)
	}
	if err := ff.campaigns.Start(c.ID, time.Time{}, "olga", "bench"); err != nil {
		b.Fatal(err)
	}
	for n := 0; n < 200; n++ { // the engine announces; half the announced devices commit
		id := awaitAnnounced(b, ff, c.ID)
		if n%2 == 0 {
			ff.report(c.ID, id, campaign.StepCommitted, 0, "2.0.0")
		} else {
			ff.report(c.ID, id, campaign.StepDownloading, 0, "")
		}
	}
	path := "/campaigns/" + c.ID
	if w := op.get(path); w.Code != http.StatusOK {
		b.Fatalf("%s: %d", path, w.Code)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if w := op.get(path); w.Code != http.StatusOK {
			b.Fatalf("%s: %d", path, w.Code)
		}
	}
}

// BenchmarkDevicePageSections renders a device page with every section:
// telemetry charts (an hour of points), firmware history across 50
// campaigns, the risk score and the audit trail.
func BenchmarkDevicePageSections(b *testing.B) {
	ff := newFleetFixture(b, fleetOptions{noApprovals: true})
	admin := ff.login("ada", auth.RoleAdmin)
	d := ff.addDevice(1, inventory.StateActive, func(d *inventory.Device) { d.Group = "g" })
	rel := ff.approved("rita", "ravi", "2.0.0", 2)
	for i := range 50 {
		if _, err := ff.campaigns.Create(context.Background(), campaign.Definition{Name: fmt.Sprint("c", i), Release: rel.ID,
			Targets: campaign.Selector{Group: "g"}}, "ada", "bench"); err != nil {
			b.Fatal(err)
		}
	}
	var points []map[string]float64
	for i := range 120 {
		points = append(points, map[string]float64{"cpu.busy": float64(i%10) / 10, "mem.used_ratio": 0.4})
	}
	ff.ingest(d.ID, bytes.Repeat([]byte{1}, wire.TelemetryStreamLen), 1, points, 30*time.Second)
	path := "/devices/" + d.ID + "?telemetry=1h"
	if w := admin.get(path); w.Code != http.StatusOK {
		b.Fatalf("%s: %d", path, w.Code)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if w := admin.get(path); w.Code != http.StatusOK {
			b.Fatalf("%s: %d", path, w.Code)
		}
	}
}
