package retry

import (
	"context"
	"crypto/rand"
	"testing"
	"testing/synctest"
	"time"
)

func TestBackoffGrowsWithJitterAndCaps(t *testing.T) {
	b := &Backoff{Min: 100 * time.Millisecond, Max: time.Second, Rand: rand.Reader}
	prev := time.Duration(0)
	for i := range 10 {
		d := b.Next()
		if d < b.Step()/2 || d > b.Step() || d > time.Second {
			t.Fatalf("step %d: %v outside [%v, %v]", i, d, b.Step()/2, b.Step())
		}
		if i < 3 && d < prev/2 {
			t.Fatalf("backoff shrank: %v after %v", d, prev)
		}
		prev = d
	}
	if b.Step() != time.Second {
		t.Fatalf("cap: %v", b.Step())
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}

func TestUpTo(t *testing.T) {
	for range 100 {
		if d := UpTo(nil, time.Second); d < 0 || d >= time.Second {
			t.Fatalf("UpTo(1s) = %v", d)
		}
	}
	if d := UpTo(nil, 0); d != 0 {
		t.Fatalf("UpTo(0) = %v", d)
	}
}

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Sleep(context.Background(), time.Minute) || time.Since(start) != time.Minute {
			t.Fatalf("Sleep(1m) took %v", time.Since(start))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if Sleep(ctx, time.Hour) {
			t.Fatal("Sleep outlived its context")
		}
	})
}
