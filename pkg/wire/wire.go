package wire

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// Version is the protocol version this build speaks. A receiver refuses an
// envelope with a higher version with ReasonUnsupportedVersion.
const Version = 5

// MaxMessageSize bounds an encoded envelope. Enrollment carries certificates
// and TPM structures, a few KiB; attestation evidence may carry a
// measured-boot event log and an IMA log.
const MaxMessageSize = 1 << 20

// Message types. The type names the body's Go type below.
const (
	TypeEnrollRequest   = "enroll.request"   // device -> fleet: EnrollRequest
	TypeEnrollChallenge = "enroll.challenge" // fleet -> device: EnrollChallenge
	TypeEnrollProof     = "enroll.proof"     // device -> fleet: EnrollProof
	TypeEnrollResult    = "enroll.result"    // fleet -> device: EnrollResult
	TypeEnrollRetry     = "enroll.retry"     // fleet -> device: Retry (empty body)
	TypeHello           = "hello"            // device -> fleet after each mTLS connect: Hello
)

// Envelope wraps every message. Handlers are idempotent by ID because MQTT
// QoS 1 delivers at least once.
type Envelope struct {
	V    int             `cbor:"1,keyasint"`
	Type string          `cbor:"2,keyasint"`
	ID   []byte          `cbor:"3,keyasint"` // 16 random bytes
	Corr []byte          `cbor:"4,keyasint,omitempty"`
	Time int64           `cbor:"5,keyasint"` // sender clock, Unix milliseconds
	Body cbor.RawMessage `cbor:"6,keyasint"`
}

// IDString returns the message ID in hex, for logs and de-duplication.
func (e *Envelope) IDString() string { return hex.EncodeToString(e.ID) }

// Timestamp returns the sender's clock.
func (e *Envelope) Timestamp() time.Time { return time.UnixMilli(e.Time) }

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	opts := cbor.CoreDetEncOptions()
	opts.Time = cbor.TimeRFC3339Nano // records keep full precision
	encMode, err = opts.EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   16,
		MaxArrayElements:  1024,
		MaxMapPairs:       256,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// Errors returned by the decoders.
var (
	ErrTooLarge    = errors.New("wire: message too large")
	ErrMalformed   = errors.New("wire: malformed message")
	ErrVersion     = errors.New("wire: unsupported protocol version")
	ErrType        = errors.New("wire: unexpected message type")
	ErrInvalidBody = errors.New("wire: invalid message body")
)

// NewMessageID returns 16 random bytes.
func NewMessageID() []byte {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return id
}

// Encode builds an envelope of the given type around body and encodes it.
// corr is the ID of the message this one answers, or nil.
func Encode(typ string, corr []byte, now time.Time, body any) ([]byte, error) {
	return encode(Version, typ, corr, now, body)
}

// encode is Encode with envelope version v.
func encode(v int, typ string, corr []byte, now time.Time, body any) ([]byte, error) {
	b, err := encMode.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("wire: encode %s body: %w", typ, err)
	}
	env := Envelope{V: v, Type: typ, ID: NewMessageID(), Corr: corr, Time: now.UnixMilli(), Body: b}
	out, err := encMode.Marshal(&env)
	if err != nil {
		return nil, fmt.Errorf("wire: encode envelope: %w", err)
	}
	if len(out) > MaxMessageSize {
		return nil, ErrTooLarge
	}
	return out, nil
}

// Decode parses an envelope and checks its version and shape. The body is
// left encoded; use DecodeBody with the type the envelope names.
func Decode(b []byte) (*Envelope, error) {
	if len(b) > MaxMessageSize {
		return nil, ErrTooLarge
	}
	var env Envelope
	if err := decMode.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if env.V < 1 {
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, env.V)
	}
	if env.V > Version {
		return nil, fmt.Errorf("%w: %d (this side speaks %d)", ErrVersion, env.V, Version)
	}
	if len(env.ID) != 16 {
		return nil, fmt.Errorf("%w: message ID must be 16 bytes", ErrMalformed)
	}
	if len(env.Corr) != 0 && len(env.Corr) != 16 {
		return nil, fmt.Errorf("%w: correlation ID must be 16 bytes", ErrMalformed)
	}
	if env.Type == "" || len(env.Type) > 64 {
		return nil, fmt.Errorf("%w: message type", ErrMalformed)
	}
	return &env, nil
}

// Validator is implemented by bodies that check their own fields after
// decoding.
type Validator interface {
	Validate() error
}

// DecodeBody decodes the envelope's body into v after checking that the
// envelope carries the wanted type, then validates v if it can.
func DecodeBody(env *Envelope, typ string, v any) error {
	if env.Type != typ {
		return fmt.Errorf("%w: got %q, want %q", ErrType, env.Type, typ)
	}
	if err := decMode.Unmarshal(env.Body, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, typ, err)
	}
	if val, ok := v.(Validator); ok {
		if err := val.Validate(); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrInvalidBody, typ, err)
		}
	}
	return nil
}

// Marshal encodes a plain value with the protocol's deterministic CBOR
// settings. Stores use it for records they keep.
func Marshal(v any) ([]byte, error) { return encMode.Marshal(v) }

// Unmarshal decodes CBOR made by Marshal with the protocol's strict limits.
func Unmarshal(b []byte, v any) error { return decMode.Unmarshal(b, v) }
