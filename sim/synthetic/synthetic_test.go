package synthetic_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/telemetry"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/synthetic"
)

func collect(t *testing.T, s *synthetic.System) wire.TelemetryPoint {
	t.Helper()
	var p wire.TelemetryPoint
	if err := s.Collect(context.Background(), &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("invalid point: %v", err)
	}
	return p
}

// TestDevicesDifferAndRepeat: a seed is a device: the same seed gives the
// same series, another seed another device.
func TestDevicesDifferAndRepeat(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return clock }
	series := func(seed uint64) string {
		s := synthetic.New(synthetic.Config{Seed: seed, Now: now})
		var out []string
		for range 20 {
			p := collect(t, s)
			out = append(out, fmt.Sprint(p.Metrics, p.Sets, p.Info))
		}
		return fmt.Sprint(out)
	}
	first, again := series(7), series(7)
	if first != again {
		t.Fatal("the same seed gave two series")
	}
	if first == series(8) {
		t.Fatal("two seeds gave the same series")
	}
}

// TestPlausibleAndStable: without changes the values stay in their bands
// and the listening ports stay put; counters only grow.
func TestPlausibleAndStable(t *testing.T) {
	s := synthetic.New(synthetic.Config{Seed: 42, Changes: -1})
	first := collect(t, s)
	prevRX := first.Metrics["net.rx_bytes"]
	for range 500 {
		p := collect(t, s)
		if c := p.Metrics["cpu.busy"]; c < 0 || c > 0.6 {
			t.Fatalf("cpu.busy %v outside the device's usual band", c)
		}
		if m := p.Metrics["mem.used_ratio"]; m <= 0 || m >= 1 {
			t.Fatalf("mem.used_ratio %v", m)
		}
		if !slices.Equal(p.Sets["listen.tcp"], first.Sets["listen.tcp"]) || p.Info["boot_id"] != first.Info["boot_id"] {
			t.Fatalf("ports or boot changed without a change: %v -> %v", first.Sets, p.Sets)
		}
		if rx := p.Metrics["net.rx_bytes"]; rx <= prevRX {
			t.Fatalf("net.rx_bytes went from %v to %v", prevRX, rx)
		} else {
			prevRX = rx
		}
	}
	if !slices.Contains(first.Sets["listen.tcp"], "22") {
		t.Fatalf("no sshd: %v", first.Sets["listen.tcp"])
	}
}

// TestChanges: changes come, as CPU spikes and new listening ports, each
// for a few points, and go.
func TestChanges(t *testing.T) {
	s := synthetic.New(synthetic.Config{Seed: 3, Changes: 0.2})
	base := collect(t, s).Sets["listen.tcp"]
	spikes, newPorts, back := 0, 0, 0
	for range 400 {
		p := collect(t, s)
		if p.Metrics["cpu.busy"] >= 0.85 {
			spikes++
		}
		switch tcp := p.Sets["listen.tcp"]; {
		case len(tcp) == len(base)+1:
			newPorts++
		case slices.Equal(tcp, base):
			back++
		default:
			t.Fatalf("ports %v from %v", tcp, base)
		}
	}
	if spikes == 0 || newPorts == 0 || back == 0 {
		t.Fatalf("%d spiking points, %d points with a new port, %d with the usual ports", spikes, newPorts, back)
	}
}

// TestThroughTheCollector: as the agent wires it, with its own sources
// after, the point fits.
func TestThroughTheCollector(t *testing.T) {
	agentValues := telemetry.SourceFunc(func(_ context.Context, p *wire.TelemetryPoint) error {
		for _, m := range []string{"tpm.ok", "cert.expiry_seconds", "sigild.connected", "sigild.sessions", "sigild.uptime_seconds",
			"telemetry.sent", "telemetry.acked", "telemetry.dropped", "telemetry.pending"} {
			p.SetMetric(m, 1)
		}
		return nil
	})
	c, err := telemetry.NewCollector(telemetry.Config{System: synthetic.New(synthetic.Config{Seed: 1}), Sources: []telemetry.Source{agentValues}})
	if err != nil {
		t.Fatal(err)
	}
	p := c.Collect(context.Background())
	if p.Metrics["telemetry.collect_errors"] != 0 || p.Metrics["mem.total_bytes"] == 0 || p.Metrics["tpm.ok"] != 1 {
		t.Fatalf("point %v", p.Metrics)
	}
}
