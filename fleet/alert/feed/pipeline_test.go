package feed

import (
	"bytes"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestPipelinesOnOneDatabaseIngestOnce: two replicas' pipelines on one
// PostgreSQL database share the telemetry cursors: a batch redelivered to
// a replica whose cursor in memory is behind is a duplicate there, not
// ingested (and handed to the feed) a second time.
func TestPipelinesOnOneDatabaseIngestOnce(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	open := func() *Pipeline {
		db, err := postgres.Open(t.Context(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Close)
		p, err := OpenPipeline(PipelineConfig{Dir: t.TempDir(), Database: db, Metrics: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	a, b := open(), open()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	stream := bytes.Repeat([]byte{3}, wire.TelemetryStreamLen)
	env := func(first uint64) *wire.Envelope {
		batch := &wire.TelemetryBatch{Stream: stream, First: first, Acked: first - 1}
		for i := range 3 {
			p := wire.TelemetryPoint{Time: now.Add(time.Duration(i) * time.Second).UnixMilli()}
			p.SetMetric("cpu.busy", 0.5)
			batch.Points = append(batch.Points, p)
		}
		raw, err := wire.Encode(wire.TypeTelemetryBatch, nil, now, batch)
		if err != nil {
			t.Fatal(err)
		}
		e, err := wire.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	for _, s := range []struct {
		at    *Pipeline
		first uint64
	}{{a, 1}, {b, 4}, {a, 4}} { // 4-6 again at a: b's ack was lost
		if ack, err := s.at.Telemetry.Ingest("dev-1", env(s.first)); err != nil || ack.Through != s.first+2 {
			t.Fatalf("batch from %d: %+v, %v", s.first, ack, err)
		}
	}
	if got := a.Telemetry.Totals(); got.Ingested != 3 || got.Duplicates != 3 {
		t.Errorf("replica a: %+v, want 3 ingested, 3 duplicates", got)
	}
	if qa, qb := a.Feed.Queued(), b.Feed.Queued(); qa != 1 || qb != 1 {
		t.Errorf("batches handed to the feeds: %d and %d, want 1 and 1", qa, qb)
	}
}
