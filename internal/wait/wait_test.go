package wait

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// fakeTB records a failure instead of ending the test.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) { f.failed = fmt.Sprintf(format, args...) }

// TestForWaitsForTheCondition: For returns once the condition holds, not
// before, polling on the (fake) clock.
func TestForWaitsForTheCondition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		polls := 0
		For(t, "three seconds", func() bool { polls++; return time.Since(start) >= 3*time.Second })
		if d := time.Since(start); d < 3*time.Second || d > 3*time.Second+3*time.Second/10 {
			t.Fatalf("returned after %v", d)
		}
		// Doubling from 1 ms to 50 ms: about 6 polls to reach the cap,
		// then one every 50 ms until 500 ms, then fewer.
		if polls > int(3*time.Second/maxInterval)+10 {
			t.Fatalf("%d polls in 3 s", polls)
		}
		// A long wait polls about every tenth of the time waited.
		start, polls = time.Now(), 0
		For(t, "a minute", func() bool { polls++; return time.Since(start) >= time.Minute-time.Second })
		if polls > 80 {
			t.Fatalf("%d polls in a minute", polls)
		}
	})
}

// TestUntilFailsWithTheLastError: a condition that never holds fails the
// test after Timeout, with what it last said was missing.
func TestUntilFailsWithTheLastError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		f := &fakeTB{TB: t}
		n := 0
		Until(f, func() error { n++; return errors.New("still " + strings.Repeat("x", n%2+1)) })
		if f.failed == "" || !strings.Contains(f.failed, "still") {
			t.Fatalf("failure %q", f.failed)
		}
		if d := time.Since(start); d < Timeout {
			t.Fatalf("gave up after %v", d)
		}
		f = &fakeTB{TB: t}
		For(f, "never", func() bool { return false })
		if !strings.Contains(f.failed, "never") {
			t.Fatalf("failure %q", f.failed)
		}
	})
}

// TestPoll: Poll reports whether the condition held in time.
func TestPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		if Poll(time.Second, func() bool { return false }) {
			t.Fatal("a condition that never holds held")
		}
		calls := 0
		if !Poll(time.Second, func() bool { calls++; return calls == 3 }) || calls != 3 {
			t.Fatalf("Poll stopped after %d calls", calls)
		}
	})
}

// TestRecv: Recv returns what comes; with nothing, it fails saying what
// it waited for.
func TestRecv(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	if got := Recv(t, ch, "seven"); got != 7 {
		t.Fatalf("Recv = %d, want 7", got)
	}
	synctest.Test(t, func(t *testing.T) {
		f := &fakeTB{}
		Recv(f, make(chan int), "a number")
		if !strings.Contains(f.failed, "a number") {
			t.Fatalf("failure %q does not name what was awaited", f.failed)
		}
	})
}
