package feed

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// traffic counts what a connection pool asks PostgreSQL: statements
// (Begin and Commit included), rows the SELECTs returned and rows the
// INSERTs, UPDATEs and DELETEs wrote.
type traffic struct{ statements, read, written atomic.Int64 }

func (c *traffic) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.statements.Add(1)
	return ctx
}

func (c *traffic) TraceQueryEnd(_ context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if d.Err != nil {
		return
	}
	switch tag := d.CommandTag.String(); {
	case strings.HasPrefix(tag, "SELECT"):
		c.read.Add(d.CommandTag.RowsAffected())
	case strings.HasPrefix(tag, "INSERT"), strings.HasPrefix(tag, "UPDATE"), strings.HasPrefix(tag, "DELETE"):
		c.written.Add(d.CommandTag.RowsAffected())
	}
}

type counts struct{ statements, read, written int64 }

func (c *traffic) now() counts {
	return counts{c.statements.Load(), c.read.Load(), c.written.Load()}
}

func (c counts) per(before counts, n int) (statements, read, written float64) {
	f := float64(n)
	return float64(c.statements-before.statements) / f, float64(c.read-before.read) / f, float64(c.written-before.written) / f
}

// TestStatementsPerBatch measures what one telemetry batch costs the
// alert store on PostgreSQL (docs/BENCHMARKS.md §12, table alert_kv): the
// feed evaluates the default rules and, as the fleet does, scores the
// device's risk again (governance reads its open alerts twice: Anomalies
// and Exposure). Every device has an open alert, so the store's device
// index holds one row per device. A batch must read and write a bounded
// number of rows whatever the fleet's size (before: each of the two
// device queries read 256 rows of other devices ahead of the device's
// own), and a flush must write only the states that changed since the
// last one (one seen record and the learned rule states of each device
// that sent a batch), not every device's.
func TestStatementsPerBatch(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	const devices, batches, changed = 400, 3, 10
	count := &traffic{}
	db, err := postgres.Open(t.Context(), url, postgres.Options{Tracer: count})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	open := func() *alert.Engine {
		t.Helper()
		e, err := alert.OpenPostgres(t.Context(), db, alert.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := open()
	for _, r := range append(alert.DefaultRules(), Rules()...) {
		if _, err := e.PutRule(r); err != nil {
			t.Fatal(err)
		}
	}
	var f *Feed
	newFeed := func(e *alert.Engine) {
		gov := Anomalies{Alerts: e}
		exp := Exposure{Telemetry: noTelemetry{}, Alerts: e}
		f = New(Config{Engine: e, CertLifetime: 24 * time.Hour, Rescore: func(id string) {
			if _, err := gov.OpenAlerts(id); err != nil {
				t.Error(err)
			}
			if _, err := exp.Ports(id); err != nil {
				t.Error(err)
			}
		}})
	}
	newFeed(e)
	start := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	id := func(i int) string { return fmt.Sprintf("dev-%04d", i) }
	batch := func(dev, n int) telemetry.Batch {
		at := start.Add(time.Duration(n) * time.Minute)
		return telemetry.Batch{DeviceID: id(dev), Reboot: n == 0, Points: []telemetry.Point{{Seq: uint64(n), Time: at,
			Metrics: map[string]float64{"cpu.busy": 0.2 + float64(n%3)/100, "mem.used_ratio": 0.4, "tpm.ok": 1, "cert.expiry_seconds": 80000},
			Sets:    map[string][]string{"listen.tcp": {"22", "443"}, "listen.udp": {"53"}}}}}
	}
	for i := range devices { // first batches: a reboot alert open on each device
		f.observe(batch(i, 0))
	}
	var perBatch [3]float64
	for n := 1; n <= batches; n++ {
		before := count.now()
		for i := range devices {
			f.observe(batch(i, n))
		}
		perBatch[0], perBatch[1], perBatch[2] = count.now().per(before, devices)
		t.Logf("batch %d of %d devices: %.1f statements, %.1f rows read, %.1f rows written per batch", n, devices, perBatch[0], perBatch[1], perBatch[2])
	}
	if _, read, written := perBatch[0], perBatch[1], perBatch[2]; read > 40 || written > 2 {
		t.Errorf("a batch reads %.1f rows and writes %.1f of alert_kv (%d devices); want at most 40 and 2, whatever the fleet's size", read, written, devices)
	}

	// The flush: after every device's state was written once (Close),
	// batches of a few devices write only their states.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = open()
	newFeed(e)
	for i := range changed {
		f.observe(batch(i, batches+1))
	}
	before := count.now()
	if err := e.Close(); err != nil { // flushes
		t.Fatal(err)
	}
	statements, _, written := count.now().per(before, changed)
	t.Logf("flush after %d of %d devices sent a batch: %.1f statements, %.1f rows written per device", changed, devices, statements, written)
	if written > 6 {
		t.Errorf("the flush wrote %.1f rows per device that sent a batch; want at most 6 (its seen record and changed rule states)", written)
	}
}

// noTelemetry knows no device's telemetry.
type noTelemetry struct{}

func (noTelemetry) Device(string) (telemetry.DeviceStatus, error) {
	return telemetry.DeviceStatus{}, telemetry.ErrUnknownDevice
}
