package clocktest

import (
	"sync"
	"testing"
	"time"
)

// TestClock: the clock stands still, moves by Advance and to Set, and
// counts every concurrent Advance.
func TestClock(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := New(t0)
	for range 2 { // it stands still
		if !c.Now().Equal(t0) {
			t.Fatalf("a new clock reads %v, want %v", c.Now(), t0)
		}
	}
	if got := c.Advance(time.Minute); !got.Equal(t0.Add(time.Minute)) || !c.Now().Equal(got) {
		t.Fatalf("after Advance: %v and %v, want %v", got, c.Now(), t0.Add(time.Minute))
	}
	c.Set(t0)
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() { c.Advance(time.Second) })
	}
	wg.Wait()
	if want := t0.Add(100 * time.Second); !c.Now().Equal(want) {
		t.Fatalf("after 100 concurrent Advances: %v, want %v", c.Now(), want)
	}
}
