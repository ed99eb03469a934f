package softtpm

import (
	"bytes"
	"crypto/hmac"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// ActivateCredential recovers the secret of a credential made for this
// TPM's EK and the AK's name (TPM2_MakeCredential, or tpm2.CreateCredential
// and verifier.MakeCredential on the fleet), as TPM2_ActivateCredential
// does: it recovers the seed from encSecret with the EK (label "IDENTITY"),
// checks the integrity HMAC of credBlob (a TPM2B_ID_OBJECT's contents) over
// the encrypted credential and the AK's name, and decrypts the credential.
// A credential for another EK or another AK fails, with TPM_RC_INTEGRITY
// when the HMAC does not match.
func (t *TPM) ActivateCredential(ak *tpm.KeyBlob, credBlob, encSecret []byte) ([]byte, error) {
	var secret []byte
	err := t.do("activate credential", func() error {
		a, err := t.load(ak, "AK")
		if err != nil {
			return err
		}
		seed, err := t.ek.decapsulate("IDENTITY", encSecret, 2)
		if err != nil {
			return err
		}
		cred, err := openOuter(t.ek.nameHash(), seed, a.name, credBlob, 1)
		if err != nil {
			return err
		}
		if len(cred) > t.ek.nameHash().Size() {
			return paramErr(tpm2.TPMRCSize, 1)
		}
		secret = bytes.Clone(cred)
		return nil
	})
	return secret, err
}

// maxSealedData is the largest secret a sealed data object holds
// (MAX_SYM_DATA, the size of a TPM2B_SENSITIVE_DATA).
const maxSealedData = 128

// ImportSecret imports a sealed secret the fleet wrapped to this TPM's EK
// (fleet/secrets.Wrap, built on tpm2.CreateDuplicate): public, duplicate
// and seed are a wire.SecretDeliver's Public, Duplicate and Seed
// (TPMT_PUBLIC, TPM2B_PRIVATE contents and TPM2B_ENCRYPTED_SECRET contents),
// pcrs its PCRs. It checks what device/tpm checks before the TPM sees the
// blob (a sealed data object that can be imported), then does what
// TPM2_Import with the EK as parent does: it recovers the seed with the EK
// (label "DUPLICATE"), checks the outer integrity HMAC over the duplicate
// and the object's name, decrypts the TPM2B_SENSITIVE, and checks that it
// belongs to the public area (unique = H(seedValue || data)). The object is
// then protected under the TPM's endorsement storage seed for Unseal.
func (t *TPM) ImportSecret(public, duplicate, seed []byte, pcrs *wire.PCRSelection) (*tpm.SealedBlob, error) {
	pub, err := tpm.SealedPublic(public)
	if err != nil {
		return nil, fmt.Errorf("softtpm: import secret: %w", err)
	}
	if len(duplicate) == 0 || len(seed) == 0 {
		return nil, errors.New("softtpm: import secret: empty duplicate or seed")
	}
	var sel *wire.PCRSelection
	if pcrs != nil {
		if _, _, err := tpm.CheckSelection(*pcrs); err != nil {
			return nil, fmt.Errorf("softtpm: import secret: %w", err)
		}
		sel = &wire.PCRSelection{Hash: pcrs.Hash, PCRs: slices.Clone(pcrs.PCRs)}
	}
	var blob *tpm.SealedBlob
	err = t.do("import secret", func() error {
		name, err := canonicalName(pub, public)
		if err != nil {
			return paramErr(tpm2.TPMRCSize, 2) // trailing bytes, reserved bits
		}
		symSeed, err := t.ek.decapsulate("DUPLICATE", seed, 4)
		if err != nil {
			return err
		}
		sensitive, err := openOuter(t.ek.nameHash(), symSeed, name, duplicate, 3)
		if err != nil {
			return err
		}
		if _, err := sealedData(pub, sensitive, 3); err != nil {
			return err
		}
		private, err := protect(t.rand, t.endorsementSeed(), name, sensitive)
		clear(sensitive)
		if err != nil {
			return err
		}
		blob = &tpm.SealedBlob{Public: bytes.Clone(public), Private: private, PCRs: sel}
		return nil
	})
	return blob, err
}

// Unseal recovers the secret of an imported blob, as device/tpm's Unseal
// does on a TPM: it loads the object under the EK (its private area must
// open with this TPM's endorsement storage seed), then evaluates the policy
// session device/tpm runs, TPM2_PolicyPCR over b.PCRs (when the blob is
// PCR-bound, with the current PCR values) and
// TPM2_PolicyCommandCode(TPM2_Unseal), and compares the digest with the
// object's authPolicy. When a bound PCR no longer holds the value the fleet
// sealed to, it fails with TPM_RC_POLICY_FAIL; it unseals again once the
// PCR holds that value (after a reboot, for example).
func (t *TPM) Unseal(b *tpm.SealedBlob) ([]byte, error) {
	if b == nil || len(b.Private) == 0 {
		return nil, errors.New("softtpm: unseal: empty blob")
	}
	pub, err := tpm.SealedPublic(b.Public)
	if err != nil {
		return nil, fmt.Errorf("softtpm: unseal: %w", err)
	}
	var (
		alg  tpm2.TPMIAlgHash
		pcrs []int
	)
	if b.PCRs != nil {
		if alg, pcrs, err = tpm.CheckSelection(*b.PCRs); err != nil {
			return nil, fmt.Errorf("softtpm: unseal: %w", err)
		}
	}
	var secret []byte
	err = t.do("unseal", func() error {
		// As in load: the integrity HMAC of the private area covers the name
		// of the canonical public area ImportSecret checked.
		name, err := objectName(pub.NameAlg, b.Public)
		if err != nil {
			return fmt.Errorf("load: %w", paramErr(tpm2.TPMRCHash, 2))
		}
		sensitive, err := unprotect(t.endorsementSeed(), name, b.Private)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		data, err := sealedData(pub, sensitive, 1)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		calc, err := tpm2.NewPolicyCalculator(pub.NameAlg)
		if err != nil {
			return err
		}
		if pcrs != nil {
			h, err := pub.NameAlg.Hash()
			if err != nil {
				return err
			}
			d := h.New()
			if alg == tpm.PCRBank { // an unallocated bank has no values to digest
				for _, p := range pcrs {
					d.Write(t.pcrs[p][:])
				}
			}
			if err := (tpm2.PolicyPCR{Pcrs: selection(alg, pcrs), PcrDigest: tpm2.TPM2BDigest{Buffer: d.Sum(nil)}}).Update(calc); err != nil {
				return err
			}
		}
		if err := (tpm2.PolicyCommandCode{Code: tpm2.TPMCCUnseal}).Update(calc); err != nil {
			return err
		}
		if !hmac.Equal(calc.Hash().Digest, pub.AuthPolicy.Buffer) {
			return sessionErr(tpm2.TPMRCPolicyFail, 1)
		}
		secret = bytes.Clone(data)
		clear(sensitive)
		return nil
	})
	return secret, err
}

// sealedData checks a marshaled TPMT_SENSITIVE against the public area of
// a sealed data object, as a TPM checks an object it imports or loads, and
// returns the sealed data. Failures are response codes for parameter param.
func sealedData(pub *tpm2.TPMTPublic, sensitive []byte, param int) ([]byte, error) {
	s, err := tpm2.Unmarshal[tpm2.TPMTSensitive](sensitive)
	if err != nil || len(tpm2.Marshal(s)) != len(sensitive) {
		return nil, paramErr(tpm2.TPMRCSize, param)
	}
	if s.SensitiveType != pub.Type {
		return nil, paramErr(tpm2.TPMRCType, param)
	}
	h, err := pub.NameAlg.Hash()
	if err != nil {
		return nil, paramErr(tpm2.TPMRCHash, param)
	}
	if len(s.AuthValue.Buffer) > h.Size() {
		return nil, paramErr(tpm2.TPMRCSize, param)
	}
	if len(s.SeedValue.Buffer) != h.Size() {
		return nil, paramErr(tpm2.TPMRCKeySize, param)
	}
	data, err := s.Sensitive.Bits()
	if err != nil || len(data.Buffer) > maxSealedData {
		return nil, paramErr(tpm2.TPMRCSize, param)
	}
	unique, err := pub.Unique.KeyedHash()
	if err != nil {
		return nil, paramErr(tpm2.TPMRCBinding, param)
	}
	d := h.New()
	d.Write(s.SeedValue.Buffer)
	d.Write(data.Buffer)
	if !hmac.Equal(d.Sum(nil), unique.Buffer) {
		return nil, paramErr(tpm2.TPMRCBinding, param)
	}
	return data.Buffer, nil
}
