package rollout

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Rotation names one rotation of the release trust set in the
// configuration: a statement file, the new set as `sigil firmware trust`
// writes it, and the bundle files that sign it (`sigil firmware sign`), by
// the current threshold of the current keys and the new threshold of the
// new keys.
type Rotation struct {
	Statement string   `json:"statement"`
	Bundles   []string `json:"bundles"`
}

// LoadTrust reads the configured release trust set and applies the
// configured rotations in order, each verified with verify.Rotate. It
// returns the configured set followed by the set each rotation leads to
// (the last is the current set) and the rotations devices need.
//
// A statement is used as its file holds it, byte for byte: the signatures
// cover those bytes (cosign sign-blob signs the file as it is, a trailing
// newline included), and devices check them over the bytes they receive.
// Bundles made over the file without its one trailing newline (what sigil
// firmware sign signs) count too: the statement then goes to devices in
// that form, the one its signers signed.
func LoadTrust(path string, rots []Rotation) ([]*verify.TrustSet, []wire.TrustRotation, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("rollout: release_trust: %w", err)
	}
	cur, err := verify.ParseTrustSet(trimNewline(b))
	if err != nil {
		return nil, nil, fmt.Errorf("rollout: release_trust %s: %w", path, err)
	}
	if len(rots) > wire.MaxFirmwareRotations {
		return nil, nil, fmt.Errorf("rollout: release_trust_rotations: %d, at most %d", len(rots), wire.MaxFirmwareRotations)
	}
	chain := []*verify.TrustSet{cur}
	var out []wire.TrustRotation
	for i, r := range rots {
		stmt, err := os.ReadFile(r.Statement)
		if err != nil {
			return nil, nil, fmt.Errorf("rollout: release_trust_rotations[%d]: %w", i, err)
		}
		var bundles [][]byte
		for _, p := range r.Bundles {
			bb, err := os.ReadFile(p)
			if err != nil {
				return nil, nil, fmt.Errorf("rollout: release_trust_rotations[%d]: %w", i, err)
			}
			bundles = append(bundles, bb)
		}
		next, err := verify.Rotate(cur, stmt, bundles)
		if trimmed := trimNewline(stmt); errors.Is(err, verify.ErrSignature) && len(trimmed) < len(stmt) {
			if n, err2 := verify.Rotate(cur, trimmed, bundles); err2 == nil {
				next, stmt, err = n, trimmed, nil
			}
		}
		if err != nil {
			return nil, nil, fmt.Errorf("rollout: release_trust_rotations[%d] (%s): %w%s", i, r.Statement, err, causeOf(err))
		}
		cur = next
		chain = append(chain, cur)
		out = append(out, wire.TrustRotation{Statement: stmt, Bundles: bundles})
	}
	return chain, out, nil
}

// causeOf is the internal cause of a refusal in parentheses, for the
// operator who configured what was refused; "" for other errors.
func causeOf(err error) string {
	if we, ok := errors.AsType[*wire.Error](err); ok && we.Err != nil {
		return " (" + we.Err.Error() + ")"
	}
	return ""
}

// trimNewline drops one trailing newline, which editors and `>` add to
// files whose canonical form has none.
func trimNewline(b []byte) []byte {
	b = []byte(strings.TrimSuffix(string(b), "\n"))
	return []byte(strings.TrimSuffix(string(b), "\r"))
}
