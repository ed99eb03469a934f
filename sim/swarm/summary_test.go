package swarm

import (
	"errors"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestSummarize(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	var outcomes []Outcome
	for i := range 100 {
		o := Outcome{Index: i, Started: t0, Sent: map[string]uint64{wire.TypeHello: 1, wire.TypeTelemetryBatch: 2},
			Received: map[string]uint64{wire.TypeTelemetryAck: 2}, TelemetryPoints: 3, Dials: 2, Warnings: 1}
		if i < 90 {
			o.Active, o.TimeToActive, o.Connected = t0.Add(time.Duration(i+1)*time.Second), time.Duration(i+1)*time.Second, true
		}
		if i == 99 {
			o.Exited, o.Disconnects = errors.New("stopped"), 4
		}
		outcomes = append(outcomes, o)
	}
	outcomes = append(outcomes, Outcome{Index: 100}) // never started
	s := Summarize(outcomes)
	if s.Devices != 101 || s.Started != 100 || s.Active != 90 || s.Connected != 90 || s.Exited != 1 {
		t.Fatalf("counts %+v", s)
	}
	if s.Sent[wire.TypeHello] != 100 || s.Sent[wire.TypeTelemetryBatch] != 200 || s.Received[wire.TypeTelemetryAck] != 200 ||
		s.TelemetryPoints != 300 || s.Dials != 200 || s.Warnings != 100 || s.Disconnects != 4 {
		t.Fatalf("sums %+v", s)
	}
	if d := s.TimeToActive; d.P50 != 45*time.Second || d.P99 != 90*time.Second || d.Max != 90*time.Second {
		t.Fatalf("time to active %+v, want p50 45s, p99 and max 90s", d)
	}
	if z := Summarize(nil); z.Devices != 0 || z.TimeToActive != (Distribution{}) {
		t.Fatalf("empty: %+v", z)
	}
}
