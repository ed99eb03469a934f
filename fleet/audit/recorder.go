package audit

import "context"

// Recorder records audit entries. *Log implements it; packages that record
// accept one in their Config:
//
//	type Config struct {
//		// Audit records every operator and lifecycle action. Nil records
//		// nothing.
//		Audit audit.Recorder
//	}
//
// and, in New, replace nil with Discard{} so that call sites need no nil
// checks:
//
//	if cfg.Audit == nil {
//		cfg.Audit = audit.Discard{}
//	}
//
// A consumer may just as well declare this one-method interface itself.
type Recorder interface {
	// Record appends e to the log. It returns once the entry is durable,
	// or with an error saying why it was not recorded.
	Record(ctx context.Context, e Entry) error
}

// RecorderFunc adapts a function to Recorder (for tests that collect
// entries, or to add fields to every entry of a component).
type RecorderFunc func(ctx context.Context, e Entry) error

// Record calls f.
func (f RecorderFunc) Record(ctx context.Context, e Entry) error { return f(ctx, e) }

// Discard is a Recorder that records nothing and never fails.
type Discard struct{}

// Record does nothing.
func (Discard) Record(context.Context, Entry) error { return nil }

var (
	_ Recorder = (*Log)(nil)
	_ Recorder = RecorderFunc(nil)
	_ Recorder = Discard{}
)
