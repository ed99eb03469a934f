package attest

import (
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// eachBackend runs f with a history opener on each backend: a bbolt file
// and a real PostgreSQL (pgtest; skipped without one unless CI=true).
func eachBackend(t *testing.T, f func(t *testing.T, open func(t *testing.T, max int) *History)) {
	t.Run("bbolt", func(t *testing.T) {
		f(t, func(t *testing.T, max int) *History {
			h, err := OpenHistory(filepath.Join(t.TempDir(), "h.db"), max)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { h.Close() })
			return h
		})
	})
	t.Run("postgres", func(t *testing.T) {
		srv := pgtest.Start(t)
		f(t, func(t *testing.T, max int) *History {
			db, err := postgres.Open(t.Context(), srv.NewDatabase(t), postgres.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(db.Close)
			h, err := OpenHistoryPostgres(t.Context(), db, max)
			if err != nil {
				t.Fatal(err)
			}
			return h
		})
	})
}

// outcomesOf is what Outcomes must return for records as List returns
// them.
func outcomesOf(rs []Record) []Outcome {
	var out []Outcome
	for _, r := range rs {
		out = append(out, Outcome{Seq: r.Seq, Time: r.Time, Result: r.Result, Reason: r.Reason, DeviceError: r.DeviceError})
	}
	return out
}

// verdict is the i-th of a device's test verdicts: passes, policy
// failures and TPM errors, counters moving on.
func verdict(id string, i int, at time.Time) *Record {
	r := &Record{DeviceID: id, Time: at.Add(time.Duration(i) * time.Minute), Result: "pass", Reason: "ok",
		ResetCount: uint32(i / 7), RestartCount: uint32(i % 3), Clock: uint64(1000 * (i + 1)),
		PCRs: map[string]map[int]string{"sha256": {0: fmt.Sprintf("%064x", i)}}}
	switch {
	case i%5 == 3:
		r.Result, r.Reason = "fail", "policy_violation"
	case i%11 == 4:
		r.Result, r.Reason, r.DeviceError, r.Clock = "fail", "quote_invalid", true, 0
	}
	return r
}

// checkSummary: Outcomes for every limit and lastCounters agree with the
// records themselves.
func checkSummary(t *testing.T, h *History, id string) {
	t.Helper()
	all, err := h.List(t.Context(), id, 10000)
	if err != nil {
		t.Fatal(err)
	}
	for limit := 0; limit <= len(all)+2; limit++ {
		got, err := h.Outcomes(t.Context(), id, limit)
		if err != nil {
			t.Fatal(err)
		}
		if want := outcomesOf(all[:min(limit, len(all))]); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Outcomes(%d) = %+v\nwant %+v", id, limit, got, want)
		}
	}
	c, ok, err := h.lastCounters(t.Context(), id)
	if err != nil || ok != (len(all) > 0) {
		t.Fatalf("%s: lastCounters: %v, %v", id, ok, err)
	}
	if ok && (c != counters{ResetCount: all[0].ResetCount, RestartCount: all[0].RestartCount, Clock: all[0].Clock}) {
		t.Fatalf("%s: lastCounters %+v, newest record %+v", id, c, all[0])
	}
}

// TestSummaryMatchesRecords: the summary each Add keeps beside a device's
// records answers Outcomes and the counter check exactly as the records
// do — for every limit, below and past what it keeps, with histories
// shorter and longer than it and bounded below it, records added one by
// one and together.
func TestSummaryMatchesRecords(t *testing.T) {
	eachBackend(t, testSummaryMatchesRecords)
}

func testSummaryMatchesRecords(t *testing.T, open func(*testing.T, int) *History) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 123456789, time.UTC)
	for _, max := range []int{3, SummaryOutcomes, 100} {
		t.Run(fmt.Sprint("max=", max), func(t *testing.T) {
			h := open(t, max)
			checkSummary(t, h, "dev-a")
			for i := range 2*SummaryOutcomes + 5 {
				if err := h.Add(t.Context(), verdict("dev-a", i, at)); err != nil {
					t.Fatal(err)
				}
				checkSummary(t, h, "dev-a")
			}
			var batch []*Record
			for i := range 40 {
				batch = append(batch, verdict("dev-b", i, at), verdict("dev-c", i, at))
			}
			for i, err := range h.AddAll(t.Context(), batch) {
				if err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
			}
			for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
				checkSummary(t, h, id)
				if rs, _ := h.List(t.Context(), id, 10000); len(rs) != min(max, len(rs)) || len(rs) == 0 {
					t.Fatalf("%s: %d records, bound %d", id, len(rs), max)
				}
			}
		})
	}
}

// TestSummaryRebuilt: a history written before summaries existed (or with
// a summary that does not decode) is read from its records, and the next
// Add rebuilds the summary from them.
func TestSummaryRebuilt(t *testing.T) { eachBackend(t, testSummaryRebuilt) }

func testSummaryRebuilt(t *testing.T, open func(*testing.T, int) *History) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	h := open(t, 0)
	for i := range 40 {
		if err := h.Add(t.Context(), verdict("old", i, at)); err != nil {
			t.Fatal(err)
		}
		if err := h.Add(t.Context(), verdict("torn", i, at)); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.db.Update(t.Context(), func(tx kv.Tx) error {
		b := tx.Bucket(bucketSummaries)
		if err := b.Delete([]byte("old")); err != nil {
			return err
		}
		return b.Put([]byte("torn"), []byte{summaryVersion, 0, 0xff})
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"old", "torn"} {
		checkSummary(t, h, id)
		if err := h.Add(t.Context(), verdict(id, 40, at)); err != nil {
			t.Fatal(err)
		}
		h.db.View(t.Context(), func(tx kv.Tx) error {
			if _, ok := readSummary(tx, id); !ok {
				t.Errorf("%s: no summary after Add", id)
			}
			return nil
		})
		checkSummary(t, h, id)
	}
}

// TestHistoryRefusesSummaryName: no device ID can name the summaries'
// bucket.
func TestHistoryRefusesSummaryName(t *testing.T) {
	h, err := OpenHistory(filepath.Join(t.TempDir(), "h.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, id := range []string{"", string(bucketSummaries)} {
		if err := h.Add(t.Context(), &Record{DeviceID: id, Result: "pass"}); err == nil {
			t.Errorf("device ID %q accepted", id)
		}
	}
}

// FuzzDecodeSummary: a summary read from disk never crashes the reader,
// and what decodes survives encoding and decoding again unchanged.
func FuzzDecodeSummary(f *testing.F) {
	s := &summary{last: counters{ResetCount: 3, RestartCount: 1, Clock: 99}, complete: true}
	s.add(verdict("d", 3, time.Unix(0, 0)), SummaryOutcomes, 1)
	f.Add(s.encode())
	f.Add([]byte{summaryVersion, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSummary(b)
		if err != nil {
			return
		}
		again, err := decodeSummary(s.encode())
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("%x decodes to %+v, which encodes to %x: %+v, %v", b, s, s.encode(), again, err)
		}
	})
}
