package audittest

import (
	"context"
	"testing"

	"github.com/sigil-iot/sigil/fleet/audit"
)

// TestRecorder: entries come back in order, Find keeps only the matching
// ones, and Entries is a copy.
func TestRecorder(t *testing.T) {
	var r Recorder
	for _, a := range []string{"a", "b", "a"} {
		if err := r.Record(context.Background(), audit.Entry{Action: a}); err != nil {
			t.Fatal(err)
		}
	}
	got := r.Entries()
	if len(got) != 3 || got[0].Action != "a" || got[1].Action != "b" || got[2].Action != "a" {
		t.Fatalf("Entries: %+v", got)
	}
	got[0].Action = "changed"
	if r.Entries()[0].Action != "a" {
		t.Fatal("Entries shares its slice with the recorder")
	}
	if as := r.Find(func(e audit.Entry) bool { return e.Action == "a" }); len(as) != 2 {
		t.Fatalf("Find: %+v", as)
	}
}
