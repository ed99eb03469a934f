package feed

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// TestAlertInputs: telemetry names are mapped to what the default rules
// expect — cpu in percent, ports as "proto/port" from both listen sets —
// while every metric and set stays available under its own name.
func TestAlertInputs(t *testing.T) {
	p := &telemetry.Point{
		Metrics: map[string]float64{"cpu.busy": 0.25, "mem.used_ratio": 0.5},
		Sets:    map[string][]string{"listen.tcp": {"22", "443"}, "listen.udp": {"53"}},
	}
	m, sets := alertInputs(p)
	if m[alert.MetricCPU] != 25 || m["cpu.busy"] != 0.25 || m["mem.used_ratio"] != 0.5 {
		t.Fatalf("metrics %v", m)
	}
	ports := slices.Sorted(slices.Values(sets[alert.SetPorts]))
	if !slices.Equal(ports, []string{"tcp/22", "tcp/443", "udp/53"}) || len(sets["listen.tcp"]) != 2 {
		t.Fatalf("sets %v", sets)
	}
	// Reported but empty: "no listening port", which new-member rules see.
	_, sets = alertInputs(&telemetry.Point{Sets: map[string][]string{"listen.tcp": {}}})
	if v, ok := sets[alert.SetPorts]; !ok || len(v) != 0 {
		t.Fatalf("empty listen set: %v", sets)
	}
	// Not reported at all: not evaluated (a device without the collector).
	m, sets = alertInputs(&telemetry.Point{Metrics: map[string]float64{"load.1": 1}})
	if _, ok := sets[alert.SetPorts]; ok {
		t.Fatal("ports reported for a point without listening sets")
	}
	if _, ok := m[alert.MetricCPU]; ok {
		t.Fatal("cpu reported for a point without cpu.busy")
	}
}

// BenchmarkObserve: accepted telemetry through the alert feed — name
// mapping and evaluation of the default rules — per point of a realistic
// size (about 40 metrics and two port sets), 100 devices.
func BenchmarkObserve(b *testing.B) {
	e, err := alert.Open(alert.Config{Path: filepath.Join(b.TempDir(), "alerts.db"), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	f := New(Config{Engine: e, CertLifetime: 24 * time.Hour})
	for _, r := range append(alert.DefaultRules(), Rules()...) {
		if _, err := e.PutRule(r); err != nil {
			b.Fatal(err)
		}
	}
	point := func(i int) telemetry.Point {
		m := map[string]float64{"cpu.busy": 0.2 + float64(i%7)/100, "mem.used_ratio": 0.4, "tpm.ok": 1, "cert.expiry_seconds": 80000, "auth.failures": 0}
		for j := range 35 {
			m[fmt.Sprintf("net.m%02d", j)] = float64(i * j)
		}
		return telemetry.Point{Seq: uint64(i), Time: time.Unix(1_800_000_000+int64(i)*30, 0), Metrics: m,
			Sets: map[string][]string{"listen.tcp": {"22", "443", "8883"}, "listen.udp": {"53"}}}
	}
	const devices = 100
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		f.observe(telemetry.Batch{DeviceID: fmt.Sprintf("dev%03d", i%devices), Points: []telemetry.Point{point(i / devices)}})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "points/s")
}

// TestExposureAlertPerAdvisory: the default vulnerability-exposed rule
// keeps one open alert per device and advisory: the same advisory raised
// again for a device is absorbed, another advisory opens its own alert.
func TestExposureAlertPerAdvisory(t *testing.T) {
	e, err := alert.Open(alert.Config{Path: filepath.Join(t.TempDir(), "alerts.db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, r := range alert.DefaultRules() {
		if _, err := e.PutRule(r); err != nil {
			t.Fatal(err)
		}
	}
	f := New(Config{Engine: e, CertLifetime: 24 * time.Hour})
	at := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	for i, adv := range []string{"OSV-1", "OSV-1", "OSV-2"} {
		f.AttestAlert(attest.Alert{Time: at.Add(time.Duration(i) * time.Minute), DeviceID: "dev-1", Kind: alert.EventVulnerabilityExposed,
			Severity: string(alert.SeverityWarning), Summary: adv + ": affected", Attrs: map[string]string{"advisory": adv}})
	}
	got, _, err := e.Alerts(alert.Query{DeviceID: "dev-1", RuleID: "vulnerability-exposed", Open: true})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, a := range got {
		keys = append(keys, a.Key)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"OSV-1", "OSV-2"}) {
		t.Fatalf("open alerts keyed %v, want one per advisory [OSV-1 OSV-2]", keys)
	}
}
