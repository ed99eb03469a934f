// Package envelope signs and verifies the end-to-end envelope of a
// message on the bridged path: a COSE_Sign1 (RFC 9052, tag 18) over the
// CBOR wire message (pkg/wire), made with github.com/veraison/go-cose.
//
// Where a plant broker bridges devices to the fleet, the fleet's broker
// sees the bridge, not the device (docs/BRIDGES.md): the device's identity
// survives the hop because the device signs each message with its
// TPM-resident key (the one its certificate names), and the fleet signs
// what it sends with a key the device trusts. The signer is a
// crypto.Signer: on the device, the TPM key (device/tpm Signer); the
// envelope never holds a private key.
//
// The protected header binds, besides the algorithm (ES256: ECDSA P-256
// with SHA-256, the algorithm of device keys) and the content type
// (ContentType), the signer's key ID (the hex serial of the signing
// certificate), a per-sender counter that never repeats (replay), and the
// topic the message is meant for (redirection): a verifier checks all of
// them before it trusts the payload. The unprotected header must be
// empty. docs/PROTOCOL.md describes the format; vectors.go pins encoded
// envelopes.
package envelope

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"io"

	"github.com/veraison/go-cose"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// ContentType is the content type of the payload: a CBOR wire message.
const ContentType = "application/vnd.sigil.wire+cbor"

// Private-use header labels (RFC 9052 section 16.4: less than -65536).
const (
	// LabelCounter is the sender's message counter (uint).
	LabelCounter int64 = -65537
	// LabelTopic is the MQTT topic the message is meant for (tstr).
	LabelTopic int64 = -65538
)

// MaxSize bounds an encoded envelope: the wire message's bound
// (wire.MaxMessageSize) and room for the headers and signature.
const MaxSize = wire.MaxMessageSize + 2048

// Errors of Verify. Compare with errors.Is; each wraps a detail.
var (
	ErrMalformed = errors.New("envelope: malformed")         // not a COSE_Sign1 of this profile
	ErrKey       = errors.New("envelope: wrong key")         // key ID or key type is not the expected one
	ErrTopic     = errors.New("envelope: wrong topic")       // meant for another topic
	ErrReplay    = errors.New("envelope: replayed")          // counter not above the last accepted
	ErrSignature = errors.New("envelope: invalid signature") // the signature does not verify
)

// Header is what an envelope binds besides its payload.
type Header struct {
	KeyID   string // hex serial of the signer's certificate
	Counter uint64 // the sender's counter, greater than any it sent before
	Topic   string // the topic the message is published on
}

// Sign returns the encoded COSE_Sign1 of payload (a CBOR wire message)
// with h in its protected header, signed by s, an ECDSA P-256 key (the
// device's TPM key, or the fleet's). rand is passed to s.
func Sign(rand io.Reader, s crypto.Signer, h Header, payload []byte) ([]byte, error) {
	if h.KeyID == "" || h.Topic == "" {
		return nil, errors.New("envelope: key ID and topic are required")
	}
	if pub, ok := s.Public().(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("envelope: signer key is %T, want ECDSA P-256", s.Public())
	}
	// go-cose hands the key no SignerOpts; the TPM's signer (rightly)
	// wants to be told the digest is SHA-256.
	signer, err := cose.NewSigner(cose.AlgorithmES256, sha256Signer{s})
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	msg := cose.Sign1Message{
		Headers: cose.Headers{Protected: cose.ProtectedHeader{
			cose.HeaderLabelAlgorithm:   cose.AlgorithmES256,
			cose.HeaderLabelContentType: ContentType,
			cose.HeaderLabelKeyID:       []byte(h.KeyID),
			LabelCounter:                h.Counter,
			LabelTopic:                  h.Topic,
		}},
		Payload: payload,
	}
	if err := msg.Sign(rand, nil, signer); err != nil {
		return nil, fmt.Errorf("envelope: sign: %w", err)
	}
	b, err := msg.MarshalCBOR()
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("envelope: %d bytes, more than %d", len(b), MaxSize)
	}
	return b, nil
}

