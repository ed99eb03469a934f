package tpm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// SealedBlob is a secret the fleet sealed to this TPM (fleet/secrets.Wrap),
// imported under the EK. It is what the device stores: Private is
// encrypted by the EK, so the blob is useless outside this TPM and safe at
// rest; only Unseal on this TPM, with its policy satisfied, recovers the
// secret.
type SealedBlob struct {
	Public  []byte             // marshaled TPMT_PUBLIC of the sealed data object
	Private []byte             // contents of a TPM2B_PRIVATE, encrypted by the EK
	PCRs    *wire.PCRSelection // the PCRs the object's policy checks, nil if none
}

// ImportSecret imports a sealed secret the fleet wrapped to this TPM's EK:
// public, duplicate and seed are the Public, Duplicate and Seed fields of a
// wire.SecretDeliver (TPMT_PUBLIC, TPM2B_PRIVATE contents and
// TPM2B_ENCRYPTED_SECRET contents), pcrs its PCRs field. TPM2_Import runs
// with the EK as parent, authorized like ActivateCredential:
// PolicySecret(TPM_RH_ENDORSEMENT) with an empty endorsement password. The
// TPM recovers the seed with the EK's private key and checks the
// duplicate's integrity and its binding to public, so a blob made for
// another TPM's EK, or altered, is refused.
//
// Only sealed data objects are accepted: keyed-hash objects without a
// scheme, neither sign nor decrypt, with fixedTPM and fixedParent clear.
func (t *TPM) ImportSecret(public, duplicate, seed []byte, pcrs *wire.PCRSelection) (*SealedBlob, error) {
	if _, err := SealedPublic(public); err != nil {
		return nil, fmt.Errorf("tpm: import secret: %w", err)
	}
	if len(duplicate) == 0 || len(seed) == 0 {
		return nil, errors.New("tpm: import secret: empty duplicate or seed")
	}
	var sel *wire.PCRSelection
	if pcrs != nil {
		if _, _, err := CheckSelection(*pcrs); err != nil {
			return nil, fmt.Errorf("tpm: import secret: %w", err)
		}
		sel = &wire.PCRSelection{Hash: pcrs.Hash, PCRs: slices.Clone(pcrs.PCRs)}
	}
	var blob *SealedBlob
	err := t.do("import secret", func(tr transport.TPM) error {
		ek, done, err := t.ekParentLocked(tr)
		if err != nil {
			return err
		}
		defer done()
		rsp, err := tpm2.Import{
			ParentHandle: ek,
			ObjectPublic: tpm2.BytesAs2B[tpm2.TPMTPublic](public),
			Duplicate:    tpm2.TPM2BPrivate{Buffer: duplicate},
			InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: seed},
			Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
		}.Execute(tr)
		if err != nil {
			return err
		}
		blob = &SealedBlob{Public: bytes.Clone(public), Private: bytes.Clone(rsp.OutPrivate.Buffer), PCRs: sel}
		return nil
	})
	return blob, err
}

// Unseal recovers the secret of an imported blob. It loads the object under
// the EK (authorized as in ImportSecret) and unseals it with a policy
// session: TPM2_PolicyPCR over b.PCRs when the blob is PCR-bound, then
// TPM2_PolicyCommandCode(TPM2_Unseal), the policy fleet/secrets.Wrap gives
// the object. When a bound PCR no longer holds the value the fleet sealed
// to, the TPM refuses (a policy failure); it unseals again once the PCR
// holds that value. The session is salted with the EK and encrypts the
// response, so the secret does not cross the TPM bus (or swtpm's socket) in
// the clear.
func (t *TPM) Unseal(b *SealedBlob) ([]byte, error) {
	if b == nil || len(b.Private) == 0 {
		return nil, errors.New("tpm: unseal: empty blob")
	}
	pub, err := SealedPublic(b.Public)
	if err != nil {
		return nil, fmt.Errorf("tpm: unseal: %w", err)
	}
	var (
		alg  tpm2.TPMIAlgHash
		pcrs []int
	)
	if b.PCRs != nil {
		if alg, pcrs, err = CheckSelection(*b.PCRs); err != nil {
			return nil, fmt.Errorf("tpm: unseal: %w", err)
		}
	}
	var secret []byte
	err = t.do("unseal", func(tr transport.TPM) error {
		ek, done, err := t.ekParentLocked(tr)
		if err != nil {
			return err
		}
		defer done()
		ld, err := tpm2.Load{
			ParentHandle: ek,
			InPrivate:    tpm2.TPM2BPrivate{Buffer: b.Private},
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](b.Public),
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		defer flush(tr, ld.ObjectHandle)
		info, err := t.ekLocked(tr)
		if err != nil {
			return err
		}
		sess, closeSess, err := tpm2.PolicySession(tr, pub.NameAlg, 16,
			tpm2.Salted(ek.Handle, info.pub), tpm2.AESEncryption(128, tpm2.EncryptOut))
		if err != nil {
			return fmt.Errorf("policy session: %w", err)
		}
		defer func() { _ = closeSess() }()
		if pcrs != nil {
			if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: selection(alg, pcrs)}).Execute(tr); err != nil {
				return fmt.Errorf("policy PCR: %w", err)
			}
		}
		if _, err := (tpm2.PolicyCommandCode{PolicySession: sess.Handle(), Code: tpm2.TPMCCUnseal}).Execute(tr); err != nil {
			return fmt.Errorf("policy command code: %w", err)
		}
		rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: ld.ObjectHandle, Name: ld.Name, Auth: sess}}.Execute(tr)
		if err != nil {
			return err
		}
		secret = bytes.Clone(rsp.OutData.Buffer)
		clear(rsp.OutData.Buffer)
		return nil
	})
	return secret, err
}

