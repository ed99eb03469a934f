package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
)

func sampleRequest() *EnrollRequest {
	return &EnrollRequest{EKPublic: []byte{1, 2}, AKPublic: []byte{3}, TKPublic: []byte{4}, CSR: []byte{5},
		Model: "gw-1", Firmware: "1.0.0", Serial: "SN1", Token: "sgt_x"}
}

func TestRoundTrip(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_123)
	b, err := Encode(TypeEnrollRequest, nil, now, sampleRequest())
	if err != nil {
		t.Fatal(err)
	}
	env, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if env.V != Version || env.Type != TypeEnrollRequest || len(env.ID) != 16 || !env.Timestamp().Equal(now) {
		t.Fatalf("envelope = %+v", env)
	}
	var got EnrollRequest
	if err := DecodeBody(env, TypeEnrollRequest, &got); err != nil {
		t.Fatal(err)
	}
	if got.Model != "gw-1" || !bytes.Equal(got.EKPublic, []byte{1, 2}) || got.Token != "sgt_x" {
		t.Fatalf("body = %+v", got)
	}
	if err := DecodeBody(env, TypeEnrollProof, &EnrollProof{}); !errors.Is(err, ErrType) {
		t.Fatalf("wrong type: %v", err)
	}
}

// TestVectors pins the encoding: a change to field numbers breaks devices in
// the field, so it must be deliberate.
func TestVectors(t *testing.T) {
	env := Envelope{V: 1, Type: TypeHello, ID: bytes.Repeat([]byte{0xab}, 16), Time: 1_700_000_000_000}
	body, _ := Marshal(&Hello{Model: "m", Firmware: "f", Agent: "a"})
	env.Body = body
	b, err := Marshal(&env)
	if err != nil {
		t.Fatal(err)
	}
	const want = "a50101026568656c6c6f0350abababababababababababababababab051b0000018bcfe5680006a301616d026166036161"
	if got := hexs(b); got != want {
		t.Fatalf("hello vector\n got %s\nwant %s", got, want)
	}
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(digits[c>>4])
		s.WriteByte(digits[c&15])
	}
	return s.String()
}

