package verify_test

import (
	"math"
	"testing"

	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestRotateMovesTheSequenceByOne: a rotation must carry the next
// sequence number. A statement that jumps ahead is refused even when both
// thresholds signed it, so that no statement can reach 2^64-1 and block
// every later rotation; the next number is accepted.
func TestRotateMovesTheSequenceByOne(t *testing.T) {
	k := signtest.Signers(t, 2)
	cur := signtest.Trust(t, 7, 1, k[0])
	for _, seq := range []uint64{9, 1 << 40, math.MaxUint64} {
		stmt, _ := signtest.Trust(t, seq, 1, k[1]).Marshal()
		_, err := verify.Rotate(cur, stmt, signAll(t, stmt, k...))
		refused(t, err, wire.ReasonBadRequest, verify.ErrSequenceGap)
	}
	stmt, _ := signtest.Trust(t, 8, 1, k[1]).Marshal()
	next, err := verify.Rotate(cur, stmt, signAll(t, stmt, k...))
	if err != nil || next.Sequence() != 8 {
		t.Fatalf("rotation to the next sequence: %v", err)
	}
	// A set already at the top (taken on first enrollment) never rotates.
	top := signtest.Trust(t, math.MaxUint64, 1, k[0])
	stmt, _ = signtest.Trust(t, 0, 1, k[1]).Marshal()
	_, err = verify.Rotate(top, stmt, signAll(t, stmt, k...))
	refused(t, err, wire.ReasonReplay, verify.ErrStale)
}
