package telemetry

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// devicePoint is a point like device/telemetry collects: 33 metrics, the
// listening ports and the boot ID.
func devicePoint(at time.Time, i int) wire.TelemetryPoint {
	p := wire.TelemetryPoint{Time: at.UnixMilli()}
	for _, name := range []string{"cpu.busy", "cpu.count", "load.1", "load.5", "load.15", "mem.total_bytes", "mem.available_bytes",
		"mem.used_ratio", "swap.total_bytes", "swap.used_bytes", "disk.root.total_bytes", "disk.root.avail_bytes",
		"disk.root.used_ratio", "net.rx_bytes", "net.tx_bytes", "net.rx_packets", "net.tx_packets", "net.rx_errors",
		"net.tx_errors", "net.rx_dropped", "net.tx_dropped", "net.interfaces", "proc.count", "listen.tcp.count",
		"listen.udp.count", "uptime.seconds", "telemetry.collect_errors", "tpm.ok", "cert.expiry_seconds",
		"telemetry.batches", "telemetry.acked", "telemetry.failures", "auth.failures"} {
		p.SetMetric(name, float64(i%97)/97)
	}
	p.SetMembers("listen.tcp", []string{"22", "80", "443", "1883", "8883", "9100"})
	p.SetMembers("listen.udp", []string{"53", "68", "123"})
	p.SetInfo("boot_id", "57f13b68-e63a-4e3c-bb98-facf757ccbb9")
	p.SetInfo("update.state", "idle")
	return p
}

// BenchmarkIngest measures ingestion (decode, validate, de-duplicate,
// record series and aggregates, encode the ack) next to the raw CBOR
// decode of the same batches (wire.Decode + DecodeBody) in the same run,
// and reports both rates and their ratio. Batches come from 1,000 devices
// in turn; "points=1" is a device online sending each point as it is
// taken, "points=256" one catching up after an outage.
func BenchmarkIngest(b *testing.B) {
	for _, size := range []int{1, 256} {
		b.Run(fmt.Sprintf("points=%d", size), func(b *testing.B) {
			const devices = 1000
			now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
			in, err := New(Config{Now: func() time.Time { return now }, Send: func(string, string, []byte) error { return nil }})
			if err != nil {
				b.Fatal(err)
			}
			stream := bytes.Repeat([]byte{7}, wire.TelemetryStreamLen)
			next := make([]uint64, devices)
			ids := make([]string, devices)
			for i := range ids {
				ids[i] = fmt.Sprintf("dev-%04d", i)
				next[i] = 1
			}
			var decode, ingest time.Duration
			points := 0
			for i := 0; b.Loop(); i++ {
				dev := i % devices
				batch := &wire.TelemetryBatch{Stream: stream, First: next[dev], Acked: next[dev] - 1}
				for j := range size {
					batch.Points = append(batch.Points, devicePoint(now.Add(time.Duration(j-size)*time.Second), i+j))
				}
				payload, err := wire.Encode(wire.TypeTelemetryBatch, nil, now, batch)
				if err != nil {
					b.Fatal(err)
				}
				next[dev] += uint64(size)

				start := time.Now()
				env, err := wire.Decode(payload)
				if err == nil {
					var got wire.TelemetryBatch
					err = wire.DecodeBody(env, wire.TypeTelemetryBatch, &got)
				}
				decode += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}

				start = time.Now()
				env, err = wire.Decode(payload)
				if err != nil {
					b.Fatal(err)
				}
				in.Handle(ids[dev], env)
				ingest += time.Since(start)
				points += size
			}
			if in.Totals().Ingested != uint64(points) {
				b.Fatalf("ingested %d of %d points", in.Totals().Ingested, points)
			}
			decodeRate := float64(points) / decode.Seconds()
			ingestRate := float64(points) / ingest.Seconds()
			b.ReportMetric(decodeRate, "decode-points/s")
			b.ReportMetric(ingestRate, "ingest-points/s")
			b.ReportMetric(ingestRate/decodeRate, "ingest/decode")
			b.ReportMetric(float64(len(payload(b, size)))/float64(size), "bytes/point")
		})
	}
}

func payload(b *testing.B, size int) []byte {
	batch := &wire.TelemetryBatch{Stream: bytes.Repeat([]byte{7}, wire.TelemetryStreamLen), First: 1}
	for j := range size {
		batch.Points = append(batch.Points, devicePoint(time.Unix(1_700_000_000, 0), j))
	}
	p, err := wire.Encode(wire.TypeTelemetryBatch, nil, time.Unix(1_700_000_000, 0), batch)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkDeviceMemory reports the heap the ingester keeps per device at
// steady state (B/device): each device sent a point a minute for six
// hours, so its charted series hold every coarse bucket (72 of 5
// minutes) and a full raw window (15 minutes), as a fleet that has run
// for a while does; its latest values, sets and info are there too.
func BenchmarkDeviceMemory(b *testing.B) {
	const devices, minutes = 200, 6 * 60
	start := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	stream := bytes.Repeat([]byte{7}, wire.TelemetryStreamLen)
	var perDevice float64
	for b.Loop() {
		now := start
		in, err := New(Config{Now: func() time.Time { return now }, Send: func(string, string, []byte) error { return nil }})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for m := range minutes {
			now = start.Add(time.Duration(m) * time.Minute)
			for d := range devices {
				batch := &wire.TelemetryBatch{Stream: stream, First: uint64(m + 1), Acked: uint64(m),
					Points: []wire.TelemetryPoint{devicePoint(now, m*devices+d)}}
				payload, err := wire.Encode(wire.TypeTelemetryBatch, nil, now, batch)
				if err != nil {
					b.Fatal(err)
				}
				env, err := wire.Decode(payload)
				if err != nil {
					b.Fatal(err)
				}
				in.Handle(fmt.Sprintf("dev-%04d", d), env)
			}
		}
		if got := in.Totals().Ingested; got != devices*minutes {
			b.Fatalf("ingested %d of %d points", got, devices*minutes)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perDevice = float64(after.HeapAlloc-before.HeapAlloc) / devices
		runtime.KeepAlive(in)
	}
	b.ReportMetric(perDevice, "B/device")
}
