package telemetry

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

// TestCursorStore: cursors survive reopening, concurrent writers each
// keep their own, and an unknown device has none.
func TestCursorStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "telemetry.db")
	c, err := openCursors(t, path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			id := fmt.Sprintf("dev%02d", i)
			for n := range 20 {
				if err := c.SetCursor(t.Context(), id, Cursor{Stream: bytes.Repeat([]byte{byte(i)}, 16), Through: uint64(n + 1), Reported: uint64(i)}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	c.Close()
	if c, err = openCursors(t, path); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 8 {
		cur, ok, err := c.Cursor(t.Context(), fmt.Sprintf("dev%02d", i))
		if err != nil || !ok || cur.Through != 20 || cur.Reported != uint64(i) || !bytes.Equal(cur.Stream, bytes.Repeat([]byte{byte(i)}, 16)) {
			t.Fatalf("device %d: %+v %v %v", i, cur, ok, err)
		}
	}
	if _, ok, err := c.Cursor(t.Context(), "unknown"); ok || err != nil {
		t.Fatalf("unknown device: %v %v", ok, err)
	}
}

// TestCursorFlags: a flag is unset until set, and stays set after
// reopening.
func TestCursorFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	c, err := openCursors(t, path)
	if err != nil {
		t.Fatal(err)
	}
	if set, err := c.Flag(t.Context(), "installed"); set || err != nil {
		t.Fatalf("new store: flag %v, %v", set, err)
	}
	if err := c.SetFlag(t.Context(), "installed"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if c, err = openCursors(t, path); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if set, err := c.Flag(t.Context(), "installed"); !set || err != nil {
		t.Fatalf("reopened: flag %v, %v", set, err)
	}
	if set, err := c.Flag(t.Context(), "other"); set || err != nil {
		t.Fatalf("other flag: %v, %v", set, err)
	}
}

// TestResumeWithStoredCursors: a fleet restarted on its cursor store
// (reopened) counts a resent batch as duplicates, not as new points.
func TestResumeWithStoredCursors(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	c, err := openCursors(t, path)
	if err != nil {
		t.Fatal(err)
	}
	in1, _ := newIngester(t, Config{Cursors: c})
	if _, err := in1.Ingest("dev-1", envelope(t, batch(streamA, 1, 5, 0, 0), t0)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if c, err = openCursors(t, path); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in2, _ := newIngester(t, Config{Cursors: c}) // the fleet restarted; the ack was lost
	ack, err := in2.Ingest("dev-1", envelope(t, batch(streamA, 1, 6, 0, 0), t0))
	if err != nil || ack.Through != 6 {
		t.Fatalf("after restart: %+v, %v", ack, err)
	}
	if st, _ := in2.Device("dev-1"); st.Counts.Duplicates != 5 || st.Counts.Ingested != 1 {
		t.Fatalf("after restart: %+v", st.Counts)
	}
}
