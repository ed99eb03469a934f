package server

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/pkg/config"
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

// TestBuildSink: every sink type is built with its transport, and bad
// entries are refused with a message that names the problem but never a
// secret.
func TestBuildSink(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("s3cr3t-value\n"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)

	rt, info, closer, err := buildSink(AlertSink{Name: "am", Type: SinkAlertmanager, URL: "http://am:9093", SecretFile: secret, MinSeverity: "warning"})
	if err != nil || !slices.Contains(rt.Transitions, alert.TransitionRepeat) || rt.MinSeverity != alert.SeverityWarning || closer != nil || info.Target != "http://am:9093" {
		t.Fatalf("alertmanager: %+v %+v %v", rt, info, err)
	}
	rt, info, _, err = buildSink(AlertSink{Name: "hook", Type: SinkWebhook, URL: "https://hooks.example/x", SecretFile: secret, Attempts: 2})
	if err != nil || !info.Signed || rt.Attempts != 2 || slices.Contains(rt.Transitions, alert.TransitionRepeat) {
		t.Fatalf("webhook: %+v %+v %v", rt, info, err)
	}
	_, info, closer, err = buildSink(AlertSink{Name: "siem", Type: SinkSyslog, Addr: "127.0.0.1:6514", TLS: true})
	if err != nil || closer == nil || info.Target != "127.0.0.1:6514" {
		t.Fatalf("syslog: %+v %v", info, err)
	}
	closer()

	for _, c := range []struct {
		sink AlertSink
		want string
	}{
		{AlertSink{Type: SinkWebhook, URL: "http://x"}, "name is required"},
		{AlertSink{Name: "x", Type: "pagerduty"}, "not alertmanager, syslog or webhook"},
		{AlertSink{Name: "x", Type: SinkWebhook, URL: "ftp://x"}, "http or https"},
		{AlertSink{Name: "x", Type: SinkSyslog, Addr: "no-port"}, "host:port"},
		{AlertSink{Name: "x", Type: SinkWebhook, URL: "http://x", MinSeverity: "urgent"}, "min_severity"},
		{AlertSink{Name: "x", Type: SinkWebhook, URL: "http://x", Attempts: -1}, "negative"},
		{AlertSink{Name: "x", Type: SinkWebhook, URL: "http://x", SecretFile: filepath.Join(dir, "missing")}, "secret_file"},
		{AlertSink{Name: "x", Type: SinkWebhook, URL: "http://x", SecretFile: empty}, "secret_file is empty"},
		{AlertSink{Name: "x", Type: SinkSyslog, Addr: "h:1", TLSCAFile: notPEM}, "no PEM certificate"},
	} {
		_, _, _, err := buildSink(c.sink)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.sink, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("error reveals the secret: %v", err)
		}
	}
}

func testConfig(dir string, sinks ...AlertSink) Config {
	return Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", Hostnames: []string{"localhost"}, AlertSinks: sinks}
}

// closeUnstarted releases what New opened for a server that never ran.
func (s *Server) closeUnstarted() {
	s.closeStores()
	s.apiLn.Close()
}

// TestDefaultRulesOnce: the first start installs the default rules; a rule
// an operator deleted stays deleted across a restart; a bad sink entry
// stops New with an error naming the entry.
func TestDefaultRulesOnce(t *testing.T) {
	dir := t.TempDir()
	s, err := New(testConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := len(alert.DefaultRules()) + len(serverRules())
	if n := len(s.Alerts.Rules()); n != want {
		t.Fatalf("%d rules installed, want %d", n, want)
	}
	if err := s.Alerts.DeleteRule("new-process"); err != nil {
		t.Fatal(err)
	}
	s.closeUnstarted()

	s, err = New(testConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Alerts.Rule("new-process"); err == nil || len(s.Alerts.Rules()) != want-1 {
		t.Fatalf("after a restart: %d rules, deleted rule back: %v", len(s.Alerts.Rules()), err == nil)
	}
	s.closeUnstarted()

	_, err = New(testConfig(dir, AlertSink{Name: "a", Type: SinkWebhook, URL: "http://x"}, AlertSink{Name: "a", Type: SinkWebhook, URL: "http://y"}), nil)
	if err == nil || !strings.Contains(err.Error(), `alert_sinks[1] "a"`) || !strings.Contains(err.Error(), "name used twice") {
		t.Fatalf("duplicate sink names: %v", err)
	}
	// The failed New released the stores: the fleet starts again.
	s, err = New(testConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.closeUnstarted()
}

// TestCursorStore: cursors survive reopening, concurrent writers each
// keep their own, and an unknown device has none.
func TestCursorStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), TelemetryFile)
	c, err := openCursors(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			id := fmt.Sprintf("dev%02d", i)
			for n := range 20 {
				if err := c.SetCursor(id, telemetry.Cursor{Stream: bytes.Repeat([]byte{byte(i)}, 16), Through: uint64(n + 1), Reported: uint64(i)}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	c.close()
	if c, err = openCursors(path); err != nil {
		t.Fatal(err)
	}
	defer c.close()
	for i := range 8 {
		cur, ok, err := c.Cursor(fmt.Sprintf("dev%02d", i))
		if err != nil || !ok || cur.Through != 20 || cur.Reported != uint64(i) || !bytes.Equal(cur.Stream, bytes.Repeat([]byte{byte(i)}, 16)) {
			t.Fatalf("device %d: %+v %v %v", i, cur, ok, err)
		}
	}
	if _, ok, err := c.Cursor("unknown"); ok || err != nil {
		t.Fatalf("unknown device: %v %v", ok, err)
	}
}

// BenchmarkObserve: accepted telemetry through the alert feed — name
// mapping and evaluation of the default rules — per point of a realistic
// size (about 40 metrics and two port sets), 100 devices.
func BenchmarkObserve(b *testing.B) {
	s := &Server{cfg: Config{DeviceLifetime: config.Duration(24 * time.Hour)}, log: discard(), tel: &telemetryParts{nearExpiry: map[string]bool{}}}
	e, err := alert.Open(alert.Config{Path: filepath.Join(b.TempDir(), AlertsFile), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	s.Alerts = e
	for _, r := range append(alert.DefaultRules(), serverRules()...) {
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
		s.observe(telemetry.Batch{DeviceID: fmt.Sprintf("dev%03d", i%devices), Points: []telemetry.Point{point(i / devices)}})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "points/s")
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
