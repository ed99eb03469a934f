// Package wait polls a test's condition until it holds: tests wait for what
// they need to happen, not for a time they hope is long enough
// (test/sleep_test.go refuses an unexplained time.Sleep in a test).
//
// The bound on each wait, Timeout, is a safety net for a component that
// is stuck, never a timing the test asserts: generous, so that a busy CI
// machine passes and only a condition that never comes fails. In a
// testing/synctest bubble the polls run on the bubble's fake clock.
package wait

import (
	"testing"
	"time"
)

// Timeout bounds For and Until.
const Timeout = time.Minute

// The polling interval starts at minInterval and doubles up to
// maxInterval, or to a tenth of the time waited so far when that is
// longer: a condition that holds soon is seen soon, and a long wait (a
// command run again, a login throttled for seconds) costs few polls.
const (
	minInterval = time.Millisecond
	maxInterval = 50 * time.Millisecond
)

// For polls cond until it returns true. It fails t, saying it waited for
// what, when cond has not held within Timeout.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Poll(Timeout, cond) {
		t.Fatalf("wait: %s: not reached in %v", what, Timeout)
	}
}

// Until polls cond until it returns nil, an error saying what is still
// missing otherwise. It fails t with cond's last error when cond has not
// returned nil within Timeout.
func Until(t testing.TB, cond func() error) {
	t.Helper()
	var err error
	if !Poll(Timeout, func() bool { err = cond(); return err == nil }) {
		t.Fatalf("wait: not reached in %v: %v", Timeout, err)
	}
}

// Recv receives a value from ch. It fails t, saying it waited for what,
// when nothing has come within Timeout.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Timeout):
		t.Fatalf("wait: %s: nothing received in %v", what, Timeout)
	}
	var zero T
	return zero
}

// Poll calls cond until it returns true or d has passed, and returns cond's
// last answer: for a wait whose caller decides what a timeout means (a
// bounded retry, a clean-up before it fails the test).
func Poll(d time.Duration, cond func() bool) bool {
	start := time.Now()
	deadline := start.Add(d)
	for interval := minInterval; ; interval = min(2*interval, max(maxInterval, time.Since(start)/10)) {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(interval, left)) // the last poll is at the deadline
	}
}
