package attest

import (
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// bucketMethods names kv.Bucket for embedding (a field named Bucket would
// hide the method of that name).
type bucketMethods = kv.Bucket

// failingReads is a bucket whose cursor finds the first key and then
// nothing: in PostgreSQL a read that fails within a transaction (it must
// serialize again, say) returns nothing, and the transaction fails at its
// end (kv's contract); the code in between must not crash. Only Cursor is
// implemented.
type failingReads struct{ bucketMethods }

func (failingReads) Cursor() kv.Cursor { return failingCursor{} }

type failingCursor struct{ kv.Cursor }

func (failingCursor) First() ([]byte, []byte) { return key(3), []byte("{}") }
func (failingCursor) Last() ([]byte, []byte)  { return nil, nil }

// TestCountSurvivesFailedReads: count on a bucket whose last key the
// failed read did not return is 0, not a panic (a replica crashed here
// in TestReplicas while others wrote the same device's history).
func TestCountSurvivesFailedReads(t *testing.T) {
	if n := count(failingReads{}); n != 0 {
		t.Fatalf("count %d", n)
	}
}
