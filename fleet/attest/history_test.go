package attest_test

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// TestHistoryConformance runs the history's tests on both backends: a
// bbolt file and a real PostgreSQL (pgtest; skipped without one unless
// CI=true).
func TestHistoryConformance(t *testing.T) {
	tests := []struct {
		name string
		fn   func(*testing.T, func(t *testing.T, max int) *attest.History)
	}{
		{"Pages", testHistoryPages},
		{"Bounded", testHistoryBounded},
		{"ConcurrentAdds", testHistoryConcurrentAdds},
	}
	t.Run("bbolt", func(t *testing.T) {
		open := func(t *testing.T, max int) *attest.History {
			h, err := attest.OpenHistory(filepath.Join(t.TempDir(), "h.db"), max)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { h.Close() })
			return h
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
		}
	})
	t.Run("postgres", func(t *testing.T) {
		srv := pgtest.Start(t)
		open := func(t *testing.T, max int) *attest.History {
			db, err := postgres.Open(t.Context(), srv.NewDatabase(t), postgres.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(db.Close)
			h, err := attest.OpenHistoryPostgres(t.Context(), db, max)
			if err != nil {
				t.Fatal(err)
			}
			return h
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
		}
	})
}

// testHistoryBounded: a device keeps its newest max verdicts.
func testHistoryBounded(t *testing.T, open func(*testing.T, int) *attest.History) {
	h := open(t, 5)
	for range 12 {
		if err := h.Add(t.Context(), &attest.Record{DeviceID: "dev-a", Result: "pass"}); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := h.List(t.Context(), "dev-a", 100)
	if err != nil || len(recs) != 5 || recs[0].Seq != 12 || recs[4].Seq != 8 {
		t.Fatalf("after 12 verdicts with max 5: %d records (%v), newest %+v", len(recs), err, recs)
	}
	if last, err := h.Last(t.Context(), "dev-a"); err != nil || last.Seq != 12 {
		t.Fatalf("Last: %+v, %v", last, err)
	}
}

// testHistoryConcurrentAdds: verdicts added at once get distinct
// sequence numbers and are all kept.
func testHistoryConcurrentAdds(t *testing.T, open func(*testing.T, int) *attest.History) {
	h := open(t, 0)
	const n = 20
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if err := h.Add(t.Context(), &attest.Record{DeviceID: "dev-a", Result: "pass"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	recs, err := h.List(t.Context(), "dev-a", 100)
	if err != nil || len(recs) != n {
		t.Fatalf("%d records of %d concurrent adds (%v)", len(recs), n, err)
	}
	seen := map[uint64]bool{}
	for _, r := range recs {
		seen[r.Seq] = true
	}
	if len(seen) != n {
		t.Fatalf("sequence numbers repeat: %v", recs)
	}
}

// testHistoryPages: ListBefore pages through a device's verdicts newest
// first, each once, continuing from the last record's sequence number;
// other devices' records never appear.
func testHistoryPages(t *testing.T, open func(*testing.T, int) *attest.History) {
	h := open(t, 0)
	for range 25 {
		for _, id := range []string{"dev-a", "dev-b"} {
			if err := h.Add(t.Context(), &attest.Record{DeviceID: id, Result: "pass"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var seqs []uint64
	before := uint64(0)
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		recs, err := h.ListBefore(t.Context(), "dev-a", before, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			if r.DeviceID != "dev-a" {
				t.Fatalf("another device's record: %+v", r)
			}
			seqs = append(seqs, r.Seq)
		}
		before = recs[len(recs)-1].Seq
	}
	if len(seqs) != 25 {
		t.Fatalf("%d records, want 25: %v", len(seqs), seqs)
	}
	for i, s := range seqs {
		if s != uint64(25-i) {
			t.Fatalf("record %d has seq %d, want %d: %v", i, s, 25-i, seqs)
		}
	}
	if recs, err := h.ListBefore(t.Context(), "dev-a", 1000, 3); err != nil || len(recs) != 3 || recs[0].Seq != 25 {
		t.Fatalf("before a sequence past the newest: %+v, %v", recs, err)
	}
	if recs, err := h.ListBefore(t.Context(), "nobody", 0, 3); err != nil || len(recs) != 0 {
		t.Fatalf("unknown device: %+v, %v", recs, err)
	}
}
