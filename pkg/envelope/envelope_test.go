package envelope_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"github.com/veraison/go-cose"

	"github.com/sigil-iot/sigil/pkg/envelope"
	"github.com/sigil-iot/sigil/pkg/envelope/envelopetest"
)

// TestVectors: every pinned envelope gets the verifier's pinned answer;
// the valid ones give back the pinned header and wire message.
func TestVectors(t *testing.T) {
	for _, v := range envelopetest.Vectors() {
		got, err := envelope.Verify(v.Bytes(), v.Expect)
		if !errors.Is(err, v.Err) || (v.Err != nil) != (err != nil) {
			t.Errorf("%s: err %v, want %v", v.Name, err, v.Err)
			continue
		}
		if err == nil && (got.Header != envelopetest.Header || !bytes.Equal(got.Payload, envelopetest.Payload())) {
			t.Errorf("%s: verified %+v", v.Name, got)
		}
	}
}

// opaqueSigner hides the key behind crypto.Signer as the TPM's does (an
// ASN.1 DER ECDSA signature of a SHA-256 digest, no access to the
// scalar), counting its calls.
type opaqueSigner struct {
	k     *ecdsa.PrivateKey
	calls int
}

func (s *opaqueSigner) Public() crypto.PublicKey { return &s.k.PublicKey }
func (s *opaqueSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != 32 {
		return nil, errors.New("only SHA-256")
	}
	s.calls++
	return ecdsa.SignASN1(r, s.k, digest)
}

// TestSignVerifyWithAnOpaqueSigner: an envelope signed through a
// crypto.Signer that is not an *ecdsa.PrivateKey (the TPM's shape), one
// signature per envelope, verifies with the public key, and only with
// what it binds.
func TestSignVerifyWithAnOpaqueSigner(t *testing.T) {
	s := &opaqueSigner{k: envelopetest.Other()}
	h := envelope.Header{KeyID: "ab01", Counter: 1, Topic: "sigil/site/plant1/v1/dev/d1/up/telemetry"}
	b, err := envelope.Sign(rand.Reader, s, h, []byte{0xa0})
	if err != nil {
		t.Fatal(err)
	}
	if s.calls != 1 {
		t.Fatalf("%d signatures for one envelope", s.calls)
	}
	want := envelope.Expect{Key: s.Public(), KeyID: "ab01", Topic: h.Topic}
	got, err := envelope.Verify(b, want)
	if err != nil || got.Header != h || !bytes.Equal(got.Payload, []byte{0xa0}) {
		t.Fatalf("Verify = %+v, %v", got, err)
	}
	want.Key = &envelopetest.Key().PublicKey
	if _, err := envelope.Verify(b, want); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("another key: %v", err)
	}
}

// TestSignRefuses: no envelope without a key ID or topic, nor with a key
// other than ECDSA P-256.
func TestSignRefuses(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for name, c := range map[string]struct {
		s crypto.Signer
		h envelope.Header
	}{
		"no key ID": {envelopetest.Key(), envelope.Header{Topic: "t"}},
		"no topic":  {envelopetest.Key(), envelope.Header{KeyID: "k"}},
		"P-384":     {p384, envelope.Header{KeyID: "k", Topic: "t"}},
	} {
		if _, err := envelope.Sign(rand.Reader, c.s, c.h, []byte{0xa0}); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}

// sign1 signs a COSE_Sign1 with the headers given, outside this
// package's profile.
func sign1(t *testing.T, prot cose.ProtectedHeader, unprot cose.UnprotectedHeader, payload []byte) []byte {
	t.Helper()
	s, err := cose.NewSigner(cose.AlgorithmES256, envelopetest.Key())
	if err != nil {
		t.Fatal(err)
	}
	m := cose.Sign1Message{Headers: cose.Headers{Protected: prot, Unprotected: unprot}, Payload: payload}
	if err := m.Sign(rand.Reader, nil, s); err != nil {
		t.Fatal(err)
	}
	b, err := m.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVerifyRefusesOtherProfiles: a validly signed COSE_Sign1 that leaves
// the profile — a parameter in the unprotected header (where it would not
// be signed), one missing, one more, another content type, a counter of
// the wrong type — is malformed.
func TestVerifyRefusesOtherProfiles(t *testing.T) {
	base := func() cose.ProtectedHeader {
		return cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256, cose.HeaderLabelContentType: envelope.ContentType,
			cose.HeaderLabelKeyID: []byte("k1"), envelope.LabelCounter: uint64(3), envelope.LabelTopic: "t/1"}
	}
	want := envelope.Expect{Key: &envelopetest.Key().PublicKey, KeyID: "k1", Topic: "t/1"}
	if _, err := envelope.Verify(sign1(t, base(), nil, []byte{1}), want); err != nil {
		t.Fatalf("the profile itself: %v", err)
	}
	cases := map[string]func() (cose.ProtectedHeader, cose.UnprotectedHeader){
		"unprotected topic": func() (cose.ProtectedHeader, cose.UnprotectedHeader) {
			p := base()
			delete(p, envelope.LabelTopic)
			return p, cose.UnprotectedHeader{envelope.LabelTopic: "t/1"}
		},
		"unprotected extra": func() (cose.ProtectedHeader, cose.UnprotectedHeader) {
			return base(), cose.UnprotectedHeader{cose.HeaderLabelKeyID: []byte("k2")}
		},
		"no counter": func() (cose.ProtectedHeader, cose.UnprotectedHeader) {
			p := base()
			delete(p, envelope.LabelCounter)
			return p, nil
		},
		"extra parameter": func() (cose.ProtectedHeader, cose.UnprotectedHeader) {
			p := base()
			p[int64(-65539)] = "x"
			return p, nil
		},
		"content type": func() (cose.ProtectedHeader, cose.UnprotectedHeader) {
			p := base()
			p[cose.HeaderLabelContentType] = "application/json"
			return p, nil
		},
		"negative counter": func() (cose.ProtectedHeader, cose.UnprotectedHeader) {
			p := base()
			p[envelope.LabelCounter] = int64(-1)
			return p, nil
		},
	}
	for name, mk := range cases {
		p, u := mk()
		if _, err := envelope.Verify(sign1(t, p, u, []byte{1}), want); !errors.Is(err, envelope.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	if _, err := envelope.Verify(make([]byte, envelope.MaxSize+1), want); !errors.Is(err, envelope.ErrMalformed) {
		t.Errorf("oversized: %v", err)
	}
	want.Key = &p256Public{}
	if _, err := envelope.Verify(sign1(t, base(), nil, []byte{1}), want); !errors.Is(err, envelope.ErrKey) {
		t.Errorf("a key of another type: %v", err)
	}
}

type p256Public struct{}

// FuzzVerify: any bytes get an answer, never a panic; what verifies
// verifies again to the same header.
func FuzzVerify(f *testing.F) {
	for _, v := range envelopetest.Vectors() {
		f.Add(v.Bytes())
	}
	want := envelope.Expect{Key: &envelopetest.Key().PublicKey, KeyID: envelopetest.Header.KeyID, Topic: envelopetest.Header.Topic}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := envelope.Verify(b, want)
		if err != nil {
			return
		}
		again, err := envelope.Verify(b, want)
		if err != nil || again.Header != got.Header {
			t.Fatalf("verified once, then %v", err)
		}
	})
}
