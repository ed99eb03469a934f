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
	c, err := OpenCursors(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			id := fmt.Sprintf("dev%02d", i)
			for n := range 20 {
				if err := c.SetCursor(id, Cursor{Stream: bytes.Repeat([]byte{byte(i)}, 16), Through: uint64(n + 1), Reported: uint64(i)}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	c.Close()
	if c, err = OpenCursors(path); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 8 {
		cur, ok, err := c.Cursor(fmt.Sprintf("dev%02d", i))
		if err != nil || !ok || cur.Through != 20 || cur.Reported != uint64(i) || !bytes.Equal(cur.Stream, bytes.Repeat([]byte{byte(i)}, 16)) {
			t.Fatalf("device %d: %+v %v %v", i, cur, ok, err)
		}
	}
	if _, ok, err := c.Cursor("unknown"); ok || err != nil {
		t.Fatalf("unknown device: %v %v", ok, err)
	}
}
