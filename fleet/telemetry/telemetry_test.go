package telemetry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/metrics/metricstest"
	"github.com/sigil-iot/sigil/internal/clocktest"
	"github.com/sigil-iot/sigil/internal/runtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

var (
	t0      = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	streamA = bytes.Repeat([]byte{0xa}, wire.TelemetryStreamLen)
	streamB = bytes.Repeat([]byte{0xb}, wire.TelemetryStreamLen)
)

// pts returns points with sequence-derived values: metric "seq" is the
// sequence number the point will have in a batch starting at first.
func pts(first uint64, n int, at time.Time) []wire.TelemetryPoint {
	out := make([]wire.TelemetryPoint, n)
	for i := range out {
		out[i].Time = at.Add(time.Duration(i) * time.Second).UnixMilli()
		out[i].SetMetric("seq", float64(first+uint64(i)))
		out[i].SetMetric("cpu.busy", 0.25)
	}
	return out
}

func envelope(t *testing.T, b *wire.TelemetryBatch, deviceNow time.Time) *wire.Envelope {
	t.Helper()
	raw, err := wire.Encode(wire.TypeTelemetryBatch, nil, deviceNow, b)
	if err != nil {
		t.Fatal(err)
	}
	env, err := wire.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func batch(stream []byte, first uint64, n int, acked, dropped uint64) *wire.TelemetryBatch {
	return &wire.TelemetryBatch{Stream: stream, First: first, Points: pts(first, n, t0), Acked: acked, Dropped: dropped}
}

func newIngester(t *testing.T, cfg Config) (*Ingester, *clocktest.Clock) {
	t.Helper()
	c := clocktest.New(t0)
	if cfg.Now == nil {
		cfg.Now = c.Now
	}
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return in, c
}

func TestIngestAccounting(t *testing.T) {
	var seen []uint64
	var batches []Batch
	in, _ := newIngester(t, Config{OnBatch: func(b Batch) {
		batches = append(batches, b)
		for _, p := range b.Points {
			if uint64(p.Metrics["seq"]) != p.Seq {
				t.Errorf("point with value %v delivered as sequence %d", p.Metrics["seq"], p.Seq)
			}
			seen = append(seen, p.Seq)
		}
	}})
	steps := []struct {
		name        string
		b           *wire.TelemetryBatch
		through     uint64
		reason      wire.Reason
		ackDropped  uint64
		wantErr     error
		wantNoAck   bool
		wantIngest  uint64
		wantDup     uint64
		wantDropped uint64
	}{
		{name: "first", b: batch(streamA, 1, 3, 0, 0), through: 3, wantIngest: 3},
		{name: "redelivered", b: batch(streamA, 1, 3, 0, 0), through: 3, wantIngest: 3, wantDup: 3},
		{name: "resend with more", b: batch(streamA, 2, 4, 0, 0), through: 5, wantIngest: 5, wantDup: 5},
		{name: "gap: outbox dropped 6-7", b: batch(streamA, 8, 2, 5, 2), through: 9, reason: wire.ReasonTelemetryDropped, ackDropped: 2,
			wantIngest: 7, wantDup: 5, wantDropped: 2},
		{name: "new stream", b: batch(streamB, 1, 2, 0, 0), through: 2, wantIngest: 9, wantDup: 5, wantDropped: 2},
		{name: "stale stream", b: batch(streamA, 10, 1, 9, 2), wantErr: ErrStaleStream, wantNoAck: true, wantIngest: 9, wantDup: 5, wantDropped: 2},
	}
	for _, s := range steps {
		ack, err := in.Ingest("dev-1", envelope(t, s.b, t0))
		if !errors.Is(err, s.wantErr) {
			t.Fatalf("%s: err %v, want %v", s.name, err, s.wantErr)
		}
		if s.wantNoAck != (ack == nil) {
			t.Fatalf("%s: ack %+v", s.name, ack)
		}
		if ack != nil {
			if ack.Through != s.through || ack.Reason != s.reason || ack.Dropped != s.ackDropped || !bytes.Equal(ack.Stream, s.b.Stream) {
				t.Fatalf("%s: ack %+v", s.name, ack)
			}
			if err := ack.Validate(); err != nil {
				t.Fatalf("%s: invalid ack: %v", s.name, err)
			}
		}
		st, err := in.Device("dev-1")
		if err != nil {
			t.Fatal(err)
		}
		if st.Counts.Ingested != s.wantIngest || st.Counts.Duplicates != s.wantDup || st.Counts.Dropped != s.wantDropped {
			t.Fatalf("%s: counts %+v", s.name, st.Counts)
		}
	}
	if fmt.Sprint(seen) != "[1 2 3 4 5 8 9 1 2]" {
		t.Fatalf("observer saw sequences %v", seen)
	}
	// A duplicate-only batch adds nothing for observers.
	if len(batches) != 4 || !batches[2].Points[0].Time.Equal(t0) || batches[2].Dropped != 2 || !batches[3].NewStream || batches[0].NewStream {
		t.Fatalf("observer batches %+v", batches)
	}
	st, _ := in.Device("dev-1")
	if st.Counts.DeviceReported != 2 || st.Counts.NewStreams != 1 || st.Through != 2 {
		t.Fatalf("status %+v", st)
	}
	if tot := in.Totals(); tot.Ingested != 9 || tot.Dropped != 2 || tot.Duplicates != 5 || tot.Batches != 5 {
		t.Fatalf("totals %+v", tot)
	}
}

// TestResumeFromDeviceAck: a fleet without its cursors (restarted, in
// memory) resumes from what the device holds an ack for, without counting
// delivered points as dropped; with persisted cursors a resent batch is a
// duplicate.
func TestResumeAfterFleetRestart(t *testing.T) {
	in, _ := newIngester(t, Config{})
	if _, err := in.Ingest("dev-1", envelope(t, batch(streamA, 41, 5, 40, 3), t0)); err != nil {
		t.Fatal(err)
	}
	st, _ := in.Device("dev-1")
	if st.Counts.Dropped != 0 || st.Counts.Ingested != 5 || st.Through != 45 {
		t.Fatalf("resumed: %+v", st.Counts)
	}

	cur := &memCursors{m: map[string]Cursor{}}
	in1, _ := newIngester(t, Config{Cursors: cur})
	if _, err := in1.Ingest("dev-1", envelope(t, batch(streamA, 1, 5, 0, 0), t0)); err != nil {
		t.Fatal(err)
	}
	in2, _ := newIngester(t, Config{Cursors: cur}) // the fleet restarted; the ack was lost
	ack, err := in2.Ingest("dev-1", envelope(t, batch(streamA, 1, 6, 0, 0), t0))
	if err != nil || ack.Through != 6 {
		t.Fatalf("after restart: %+v, %v", ack, err)
	}
	st, _ = in2.Device("dev-1")
	if st.Counts.Duplicates != 5 || st.Counts.Ingested != 1 {
		t.Fatalf("after restart: %+v", st.Counts)
	}

	// A cursor that cannot be saved is not acknowledged, and the points
	// are stored again when the device resends (never lost).
	before, _ := in2.Device("dev-1")
	cur.fail = errors.New("disk full")
	if ack, err := in2.Ingest("dev-1", envelope(t, batch(streamA, 7, 1, 6, 0), t0)); err == nil || ack != nil {
		t.Fatalf("failed cursor save acknowledged: %+v, %v", ack, err)
	}
	if failed, _ := in2.Device("dev-1"); failed.Counts != before.Counts || failed.Through != before.Through {
		t.Fatalf("a batch whose cursor was not saved was counted: %+v, was %+v", failed.Counts, before.Counts)
	}
	cur.fail = nil
	if ack, err := in2.Ingest("dev-1", envelope(t, batch(streamA, 7, 1, 6, 0), t0)); err != nil || ack.Through != 7 {
		t.Fatalf("resend after the failure: %+v, %v", ack, err)
	}
	// Counted once: the failed attempt left no trace.
	if st, _ := in2.Device("dev-1"); st.Counts.Ingested != before.Counts.Ingested+1 || st.Counts.Batches != before.Counts.Batches+1 {
		t.Fatalf("after the resend: %+v, was %+v", st.Counts, before.Counts)
	}
}

type memCursors struct {
	mu   sync.Mutex
	m    map[string]Cursor
	fail error
}

func (c *memCursors) Cursor(_ context.Context, id string) (Cursor, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[id]
	return v, ok, nil
}

func (c *memCursors) SetCursor(_ context.Context, id string, v Cursor) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return c.fail
	}
	c.m[id] = v
	return nil
}

