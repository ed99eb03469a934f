package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// openReplicaCursors opens the cursor store at path twice, as two
// replicas do: two connections to one PostgreSQL database under
// TestConformance/postgres, one bbolt store shared by both otherwise (a
// bbolt file has one opener).
func openReplicaCursors(t *testing.T, path string) (a, b *CursorStore) {
	t.Helper()
	open := func() *CursorStore {
		c, err := openCursors(t, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a = open()
	if _, ok := pgtest.Database(t, path); !ok {
		return a, a
	}
	return a, open()
}

// observed counts the points handed to OnBatch, by device and sequence,
// whichever replica handed them.
type observed struct {
	mu     sync.Mutex
	points map[string]map[uint64]int
}

func (o *observed) onBatch(b Batch) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.points == nil {
		o.points = map[string]map[uint64]int{}
	}
	if o.points[b.DeviceID] == nil {
		o.points[b.DeviceID] = map[uint64]int{}
	}
	for _, p := range b.Points {
		o.points[b.DeviceID][p.Seq]++
	}
}

// once returns what is wrong with the points seen of device: each of
// 1..through exactly once, nothing else.
func (o *observed) once(device string, through uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	var wrong []string
	for seq := uint64(1); seq <= through; seq++ {
		if n := o.points[device][seq]; n != 1 {
			wrong = append(wrong, fmt.Sprintf("%d (%d times)", seq, n))
		}
	}
	if len(wrong) > 0 {
		return fmt.Errorf("%s: %d of %d points not handed to OnBatch once: %s", device, len(wrong), through,
			strings.Join(wrong[:min(len(wrong), 5)], ", "))
	}
	if n := len(o.points[device]); n > int(through) {
		return fmt.Errorf("%s: %d sequences handed, want %d", device, n, through)
	}
	return nil
}

// replicaIngesters returns two ingesters sharing the cursor store at
// path, as two `sigil serve` replicas on one database do, and what their
// OnBatch saw.
func replicaIngesters(t *testing.T, path string) (a, b *Ingester, seen *observed) {
	t.Helper()
	ca, cb := openReplicaCursors(t, path)
	seen = &observed{}
	a, _ = newIngester(t, Config{Cursors: ca, SharedCursors: true, OnBatch: seen.onBatch})
	b, _ = newIngester(t, Config{Cursors: cb, SharedCursors: true, OnBatch: seen.onBatch})
	return a, b, seen
}

// TestReplicasIngestOnce: batches of one device reaching two replicas in
// turn, redelivered to the other one, with a gap and a new stream, are
// ingested once between them: each point handed to OnBatch once, each gap
// counted once, a replaced stream refused by the replica that did not see
// it replaced, every ack saying what the shared store holds.
func TestReplicasIngestOnce(t *testing.T) {
	a, b, seen := replicaIngesters(t, filepath.Join(t.TempDir(), File))
	steps := []struct {
		name    string
		at      *Ingester
		b       *wire.TelemetryBatch
		through uint64
		dropped uint64 // in the ack
		err     error  // ErrStaleStream: no ack
	}{
		{name: "1-5 at A", at: a, b: batch(streamA, 1, 5, 0, 0), through: 5},
		{name: "6-10 at B", at: b, b: batch(streamA, 6, 5, 5, 0), through: 10},
		{name: "6-10 again at A (B's ack lost)", at: a, b: batch(streamA, 6, 5, 5, 0), through: 10},
		{name: "6-12 at A (resend with more)", at: a, b: batch(streamA, 6, 7, 5, 0), through: 12},
		{name: "1-5 again at B", at: b, b: batch(streamA, 1, 5, 0, 0), through: 12},
		{name: "11-14 at B", at: b, b: batch(streamA, 11, 4, 10, 0), through: 14},
		{name: "17-18 at A: 15-16 dropped", at: a, b: batch(streamA, 17, 2, 14, 2), through: 18, dropped: 2},
		{name: "17-18 again at B", at: b, b: batch(streamA, 17, 2, 14, 2), through: 18},
		{name: "new stream at B", at: b, b: batch(streamB, 1, 3, 0, 0), through: 3},
		{name: "old stream at A", at: a, b: batch(streamA, 19, 2, 18, 2), err: ErrStaleStream},
		{name: "new stream at A", at: a, b: batch(streamB, 4, 2, 3, 0), through: 5},
		{name: "new stream again at B", at: b, b: batch(streamB, 1, 5, 0, 0), through: 5},
	}
	for _, s := range steps {
		ack, err := s.at.Ingest("dev-1", envelope(t, s.b, t0))
		if !errors.Is(err, s.err) {
			t.Fatalf("%s: err %v, want %v", s.name, err, s.err)
		}
		if s.err != nil {
			if ack != nil {
				t.Fatalf("%s: acknowledged %+v", s.name, ack)
			}
			continue
		}
		if ack == nil || ack.Through != s.through || ack.Dropped != s.dropped || !bytes.Equal(ack.Stream, s.b.Stream) {
			t.Fatalf("%s: ack %+v, want through %d, dropped %d", s.name, ack, s.through, s.dropped)
		}
	}
	ta, tb := a.Totals(), b.Totals()
	if ing := ta.Ingested + tb.Ingested; ing != 16+5 {
		t.Errorf("replicas ingested %d points, want 21 (A %+v, B %+v)", ing, ta, tb)
	}
	if drop := ta.Dropped + tb.Dropped; drop != 2 {
		t.Errorf("replicas counted %d points dropped, want 2 (A %+v, B %+v)", drop, ta, tb)
	}
	if ns := ta.NewStreams + tb.NewStreams; ns != 1 {
		t.Errorf("replicas counted %d new streams, want 1", ns)
	}
	if rep := ta.DeviceReported + tb.DeviceReported; rep != 2 {
		t.Errorf("replicas counted %d drops reported by the device, want 2", rep)
	}
	seen.mu.Lock()
	var streamAPoints, total int
	for seq, n := range seen.points["dev-1"] {
		total += n
		if seq > 5 {
			streamAPoints += n
		}
	}
	seen.mu.Unlock()
	// Stream A's 1-18 less the dropped 15-16, then stream B's 1-5: 21
	// points, sequences 1-5 twice (once per stream).
	if total != 21 || streamAPoints != 11 {
		t.Errorf("OnBatch was handed %d points (%d above sequence 5), want 21 (11): %v", total, streamAPoints, seen.points["dev-1"])
	}
	ca, _, _ := a.cfg.Cursors.Cursor(t.Context(), "dev-1")
	if !bytes.Equal(ca.Stream, streamB) || ca.Through != 5 {
		t.Errorf("stored cursor %+v, want stream B through 5", ca)
	}
}

// TestReplicasIngestConcurrently: every batch of many devices reaches
// both replicas at the same moment (the broker pool's redelivery racing
// the first delivery), some earlier batches again besides: each point is
// handed to OnBatch exactly once, both acks of a batch cover it, and the
// stored cursors end at each device's last point.
func TestReplicasIngestConcurrently(t *testing.T) {
	a, b, seen := replicaIngesters(t, filepath.Join(t.TempDir(), File))
	replicas := []*Ingester{a, b}
	const devices, batches, size = 8, 12, 3
	var wg sync.WaitGroup
	for d := range devices {
		wg.Go(func() {
			id := fmt.Sprintf("dev-%d", d)
			for k := range uint64(batches) {
				first := k*size + 1
				envs := []*wire.Envelope{envelope(t, batch(streamA, first, size, first-1, 0), t0)}
				if k >= 2 { // the one before last, redelivered
					envs = append(envs, envelope(t, batch(streamA, first-2*size, size, first-2*size-1, 0), t0))
				}
				var start, both sync.WaitGroup
				start.Add(1)
				acks := make([]*wire.TelemetryAck, 2*len(envs))
				for i := range acks {
					both.Go(func() {
						start.Wait()
						ack, err := replicas[(i+d)%2].Ingest(id, envs[i/2])
						if err != nil {
							t.Errorf("%s batch %d at replica %d: %v", id, k, (i+d)%2, err)
						}
						acks[i] = ack
					})
				}
				start.Done()
				both.Wait()
				for i, ack := range acks {
					// The device's newest batch has been stored by one
					// of them once both answered: an ack says no more
					// than the store holds and covers its batch.
					want := envs[i/2]
					var bt wire.TelemetryBatch
					if err := wire.DecodeBody(want, wire.TypeTelemetryBatch, &bt); err != nil {
						t.Error(err)
						continue
					}
					if ack == nil || ack.Through < bt.Last() || ack.Through > first+size-1 || ack.Dropped != 0 {
						t.Errorf("%s batch %d: ack %+v for points %d-%d", id, k, ack, bt.First, bt.Last())
					}
				}
			}
		})
	}
	wg.Wait()
	for d := range devices {
		id := fmt.Sprintf("dev-%d", d)
		if err := seen.once(id, batches*size); err != nil {
			t.Error(err)
		}
		c, ok, err := a.cfg.Cursors.Cursor(t.Context(), id)
		if err != nil || !ok || c.Through != batches*size || !bytes.Equal(c.Stream, streamA) {
			t.Errorf("%s: stored cursor %+v, %v, %v", id, c, ok, err)
		}
	}
	ta, tb := a.Totals(), b.Totals()
	if ing := ta.Ingested + tb.Ingested; ing != devices*batches*size {
		t.Errorf("replicas ingested %d points, want %d", ing, devices*batches*size)
	}
	if ta.Dropped+tb.Dropped != 0 {
		t.Errorf("replicas counted points dropped: A %+v, B %+v", ta, tb)
	}
}