func TestDecodeRefusals(t *testing.T) {
	good, _ := Encode(TypeHello, nil, time.Now(), &Hello{Model: "m"})
	future := func() []byte {
		env, _ := Decode(good)
		env.V = Version + 1
		b, _ := Marshal(env)
		return b
	}()
	shortID := func() []byte {
		env, _ := Decode(good)
		env.ID = env.ID[:4]
		b, _ := Marshal(env)
		return b
	}()
	dup := []byte{0xa2, 0x01, 0x01, 0x01, 0x02} // map with key 1 twice
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"garbage", []byte("hello"), ErrMalformed},
		{"too large", make([]byte, MaxMessageSize+1), ErrTooLarge},
		{"future version", future, ErrVersion},
		{"short id", shortID, ErrMalformed},
		{"duplicate keys", dup, ErrMalformed},
	}
	for _, c := range cases {
		if _, err := Decode(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestValidateRequest(t *testing.T) {
	r := sampleRequest()
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	r.Model = ""
	r.EKPublic = nil
	r.Serial = "a\x00b"
	err := r.Validate()
	for _, s := range []string{"model missing", "ek_public missing", "serial has control characters"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("Validate() = %v, want it to mention %q", err, s)
		}
	}
}

func TestUnknownFieldRefused(t *testing.T) {
	body, _ := cbor.Marshal(map[int]any{7: "m", 99: "x"})
	env := &Envelope{V: 1, Type: TypeHello, ID: make([]byte, 16), Body: body}
	if err := DecodeBody(env, TypeHello, &Hello{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unknown field: %v", err)
	}
}

func TestTopics(t *testing.T) {
	tp := Topics{}
	if got := tp.DeviceUp("abc", "hello"); got != "sigil/v1/dev/abc/up/hello" {
		t.Fatal(got)
	}
	p, err := tp.Parse(tp.EnrollDown("e-1", "result"))
	if err != nil || p.Segment != SegEnroll || p.ID != "e-1" || p.Dir != Down || p.Kind != "result" {
		t.Fatalf("parse = %+v, %v", p, err)
	}
	for _, bad := range []string{"sigil/v1/dev/+/up/x", "sigil/v1/dev/#", "sigil/v1/dev/a/up/x/y", "other/v1/dev/a/up/x",
		"sigil/v1/dev/A/up/x", "sigil/v1/dev/a/sideways/x", "sigil/v1/dev//up/x", "sigil/v1/dev/$SYS/up/x"} {
		if _, err := tp.Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	for _, id := range []string{"", "a+b", "#", "a/b", "-x", ".x", "$SYS", strings.Repeat("a", 65), "a\x00"} {
		if ValidID(id) {
			t.Errorf("ValidID(%q) = true", id)
		}
	}
	if !ValidID("e-0123abcd") {
		t.Error("ValidID refused a normal ID")
	}
}

func FuzzDecode(f *testing.F) {
	now := time.Unix(1700000000, 0)
	for _, m := range []struct {
		typ  string
		body any
	}{
		{TypeEnrollRequest, sampleRequest()},
		{TypeEnrollChallenge, &EnrollChallenge{Session: make([]byte, 16), Nonce: make([]byte, 32), CredentialBlob: []byte{1}, EncryptedSecret: []byte{2}, Selection: PCRSelection{Hash: 11, PCRs: []int{0, 1}}}},
		{TypeEnrollProof, &EnrollProof{Session: make([]byte, 16), Activation: make([]byte, 32), CertifyInfo: []byte{1}, CertifySig: []byte{2}, Quote: Quote{Attest: []byte{1}, Signature: []byte{2}, PCRs: []int{0}, Values: [][]byte{make([]byte, 32)}}}},
		{TypeEnrollResult, &EnrollResult{Status: StatusRefused, Reason: ReasonUnknownEK}},
		{TypeEnrollResult, &EnrollResult{Status: StatusRefused, FirmwareTrust: []byte("{}"), FirmwareRotations: []TrustRotation{{Statement: []byte("s"), Bundles: [][]byte{[]byte("b")}}}}},
		{TypeHello, &Hello{Model: "m"}},
		{TypeTrustBundle, &TrustBundle{Roots: [][]byte{{0x30, 0x03, 0x02, 0x01, 0x01}}}},
		{TypeFirmwareAnnounce, sampleAnnounce()},
		{TypeFirmwareReport, &FirmwareReport{Update: "cmp_1", Campaign: "cmp_1", Phase: "rolled_back", Final: true, Reason: ReasonFirmwareHealth, Running: "1.0.0"}},
		{TypeFirmwareTrust, &FirmwareTrust{Trust: []byte(`{"type":"t"}`), Rotations: []TrustRotation{{Statement: []byte("s"), Bundles: [][]byte{[]byte("b")}}}}},
	} {
		b, err := Encode(m.typ, nil, now, m.body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := Decode(b)
		if err != nil {
			return
		}
		var v any
		switch env.Type {
		case TypeEnrollRequest:
			v = &EnrollRequest{}
		case TypeEnrollChallenge:
			v = &EnrollChallenge{}
		case TypeEnrollProof:
			v = &EnrollProof{}
		case TypeEnrollResult:
			v = &EnrollResult{}
		case TypeTrustBundle:
			v = &TrustBundle{}
		case TypeFirmwareAnnounce:
			v = &FirmwareAnnounce{}
		case TypeFirmwareReport:
			v = &FirmwareReport{}
		case TypeFirmwareTrust:
			v = &FirmwareTrust{}
		default:
			v = &Hello{}
		}
		if err := DecodeBody(env, env.Type, v); err != nil {
			return
		}
		// What decodes and validates must encode again.
		if _, err := Encode(env.Type, env.Corr, now, v); err != nil && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("re-encode: %v", err)
		}
	})
}

// TestEnrollEventLogVectors pins the event-log fields of enrollment
// (version 5): the challenge's request for the log (field 7) and the log in
// the proof (field 6); absent when unused, so older peers decode the rest.
func TestEnrollEventLogVectors(t *testing.T) {
	for name, c := range map[string]struct {
		body any
		want string
	}{
		"challenge": {&EnrollChallenge{Session: []byte{1}, CredentialBlob: []byte{2}, EncryptedSecret: []byte{3}, Nonce: []byte{4},
			Selection: PCRSelection{Hash: 11, PCRs: []int{0}}, Expires: 5, EventLog: true},
			"a7 014101 024102 034103 044104 05a2010b028100 0605 07f5"},
		"challenge without log": {&EnrollChallenge{Session: []byte{1}, CredentialBlob: []byte{2}, EncryptedSecret: []byte{3}, Nonce: []byte{4},
			Selection: PCRSelection{Hash: 11, PCRs: []int{0}}, Expires: 5},
			"a6 014101 024102 034103 044104 05a2010b028100 0605"},
		"proof": {&EnrollProof{Session: []byte{1}, Activation: []byte{2}, CertifyInfo: []byte{3}, CertifySig: []byte{4},
			Quote: Quote{Attest: []byte{5}, Signature: []byte{6}, Hash: 11, PCRs: []int{0}, Values: [][]byte{{7}}}, EventLog: []byte{8}},
			"a6 014101 024102 034103 044104 05a5014105024106030b048100058141 07 064108"},
	} {
		b, err := Marshal(c.body)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := hexs(b), strings.ReplaceAll(c.want, " ", ""); got != want {
			t.Errorf("%s vector\n got %s\nwant %s", name, got, want)
		}
	}
}
