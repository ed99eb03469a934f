// Package clocktest is a settable clock for tests of code that takes its
// time from an injected function (the Now fields of the fleet's Config
// structs): it moves only when the test moves it, and is safe for
// concurrent use.
package clocktest

import (
	"sync"
	"time"
)

// Clock is a clock that stands still until Advance or Set moves it.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a clock standing at t.
func New(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time; it is the func() time.Time to inject.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock by d and returns its new time.
func (c *Clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}