func TestRefusals(t *testing.T) {
	in, _ := newIngester(t, Config{})
	// Invalid points with readable sequence numbers: refused, counted,
	// acknowledged so that the outbox moves on.
	bad := batch(streamA, 1, 3, 0, 0)
	bad.Points[1].Metrics["cpu.busy"] = math.Inf(1)
	ack, err := in.Ingest("dev-1", envelope(t, bad, t0))
	if err == nil || ack == nil || ack.Reason != wire.ReasonBadRequest || ack.Through != 3 || ack.Message == "" {
		t.Fatalf("invalid batch: %+v, %v", ack, err)
	}
	st, _ := in.Device("dev-1")
	if st.Counts.Rejected != 3 || st.Counts.Ingested != 0 || len(st.Metrics) != 0 {
		t.Fatalf("after an invalid batch: %+v", st)
	}
	// Unreadable sequence numbers: nothing to account for, no ack.
	for name, b := range map[string]*wire.TelemetryBatch{
		"short stream": {Stream: []byte{1}, First: 1, Points: pts(1, 1, t0)},
		"first zero":   {Stream: streamA, First: 0, Points: pts(1, 1, t0)},
		"no points":    {Stream: streamA, First: 4},
	} {
		if ack, err := in.Ingest("dev-1", envelope(t, b, t0)); !errors.Is(err, ErrMalformed) || ack != nil {
			t.Errorf("%s: %+v, %v", name, ack, err)
		}
	}
	env := envelope(t, batch(streamA, 4, 1, 0, 0), t0)
	env.Type = wire.TypeHello
	if _, err := in.Ingest("dev-1", env); !errors.Is(err, ErrMalformed) {
		t.Errorf("wrong type: %v", err)
	}
	if _, err := in.Ingest("Not/AnID", envelope(t, batch(streamA, 1, 1, 0, 0), t0)); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad device ID: %v", err)
	}
	if st, _ := in.Device("dev-1"); st.Through != 3 || st.Counts.Batches != 1 {
		t.Fatalf("malformed batches changed the cursor: %+v", st)
	}
}

