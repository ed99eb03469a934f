// Package retry paces the device's retries: jittered exponential backoff
// between two bounds, a random spread, and a sleep that its context ends.
// Enrollment, the agent's connection loop and certificate renewal share it,
// so that a fleet's devices that failed together do not return together.
package retry

import (
	"context"
	"crypto/rand"
	"io"
	"math/big"
	"time"
)

// Backoff is jittered exponential backoff: its step starts at Min and
// doubles up to Max, and each wait is drawn from [step/2, step] ("full
// jitter" over the upper half). Set Min and Max; Rand nil is crypto/rand.
// It is not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	Rand     io.Reader

	step time.Duration
}

// Next returns the next wait and moves the step up.
func (b *Backoff) Next() time.Duration {
	if b.step == 0 {
		b.step = b.Min
	} else {
		b.step = min(b.step*2, b.Max)
	}
	half := b.step / 2
	if half <= 0 {
		return b.step
	}
	return half + UpTo(b.Rand, half)
}

// Step is the current step: the bound of the last wait Next returned (0
// before the first).
func (b *Backoff) Step() time.Duration { return b.step }

// Reset starts the steps again from Min.
func (b *Backoff) Reset() { b.step = 0 }

// UpTo returns a random duration in [0, d) read from r (nil: crypto/rand);
// 0 when d is not positive or r fails.
func UpTo(r io.Reader, d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	if r == nil {
		r = rand.Reader
	}
	n, err := rand.Int(r, big.NewInt(int64(d)))
	if err != nil {
		return 0
	}
	return time.Duration(n.Int64())
}

// Sleep waits for d and reports true, or returns false as soon as ctx
// ends.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
