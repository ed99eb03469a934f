package runtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestStop: stop ends Run through its context and returns what Run
// returned, the same at every call.
func TestStop(t *testing.T) {
	boom := errors.New("boom")
	stop := Start(t, func(ctx context.Context) error {
		<-ctx.Done()
		return fmt.Errorf("stopped: %w", boom)
	})
	for range 2 {
		if err := stop(); !errors.Is(err, boom) {
			t.Fatalf("stop: %v, want boom", err)
		}
	}
}

// fakeTB records what a cleanup reports.
type fakeTB struct {
	testing.TB
	cleanups []func()
	errs     []string
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

// TestCleanupReportsTheError: a Run the test did not stop is stopped when
// the test ends, and its error fails the test; one the test stopped is
// left to the test.
func TestCleanupReportsTheError(t *testing.T) {
	for _, stopped := range []bool{false, true} {
		f := &fakeTB{}
		stop := Start(f, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
		if stopped {
			stop()
		}
		for _, fn := range f.cleanups {
			fn()
		}
		if want := !stopped; (len(f.errs) == 1) != want {
			t.Errorf("stopped by the test %v: cleanup reported %q", stopped, f.errs)
		}
	}
}
