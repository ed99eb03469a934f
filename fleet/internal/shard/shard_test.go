package shard

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/internal/leaktest"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestMain fails the tests when a goroutine outlives them: Run must leave
// nothing running once its context is done.
func TestMain(m *testing.M) { leaktest.Main(m) }

// TestKeyOrder: every key's items are handled in the order they were put,
// by several workers; a full queue refuses an item instead of waiting.
func TestKeyOrder(t *testing.T) {
	q := New[[2]int](4, 1000)
	const keys, per = 50, 20
	for i := range per {
		for k := range keys {
			if !q.Put(fmt.Sprint(k), [2]int{k, i}) {
				t.Fatalf("item %d of key %d refused", i, k)
			}
		}
	}
	if q.Len() != keys*per || q.Workers() != 4 {
		t.Fatalf("%d queued on %d workers", q.Len(), q.Workers())
	}
	var mu sync.Mutex
	next := map[int]int{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- q.Run(ctx, func(v [2]int) {
			mu.Lock()
			defer mu.Unlock()
			if next[v[0]] != v[1] {
				t.Errorf("key %d: item %d handled before %d", v[0], v[1], next[v[0]])
			}
			next[v[0]] = v[1] + 1
		})
	}()
	wait.Until(t, func() error {
		if n := q.Len(); n > 0 {
			return fmt.Errorf("%d items not handled", n)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for k := range keys {
		if next[k] != per {
			t.Errorf("key %d: %d of %d items handled", k, next[k], per)
		}
	}

	small := New[int](1, 1)
	if !small.Put("a", 1) || small.Put("a", 2) {
		t.Fatal("a full queue took an item")
	}
}