// Expect is what the verifier knows before it reads an envelope.
type Expect struct {
	// Key is the sender's public key: the device's CURRENT certificate's
	// (the fleet's, on the device).
	Key crypto.PublicKey
	// KeyID is that certificate's hex serial.
	KeyID string
	// Topic is the topic the envelope arrived on.
	Topic string
	// After is the last counter accepted from this sender: the envelope's
	// must be greater.
	After uint64
}

// Verified is an envelope whose every check passed.
type Verified struct {
	Header
	Payload []byte
}

// Verify decodes b and returns its header and payload only once every
// check passed, in this order: (1) b is at most MaxSize bytes and a
// tagged COSE_Sign1 with a payload and an empty unprotected header
// (ErrMalformed); (2) the protected header holds exactly alg ES256, the
// content type ContentType, a key ID, a counter (uint) and a topic (tstr)
// (ErrMalformed); (3) the expected key is ECDSA P-256 and the key ID is
// want.KeyID (ErrKey); (4) the topic is want.Topic (ErrTopic); (5) the
// counter is greater than want.After (ErrReplay); (6) the signature over
// the protected header and payload verifies with want.Key
// (ErrSignature). The caller records Counter as the sender's new After
// once it accepted the message.
func Verify(b []byte, want Expect) (*Verified, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrMalformed, len(b), MaxSize)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if msg.Payload == nil || len(msg.Headers.Unprotected) != 0 {
		return nil, fmt.Errorf("%w: detached payload or unprotected header", ErrMalformed)
	}
	h, err := header(msg.Headers.Protected)
	if err != nil {
		return nil, err
	}
	pub, ok := want.Key.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: expected key is %T, want ECDSA P-256", ErrKey, want.Key)
	}
	if want.KeyID == "" || h.KeyID != want.KeyID {
		return nil, fmt.Errorf("%w: key ID %q, want %q", ErrKey, h.KeyID, want.KeyID)
	}
	if h.Topic != want.Topic {
		return nil, fmt.Errorf("%w: %q, arrived on %q", ErrTopic, h.Topic, want.Topic)
	}
	if h.Counter <= want.After {
		return nil, fmt.Errorf("%w: counter %d, last accepted %d", ErrReplay, h.Counter, want.After)
	}
	v, err := cose.NewVerifier(cose.AlgorithmES256, pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	if err := msg.Verify(nil, v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return &Verified{Header: h, Payload: msg.Payload}, nil
}

// header reads the protected header of this profile: exactly its five
// parameters, each of its type.
func header(p cose.ProtectedHeader) (Header, error) {
	bad := func(what string) (Header, error) {
		return Header{}, fmt.Errorf("%w: protected header: %s", ErrMalformed, what)
	}
	if len(p) != 5 {
		return bad(fmt.Sprintf("%d parameters, want 5", len(p)))
	}
	if alg, err := p.Algorithm(); err != nil || alg != cose.AlgorithmES256 {
		return bad("algorithm is not ES256")
	}
	if ct, ok := p[cose.HeaderLabelContentType].(string); !ok || ct != ContentType {
		return bad("content type")
	}
	kid, ok := p[cose.HeaderLabelKeyID].([]byte)
	if !ok || len(kid) == 0 || len(kid) > 64 {
		return bad("key ID")
	}
	var ctr uint64 // go-cose decodes an unsigned integer as int64 when it fits
	switch c := p[LabelCounter].(type) {
	case uint64:
		ctr = c
	case int64:
		if c < 0 {
			return bad("negative counter")
		}
		ctr = uint64(c)
	default:
		return bad("counter")
	}
	topic, ok := p[LabelTopic].(string)
	if !ok || topic == "" || len(topic) > 1024 {
		return bad("topic")
	}
	return Header{KeyID: string(kid), Counter: ctr, Topic: topic}, nil
}

// sha256Signer passes crypto.SHA256 as the options of every signature:
// ES256 signs a SHA-256 digest.
type sha256Signer struct{ crypto.Signer }

func (s sha256Signer) Sign(rand io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	return s.Signer.Sign(rand, digest, crypto.SHA256)
}
