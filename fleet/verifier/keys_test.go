package verifier

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestVerifyAK(t *testing.T) {
	ak, err := VerifyAK(fx.ak.pubBytes)
	if err != nil {
		t.Fatal(err)
	}
	h, flush, err := fx.load(fx.ak)
	if err != nil {
		t.Fatal(err)
	}
	flush()
	if !bytes.Equal(ak.Name, h.Name.Buffer) {
		t.Fatalf("AK name %x, the TPM says %x", ak.Name, h.Name.Buffer)
	}
	want, _ := tpm2.Pub(fx.ak.pub)
	if !ak.Key.Equal(want) {
		t.Fatal("AK key differs from the public area's key")
	}
}

func TestVerifyAKRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		pub  []byte
	}{
		{"without restricted", fx.akUnrestricted.pubBytes},
		{"without fixedTPM", fx.akNoTPM.pubBytes},
		{"transport key", fx.tk.pubBytes},
		{"endorsement key", fx.rsaEK},
		{"decrypt set", marshalPublic(fx.ak.pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true })},
		{"not sensitiveDataOrigin", marshalPublic(fx.ak.pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false })},
		{"nameAlg SHA-1", marshalPublic(fx.ak.pub, func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 })},
		{"point off the curve", marshalPublic(fx.ak.pub, func(p *tpm2.TPMTPublic) {
			pt, _ := p.Unique.ECC()
			y := bytes.Clone(pt.Y.Buffer)
			y[31] ^= 1
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: pt.X, Y: tpm2.TPM2BECCParameter{Buffer: y}})
		})},
		{"trailing byte", append(bytes.Clone(fx.ak.pubBytes), 0)},
		{"truncated", fx.ak.pubBytes[:len(fx.ak.pubBytes)-1]},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ak, err := VerifyAK(tc.pub)
			if ak != nil {
				t.Fatal("refused AK returned a value")
			}
			wantRefusal(t, err, wire.ReasonAKAttributes)
		})
	}
}

func TestVerifyTransportKey(t *testing.T) {
	tk, err := VerifyTransportKeyPublic(fx.tk.pubBytes)
	if err != nil {
		t.Fatal(err)
	}
	h, flush, err := fx.load(fx.tk)
	if err != nil {
		t.Fatal(err)
	}
	flush()
	if !bytes.Equal(tk.Name, h.Name.Buffer) {
		t.Fatalf("transport key name %x, the TPM says %x", tk.Name, h.Name.Buffer)
	}

	for _, tc := range []struct {
		name string
		pub  []byte
	}{
		{"restricted (an AK)", fx.ak.pubBytes},
		{"without fixedTPM", marshalPublic(fx.tk.pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false })},
		{"without fixedParent", marshalPublic(fx.tk.pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false })},
		{"decrypt set", marshalPublic(fx.tk.pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true })},
		{"not a signing key", marshalPublic(fx.tk.pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = false })},
		{"endorsement key", fx.eccEK},
		{"garbage", []byte("not a TPMT_PUBLIC")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := VerifyTransportKeyPublic(tc.pub)
			wantRefusal(t, err, wire.ReasonTKAttributes)
		})
	}
}
