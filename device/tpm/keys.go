package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Persistent handles of the SRK: the first is used when free or when it
// already holds an ECC P-256 storage key, else the second.
const (
	srkHandle    tpm2.TPMHandle = 0x81000001
	srkAltHandle tpm2.TPMHandle = 0x81000002
)

// KeyBlob is a TPM key wrapped by the SRK. It is useless outside the TPM
// that created it and safe to store.
type KeyBlob struct {
	Public  []byte // marshaled TPMT_PUBLIC (the contents of a TPM2B_PUBLIC)
	Private []byte // contents of a TPM2B_PRIVATE, encrypted by the SRK
}

// eccSigningTemplate is an ECC P-256 ECDSA-SHA256 signing key that cannot
// leave the TPM; restricted makes it an attestation key.
func eccSigningTemplate(restricted bool) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          restricted,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// CreateAK creates an attestation key: ECC P-256, restricted signing with
// ECDSA-SHA256, fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA,
// a child of the SRK.
func (t *TPM) CreateAK() (*KeyBlob, error) {
	return t.createKey("create AK", eccSigningTemplate(true))
}

// CreateTransportKey creates a transport (mTLS) key: ECC P-256, unrestricted
// signing with ECDSA-SHA256, never decrypt,
// fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA, a child of the
// SRK.
func (t *TPM) CreateTransportKey() (*KeyBlob, error) {
	return t.createKey("create transport key", eccSigningTemplate(false))
}

func (t *TPM) createKey(op string, tmpl tpm2.TPMTPublic) (*KeyBlob, error) {
	a := tmpl.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return nil, fmt.Errorf("tpm: %s: refusing to create a duplicable key", op)
	}
	var blob *KeyBlob
	err := t.do(op, func(tr transport.TPM) error {
		srk, err := t.srkLocked(tr)
		if err != nil {
			return err
		}
		rsp, err := tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
			InPublic:     tpm2.New2B(tmpl),
		}.Execute(tr)
		if err != nil {
			return err
		}
		blob = &KeyBlob{Public: rsp.OutPublic.Bytes(), Private: rsp.OutPrivate.Buffer}
		return nil
	})
	return blob, err
}

// srkLocked returns the SRK, creating and persisting it when needed. The
// caller holds t.mu.
func (t *TPM) srkLocked(tr transport.TPM) (tpm2.NamedHandle, error) {
	if t.srk != nil {
		return *t.srk, nil
	}
	for _, h := range []tpm2.TPMHandle{srkHandle, srkAltHandle} {
		rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(tr)
		if errors.Is(err, tpm2.TPMRCHandle) {
			nh, err := createSRK(tr, h)
			if err != nil {
				return tpm2.NamedHandle{}, fmt.Errorf("create SRK at 0x%x: %w", uint32(h), err)
			}
			t.log.Info("tpm: created SRK", "handle", fmt.Sprintf("0x%x", uint32(h)))
			t.srk = &nh
			return nh, nil
		}
		if err != nil {
			return tpm2.NamedHandle{}, fmt.Errorf("read SRK at 0x%x: %w", uint32(h), err)
		}
		pub, err := rp.OutPublic.Contents()
		if err != nil {
			return tpm2.NamedHandle{}, fmt.Errorf("read SRK at 0x%x: %w", uint32(h), err)
		}
		if isECCStorageKey(pub) {
			nh := tpm2.NamedHandle{Handle: h, Name: rp.Name}
			t.srk = &nh
			return nh, nil
		}
		t.log.Warn("tpm: persistent handle holds a key that is not an ECC P-256 storage key; trying the next", "handle", fmt.Sprintf("0x%x", uint32(h)))
	}
	return tpm2.NamedHandle{}, errors.New("no usable SRK: 0x81000001 and 0x81000002 hold other keys")
}

func isECCStorageKey(p *tpm2.TPMTPublic) bool {
	if p.Type != tpm2.TPMAlgECC || !p.ObjectAttributes.Restricted || !p.ObjectAttributes.Decrypt || p.ObjectAttributes.SignEncrypt {
		return false
	}
	ecc, err := p.Parameters.ECCDetail()
	return err == nil && ecc.CurveID == tpm2.TPMECCNistP256
}

