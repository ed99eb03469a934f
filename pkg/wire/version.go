package wire

import (
	"errors"
	"fmt"
	"time"
)

// OldestVersion is the oldest protocol version the fleet still speaks: that
// of the previous release (v0.1.0). The fleet answers a device of any
// version from OldestVersion to Version in the device's own version
// (Negotiate, EncodeFor, Downgrade) and refuses an older one with
// ReasonUnsupportedVersion. It stays at the previous release's version
// when Version moves within a release.
const OldestVersion = 4

// ErrNeedsVersion is returned by EncodeFor and Downgrade for a message
// that the peer's protocol version cannot carry: a type it does not know,
// or a field or value added after it (Needs). The sender decides what to
// do instead; nothing is dropped silently.
var ErrNeedsVersion = errors.New("wire: the message needs a newer protocol version than the peer speaks")

// Negotiate returns the version to speak to a peer that speaks peer: the
// lower of peer and Version. A peer older than OldestVersion is refused
// (ErrVersion).
func Negotiate(peer int) (int, error) {
	if peer < OldestVersion {
		return 0, fmt.Errorf("%w: %d (the fleet speaks %d to %d)", ErrVersion, peer, OldestVersion, Version)
	}
	return min(peer, Version), nil
}

// versioned is a body whose fields or values grew after its message type
// was introduced: needs returns the lowest version that carries the body
// as it is.
type versioned interface {
	needs() int
}

// Needs returns the lowest protocol version that carries a message of type
// typ with this body: the version that introduced the type, or a later one
// when the body sets a field or value added since. It is Version for a
// type not in Messages.
func Needs(typ string, body any) int {
	m, ok := Lookup(typ)
	if !ok {
		return Version
	}
	n := m.Since
	if v, ok := body.(versioned); ok {
		n = max(n, v.needs())
	}
	return n
}

// EncodeFor is Encode for a peer that speaks version peer (Negotiate): the
// envelope carries the negotiated version, and a body that version cannot
// carry is refused with ErrNeedsVersion.
func EncodeFor(peer int, typ string, corr []byte, now time.Time, body any) ([]byte, error) {
	v, err := Negotiate(peer)
	if err != nil {
		return nil, err
	}
	if n := Needs(typ, body); n > v {
		return nil, fmt.Errorf("%w: %s needs version %d, the peer speaks %d", ErrNeedsVersion, typ, n, v)
	}
	return encode(v, typ, corr, now, body)
}

// Downgrade re-encodes a message this side encoded (Encode) for a peer
// that speaks version peer: unchanged for a peer of Version, else the
// same message (type, ID, correlation, time, body bytes) in an envelope of
// the negotiated version. A message the peer's version cannot carry is
// refused with ErrNeedsVersion, an older peer than OldestVersion with
// ErrVersion. It is the fleet's send path to enrolled devices, whose
// services encode at Version.
func Downgrade(payload []byte, peer int) ([]byte, error) {
	v, err := Negotiate(peer)
	if err != nil || v == Version {
		return payload, err
	}
	env, err := Decode(payload)
	if err != nil {
		return nil, err
	}
	m, ok := Lookup(env.Type)
	if !ok {
		return nil, fmt.Errorf("%w: unknown message type %q", ErrNeedsVersion, env.Type)
	}
	body := m.New() // decoded to learn what it needs; validated by its sender
	if err := decMode.Unmarshal(env.Body, body); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, env.Type, err)
	}
	if n := Needs(env.Type, body); n > v {
		return nil, fmt.Errorf("%w: %s needs version %d, the peer speaks %d", ErrNeedsVersion, env.Type, n, v)
	}
	env.V = v
	out, err := encMode.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("wire: encode envelope: %w", err)
	}
	return out, nil
}

// needs implements versioned: asking for the event log is version 5.
func (c *EnrollChallenge) needs() int {
	if c.EventLog {
		return 5
	}
	return 1
}

// needs implements versioned: the event log in the proof is version 5.
func (p *EnrollProof) needs() int {
	if len(p.EventLog) > 0 {
		return 5
	}
	return 1
}

// needs implements versioned: FirmwareRotations is version 5.
func (r *EnrollResult) needs() int {
	if len(r.FirmwareRotations) > 0 {
		return 5
	}
	return 1
}

// needs implements versioned: a rotation statement that ends in a newline
// is version 5 (version 4 verifies the canonical set alone).
func (t *FirmwareTrust) needs() int {
	for _, r := range t.Rotations {
		if n := len(r.Statement); n > 0 && r.Statement[n-1] == '\n' {
			return 5
		}
	}
	return 4
}

// needs implements versioned: the phase advancing_floor is version 5.
func (r *FirmwareReport) needs() int {
	if r.Phase == "advancing_floor" {
		return 5
	}
	return 4
}
