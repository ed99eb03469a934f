// Package envelopetest holds the pinned vectors of the signed envelope
// (package envelope): an envelope signed with a fixed test key over a
// pinned wire message, and what a verifier must answer for it under each
// expectation. The signature is ECDSA, randomized: the vector pins the
// encoded bytes, which must keep verifying (not re-signing to the same
// bytes). Other implementations can check themselves against them.
package envelopetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"

	"github.com/sigil-iot/sigil/pkg/envelope"
	"github.com/sigil-iot/sigil/pkg/wire/wiretest"
)

// Vector is an encoded envelope and what Verify answers under Expect.
type Vector struct {
	Name   string
	Expect envelope.Expect
	Hex    string // the encoded COSE_Sign1, lowercase hex
	Err    error  // nil: verifies, with Header and the wire message as payload
}

// Bytes returns the encoding the vector pins.
func (v Vector) Bytes() []byte {
	b, err := hex.DecodeString(v.Hex)
	if err != nil {
		panic("envelopetest: vector hex: " + err.Error())
	}
	return b
}

// Key returns the fixed P-256 key the vectors are signed with; other
// returns a second one. Test keys: their private scalars are public.
func Key() *ecdsa.PrivateKey { return key("sigil envelope test key 1") }

// Other returns a second fixed key, that signed none of the vectors.
func Other() *ecdsa.PrivateKey { return key("sigil envelope test key 2") }

func key(seed string) *ecdsa.PrivateKey {
	d := sha256.Sum256([]byte(seed))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		panic("envelopetest: " + err.Error())
	}
	return k
}

// Header is the protected header of Signed.
var Header = envelope.Header{KeyID: "4a1b2c3d", Counter: 7, Topic: "sigil/v1/dev/d1/up/hello"}

// Payload is the wire message Signed carries: wiretest's hello envelope.
func Payload() []byte { return wiretest.Envelopes()[0].Bytes() }

// Signed is Payload with Header, signed by Key (hex).
const Signed = signedHex

// Vectors returns the vectors.
func Vectors() []Vector {
	pub := &Key().PublicKey
	ok := envelope.Expect{Key: pub, KeyID: Header.KeyID, Topic: Header.Topic, After: 6}
	with := func(f func(*envelope.Expect)) envelope.Expect { e := ok; f(&e); return e }
	flip := func(i int) string { // flips a bit of byte i (negative: from the end)
		b, _ := hex.DecodeString(Signed)
		if i < 0 {
			i += len(b)
		}
		b[i] ^= 0x01
		return hex.EncodeToString(b)
	}
	return []Vector{
		{Name: "valid", Expect: ok, Hex: Signed},
		{Name: "valid-first-message", Expect: with(func(e *envelope.Expect) { e.After = 0 }), Hex: Signed},
		{Name: "replayed", Expect: with(func(e *envelope.Expect) { e.After = 7 }), Hex: Signed, Err: envelope.ErrReplay},
		{Name: "redirected-to-another-device", Expect: with(func(e *envelope.Expect) { e.Topic = "sigil/v1/dev/d2/up/hello" }), Hex: Signed, Err: envelope.ErrTopic},
		{Name: "redirected-to-another-site", Expect: with(func(e *envelope.Expect) { e.Topic = "sigil/site/plant2/v1/dev/d1/up/hello" }), Hex: Signed, Err: envelope.ErrTopic},
		{Name: "another-certificate", Expect: with(func(e *envelope.Expect) { e.KeyID = "5b2c3d4e" }), Hex: Signed, Err: envelope.ErrKey},
		{Name: "another-key", Expect: with(func(e *envelope.Expect) { e.Key = &Other().PublicKey }), Hex: Signed, Err: envelope.ErrSignature},
		{Name: "signature-altered", Expect: ok, Hex: flip(-1), Err: envelope.ErrSignature},
		{Name: "payload-altered", Expect: ok, Hex: flip(-80), Err: envelope.ErrSignature},
		{Name: "truncated", Expect: ok, Hex: Signed[:len(Signed)-2], Err: envelope.ErrMalformed},
		{Name: "untagged", Expect: ok, Hex: Signed[2:], Err: envelope.ErrMalformed},
	}
}