// createSRK creates the ECC P-256 storage primary and persists it at h.
func createSRK(tr transport.TPM, h tpm2.TPMHandle) (tpm2.NamedHandle, error) {
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(tr)
	if err != nil {
		return tpm2.NamedHandle{}, err
	}
	defer flush(tr, cp.ObjectHandle)
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: h,
	}.Execute(tr)
	if err != nil {
		return tpm2.NamedHandle{}, err
	}
	return tpm2.NamedHandle{Handle: h, Name: cp.Name}, nil
}

// loaded is a key loaded for one operation.
type loaded struct {
	tpm2.NamedHandle
	pub *tpm2.TPMTPublic
}

// auth returns the handle with an empty-password authorization.
func (l loaded) auth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: l.Handle, Name: l.Name, Auth: tpm2.PasswordAuth(nil)}
}

// loadLocked loads a blob under the SRK. The caller flushes the handle.
func (t *TPM) loadLocked(tr transport.TPM, k *KeyBlob, what string) (loaded, error) {
	if k == nil || len(k.Public) == 0 || len(k.Private) == 0 {
		return loaded{}, fmt.Errorf("load %s: empty key blob", what)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
	if err != nil {
		return loaded{}, fmt.Errorf("load %s: public area: %w", what, err)
	}
	srk, err := t.srkLocked(tr)
	if err != nil {
		return loaded{}, err
	}
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    tpm2.TPM2BPrivate{Buffer: k.Private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](k.Public),
	}.Execute(tr)
	if err != nil {
		return loaded{}, fmt.Errorf("load %s: %w", what, err)
	}
	return loaded{NamedHandle: tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, pub: pub}, nil
}

// PublicKey returns the public key of a blob (no TPM access).
func (t *TPM) PublicKey(key *KeyBlob) (crypto.PublicKey, error) {
	if key == nil {
		return nil, errors.New("tpm: public key: nil key blob")
	}
	pub, err := publicKey(key.Public)
	if err != nil {
		return nil, fmt.Errorf("tpm: public key: %w", err)
	}
	return pub, nil
}

func publicKey(tpmtPublic []byte) (crypto.PublicKey, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](tpmtPublic)
	if err != nil {
		return nil, err
	}
	return tpm2.Pub(*pub)
}

// Signer returns a crypto.Signer for an ECC signing key blob (the transport
// key). Each Sign loads the key, signs with TPM2_Sign and flushes it. It is
// usable as tls.Certificate.PrivateKey and with x509.CreateCertificateRequest.
func (t *TPM) Signer(key *KeyBlob) (crypto.Signer, error) {
	if key == nil {
		return nil, errors.New("tpm: signer: nil key blob")
	}
	pub, err := publicKey(key.Public)
	if err != nil {
		return nil, fmt.Errorf("tpm: signer: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("tpm: signer: key is %T, want ECDSA", pub)
	}
	blob := *key
	return &signer{t: t, key: &blob, pub: ec}, nil
}

type signer struct {
	t   *TPM
	key *KeyBlob
	pub *ecdsa.PublicKey
}

var _ crypto.Signer = (*signer)(nil)

func (s *signer) Public() crypto.PublicKey { return s.pub }

// Sign signs a SHA-256 digest and returns an ASN.1 DER ECDSA signature, as
// crypto/ecdsa does. The TPM supplies the randomness; rand is ignored.
func (s *signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != 32 {
		return nil, errors.New("tpm: sign: only SHA-256 digests are supported")
	}
	var der []byte
	err := s.t.do("sign", func(tr transport.TPM) error {
		k, err := s.t.loadLocked(tr, s.key, "signing key")
		if err != nil {
			return err
		}
		defer flush(tr, k.Handle)
		rsp, err := tpm2.Sign{
			KeyHandle:  k.auth(),
			Digest:     tpm2.TPM2BDigest{Buffer: digest},
			InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(tr)
		if err != nil {
			return err
		}
		ecc, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return err
		}
		der, err = asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(ecc.SignatureR.Buffer),
			new(big.Int).SetBytes(ecc.SignatureS.Buffer),
		})
		return err
	})
	return der, err
}
