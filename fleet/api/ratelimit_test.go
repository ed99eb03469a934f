package api

import (
	"testing"
	"time"
)

// TestLimiter: a burst is allowed, the next request waits for a token,
// tokens refill at the rate, and clients do not share buckets.
func TestLimiter(t *testing.T) {
	now := time.Unix(1700000000, 0)
	l := newLimiter(10, 5, func() time.Time { return now })
	for i := range 5 {
		if ok, _ := l.allow("a"); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := l.allow("a")
	if ok || wait <= 0 || wait > 100*time.Millisecond {
		t.Fatalf("over the burst: %v %v", ok, wait)
	}
	if ok, _ := l.allow("b"); !ok {
		t.Fatal("another client was limited")
	}
	now = now.Add(100 * time.Millisecond)
	if ok, _ := l.allow("a"); !ok {
		t.Fatal("no token after 1/rate")
	}
	if ok, _ := l.allow("a"); ok {
		t.Fatal("two tokens after 1/rate")
	}
	off := newLimiter(-1, 0, time.Now)
	for range 1000 {
		if ok, _ := off.allow("a"); !ok {
			t.Fatal("a negative rate limits")
		}
	}
}
