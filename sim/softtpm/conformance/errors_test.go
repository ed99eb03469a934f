package conformance_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/softtpm/conformance"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// TestErrorsMatchSwtpm makes the same mistakes on swtpm (through
// device/tpm) and on the software TPM with an RSA EK, as swtpm has, and
// checks that both refuse each one with the same TPM response code,
// including the parameter, handle or session it names. The one known
// difference: an RSA-OAEP decryption that fails is TPM_RC_VALUE on the
// software TPM, as the TPM specification has it, and TPM_RC_FAILURE on
// swtpm (libtpms).
func TestErrorsMatchSwtpm(t *testing.T) {
	ca := swtpmtest.NewCA(t)
	swtpmTPM := func() conformance.TPM {
		tp, err := tpm.Open(swtpmtest.New(t, ca).URI())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tp.Close() })
		return tp
	}
	softCA, err := softtpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	softTPM := func() conformance.TPM {
		tp, err := softtpm.New(softtpm.WithCA(softCA), softtpm.WithRSAEK(rsaKey(t)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tp.Close() })
		return tp
	}
	type result struct {
		err error
		rc  tpm2.TPMRC // 0 when err is not a response code
	}
	run := func(a, b conformance.TPM) map[string]result {
		out := map[string]result{}
		note := func(name string, err error) {
			var rc tpm2.TPMRC
			errors.As(err, &rc)
			out[name] = result{err, rc}
		}
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		ak, err := a.CreateAK()
		must(err)
		ak2, err := a.CreateAK()
		must(err)
		tk, err := a.CreateTransportKey()
		must(err)
		ekA, err := a.EK()
		must(err)
		ekB, err := b.EK()
		must(err)
		credential := func(ek *tpm.EK) ([]byte, []byte) {
			pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ek.Public)
			must(err)
			key, err := tpm2.ImportEncapsulationKey(pub)
			must(err)
			akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ak.Public)
			must(err)
			name, err := tpm2.ObjectName(akPub)
			must(err)
			blob, enc, err := tpm2.CreateCredential(rand.Reader, key, name.Buffer, []byte("0123456789abcdef"))
			must(err)
			return blob, enc
		}
		blob, enc := credential(ekA)
		blobB, encB := credential(ekB)
		_, err = a.ActivateCredential(ak2, blob, enc)
		note("credential for another AK", err)
		_, err = a.ActivateCredential(ak, blobB, encB)
		note("credential for another EK", err)
		_, err = a.ActivateCredential(ak, flip(blob, 40), enc)
		note("altered credential", err)
		_, err = a.ActivateCredential(ak, blob[:10], enc)
		note("truncated credential", err)
		_, err = a.ActivateCredential(ak, blob, enc[:100])
		note("truncated credential seed", err)

		sel := wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{0, 16}}
		_, err = b.Quote(ak, nil, sel)
		note("quote with another TPM's AK", err)
		_, err = a.Quote(&tpm.KeyBlob{Public: ak.Public, Private: flip(ak.Private, 5)}, nil, sel)
		note("quote with an altered AK", err)
		_, err = a.Quote(&tpm.KeyBlob{Public: tk.Public, Private: ak.Private}, nil, sel)
		note("quote with swapped key areas", err)
		_, err = a.Quote(ak, make([]byte, 67), sel)
		note("quote with a 67-byte nonce", err)
		_, _, err = a.Certify(ak, tk, make([]byte, 67))
		note("certify with a 67-byte nonce", err)
		_, _, err = b.Certify(ak, tk, nil)
		note("certify with another TPM's keys", err)
		s, err := a.Signer(ak)
		must(err)
		d := sha256.Sum256(nil)
		_, err = s.Sign(nil, d[:], crypto.SHA256)
		note("AK signing a digest", err)
		note("extend PCR 17", a.ExtendPCR(17, d[:]))
		_, err = a.ReadPCRs(wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA1), PCRs: []int{0}})
		note("read of the SHA-1 bank", err)

		wrap := func(ek *tpm.EK, pcrs *wire.PCRSelection, values [][]byte) *secrets.Blob {
			b, err := secrets.Wrap(rand.Reader, ek.Public, []byte("secret"), pcrs, values)
			must(err)
			return b
		}
		mine, theirs := wrap(ekA, nil, nil), wrap(ekB, nil, nil)
		_, err = a.ImportSecret(theirs.Public, theirs.Duplicate, theirs.Seed, nil)
		note("import of another TPM's secret", err)
		_, err = a.ImportSecret(mine.Public, flip(mine.Duplicate, 40), mine.Seed, nil)
		note("import of an altered duplicate", err)
		_, err = a.ImportSecret(mine.Public, flip(mine.Duplicate, 5), mine.Seed, nil)
		note("import with an altered outer HMAC", err)
		_, err = a.ImportSecret(flip(mine.Public, 20), mine.Duplicate, mine.Seed, nil)
		note("import with an altered policy", err)
		_, err = a.ImportSecret(mine.Public, mine.Duplicate[:len(mine.Duplicate)-1], mine.Seed, nil)
		note("import of a truncated duplicate", err)
		sealed, err := a.ImportSecret(mine.Public, mine.Duplicate, mine.Seed, nil)
		must(err)
		_, err = b.Unseal(sealed)
		note("unseal on another TPM", err)
		bad := *sealed
		bad.Private = flip(sealed.Private, 50)
		_, err = a.Unseal(&bad)
		note("unseal of an altered blob", err)
		bad = *sealed
		bad.PCRs = &wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{16}}
		_, err = a.Unseal(&bad)
		note("unseal through a PCR policy it was not sealed to", err)
		values, err := a.ReadPCRs(sel)
		must(err)
		w := wrap(ekA, &sel, values)
		bound, err := a.ImportSecret(w.Public, w.Duplicate, w.Seed, w.PCRs)
		must(err)
		must(a.ExtendPCR(16, d[:]))
		_, err = a.Unseal(bound)
		note("unseal after a bound PCR changed", err)

		_, err = a.AdvanceCounter(softtpm.EKCertIndexRSA, 1)
		note("advance of the EK certificate index", err)
		_, err = a.AdvanceCounter(0x01800300, tpm.MaxCounterAdvance+1)
		note("counter jump", err)
		return out
	}
	want, got := run(swtpmTPM(), swtpmTPM()), run(softTPM(), softTPM())
	for name, w := range want {
		g := got[name]
		switch {
		case w.err == nil || g.err == nil:
			t.Errorf("%s: swtpm %v, software TPM %v: both must fail", name, w.err, g.err)
		case w.rc == tpm2.TPMRCFailure && errors.Is(g.rc, tpm2.TPMRCValue): // RSA-OAEP failed: see above
		case w.rc != g.rc:
			t.Errorf("%s:\n   swtpm: %v\nsoft TPM: %v", name, w.err, g.err)
		}
	}
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i%len(b)] ^= 0x40
	return b
}
