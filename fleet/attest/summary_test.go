package attest

import (
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

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
	all, err := h.List(id, 10000)
	if err != nil {
		t.Fatal(err)
	}
	for limit := 0; limit <= len(all)+2; limit++ {
		got, err := h.Outcomes(id, limit)
		if err != nil {
			t.Fatal(err)
		}
		if want := outcomesOf(all[:min(limit, len(all))]); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Outcomes(%d) = %+v\nwant %+v", id, limit, got, want)
		}
	}
	c, ok, err := h.lastCounters(id)
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
	at := time.Date(2026, 12, 7, 18, 0, 0, 123456789, time.UTC)
	for _, max := range []int{3, SummaryOutcomes, 100} {
		t.Run(fmt.Sprint("max=", max), func(t *testing.T) {
			h, err := OpenHistory(filepath.Join(t.TempDir(), "h.db"), max)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			checkSummary(t, h, "dev-a")
			for i := range 2*SummaryOutcomes + 5 {
				if err := h.Add(verdict("dev-a", i, at)); err != nil {
					t.Fatal(err)
				}
				checkSummary(t, h, "dev-a")
			}
			var batch []*Record
			for i := range 40 {
				batch = append(batch, verdict("dev-b", i, at), verdict("dev-c", i, at))
			}
			for i, err := range h.AddAll(batch) {
				if err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
			}
			for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
				checkSummary(t, h, id)
				if rs, _ := h.List(id, 10000); len(rs) != min(max, len(rs)) || len(rs) == 0 {
					t.Fatalf("%s: %d records, bound %d", id, len(rs), max)
				}
			}
		})
	}
}

// TestSummaryRebuilt: a history written before summaries existed (or with
// a summary that does not decode) is read from its records, and the next
// Add rebuilds the summary from them.
func TestSummaryRebuilt(t *testing.T) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	h, err := OpenHistory(filepath.Join(t.TempDir(), "h.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for i := range 40 {
		if err := h.Add(verdict("old", i, at)); err != nil {
			t.Fatal(err)
		}
		if err := h.Add(verdict("torn", i, at)); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.db.Update(func(tx *bolt.Tx) error {
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
		if err := h.Add(verdict(id, 40, at)); err != nil {
			t.Fatal(err)
		}
		h.db.View(func(tx *bolt.Tx) error {
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
		if err := h.Add(&Record{DeviceID: id, Result: "pass"}); err == nil {
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
