package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/metrics/metricstest"
	"github.com/sigil-iot/sigil/fleet/profile"
)

// TestDebugAddrLoopbackOnly: a debug_addr that is not loopback stops New
// (fleet/profile refuses it).
func TestDebugAddrLoopbackOnly(t *testing.T) {
	_, err := New(Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", DebugAddr: "0.0.0.0:0"}, nil)
	if !errors.Is(err, profile.ErrAddr) {
		t.Fatalf("New with a public debug_addr: %v", err)
	}
}

// TestDebugProfilesAndProcessMetrics: with debug_addr set, a running fleet
// serves Go's profiles there (and not on its API); without it, no
// listener. Its /metrics registry carries the process figures a fleet's
// cost per device is read from, and the messages the broker withheld.
func TestDebugProfilesAndProcessMetrics(t *testing.T) {
	s, err := New(Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not ready")
	}
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	base := "http://" + s.DebugAddr()
	if code, body := get(base + "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "heap") || !strings.Contains(body, "goroutine") {
		t.Fatalf("profile index: %d %.200s", code, body)
	}
	if code, body := get(base + "/debug/pprof/heap"); code != http.StatusOK || len(body) == 0 {
		t.Fatalf("heap profile: %d, %d bytes", code, len(body))
	}
	if code, _ := get(base + "/api/v1/devices"); code != http.StatusNotFound {
		t.Fatalf("the debug listener serves the API: %d", code)
	}

	fams, _ := metricstest.Scrape(t, metrics.Handler(s.Metrics, nil))
	for _, name := range []string{"process_resident_memory_bytes", "process_cpu_seconds_total", "go_memstats_heap_inuse_bytes", "go_goroutines"} {
		if v, ok := fams.Value(name); !ok || v <= 0 {
			t.Errorf("/metrics: %s = %v (present %v)", name, v, ok)
		}
	}

	// What the broker acknowledged but withheld from the fleet, evidence
	// dropped and enrollment requests refused on a full queue are counted,
	// so that sent = ingested + counted drops can be checked from outside.
	for _, name := range []string{"sigil_broker_messages_withheld_total", "sigil_attestation_evidence_dropped_total", "sigil_enroll_busy_total"} {
		if f := fams[name]; f == nil || f.GetType() != dto.MetricType_COUNTER {
			t.Errorf("/metrics lacks %s: %+v", name, f)
		}
	}

	off, err := New(Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer off.close()
	if a := off.DebugAddr(); a != "" {
		t.Fatalf("a debug listener without debug_addr: %s", a)
	}
}
