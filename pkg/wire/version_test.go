package wire_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/pkg/wire/wiretest"
)

func TestNegotiate(t *testing.T) {
	for _, c := range []struct {
		peer, want int
		err        error
	}{
		{0, 0, wire.ErrVersion},
		{wire.OldestVersion - 1, 0, wire.ErrVersion},
		{wire.OldestVersion, wire.OldestVersion, nil},
		{wire.Version, wire.Version, nil},
		{wire.Version + 1, wire.Version, nil},
	} {
		got, err := wire.Negotiate(c.peer)
		if got != c.want || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("Negotiate(%d) = %d, %v; want %d, %v", c.peer, got, err, c.want, c.err)
		}
	}
}

// v4EnrollChallenge and v4EnrollResult are the bodies as the previous
// release (protocol version 4) declares them: its decoder refuses unknown
// fields, so what the fleet sends a version 4 device must decode into them.
type v4EnrollChallenge struct {
	Session         []byte            `cbor:"1,keyasint"`
	CredentialBlob  []byte            `cbor:"2,keyasint"`
	EncryptedSecret []byte            `cbor:"3,keyasint"`
	Nonce           []byte            `cbor:"4,keyasint"`
	Selection       wire.PCRSelection `cbor:"5,keyasint"`
	Expires         int64             `cbor:"6,keyasint"`
}

type v4EnrollResult struct {
	Status        string   `cbor:"1,keyasint"`
	Reason        uint16   `cbor:"2,keyasint"`
	Message       string   `cbor:"3,keyasint,omitempty"`
	DeviceID      string   `cbor:"4,keyasint,omitempty"`
	Certificate   []byte   `cbor:"5,keyasint,omitempty"`
	Chain         [][]byte `cbor:"6,keyasint,omitempty"`
	TrustBundle   [][]byte `cbor:"7,keyasint,omitempty"`
	RetryAfter    int      `cbor:"8,keyasint,omitempty"`
	Session       []byte   `cbor:"9,keyasint,omitempty"`
	FirmwareTrust []byte   `cbor:"10,keyasint,omitempty"`
}

// v4Decode decodes as the previous release did: strict, refusing unknown
// fields and versions above 4.
func v4Decode(t *testing.T, b []byte, body any) {
	t.Helper()
	dm, err := cbor.DecOptions{ExtraReturnErrors: cbor.ExtraDecErrorUnknownField}.DecMode()
	if err != nil {
		t.Fatal(err)
	}
	var env wire.Envelope
	if err := dm.Unmarshal(b, &env); err != nil {
		t.Fatalf("envelope: %v", err)
	}
	if env.V > 4 {
		t.Fatalf("envelope version %d: a version 4 peer refuses it", env.V)
	}
	if err := dm.Unmarshal(env.Body, body); err != nil {
		t.Fatalf("a version 4 peer cannot decode the %s body: %v", env.Type, err)
	}
}

// TestEncodeForVersion4 encodes enrollment answers for a version 4 device:
// what version 4 knows decodes as version 4 decodes it; what it does not
// (the event log request, the release trust rotations) is refused with
// ErrNeedsVersion, never dropped.
func TestEncodeForVersion4(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	ch := &wire.EnrollChallenge{Session: make([]byte, 16), CredentialBlob: []byte{1}, EncryptedSecret: []byte{2},
		Nonce: make([]byte, 32), Selection: wire.DefaultSelection(), Expires: 5}
	b, err := wire.EncodeFor(4, wire.TypeEnrollChallenge, make([]byte, 16), now, ch)
	if err != nil {
		t.Fatal(err)
	}
	var old v4EnrollChallenge
	v4Decode(t, b, &old)
	if !bytes.Equal(old.Nonce, ch.Nonce) || old.Expires != 5 {
		t.Fatalf("decoded %+v", old)
	}
	if b, err := wire.EncodeFor(5, wire.TypeEnrollChallenge, nil, now, ch); err != nil || mustDecode(t, b).V != 5 {
		t.Fatalf("for version 5: %v", err)
	}

	ch.EventLog = true
	if _, err := wire.EncodeFor(4, wire.TypeEnrollChallenge, nil, now, ch); !errors.Is(err, wire.ErrNeedsVersion) {
		t.Fatalf("event log request for version 4: %v, want ErrNeedsVersion", err)
	}
	res := &wire.EnrollResult{Status: wire.StatusActive, DeviceID: "d", FirmwareTrust: []byte{1}}
	b, err = wire.EncodeFor(4, wire.TypeEnrollResult, nil, now, res)
	if err != nil {
		t.Fatal(err)
	}
	var oldRes v4EnrollResult
	v4Decode(t, b, &oldRes)
	if oldRes.DeviceID != "d" || !bytes.Equal(oldRes.FirmwareTrust, []byte{1}) {
		t.Fatalf("decoded %+v", oldRes)
	}
	res.FirmwareRotations = []wire.TrustRotation{{Statement: []byte("s"), Bundles: [][]byte{{1}}}}
	if _, err := wire.EncodeFor(4, wire.TypeEnrollResult, nil, now, res); !errors.Is(err, wire.ErrNeedsVersion) {
		t.Fatalf("rotations for version 4: %v, want ErrNeedsVersion", err)
	}
	if _, err := wire.EncodeFor(3, wire.TypeEnrollResult, nil, now, &wire.EnrollResult{Status: wire.StatusActive}); !errors.Is(err, wire.ErrVersion) {
		t.Fatalf("for version 3: %v, want ErrVersion", err)
	}
}

