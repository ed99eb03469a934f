package tpm

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Certify has the AK certify key with TPM2_Certify, qualifying data nonce.
// attest is the marshaled TPMS_ATTEST that was signed (the contents of the
// TPM2B_ATTEST) and sig the marshaled TPMT_SIGNATURE (ECDSA-SHA256 over
// attest).
func (t *TPM) Certify(ak, key *KeyBlob, nonce []byte) (attest, sig []byte, err error) {
	err = t.do("certify", func(tr transport.TPM) error {
		a, err := t.loadLocked(tr, ak, "AK")
		if err != nil {
			return err
		}
		defer flush(tr, a.Handle)
		k, err := t.loadLocked(tr, key, "certified key")
		if err != nil {
			return err
		}
		defer flush(tr, k.Handle)
		rsp, err := tpm2.Certify{
			ObjectHandle:   k.auth(),
			SignHandle:     a.auth(),
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(tr)
		if err != nil {
			return err
		}
		attest = bytes.Clone(rsp.CertifyInfo.Bytes())
		sig = tpm2.Marshal(rsp.Signature)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return attest, sig, nil
}

// Quote has the AK quote the selected PCRs with qualifying data nonce and
// returns the quote with the PCR values it covers, indexes ascending. The
// values are read right before the quote and checked against the quote's
// PCR digest; if a PCR changed in between, both are taken again.
func (t *TPM) Quote(ak *KeyBlob, nonce []byte, sel wire.PCRSelection) (*wire.Quote, error) {
	alg, pcrs, err := CheckSelection(sel)
	if err != nil {
		return nil, fmt.Errorf("tpm: quote: %w", err)
	}
	var q *wire.Quote
	err = t.do("quote", func(tr transport.TPM) error {
		a, err := t.loadLocked(tr, ak, "AK")
		if err != nil {
			return err
		}
		defer flush(tr, a.Handle)
		digestHash, err := signingHash(a.pub)
		if err != nil {
			return err
		}
		const attempts = 5
		for range attempts {
			values, err := readPCRs(tr, alg, pcrs)
			if err != nil {
				return err
			}
			rsp, err := tpm2.Quote{
				SignHandle:     a.auth(),
				QualifyingData: tpm2.TPM2BData{Buffer: nonce},
				InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
				PCRSelect:      selection(alg, pcrs),
			}.Execute(tr)
			if err != nil {
				return err
			}
			att, err := rsp.Quoted.Contents()
			if err != nil {
				return err
			}
			info, err := att.Attested.Quote()
			if err != nil {
				return err
			}
			h := digestHash.New()
			for _, v := range values {
				h.Write(v)
			}
			if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
				continue // a PCR was extended between the read and the quote
			}
			q = &wire.Quote{
				Attest:    bytes.Clone(rsp.Quoted.Bytes()),
				Signature: tpm2.Marshal(rsp.Signature),
				Hash:      uint16(alg),
				PCRs:      pcrs,
				Values:    values,
			}
			return nil
		}
		return errors.New("PCRs kept changing during the quote")
	})
	return q, err
}

// signingHash is the hash of an ECDSA or RSA signing key's scheme.
func signingHash(p *tpm2.TPMTPublic) (crypto.Hash, error) {
	var alg tpm2.TPMIAlgHash
	switch p.Type {
	case tpm2.TPMAlgECC:
		ecc, err := p.Parameters.ECCDetail()
		if err != nil {
			return 0, err
		}
		d, err := ecc.Scheme.Details.ECDSA()
		if err != nil {
			return 0, fmt.Errorf("AK scheme: %w", err)
		}
		alg = d.HashAlg
	default:
		return 0, fmt.Errorf("AK type 0x%x not supported", uint16(p.Type))
	}
	return alg.Hash()
}

// ReadPCRs returns the values of the selected PCRs, in the order of
// sel.PCRs.
func (t *TPM) ReadPCRs(sel wire.PCRSelection) ([][]byte, error) {
	alg, pcrs, err := CheckSelection(sel)
	if err != nil {
		return nil, fmt.Errorf("tpm: read PCRs: %w", err)
	}
	var values [][]byte
	err = t.do("read PCRs", func(tr transport.TPM) error {
		v, err := readPCRs(tr, alg, pcrs)
		if err != nil {
			return err
		}
		byIndex := map[int][]byte{}
		for i, p := range pcrs {
			byIndex[p] = v[i]
		}
		for _, p := range sel.PCRs {
			values = append(values, byIndex[p])
		}
		return nil
	})
	return values, err
}

// CheckSelection validates sel (wire.PCRSelection.Validate and a bank the
// TPM 2.0 library defines) and returns its bank and its PCRs ascending.
func CheckSelection(sel wire.PCRSelection) (tpm2.TPMIAlgHash, []int, error) {
	if err := sel.Validate(); err != nil {
		return 0, nil, err
	}
	alg := tpm2.TPMIAlgHash(sel.Hash)
	switch alg {
	case tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512:
	default:
		return 0, nil, fmt.Errorf("PCR bank 0x%x not supported", sel.Hash)
	}
	pcrs := slices.Clone(sel.PCRs)
	slices.Sort(pcrs)
	return alg, pcrs, nil
}

func selection(alg tpm2.TPMIAlgHash, pcrs []int) tpm2.TPMLPCRSelection {
	bits := make([]byte, 3)
	for _, p := range pcrs {
		bits[p/8] |= 1 << (p % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: alg, PCRSelect: bits}}}
}

// readPCRs reads PCRs (ascending) of one bank, in several TPM2_PCR_Read
// calls when the TPM returns only part of the selection (at most 8 PCRs per
// call), starting over if the PCR update counter moves in between.
func readPCRs(tr transport.TPM, alg tpm2.TPMIAlgHash, pcrs []int) ([][]byte, error) {
	const attempts = 5
	for range attempts {
		got := map[int][]byte{}
		counter, first, moved := uint32(0), true, false
		for len(got) < len(pcrs) {
			var want []int
			for _, p := range pcrs {
				if _, ok := got[p]; !ok {
					want = append(want, p)
				}
			}
			rsp, err := tpm2.PCRRead{PCRSelectionIn: selection(alg, want)}.Execute(tr)
			if err != nil {
				return nil, err
			}
			if !first && rsp.PCRUpdateCounter != counter {
				moved = true
				break
			}
			counter, first = rsp.PCRUpdateCounter, false
			k, n := 0, 0
			for _, s := range rsp.PCRSelectionOut.PCRSelections {
				for bit := 0; bit < 8*len(s.PCRSelect); bit++ {
					if s.PCRSelect[bit/8]&(1<<(bit%8)) == 0 {
						continue
					}
					if k >= len(rsp.PCRValues.Digests) {
						return nil, errors.New("PCR read: fewer values than selected")
					}
					if s.Hash == alg && slices.Contains(want, bit) {
						got[bit] = bytes.Clone(rsp.PCRValues.Digests[k].Buffer)
						n++
					}
					k++
				}
			}
			if n == 0 {
				return nil, fmt.Errorf("PCR read: bank 0x%x returned no values (bank not active?)", uint16(alg))
			}
		}
		if moved {
			continue
		}
		out := make([][]byte, len(pcrs))
		for i, p := range pcrs {
			out[i] = got[p]
		}
		return out, nil
	}
	return nil, errors.New("PCR read: PCRs kept changing")
}

// ActivateCredential recovers the secret of a credential made for this
// TPM's EK and the AK's name (TPM2_MakeCredential or tpm2.CreateCredential
// on the fleet). credBlob is the TPM2B_ID_OBJECT contents and encSecret the
// TPM2B_ENCRYPTED_SECRET contents. The EK's policy is satisfied with
// PolicySecret(TPM_RH_ENDORSEMENT) and an empty endorsement password; EKs
// whose policy needs more (the high-range PolicyOR templates) are not
// supported.
func (t *TPM) ActivateCredential(ak *KeyBlob, credBlob, encSecret []byte) ([]byte, error) {
	var secret []byte
	err := t.do("activate credential", func(tr transport.TPM) error {
		ek, err := t.ekLocked(tr)
		if err != nil {
			return err
		}
		a, err := t.loadLocked(tr, ak, "AK")
		if err != nil {
			return err
		}
		defer flush(tr, a.Handle)
		ekHandle := ek.persistent
		var ekName tpm2.TPM2BName
		if ekHandle == 0 {
			cp, err := createEK(tr, ek.template)
			if err != nil {
				return fmt.Errorf("create EK: %w", err)
			}
			defer flush(tr, cp.ObjectHandle)
			ekHandle, ekName = cp.ObjectHandle, cp.Name
		} else {
			rp, err := tpm2.ReadPublic{ObjectHandle: ekHandle}.Execute(tr)
			if err != nil {
				return fmt.Errorf("read EK: %w", err)
			}
			ekName = rp.Name
		}
		sess, closeSess, err := tpm2.PolicySession(tr, ek.pub.NameAlg, 16)
		if err != nil {
			return fmt.Errorf("policy session: %w", err)
		}
		defer func() { _ = closeSess() }()
		if _, err := (tpm2.PolicySecret{
			AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
			PolicySession: sess.Handle(),
			NonceTPM:      sess.NonceTPM(),
		}).Execute(tr); err != nil {
			return fmt.Errorf("policy secret: %w", err)
		}
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: a.auth(),
			KeyHandle:      tpm2.AuthHandle{Handle: ekHandle, Name: ekName, Auth: sess},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: credBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
		}.Execute(tr)
		if err != nil {
			return err
		}
		secret = bytes.Clone(rsp.CertInfo.Buffer)
		return nil
	})
	return secret, err
}
