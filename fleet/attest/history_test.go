package attest_test

import (
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/fleet/attest"
)

// TestHistoryPages: ListBefore pages through a device's verdicts newest
// first, each once, continuing from the last record's sequence number;
// other devices' records never appear.
func TestHistoryPages(t *testing.T) {
	h, err := attest.OpenHistory(filepath.Join(t.TempDir(), "h.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for range 25 {
		for _, id := range []string{"dev-a", "dev-b"} {
			if err := h.Add(&attest.Record{DeviceID: id, Result: "pass"}); err != nil {
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
		recs, err := h.ListBefore("dev-a", before, 10)
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
	if recs, err := h.ListBefore("dev-a", 1000, 3); err != nil || len(recs) != 3 || recs[0].Seq != 25 {
		t.Fatalf("before a sequence past the newest: %+v, %v", recs, err)
	}
	if recs, err := h.ListBefore("nobody", 0, 3); err != nil || len(recs) != 0 {
		t.Fatalf("unknown device: %+v, %v", recs, err)
	}
}
