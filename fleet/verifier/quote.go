package verifier

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// VerifiedQuote is the PCR state a TPM quote proved.
type VerifiedQuote struct {
	Hash            uint16         // TPM_ALG_ID of the PCR bank
	PCRs            map[int][]byte // PCR index -> value, exactly the selection asked for
	Clock           ClockInfo      // the TPM's clock when it quoted
	FirmwareVersion uint64         // TPM firmware version it reported
}

// VerifyQuote checks a TPM2_Quote by the AK over the selection the fleet
// asked for, with the fleet's nonce, and returns the PCR values it proves.
// It does not judge the values; comparing them with reference values is the
// caller's job. Checks, in order:
//
//  1. q.Signature decodes canonically as TPMT_SIGNATURE, scheme ECDSA, hash
//     SHA-256;
//  2. it verifies over SHA-256(q.Attest) with ak.Key;
//  3. q.Attest decodes canonically as TPMS_ATTEST;
//  4. magic is TPM_GENERATED_VALUE;
//  5. type is TPM_ST_ATTEST_QUOTE;
//  6. extraData equals nonce;
//  7. the quoted PCR selection is exactly sel: one bank, sel.Hash, and the
//     set sel.PCRs;
//  8. q.Hash is sel.Hash and q.PCRs lists the same set in ascending order,
//     with one value each;
//  9. every value has the bank's digest size;
//  10. the quote's PCR digest equals SHA-256 of the values concatenated in
//     ascending PCR order. (TPM2_Quote digests the PCRs with the signing
//     scheme's hash, SHA-256 here, whatever the bank's hash.)
//
// Refusals carry wire.ReasonQuoteInvalid; the public message names the
// failed check. An invalid sel is the caller's error, not a refusal.
func VerifyQuote(ak *AK, nonce []byte, sel wire.PCRSelection, q *wire.Quote) (*VerifiedQuote, error) {
	if ak == nil || q == nil {
		return nil, errors.New("verifier: quote: AK and quote are required")
	}
	if err := sel.Validate(); err != nil {
		return nil, fmt.Errorf("verifier: quote: selection asked for: %w", err)
	}
	size, err := digestSize(sel.Hash)
	if err != nil {
		return nil, fmt.Errorf("verifier: quote: selection asked for: %w", err)
	}
	var a attestation
	if check, err := checkSignedAttest(ak.Key, q.Attest, q.Signature, stAttestQuote, nonce, &a); err != nil {
		return nil, refuse(wire.ReasonQuoteInvalid, "quote "+check+" invalid", "quote: %w", err)
	}

	want := slices.Sorted(slices.Values(sel.PCRs))
	if err := checkQuotedSelection(a.pcrSelect, sel.Hash, want); err != nil {
		return nil, refuse(wire.ReasonQuoteInvalid, "quote selection is not the one asked for", "quote: %w", err)
	}
	if q.Hash != sel.Hash || !slices.Equal(q.PCRs, want) || len(q.Values) != len(want) {
		return nil, refuse(wire.ReasonQuoteInvalid, "quote values are not the selection asked for",
			"quote: values for bank %#04x PCRs %v (%d values), asked for bank %#04x PCRs %v",
			q.Hash, q.PCRs, len(q.Values), sel.Hash, want)
	}
	h := sha256.New()
	for i, v := range q.Values {
		if len(v) != size {
			return nil, refuse(wire.ReasonQuoteInvalid, "quote PCR value size wrong",
				"quote: PCR %d value of %d bytes, bank %#04x has %d", want[i], len(v), sel.Hash, size)
		}
		h.Write(v)
	}
	var sum [sha256.Size]byte
	if !hmac.Equal(h.Sum(sum[:0]), a.pcrDigest) {
		return nil, refuse(wire.ReasonQuoteInvalid, "quote PCR digest does not match the PCR values",
			"quote: digest of the presented PCR values differs from the quoted digest")
	}
	// One allocation holds every value the map hands out.
	values := make([]byte, 0, size*len(want))
	pcrs := make(map[int][]byte, len(want))
	for i, v := range q.Values {
		values = append(values, v...)
		pcrs[want[i]] = values[len(values)-size : len(values) : len(values)]
	}
	return &VerifiedQuote{Hash: sel.Hash, PCRs: pcrs, Clock: a.clock, FirmwareVersion: a.firmwareVersion}, nil
}

// checkQuotedSelection implements check 7 of VerifyQuote: one selection of
// bank hash whose bitmap is exactly the set want.
func checkQuotedSelection(l []pcrSelection, hash uint16, want []int) error {
	if len(l) != 1 {
		return fmt.Errorf("quoted %d PCR banks, want 1", len(l))
	}
	s := l[0]
	if s.hash != hash {
		return fmt.Errorf("quoted bank %#04x, want %#04x", s.hash, hash)
	}
	// Walk the bitmap's set bits in ascending order against want.
	n := 0
	for i, b := range s.bitmap {
		for bit := range 8 {
			if b&(1<<bit) == 0 {
				continue
			}
			if n >= len(want) || want[n] != i*8+bit {
				return fmt.Errorf("quoted PCRs %v, want %v", selectedPCRs(s.bitmap), want)
			}
			n++
		}
	}
	if n != len(want) {
		return fmt.Errorf("quoted PCRs %v, want %v", selectedPCRs(s.bitmap), want)
	}
	return nil
}

// selectedPCRs lists the PCRs a TPMS_PCR_SELECTION bitmap selects.
func selectedPCRs(bitmap []byte) []int {
	var got []int
	for i, b := range bitmap {
		for bit := range 8 {
			if b&(1<<bit) != 0 {
				got = append(got, i*8+bit)
			}
		}
	}
	return got
}

// digestSize returns the digest size of a PCR bank's hash algorithm.
func digestSize(alg uint16) (int, error) {
	switch tpm2.TPMAlgID(alg) {
	case tpm2.TPMAlgSHA1:
		return 20, nil
	case tpm2.TPMAlgSHA256:
		return 32, nil
	case tpm2.TPMAlgSHA384:
		return 48, nil
	case tpm2.TPMAlgSHA512:
		return 64, nil
	}
	return 0, fmt.Errorf("PCR bank hash %#04x not supported", alg)
}
