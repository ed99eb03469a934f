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
