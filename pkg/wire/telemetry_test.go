package wire

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

func sampleBatch() *TelemetryBatch {
	p := TelemetryPoint{Time: 1_700_000_000_000}
	p.SetMetric("cpu.busy", 0.25)
	p.SetMetric("mem.used_ratio", 0.5)
	p.SetMembers("listen.tcp", []string{"443", "22", "22"})
	p.SetInfo("boot_id", "6b1c8f3e-1d2a-4c1b-9a57-0c3f1e2d4b5a")
	return &TelemetryBatch{Stream: bytes.Repeat([]byte{0x5a}, TelemetryStreamLen), First: 7, Points: []TelemetryPoint{p}, Acked: 6, Dropped: 2}
}

func TestTelemetryRoundTrip(t *testing.T) {
	b, err := Encode(TypeTelemetryBatch, nil, time.UnixMilli(1_700_000_001_000), sampleBatch())
	if err != nil {
		t.Fatal(err)
	}
	env, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	var got TelemetryBatch
	if err := DecodeBody(env, TypeTelemetryBatch, &got); err != nil {
		t.Fatal(err)
	}
	p := got.Points[0]
	if got.First != 7 || got.Last() != 7 || got.Acked != 6 || got.Dropped != 2 || p.Metrics["cpu.busy"] != 0.25 ||
		strings.Join(p.Sets["listen.tcp"], ",") != "22,443" || p.Info["boot_id"] == "" {
		t.Fatalf("batch = %+v", got)
	}
	ack := &TelemetryAck{Stream: got.Stream, Through: 7, Reason: ReasonTelemetryDropped, Dropped: 2}
	b, err = Encode(TypeTelemetryAck, env.ID, time.Now(), ack)
	if err != nil {
		t.Fatal(err)
	}
	env2, _ := Decode(b)
	var gotAck TelemetryAck
	if err := DecodeBody(env2, TypeTelemetryAck, &gotAck); err != nil {
		t.Fatal(err)
	}
	if gotAck.Through != 7 || gotAck.Dropped != 2 || gotAck.Reason != ReasonTelemetryDropped || !bytes.Equal(env2.Corr, env.ID) {
		t.Fatalf("ack = %+v", gotAck)
	}
}

func TestTelemetryValidateRefusals(t *testing.T) {
	if err := sampleBatch().Validate(); err != nil {
		t.Fatalf("good batch: %v", err)
	}
	many := make([]TelemetryPoint, MaxTelemetryPoints+1)
	cases := map[string]func(b *TelemetryBatch){
		"short stream":     func(b *TelemetryBatch) { b.Stream = b.Stream[:8] },
		"no points":        func(b *TelemetryBatch) { b.Points = nil },
		"too many points":  func(b *TelemetryBatch) { b.Points = many },
		"first zero":       func(b *TelemetryBatch) { b.First, b.Acked, b.Dropped = 0, 0, 0 },
		"overflow":         func(b *TelemetryBatch) { b.First = math.MaxUint64 },
		"acked >= first":   func(b *TelemetryBatch) { b.Acked = 7 },
		"dropped >= first": func(b *TelemetryBatch) { b.Dropped = 7 },
		"negative time":    func(b *TelemetryBatch) { b.Points[0].Time = -1 },
		"NaN":              func(b *TelemetryBatch) { b.Points[0].Metrics["cpu.busy"] = math.NaN() },
		"Inf":              func(b *TelemetryBatch) { b.Points[0].Metrics["cpu.busy"] = math.Inf(1) },
		"upper-case name":  func(b *TelemetryBatch) { b.Points[0].Metrics["CPU"] = 1 },
		"name with slash":  func(b *TelemetryBatch) { b.Points[0].Metrics["a/b"] = 1 },
		"long name":        func(b *TelemetryBatch) { b.Points[0].Metrics["a"+strings.Repeat("b", MaxMetricName)] = 1 },
		"unsorted set":     func(b *TelemetryBatch) { b.Points[0].Sets["listen.tcp"] = []string{"443", "22"} },
		"repeated member":  func(b *TelemetryBatch) { b.Points[0].Sets["listen.tcp"] = []string{"22", "22"} },
		"member w/ space":  func(b *TelemetryBatch) { b.Points[0].Sets["listen.tcp"] = []string{"2 2"} },
		"empty member":     func(b *TelemetryBatch) { b.Points[0].Sets["listen.tcp"] = []string{""} },
		"info control chr": func(b *TelemetryBatch) { b.Points[0].Info["boot_id"] = "a\nb" },
		"bad info name":    func(b *TelemetryBatch) { b.Points[0].Info["Boot"] = "x" },
		"too many metrics": func(b *TelemetryBatch) {
			for i := range MaxPointMetrics + 1 {
				b.Points[0].Metrics["m"+strings.Repeat("x", i%40)+string(rune('a'+i/40))] = 1
			}
		},
	}
	for name, mutate := range cases {
		b := sampleBatch()
		mutate(b)
		if err := b.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for name, a := range map[string]*TelemetryAck{
		"stream":  {Stream: []byte{1}},
		"dropped": {Stream: make([]byte, TelemetryStreamLen), Through: 1, Dropped: 2},
		"message": {Stream: make([]byte, TelemetryStreamLen), Message: strings.Repeat("x", 513)},
	} {
		if err := a.Validate(); err == nil {
			t.Errorf("ack %s: accepted", name)
		}
	}
}

func TestValidMetricName(t *testing.T) {
	for _, ok := range []string{"cpu.busy", "disk.root.used_ratio", "a", "net.rx_bytes", "x1"} {
		if !ValidMetricName(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "1cpu", "_x", "cpu.", "Cpu", "cpu busy", "cpu-busy", "cpu{x}", strings.Repeat("a", MaxMetricName+1)} {
		if ValidMetricName(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}
