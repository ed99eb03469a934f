package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// newAlertAPI serves the alert and telemetry routes over a real engine
// and ingester.
func newAlertAPI(t *testing.T) (*httptest.Server, *alert.Engine, *telemetry.Ingester) {
	t.Helper()
	inv := inventorytest.Open(t)
	e, err := alert.Open(alert.Config{Path: filepath.Join(t.TempDir(), "alerts.db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	in, err := telemetry.New(telemetry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, Config{Inventory: inv, Alerts: e, Telemetry: in, Metrics: metrics.Handler(in.Metrics(), nil),
		AlertSinks: []AlertSink{{Name: "siem", Type: "syslog", Target: "127.0.0.1:6514"}}})
	return srv, e, in
}

const dev1 = "0123456789abcdef0123456789abcdef"

// TestAlertRoutes: list with filters and paging, one alert, acknowledge
// and resolve (with the conflicts and bad input they refuse), rules and
// their validation, dead letters and sinks.
func TestAlertRoutes(t *testing.T) {
	srv, e, _ := newAlertAPI(t)
	resp, body := call(t, srv, "PUT", "/api/v1/alerts/rules/hot", token, `{"severity":"warning","threshold":{"metric":"cpu","op":">","value":90}}`)
	if resp.StatusCode != 200 || !strings.Contains(body, `"name":"hot"`) {
		t.Fatalf("put rule: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "PUT", "/api/v1/alerts/rules/hot", token, `{"id":"other","severity":"warning","threshold":{"metric":"cpu","op":">","value":90}}`)
	wantProblem(t, resp, body, 400, "differs from the path")
	resp, body = call(t, srv, "PUT", "/api/v1/alerts/rules/bad", token, `{"severity":"loud"}`)
	wantProblem(t, resp, body, 400, "severity")
	if strings.Contains(body, "alert: invalid rule") {
		t.Fatalf("package prefix in a public detail: %s", body)
	}

	at := time.Unix(1_800_000_000, 0)
	for i, dev := range []string{dev1, "fedcba9876543210fedcba9876543210", dev1} {
		if err := e.Observe(dev, at.Add(time.Duration(i)*time.Minute), map[string]float64{"cpu": 95}, nil); err != nil {
			t.Fatal(err)
		}
	}
	var list AlertList
	resp, body = call(t, srv, "GET", "/api/v1/alerts?device="+dev1, token, "")
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list.Alerts) != 1 || list.Alerts[0].State != alert.StateFiring {
		t.Fatalf("alerts of %s: %d %s", dev1, resp.StatusCode, body)
	}
	id := strconv.FormatUint(list.Alerts[0].ID, 10)
	// Pages of one, newest first, until the cursor runs out.
	var ids []uint64
	for before, pages := uint64(0), 0; pages < 5; pages++ {
		_, body = call(t, srv, "GET", "/api/v1/alerts?limit=1&before="+strconv.FormatUint(before, 10), token, "")
		if json.Unmarshal([]byte(body), &list) != nil || len(list.Alerts) > 1 {
			t.Fatalf("page: %s", body)
		}
		for _, a := range list.Alerts {
			ids = append(ids, a.ID)
		}
		if before = list.Next; before == 0 {
			break
		}
	}
	if len(ids) != 2 || ids[0] <= ids[1] {
		t.Fatalf("paged through %v, want two alerts newest first", ids)
	}
	for _, q := range []string{"state=loud", "limit=0x", "limit=5000", "before=-1"} {
		resp, body = call(t, srv, "GET", "/api/v1/alerts?"+q, token, "")
		wantProblem(t, resp, body, 400, "")
	}

	resp, body = call(t, srv, "POST", "/api/v1/alerts/"+id+"/ack", token, `{"note":"looking"}`)
	if resp.StatusCode != 200 || !strings.Contains(body, `"state":"acknowledged"`) || !strings.Contains(body, `"acked_by":"admin"`) {
		t.Fatalf("ack: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/alerts?state=open&device="+dev1, token, "")
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list.Alerts) != 1 {
		t.Fatalf("open alerts: %s", body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/alerts/"+id+"/resolve", token, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"state":"resolved"`) {
		t.Fatalf("resolve without a body: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/alerts/"+id+"/resolve", token, `{"note":"again"}`)
	wantProblem(t, resp, body, 409, "already resolved")
	resp, body = call(t, srv, "POST", "/api/v1/alerts/"+id+"/ack", token, `{"note":"`+strings.Repeat("x", 1025)+`"}`)
	wantProblem(t, resp, body, 400, "at most 1024")
	for _, p := range []string{"/api/v1/alerts/999", "/api/v1/alerts/no-such-thing", "/api/v1/alerts/rules/no-such-thing"} {
		resp, body = call(t, srv, "GET", p, token, "")
		wantProblem(t, resp, body, 404, "no ")
	}

	resp, body = call(t, srv, "GET", "/api/v1/alerts/rules", token, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"id":"hot"`) {
		t.Fatalf("rules: %s", body)
	}
	resp, _ = call(t, srv, "DELETE", "/api/v1/alerts/rules/hot", token, "")
	if resp.StatusCode != 204 {
		t.Fatalf("delete rule: %d", resp.StatusCode)
	}
	resp, body = call(t, srv, "DELETE", "/api/v1/alerts/rules/hot", token, "")
	wantProblem(t, resp, body, 404, "no rule")

	resp, body = call(t, srv, "GET", "/api/v1/alerts/deadletters", token, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"dead_letters":[]`) {
		t.Fatalf("dead letters: %s", body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/alerts/deadletters/7/redrive", token, "")
	wantProblem(t, resp, body, 404, "no dead letter")
	resp, body = call(t, srv, "POST", "/api/v1/alerts/deadletters/redrive", token, `{"route":"siem"}`)
	if resp.StatusCode != 200 || !strings.Contains(body, `"queued":0`) {
		t.Fatalf("redrive all: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/alerts/sinks", token, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"target":"127.0.0.1:6514"`) {
		t.Fatalf("sinks: %s", body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/alerts", "", "")
	wantProblem(t, resp, body, 401, "bearer token")
}

// TestTelemetryRoutes: a device's status and series after a real batch,
// the since forms, the 404s, and the metrics page.
func TestTelemetryRoutes(t *testing.T) {
	srv, _, in := newAlertAPI(t)
	now := time.Now()
	batch := &wire.TelemetryBatch{Stream: []byte("0123456789abcdef"), First: 1}
	for i := range 3 {
		p := wire.TelemetryPoint{Time: now.Add(time.Duration(i-3) * time.Second).UnixMilli()}
		p.SetMetric("cpu.busy", 0.1*float64(i+1))
		p.SetMembers("listen.tcp", []string{"22"})
		batch.Points = append(batch.Points, p)
	}
	b, err := wire.Encode(wire.TypeTelemetryBatch, nil, now, batch)
	if err != nil {
		t.Fatal(err)
	}
	env, _ := wire.Decode(b)
	if ack, err := in.Ingest(dev1, env); err != nil || ack.Through != 3 {
		t.Fatalf("ingest: %+v %v", ack, err)
	}

	resp, body := call(t, srv, "GET", "/api/v1/devices/"+dev1+"/telemetry", token, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"ingested":3`) || !strings.Contains(body, `"listen.tcp":["22"]`) {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	var s TelemetrySeries
	for _, since := range []string{"", "&since=1h", "&since=" + now.Add(-time.Minute).UTC().Format(time.RFC3339)} {
		resp, body = call(t, srv, "GET", "/api/v1/devices/"+dev1+"/telemetry/series?metric=cpu.busy"+since, token, "")
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &s) != nil || len(s.Samples) != 3 || s.Samples[2].Value != 0.30000000000000004 && s.Samples[2].Value != 0.3 {
			t.Fatalf("series%s: %d %s", since, resp.StatusCode, body)
		}
	}
	resp, body = call(t, srv, "GET", "/api/v1/devices/"+dev1+"/telemetry/series?metric=cpu.busy&since=soon", token, "")
	wantProblem(t, resp, body, 400, "since")
	resp, body = call(t, srv, "GET", "/api/v1/devices/"+dev1+"/telemetry/series?metric=Bad-Name", token, "")
	wantProblem(t, resp, body, 400, "metric")
	resp, body = call(t, srv, "GET", "/api/v1/devices/"+dev1+"/telemetry/series?metric=listen.tcp.count", token, "")
	wantProblem(t, resp, body, 404, "series")
	resp, body = call(t, srv, "GET", "/api/v1/devices/no-such-thing/telemetry", token, "")
	wantProblem(t, resp, body, 404, "no telemetry")

	resp, body = call(t, srv, "GET", "/metrics", token, "")
	if resp.StatusCode != 200 || !strings.Contains(body, "sigil_telemetry_points_ingested_total 3") {
		t.Fatalf("metrics: %d %s", resp.StatusCode, body)
	}
	resp, _ = call(t, srv, "GET", "/metrics", "", "")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("metrics without a token: %d", resp.StatusCode)
	}
}

// TestAlertRoutesDisabled: without an engine or ingester the routes
// answer 501, not a panic.
func TestAlertRoutesDisabled(t *testing.T) {
	srv, _ := newAPI(t)
	for _, p := range []string{"GET /api/v1/alerts", "POST /api/v1/alerts/1/ack", "POST /api/v1/alerts/1/resolve", "GET /api/v1/alerts/rules",
		"GET /api/v1/alerts/sinks", "GET /api/v1/devices/" + dev1 + "/telemetry", "GET /metrics"} {
		method, path, _ := strings.Cut(p, " ")
		resp, body := call(t, srv, method, path, token, "")
		wantProblem(t, resp, body, 501, "not enabled")
	}
}
