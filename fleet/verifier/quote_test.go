package verifier

import (
	"bytes"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestVerifyQuote(t *testing.T) {
	ak := mustAK(t, fx.ak)
	for _, bank := range []tpm2.TPMAlgID{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA1} {
		n := nonce(t)
		q := fx.quote(t, fx.ak, n, bank, 0, 1, 7, 16)
		// The selection asked for need not be sorted.
		vq, err := VerifyQuote(ak, n, wire.PCRSelection{Hash: uint16(bank), PCRs: []int{16, 7, 0, 1}}, q)
		if err != nil {
			t.Fatalf("bank %v: %v", bank, err)
		}
		if vq.Hash != uint16(bank) || len(vq.PCRs) != 4 || vq.Clock.Clock == 0 {
			t.Fatalf("bank %v: verified quote %+v", bank, vq)
		}
		for i, p := range q.PCRs {
			if !bytes.Equal(vq.PCRs[p], q.Values[i]) {
				t.Fatalf("bank %v: PCR %d = %x, want %x", bank, p, vq.PCRs[p], q.Values[i])
			}
		}
		if bytes.Equal(vq.PCRs[7], make([]byte, len(vq.PCRs[7]))) {
			t.Fatalf("bank %v: PCR 7 is zero; the fixture extends it", bank)
		}
	}
}

func TestVerifyQuoteRefusals(t *testing.T) {
	ak := mustAK(t, fx.ak)
	n := nonce(t)
	sel := wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{0, 1, 7}}
	good := fx.quote(t, fx.ak, n, tpm2.TPMAlgSHA256, 0, 1, 7)
	fewer := fx.quote(t, fx.ak, n, tpm2.TPMAlgSHA256, 0, 1)
	more := fx.quote(t, fx.ak, n, tpm2.TPMAlgSHA256, 0, 1, 7, 16)
	sha1Bank := fx.quote(t, fx.ak, n, tpm2.TPMAlgSHA1, 0, 1, 7)
	byAK2 := fx.quote(t, fx.ak2, n, tpm2.TPMAlgSHA256, 0, 1, 7)
	cAttest, cSig := fx.certify(t, fx.ak, fx.tk, n)

	edit := func(q *wire.Quote, f func(*wire.Quote)) *wire.Quote {
		c := &wire.Quote{Attest: q.Attest, Signature: q.Signature, Hash: q.Hash, PCRs: slices.Clone(q.PCRs)}
		for _, v := range q.Values {
			c.Values = append(c.Values, bytes.Clone(v))
		}
		f(c)
		return c
	}

	for _, tc := range []struct {
		name  string
		nonce []byte
		q     *wire.Quote
	}{
		{"wrong nonce", nonce(t), good},
		{"signed by another AK", n, byAK2},
		{"over fewer PCRs than asked", n, fewer},
		{"over more PCRs than asked", n, more},
		{"over another bank", n, sha1Bank},
		{"a certify, not a quote", n, edit(good, func(q *wire.Quote) { q.Attest, q.Signature = cAttest, cSig })},
		{"PCR value does not match the digest", n, edit(good, func(q *wire.Quote) { q.Values[2][0] ^= 1 })},
		{"values swapped", n, edit(good, func(q *wire.Quote) { q.Values[0], q.Values[2] = q.Values[2], q.Values[0] })},
		{"values listed out of order", n, edit(good, func(q *wire.Quote) {
			q.PCRs[0], q.PCRs[2] = q.PCRs[2], q.PCRs[0]
			q.Values[0], q.Values[2] = q.Values[2], q.Values[0]
		})},
		{"value missing", n, edit(good, func(q *wire.Quote) { q.Values = q.Values[:2] })},
		{"values claim another bank", n, edit(good, func(q *wire.Quote) { q.Hash = uint16(tpm2.TPMAlgSHA1) })},
		{"value of the wrong size", n, edit(good, func(q *wire.Quote) { q.Values[1] = q.Values[1][:20] })},
		{"attest tampered", n, edit(good, func(q *wire.Quote) {
			q.Attest = bytes.Clone(q.Attest)
			q.Attest[len(q.Attest)-1] ^= 1
		})},
		{"signature truncated", n, edit(good, func(q *wire.Quote) { q.Signature = q.Signature[:len(q.Signature)-1] })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vq, err := VerifyQuote(ak, tc.nonce, sel, tc.q)
			if vq != nil {
				t.Fatal("refused quote returned a value")
			}
			wantRefusal(t, err, wire.ReasonQuoteInvalid)
		})
	}

	// The fleet's own bad selection is an error of the caller, not a refusal.
	if _, err := VerifyQuote(ak, n, wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{1, 1}}, good); err == nil {
		t.Fatal("duplicate PCR in the selection asked for accepted")
	}
}
