package conformance_test

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/softtpm/conformance"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// BenchmarkBackends times the device's TPM operations on swtpm (through
// device/tpm, RSA-2048 EK) and on the software TPM (ECC P-256 EK) in one
// run, so that their ratio is measured under the same load
// (docs/BENCHMARKS.md, "Software TPM"):
//
//	go test -run '^$' -bench Backends -benchtime 200x ./sim/softtpm/conformance/
func BenchmarkBackends(b *testing.B) {
	b.Run("swtpm", func(b *testing.B) {
		tp, err := tpm.Open(swtpmtest.New(b, nil).URI())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tp.Close() })
		benchOps(b, tp)
	})
	b.Run("softtpm", func(b *testing.B) {
		tp, err := softtpm.New()
		if err != nil {
			b.Fatal(err)
		}
		benchOps(b, tp)
	})
}

func benchOps(b *testing.B, tp conformance.TPM) {
	must := func(err error) {
		b.Helper()
		if err != nil {
			b.Fatal(err)
		}
	}
	ek, err := tp.EK()
	must(err)
	ak, err := tp.CreateAK()
	must(err)
	tk, err := tp.CreateTransportKey()
	must(err)
	vek, err := (*verifier.EKTrust)(nil).VerifyEK(ek.Public, nil, nil)
	must(err)
	vak, err := verifier.VerifyAK(ak.Public)
	must(err)
	nonce := make([]byte, 32)
	sel := wire.DefaultSelection()
	pcr16 := wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{16}}
	values, err := tp.ReadPCRs(pcr16)
	must(err)
	wrapped, err := secrets.Wrap(rand.Reader, ek.Public, make([]byte, 64), &pcr16, values)
	must(err)
	sealed, err := tp.ImportSecret(wrapped.Public, wrapped.Duplicate, wrapped.Seed, wrapped.PCRs)
	must(err)
	credBlob, encSecret, err := verifier.MakeCredential(rand.Reader, vek, vak, nonce)
	must(err)
	signer, err := tp.Signer(tk)
	must(err)
	digest := sha256.Sum256(nil)

	for _, op := range []struct {
		name string
		f    func() error
	}{
		{"CreateAK", func() error { _, err := tp.CreateAK(); return err }},
		{"Certify", func() error { _, _, err := tp.Certify(ak, tk, nonce); return err }},
		{"Quote", func() error { _, err := tp.Quote(ak, nonce, sel); return err }},
		{"Sign", func() error { _, err := signer.Sign(nil, digest[:], crypto.SHA256); return err }},
		{"ActivateCredential", func() error { _, err := tp.ActivateCredential(ak, credBlob, encSecret); return err }},
		{"ImportSecret", func() error {
			_, err := tp.ImportSecret(wrapped.Public, wrapped.Duplicate, wrapped.Seed, wrapped.PCRs)
			return err
		}},
		{"Unseal", func() error { _, err := tp.Unseal(sealed); return err }},
	} {
		b.Run(op.name, func(b *testing.B) {
			for b.Loop() {
				must(op.f())
			}
		})
	}
}
