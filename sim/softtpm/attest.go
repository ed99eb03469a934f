package softtpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// numPCRs is the number of PCRs in the bank (PC Client profile).
const numPCRs = 24

// FirmwareVersion is the firmware version the software TPM reports in
// TPMS_ATTEST, before obfuscation (see attest).
const FirmwareVersion uint64 = 0x0000_0001_0000_0000

// maxNonce is the largest qualifying data a TPM accepts: a TPM2B_DATA holds
// at most sizeof(TPMT_HA), a SHA-512 digest with its algorithm.
const maxNonce = 2 + 64

// Certify has the AK certify key (TPM2_Certify) with qualifying data
// nonce. attest is the marshaled TPMS_ATTEST (type TPM_ST_ATTEST_CERTIFY,
// naming the key by name and qualified name) and sig the marshaled
// TPMT_SIGNATURE, ECDSA-SHA256 over attest.
func (t *TPM) Certify(ak, key *tpm.KeyBlob, nonce []byte) (attest, sig []byte, err error) {
	err = t.do("certify", func() error {
		a, err := t.load(ak, "AK")
		if err != nil {
			return err
		}
		k, err := t.load(key, "certified key")
		if err != nil {
			return err
		}
		if len(nonce) > maxNonce {
			return paramErr(tpm2.TPMRCSize, 1)
		}
		info := tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{
			Name:          tpm2.TPM2BName{Buffer: k.name},
			QualifiedName: tpm2.TPM2BName{Buffer: t.qualifiedName(k.name)},
		})
		attest, sig, err = t.attest(a, tpm2.TPMSTAttestCertify, nonce, info)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return attest, sig, nil
}

// Quote has the AK quote the selected PCRs (TPM2_Quote) with qualifying
// data nonce and returns the quote with the values it covers, indexes
// ascending. The PCR digest is SHA-256 (the AK's scheme hash) over the
// values in ascending PCR order.
func (t *TPM) Quote(ak *tpm.KeyBlob, nonce []byte, sel wire.PCRSelection) (*wire.Quote, error) {
	alg, pcrs, err := tpm.CheckSelection(sel)
	if err != nil {
		return nil, fmt.Errorf("softtpm: quote: %w", err)
	}
	var q *wire.Quote
	err = t.do("quote", func() error {
		a, err := t.load(ak, "AK")
		if err != nil {
			return err
		}
		values, err := t.readPCRs(alg, pcrs)
		if err != nil {
			return err
		}
		if len(nonce) > maxNonce {
			return paramErr(tpm2.TPMRCSize, 1)
		}
		h := sha256.New()
		for _, v := range values {
			h.Write(v)
		}
		info := tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: selection(alg, pcrs),
			PCRDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)},
		})
		attest, sig, err := t.attest(a, tpm2.TPMSTAttestQuote, nonce, info)
		if err != nil {
			return err
		}
		q = &wire.Quote{Attest: attest, Signature: sig, Hash: uint16(alg), PCRs: pcrs, Values: values}
		return nil
	})
	return q, err
}

// attest builds a TPMS_ATTEST signed by k, as a TPM's attestation commands
// do. The signing key is in the owner hierarchy, so the TPM obfuscates the
// reset and restart counters and the firmware version (TPM 2.0 Part 3,
// "Attestation Commands"): it adds a value derived from a TPM-private proof
// and the signer's qualified name. The values look random but are constant
// per AK, so a verifier still sees the counters move forward, and two
// devices' values are not comparable. The caller holds t.mu.
func (t *TPM) attest(k *loadedKey, typ tpm2.TPMST, nonce []byte, info tpm2.TPMUAttest) (attest, sig []byte, err error) {
	qn := t.qualifiedName(k.name)
	obf := tpm2.KDFa(crypto256, t.derive("PROOF", 256), "OBFUSCATE", qn, nil, 128)
	a := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            typ,
		QualifiedSigner: tpm2.TPM2BName{Buffer: qn},
		ExtraData:       tpm2.TPM2BData{Buffer: bytes.Clone(nonce)},
		ClockInfo: tpm2.TPMSClockInfo{
			Clock:        t.clock(),
			ResetCount:   t.resetCount + binary.BigEndian.Uint32(obf[8:]),
			RestartCount: t.restartCount + binary.BigEndian.Uint32(obf[12:]),
			Safe:         true,
		},
		FirmwareVersion: FirmwareVersion + binary.BigEndian.Uint64(obf),
		Attested:        info,
	}
	attest = tpm2.Marshal(a)
	digest := sha256.Sum256(attest)
	s, err := sign(k, digest[:])
	if err != nil {
		return nil, nil, err
	}
	return attest, tpm2.Marshal(s), nil
}

// ReadPCRs returns the values of the selected PCRs, in the order of
// sel.PCRs. The TPM has one PCR bank, SHA-256; reading another fails as it
// does on a TPM where that bank is not allocated.
func (t *TPM) ReadPCRs(sel wire.PCRSelection) ([][]byte, error) {
	alg, pcrs, err := tpm.CheckSelection(sel)
	if err != nil {
		return nil, fmt.Errorf("softtpm: read PCRs: %w", err)
	}
	var values [][]byte
	err = t.do("read PCRs", func() error {
		v, err := t.readPCRs(alg, pcrs)
		if err != nil {
			return err
		}
		for _, p := range sel.PCRs {
			values = append(values, v[slices.Index(pcrs, p)])
		}
		return nil
	})
	return values, err
}

// readPCRs returns copies of PCRs (ascending) of bank alg. The caller
// holds t.mu.
func (t *TPM) readPCRs(alg tpm2.TPMIAlgHash, pcrs []int) ([][]byte, error) {
	if alg != tpm.PCRBank {
		return nil, fmt.Errorf("PCR read: bank 0x%x returned no values (bank not active?)", uint16(alg))
	}
	out := make([][]byte, len(pcrs))
	for i, p := range pcrs {
		out[i] = bytes.Clone(t.pcrs[p][:])
	}
	return out, nil
}

// ExtendPCR extends PCR pcr (0-23) of the SHA-256 bank with digest, a
// SHA-256 digest: PCR := SHA-256(PCR || digest). PCRs 17-22 belong to
// higher localities: extending them fails with TPM_RC_LOCALITY, as on a TPM
// at locality 0.
func (t *TPM) ExtendPCR(pcr int, digest []byte) error {
	if pcr < 0 || pcr > 23 {
		return fmt.Errorf("softtpm: extend PCR: index %d out of range 0-23", pcr)
	}
	if len(digest) != sha256.Size {
		return fmt.Errorf("softtpm: extend PCR %d: digest is %d bytes, want 32 (SHA-256)", pcr, len(digest))
	}
	return t.do(fmt.Sprintf("extend PCR %d", pcr), func() error {
		if pcr >= 17 && pcr <= 22 {
			return tpm2.TPMRCLocality
		}
		h := sha256.New()
		h.Write(t.pcrs[pcr][:])
		h.Write(digest)
		h.Sum(t.pcrs[pcr][:0])
		return nil
	})
}

// selection is the TPML_PCR_SELECTION of PCRs of bank alg, with the
// three-byte bitmap device/tpm sends.
func selection(alg tpm2.TPMIAlgHash, pcrs []int) tpm2.TPMLPCRSelection {
	bits := make([]byte, 3)
	for _, p := range pcrs {
		bits[p/8] |= 1 << (p % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: alg, PCRSelect: bits}}}
}