func mustDecode(t *testing.T, b []byte) *wire.Envelope {
	t.Helper()
	env, err := wire.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestDowngrade re-encodes every pinned body for each version the fleet
// speaks: the same message in an envelope of that version, or
// ErrNeedsVersion exactly when the body needs a later one.
func TestDowngrade(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	for _, vec := range wiretest.Bodies() {
		msg, err := wire.Encode(vec.Type, make([]byte, 16), now, vec.Value)
		if err != nil {
			t.Fatalf("%s: %v", vec.Name, err)
		}
		orig := mustDecode(t, msg)
		for v := wire.OldestVersion; v <= wire.Version+1; v++ {
			out, err := wire.Downgrade(msg, v)
			need := wire.Needs(vec.Type, vec.Value)
			if need > min(v, wire.Version) {
				if !errors.Is(err, wire.ErrNeedsVersion) {
					t.Errorf("%s (needs %d) for version %d: %v, want ErrNeedsVersion", vec.Name, need, v, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s for version %d: %v", vec.Name, v, err)
				continue
			}
			env := mustDecode(t, out)
			if env.V != min(v, wire.Version) || env.Type != orig.Type || !bytes.Equal(env.ID, orig.ID) ||
				!bytes.Equal(env.Corr, orig.Corr) || env.Time != orig.Time || !bytes.Equal(env.Body, orig.Body) {
				t.Errorf("%s for version %d: envelope %+v, from %+v", vec.Name, v, env, orig)
			}
		}
		if _, err := wire.Downgrade(msg, wire.OldestVersion-1); !errors.Is(err, wire.ErrVersion) {
			t.Errorf("%s for version %d: %v, want ErrVersion", vec.Name, wire.OldestVersion-1, err)
		}
	}
}

// TestNeeds pins which bodies need version 5.
func TestNeeds(t *testing.T) {
	for _, c := range []struct {
		typ  string
		body any
		want int
	}{
		{wire.TypeHello, &wire.Hello{}, 1},
		{wire.TypeEnrollChallenge, &wire.EnrollChallenge{}, 1},
		{wire.TypeEnrollChallenge, &wire.EnrollChallenge{EventLog: true}, 5},
		{wire.TypeEnrollProof, &wire.EnrollProof{EventLog: []byte{1}}, 5},
		{wire.TypeEnrollResult, &wire.EnrollResult{FirmwareTrust: []byte{1}}, 1},
		{wire.TypeEnrollResult, &wire.EnrollResult{FirmwareRotations: []wire.TrustRotation{{}}}, 5},
		{wire.TypeFirmwareTrust, &wire.FirmwareTrust{Rotations: []wire.TrustRotation{{Statement: []byte("{}")}}}, 4},
		{wire.TypeFirmwareTrust, &wire.FirmwareTrust{Rotations: []wire.TrustRotation{{Statement: []byte("{}\n")}}}, 5},
		{wire.TypeFirmwareReport, &wire.FirmwareReport{Phase: "committed"}, 4},
		{wire.TypeFirmwareReport, &wire.FirmwareReport{Phase: "advancing_floor"}, 5},
		{wire.TypeRotate, &wire.Rotate{}, 3},
		{"no.such.type", nil, wire.Version},
	} {
		if got := wire.Needs(c.typ, c.body); got != c.want {
			t.Errorf("Needs(%s, %+v) = %d, want %d", c.typ, c.body, got, c.want)
		}
	}
}

// FuzzDowngrade re-encodes arbitrary bytes for each version: an error of
// the package, the bytes unchanged for a peer of the current version, or
// else a message that decodes in an envelope of the peer's version; never
// a panic.
func FuzzDowngrade(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	for _, v := range wiretest.Bodies() {
		b, err := wire.Encode(v.Type, nil, now, v.Value)
		if err != nil {
			f.Fatalf("%s: %v", v.Name, err)
		}
		f.Add(b, uint8(4))
	}
	f.Fuzz(func(t *testing.T, b []byte, peer uint8) {
		out, err := wire.Downgrade(b, int(peer))
		if err != nil {
			for _, e := range []error{wire.ErrMalformed, wire.ErrTooLarge, wire.ErrVersion, wire.ErrNeedsVersion} {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("unexpected error class: %v", err)
		}
		if int(peer) >= wire.Version {
			if !bytes.Equal(out, b) {
				t.Fatal("Downgrade changed a message for a peer of the current version")
			}
			return
		}
		env, err := wire.Decode(out)
		if err != nil {
			t.Fatalf("Downgrade made a message that does not decode: %v", err)
		}
		if env.V != min(int(peer), wire.Version) {
			t.Fatalf("envelope version %d for a peer of %d", env.V, peer)
		}
	})
}
