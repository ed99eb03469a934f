// Package shard spreads work over a fixed set of workers by key: a key's
// items always go to the same worker's bounded queue, so they are handled
// in order, while different keys' items are handled in parallel.
package shard

import (
	"context"
	"hash/fnv"
	"sync"
)

// Queues are the workers' queues.
type Queues[T any] struct{ qs []chan T }

// New makes queues for workers workers (at least one), each holding depth
// items.
func New[T any](workers, depth int) *Queues[T] {
	q := &Queues[T]{qs: make([]chan T, max(workers, 1))}
	for i := range q.qs {
		q.qs[i] = make(chan T, depth)
	}
	return q
}

// Put queues v on key's worker without waiting; false when that queue is
// full (v is not queued).
func (q *Queues[T]) Put(key string, v T) bool {
	h := fnv.New32a()
	h.Write([]byte(key))
	select {
	case q.qs[h.Sum32()%uint32(len(q.qs))] <- v:
		return true
	default:
		return false
	}
}

// Len is how many items wait, over all queues.
func (q *Queues[T]) Len() int {
	n := 0
	for _, c := range q.qs {
		n += len(c)
	}
	return n
}

// Workers is the number of workers.
func (q *Queues[T]) Workers() int { return len(q.qs) }

// Run hands the queued items to handle, one goroutine per queue, until
// ctx ends; it returns once every worker stopped.
func (q *Queues[T]) Run(ctx context.Context, handle func(T)) error {
	var wg sync.WaitGroup
	for _, c := range q.qs {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case v := <-c:
					handle(v)
				}
			}
		})
	}
	wg.Wait()
	return nil
}
