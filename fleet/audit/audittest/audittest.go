// Package audittest keeps audit entries in memory for tests that check
// what a component records.
package audittest

import (
	"context"
	"slices"
	"sync"

	"github.com/sigil-iot/sigil/fleet/audit"
)

// Recorder is an audit.Recorder that keeps every entry it is given, in
// order, and never fails. The zero value is ready; it is safe for
// concurrent use.
type Recorder struct {
	mu      sync.Mutex
	entries []audit.Entry
}

var _ audit.Recorder = (*Recorder)(nil)

// Record keeps e.
func (r *Recorder) Record(_ context.Context, e audit.Entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, e)
	return nil
}

// Entries returns a copy of the entries recorded so far, oldest first.
func (r *Recorder) Entries() []audit.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.entries)
}

// Find returns the entries recorded so far for which keep is true, oldest
// first.
func (r *Recorder) Find(keep func(audit.Entry) bool) []audit.Entry {
	var out []audit.Entry
	for _, e := range r.Entries() {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}