func TestClockSkewAndReboots(t *testing.T) {
	var got []Batch
	in, clk := newIngester(t, Config{OnBatch: func(b Batch) { got = append(got, b) }})
	// The device's clock is a year behind; its points still chart at the
	// fleet's time, spaced as the device took them.
	devNow := t0.AddDate(-1, 0, 0)
	b := &wire.TelemetryBatch{Stream: streamA, First: 1, Points: pts(1, 3, devNow.Add(-time.Minute))}
	b.Points[0].SetInfo("boot_id", "boot-1")
	b.Points[2].SetInfo("boot_id", "boot-2")
	if _, err := in.Ingest("dev-1", envelope(t, b, devNow)); err != nil {
		t.Fatal(err)
	}
	p := got[0].Points
	if !p[0].Time.Equal(clk.Now().Add(-time.Minute)) || p[1].Time.Sub(p[0].Time) != time.Second || !p[0].DeviceTime.Equal(devNow.Add(-time.Minute)) {
		t.Fatalf("times %v %v (device %v)", p[0].Time, p[1].Time, p[0].DeviceTime)
	}
	if !got[0].Reboot {
		t.Fatal("boot_id change not seen as a reboot")
	}
	st, _ := in.Device("dev-1")
	if st.Counts.Reboots != 1 || st.BootID != "boot-2" || !st.LastPoint.Equal(p[2].Time) {
		t.Fatalf("status %+v", st)
	}
	// Points stamped in the future are charted at the arrival time.
	b = &wire.TelemetryBatch{Stream: streamA, First: 4, Acked: 3, Points: pts(4, 1, devNow.Add(time.Hour))}
	in.Ingest("dev-1", envelope(t, b, devNow))
	if !got[1].Points[0].Time.Equal(clk.Now()) {
		t.Fatalf("future point at %v", got[1].Points[0].Time)
	}
}

