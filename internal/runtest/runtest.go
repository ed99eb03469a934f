// Package runtest runs a component's Run(ctx) error beside a test: in a
// goroutine of its own, until the test stops it or ends.
package runtest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// Start runs run in a goroutine with a context of its own. The stop it
// returns cancels that context, waits for run to return and returns its
// error (later calls return the same error at once). If the test has not
// called stop when t ends, a cleanup does, and fails t with the error run
// returned, if any.
func Start(t testing.TB, run func(context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var (
		once    sync.Once
		err     error
		stopped atomic.Bool // by the test
	)
	halt := func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() {
		if err := halt(); err != nil && !stopped.Load() {
			t.Errorf("Run: %v", err)
		}
	})
	return func() error {
		stopped.Store(true)
		return halt()
	}
}
