package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/pkg/wire"
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

// TestCursorSwap: a cursor is set only from the one expected (none counts
// as the zero cursor), a failed swap returns the stored one, and of
// concurrent swaps from one cursor exactly one succeeds.
func TestCursorSwap(t *testing.T) {
	c, err := openCursors(t, filepath.Join(t.TempDir(), File))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := t.Context()
	first := Cursor{Stream: streamA, Through: 3}
	if got, ok, err := c.SwapCursor(ctx, "dev-1", Cursor{Stream: streamA, Through: 1}, first); ok || err != nil || !got.equal(Cursor{}) {
		t.Fatalf("swap from a cursor the device does not have: %+v, %v, %v", got, ok, err)
	}
	if got, ok, err := c.SwapCursor(ctx, "dev-1", Cursor{}, first); !ok || err != nil || !got.equal(first) {
		t.Fatalf("first swap: %+v, %v, %v", got, ok, err)
	}
	if got, ok, err := c.SwapCursor(ctx, "dev-1", first, first); !ok || err != nil || !got.equal(first) {
		t.Fatalf("swap to the same cursor: %+v, %v, %v", got, ok, err)
	}
	if got, ok, err := c.SwapCursor(ctx, "dev-1", Cursor{}, Cursor{}); ok || err != nil || !got.equal(first) {
		t.Fatalf("check against a stale cursor: %+v, %v, %v", got, ok, err)
	}
	next := Cursor{Stream: streamB, Through: 1, Retired: [][]byte{streamA}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 8 {
		wg.Go(func() {
			n := next
			n.Reported = uint64(i)
			got, ok, err := c.SwapCursor(ctx, "dev-1", first, n)
			if err != nil {
				t.Error(err)
				return
			}
			if ok {
				mu.Lock()
				won++
				mu.Unlock()
			} else if !bytes.Equal(got.Stream, streamB) || len(got.Retired) != 1 {
				t.Errorf("losing swap returned %+v, want the winner's cursor", got)
			}
		})
	}
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d concurrent swaps from one cursor succeeded, want 1", won)
	}
	got, ok, err := c.Cursor(ctx, "dev-1")
	if err != nil || !ok || !bytes.Equal(got.Stream, streamB) || !slices.EqualFunc(got.Retired, [][]byte{streamA}, bytes.Equal) {
		t.Fatalf("stored cursor %+v, %v, %v", got, ok, err)
	}
}

// TestRetiredStreamsStored: the streams a device replaced are kept with
// its cursor, so a fleet restarted on its store still refuses a batch of
// one.
func TestRetiredStreamsStored(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	c, err := openCursors(t, path)
	if err != nil {
		t.Fatal(err)
	}
	in1, _ := newIngester(t, Config{Cursors: c})
	for _, b := range []*wire.TelemetryBatch{batch(streamA, 1, 2, 0, 0), batch(streamB, 1, 2, 0, 0)} {
		if _, err := in1.Ingest("dev-1", envelope(t, b, t0)); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if c, err = openCursors(t, path); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in2, _ := newIngester(t, Config{Cursors: c})
	if ack, err := in2.Ingest("dev-1", envelope(t, batch(streamA, 3, 1, 2, 0), t0)); !errors.Is(err, ErrStaleStream) || ack != nil {
		t.Fatalf("batch of the replaced stream after a restart: %+v, %v", ack, err)
	}
	if ack, err := in2.Ingest("dev-1", envelope(t, batch(streamB, 3, 1, 2, 0), t0)); err != nil || ack.Through != 3 {
		t.Fatalf("batch of the current stream: %+v, %v", ack, err)
	}
}

// TestSharedCursorsNeedASwapper: an ingester told that its cursors are
// shared refuses a store that cannot compare and set them.
func TestSharedCursorsNeedASwapper(t *testing.T) {
	for _, c := range []Cursors{nil, &memCursors{m: map[string]Cursor{}}} {
		if _, err := New(Config{Cursors: c, SharedCursors: true}); err == nil {
			t.Errorf("shared cursors in %T accepted", c)
		}
	}
}