func TestSeriesDownsampled(t *testing.T) {
	in, clk := newIngester(t, Config{Series: SeriesConfig{Charted: []string{"v"}, RawWindow: 10 * time.Minute, RawPoints: 15,
		Bucket: 5 * time.Minute, Buckets: 6}})
	// Two hours of one point every 30 s, value = minutes since t0, sent
	// every 10 points with the device's clock right.
	seq := uint64(1)
	for i := 0; i < 240; i += 10 {
		b := &wire.TelemetryBatch{Stream: streamA, First: seq, Acked: seq - 1}
		for j := range 10 {
			at := t0.Add(time.Duration(i+j) * 30 * time.Second)
			p := wire.TelemetryPoint{Time: at.UnixMilli()}
			p.SetMetric("v", at.Sub(t0).Minutes())
			b.Points = append(b.Points, p)
		}
		clk.Set(t0.Add(time.Duration(i+9) * 30 * time.Second))
		if _, err := in.Ingest("dev-1", envelope(t, b, clk.Now())); err != nil {
			t.Fatal(err)
		}
		seq += 10
	}
	s, err := in.Series("dev-1", "v", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var raw, coarse []Sample
	for _, x := range s {
		if x.Downsample {
			coarse = append(coarse, x)
		} else {
			raw = append(raw, x)
		}
	}
	// Raw: the newest 15 points (7.5 minutes, inside the 10-minute window).
	if len(raw) != 15 || raw[14].Value != 119.5 || raw[0].Value != 112.5 {
		t.Fatalf("raw %d points: first %v last %v", len(raw), raw[0], raw[len(raw)-1])
	}
	// Coarse: of the 6 newest 5-minute buckets (90 to 115), those that end
	// before the raw points start: 90, 95, 100, 105.
	if len(coarse) != 4 {
		t.Fatalf("coarse: %+v", coarse)
	}
	for i, c := range coarse {
		start := 90 + 5*float64(i)
		if c.Time != t0.Add(time.Duration(start)*time.Minute) || c.Count != 10 || c.Min != start || c.Max != start+4.5 || c.Value != start+2.25 {
			t.Fatalf("bucket %d: %+v", i, c)
		}
	}
	for i := 1; i < len(s); i++ {
		if !s[i].Time.After(s[i-1].Time) {
			t.Fatalf("samples not in time order at %d", i)
		}
	}
	// since filters.
	if s, _ := in.Series("dev-1", "v", t0.Add(118*time.Minute)); len(s) != 4 {
		t.Fatalf("since: %d samples", len(s))
	}
	if _, err := in.Series("dev-1", "cpu.busy", time.Time{}); !errors.Is(err, ErrUnknownSeries) {
		t.Fatalf("uncharted: %v", err)
	}
	if _, err := in.Series("dev-2", "v", time.Time{}); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
	// A late point from before the raw window still lands in its bucket.
	late := &wire.TelemetryBatch{Stream: streamA, First: seq, Acked: seq - 1, Points: []wire.TelemetryPoint{{Time: t0.Add(100 * time.Minute).UnixMilli(), Metrics: map[string]float64{"v": 1000}}}}
	in.Ingest("dev-1", envelope(t, late, clk.Now()))
	s, _ = in.Series("dev-1", "v", t0.Add(100*time.Minute))
	if s[0].Max != 1000 || s[0].Count != 11 {
		t.Fatalf("late point: %+v", s[0])
	}
}

// TestFleetMetrics checks the exposition parses strictly, counts what was
// ingested, and has the same series for one device as for many.
func TestFleetMetrics(t *testing.T) {
	in, clk := newIngester(t, Config{ReportingWindow: time.Minute, Metrics: prometheus.NewPedanticRegistry()})
	scrapeCount := func() (int, metricstest.Families) {
		fams, text := metricstest.Scrape(t, metrics.Handler(in.Metrics(), nil))
		if strings.Contains(text, "dev-") {
			t.Fatal("a device ID appears in the metrics")
		}
		return len(fams.Samples()), fams
	}
	in.Ingest("dev-0", envelope(t, batch(streamA, 1, 4, 0, 0), t0))
	lines1, _ := scrapeCount()
	for i := 1; i < 50; i++ {
		in.Ingest(fmt.Sprintf("dev-%d", i), envelope(t, batch(streamA, 3, 4, 0, 2), t0))
	}
	lines50, fams := scrapeCount()
	if lines1 != lines50 {
		t.Fatalf("exposition grew from %d to %d lines with 50 devices", lines1, lines50)
	}
	for _, c := range []struct {
		name   string
		typ    dto.MetricType
		labels []string
		want   float64
	}{
		{"sigil_telemetry_points_ingested_total", dto.MetricType_COUNTER, nil, 200},
		{"sigil_telemetry_points_dropped_total", dto.MetricType_COUNTER, nil, 98},
		{"sigil_telemetry_device_reported_drops_total", dto.MetricType_COUNTER, nil, 98},
		{"sigil_telemetry_points_duplicate_total", dto.MetricType_COUNTER, nil, 0},
		{"sigil_telemetry_batches_total", dto.MetricType_COUNTER, []string{"result", "accepted"}, 50},
		{"sigil_telemetry_batches_total", dto.MetricType_COUNTER, []string{"result", "stale"}, 0},
		{"sigil_telemetry_devices", dto.MetricType_GAUGE, nil, 50},
		{"sigil_telemetry_devices_reporting", dto.MetricType_GAUGE, nil, 50},
		{"sigil_telemetry_cpu_busy_ratio_count", dto.MetricType_HISTOGRAM, nil, 200},
		{"sigil_telemetry_cpu_busy_ratio_bucket", dto.MetricType_HISTOGRAM, []string{"le", "0.2"}, 0},
		{"sigil_telemetry_cpu_busy_ratio_bucket", dto.MetricType_HISTOGRAM, []string{"le", "0.3"}, 200},
		{"sigil_telemetry_cpu_busy_ratio_bucket", dto.MetricType_HISTOGRAM, []string{"le", "+Inf"}, 200},
	} {
		fam := strings.TrimSuffix(strings.TrimSuffix(c.name, "_count"), "_bucket")
		if f := fams[fam]; f == nil || f.GetType() != c.typ || f.GetHelp() == "" {
			t.Fatalf("family %s: %v, want a %v with help", fam, f, c.typ)
		}
		if v, ok := fams.Value(c.name, c.labels...); !ok || v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if tot := in.Totals(); tot.Ingested != 200 || tot.Dropped != 98 || tot.Batches != 50 {
		t.Errorf("totals %+v disagree with the metrics", tot)
	}
	clk.Advance(2 * time.Minute)
	in.Ingest("dev-7", envelope(t, batch(streamA, 7, 1, 6, 2), t0))
	_, fams = scrapeCount()
	if v, _ := fams.Value("sigil_telemetry_devices_reporting"); v != 1 {
		t.Fatalf("reporting after 2 minutes: %v", v)
	}
}

func TestSubmitRunAndAck(t *testing.T) {
	type sent struct {
		id, kind string
		payload  []byte
	}
	out := make(chan sent, 4)
	in, _ := newIngester(t, Config{QueueSize: 1, Send: func(id, kind string, p []byte) error {
		out <- sent{id, kind, p}
		return nil
	}})
	env := envelope(t, batch(streamA, 1, 2, 0, 0), t0)
	in.Submit("dev-1", env)
	in.Submit("dev-1", env) // the queue holds one: this one waits for a resend
	if v := in.m.queueFull.Load(); v != 1 {
		t.Fatalf("queue full counted %v", v)
	}
	stop := runtest.Start(t, in.Run)
	s := <-out
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	ackEnv, err := wire.Decode(s.payload)
	if err != nil {
		t.Fatal(err)
	}
	var ack wire.TelemetryAck
	if err := wire.DecodeBody(ackEnv, wire.TypeTelemetryAck, &ack); err != nil {
		t.Fatal(err)
	}
	if s.id != "dev-1" || s.kind != wire.KindTelemetry || ack.Through != 2 || !bytes.Equal(ackEnv.Corr, env.ID) {
		t.Fatalf("sent %s %s %+v", s.id, s.kind, ack)
	}
}

func TestConfigRefusesBadChartedName(t *testing.T) {
	if _, err := New(Config{Series: SeriesConfig{Charted: []string{"CPU Busy"}}}); err == nil {
		t.Fatal("accepted")
	}
}

// FuzzIngest feeds arbitrary payloads from one device: never a panic,
// every ack valid, and no more points stored than were offered.
func FuzzIngest(f *testing.F) {
	enc := func(b *wire.TelemetryBatch, at time.Time) []byte {
		p, err := wire.Encode(wire.TypeTelemetryBatch, nil, at, b)
		if err != nil {
			f.Fatal(err)
		}
		return p
	}
	f.Add(enc(batch(streamA, 1, 3, 0, 0), t0), enc(batch(streamA, 2, 3, 1, 0), t0))
	f.Add(enc(batch(streamA, 5, 2, 0, 4), t0.AddDate(-30, 0, 0)), enc(batch(streamB, 1, 1, 0, 0), t0.AddDate(200, 0, 0)))
	bad := batch(streamA, 1, 2, 0, 0)
	bad.Points[0].Metrics["x"] = math.NaN()
	f.Add(enc(bad, t0), []byte{0xa0})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		in, err := New(Config{Now: func() time.Time { return t0 }, Series: SeriesConfig{Charted: []string{"seq", "cpu.busy"}}})
		if err != nil {
			t.Fatal(err)
		}
		offered := uint64(0)
		for _, p := range [][]byte{a, b, a} {
			env, err := wire.Decode(p)
			if err != nil {
				continue
			}
			var peek wire.TelemetryBatch
			if wire.Unmarshal(env.Body, &peek) == nil {
				offered += uint64(len(peek.Points))
			}
			ack, _ := in.Ingest("dev-1", env)
			if ack != nil {
				if err := ack.Validate(); err != nil {
					t.Fatalf("invalid ack %+v: %v", ack, err)
				}
			}
		}
		tot := in.Totals()
		if tot.Ingested+tot.Rejected > offered {
			t.Fatalf("stored %d and rejected %d of %d points offered", tot.Ingested, tot.Rejected, offered)
		}
		in.Series("dev-1", "seq", time.Time{})
		in.Device("dev-1")
	})
}