// SealedPublic decodes the public area of a sealed data object and checks
// that it is one that can be imported: a keyed-hash object without a
// scheme, with an available name algorithm, neither sign nor decrypt nor
// restricted, fixedTPM and fixedParent clear (see ImportSecret).
func SealedPublic(b []byte) (*tpm2.TPMTPublic, error) {
	if len(b) == 0 {
		return nil, errors.New("empty public area")
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	if pub.Type != tpm2.TPMAlgKeyedHash {
		return nil, fmt.Errorf("object type 0x%04x is not a sealed data object", uint16(pub.Type))
	}
	if h, err := pub.NameAlg.Hash(); err != nil || !h.Available() {
		return nil, fmt.Errorf("object name algorithm 0x%04x not supported", uint16(pub.NameAlg))
	}
	a := pub.ObjectAttributes
	if a.FixedTPM || a.FixedParent || a.SignEncrypt || a.Decrypt || a.Restricted {
		return nil, errors.New("object attributes are not those of an imported sealed data object")
	}
	parms, err := pub.Parameters.KeyedHashDetail()
	if err != nil || parms.Scheme.Scheme != tpm2.TPMAlgNull {
		return nil, errors.New("keyed-hash object with a scheme is not a sealed data object")
	}
	return pub, nil
}

// ekParentLocked returns the EK as a parent authorized for one command:
// PolicySecret(TPM_RH_ENDORSEMENT) with an empty endorsement password, the
// EK policy of the TCG default templates. The EK is the persistent one, or
// recreated from its template (deterministic) when not persisted. done
// flushes the policy session and a recreated EK. The caller holds t.mu.
func (t *TPM) ekParentLocked(tr transport.TPM) (tpm2.AuthHandle, func(), error) {
	info, err := t.ekLocked(tr)
	if err != nil {
		return tpm2.AuthHandle{}, nil, err
	}
	var cleanup []func()
	done := func() {
		for _, f := range slices.Backward(cleanup) {
			f()
		}
	}
	fail := func(err error) (tpm2.AuthHandle, func(), error) {
		done()
		return tpm2.AuthHandle{}, nil, err
	}
	h := tpm2.NamedHandle{Handle: info.persistent}
	if h.Handle == 0 {
		cp, err := createEK(tr, info.template)
		if err != nil {
			return fail(fmt.Errorf("create EK: %w", err))
		}
		cleanup = append(cleanup, func() { flush(tr, cp.ObjectHandle) })
		h = tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name}
	} else {
		rp, err := tpm2.ReadPublic{ObjectHandle: h.Handle}.Execute(tr)
		if err != nil {
			return fail(fmt.Errorf("read EK: %w", err))
		}
		h.Name = rp.Name
	}
	sess, closeSess, err := tpm2.PolicySession(tr, info.pub.NameAlg, 16)
	if err != nil {
		return fail(fmt.Errorf("policy session: %w", err))
	}
	cleanup = append(cleanup, func() { _ = closeSess() })
	if _, err := (tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: sess.Handle(),
		NonceTPM:      sess.NonceTPM(),
	}).Execute(tr); err != nil {
		return fail(fmt.Errorf("policy secret: %w", err))
	}
	return tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: sess}, done, nil
}
