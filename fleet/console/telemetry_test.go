package console_test

import (
	"bytes"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

var (
	cpuFigure = regexp.MustCompile(`<figure class="linechart" aria-labelledby="chart-cpu-busy-t">([\s\S]*?)</figure>`)
	polyline  = regexp.MustCompile(`<polyline class="series" points="([^"]+)">`)
)

// TestTelemetryCharts: telemetry sent through the real ingester appears on
// the device page as the latest values and SVG line charts with as many
// points as the series API holds for the chosen period; a device without
// telemetry says so.
func TestTelemetryCharts(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	viewer := ff.login("vera", auth.RoleViewer)
	d := ff.addDevice(1, inventory.StateActive, nil)
	quiet := ff.addDevice(2, inventory.StateActive, nil)
	var points []map[string]float64
	for i := range 40 {
		points = append(points, map[string]float64{"cpu.busy": float64(i%10) / 10, "mem.used_ratio": 0.5, "proc.count": 87, "uptime.seconds": 3600})
	}
	ff.ingest(d.ID, bytes.Repeat([]byte{7}, 16), 1, points, 30*time.Second)

	for _, window := range []string{"", "1h", "6h"} {
		path := "/devices/" + d.ID
		span := 15 * time.Minute
		if window != "" {
			path += "?telemetry=" + window
			span, _ = time.ParseDuration(window)
		}
		page := body(t, viewer.get(path), http.StatusOK)
		mustContain(t, page, "Telemetry", "CPU busy: <strong>90%</strong> now", "<dt>Memory used</dt><dd>50%</dd>", "<dt>Processes</dt><dd>87</dd>",
			"40 points received", "Memory used")
		fig := cpuFigure.FindStringSubmatch(page)
		if fig == nil {
			t.Fatalf("%s: no CPU chart:\n%s", path, page)
		}
		m := polyline.FindStringSubmatch(fig[1])
		if m == nil {
			t.Fatalf("%s: no CPU chart:\n%s", path, page)
		}
		samples, err := ff.tel.Series(d.ID, "cpu.busy", ff.clock.Now().Add(-span))
		if err != nil {
			t.Fatal(err)
		}
		if got := len(strings.Fields(m[1])); got != len(samples) || got == 0 {
			t.Errorf("%s: the chart draws %d points, the series holds %d", path, got, len(samples))
		}
	}
	mustContain(t, body(t, viewer.get("/devices/"+quiet.ID), http.StatusOK), "No telemetry from this device since the fleet started.")
	mustContain(t, body(t, viewer.get("/devices/"+d.ID+"?telemetry=<x>"), http.StatusOK), "last 15m")
}
