package softtpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sync"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
)

// CreateAK creates an attestation key from device/tpm's template
// (tpm.AKTemplate): ECC P-256, restricted signing with ECDSA-SHA256,
// fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA, a child of the
// storage root key.
func (t *TPM) CreateAK() (*tpm.KeyBlob, error) {
	return t.createKey("create AK", tpm.AKTemplate())
}

// CreateTransportKey creates a transport (mTLS) key from device/tpm's
// template (tpm.TransportKeyTemplate): as the AK, but unrestricted.
func (t *TPM) CreateTransportKey() (*tpm.KeyBlob, error) {
	return t.createKey("create transport key", tpm.TransportKeyTemplate())
}

// createKey is TPM2_Create of an ECC P-256 key under the storage root key:
// a random private scalar, the public area of template with the point, and
// the private area protected by the storage seed.
func (t *TPM) createKey(op string, template tpm2.TPMTPublic) (*tpm.KeyBlob, error) {
	var blob *tpm.KeyBlob
	err := t.do(op, func() error {
		priv, err := randomP256(t.rand)
		if err != nil {
			return err
		}
		point, err := priv.PublicKey.Bytes()
		if err != nil {
			return err
		}
		pub := eccPublic(template, point)
		public := tpm2.Marshal(pub)
		name, err := objectName(pub.NameAlg, public)
		if err != nil {
			return err
		}
		d, err := priv.Bytes()
		if err != nil {
			return err
		}
		sensitive := tpm2.Marshal(tpm2.TPMTSensitive{
			SensitiveType: tpm2.TPMAlgECC,
			Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: d}),
		})
		private, err := protect(t.rand, t.storageSeed(), name, sensitive)
		clear(sensitive)
		clear(d)
		if err != nil {
			return err
		}
		blob = &tpm.KeyBlob{Public: public, Private: private}
		return nil
	})
	return blob, err
}

// randomP256 makes a P-256 key from 32 bytes of r, drawing again in the
// rare case they are not a valid scalar.
func randomP256(r io.Reader) (*ecdsa.PrivateKey, error) {
	d := make([]byte, 32)
	defer clear(d)
	for range 64 {
		if _, err := io.ReadFull(r, d); err != nil {
			return nil, fmt.Errorf("random: %w", err)
		}
		if k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d); err == nil {
			return k, nil
		}
	}
	return nil, errors.New("random source gives no valid P-256 scalar")
}

// storageSeed is the seed of the storage root key: it protects the private
// areas of the keys the TPM creates. The caller holds t.mu.
func (t *TPM) storageSeed() []byte { return t.derive("SRK STORAGE", 256) }

// endorsementSeed protects the objects imported under the EK. The caller
// holds t.mu.
func (t *TPM) endorsementSeed() []byte { return t.derive("EK STORAGE", 256) }

// canonicalName returns the name of the object whose public area pub was
// decoded from raw: nameAlg || H_nameAlg(raw). raw must be the canonical
// encoding of pub (a TPM refuses trailing bytes and reserved attribute
// bits), so that the name is the one the TPM computes.
func canonicalName(pub *tpm2.TPMTPublic, raw []byte) ([]byte, error) {
	if !bytes.Equal(tpm2.Marshal(pub), raw) {
		return nil, errors.New("public area is not canonical")
	}
	return objectName(pub.NameAlg, raw)
}

// objectName is nameAlg || H_nameAlg(public), public a marshaled
// TPMT_PUBLIC.
func objectName(nameAlg tpm2.TPMIAlgHash, public []byte) ([]byte, error) {
	h, err := nameAlg.Hash()
	if err != nil || !h.Available() {
		return nil, fmt.Errorf("name algorithm 0x%04x not supported", uint16(nameAlg))
	}
	d := h.New()
	d.Write(public)
	return d.Sum([]byte{byte(nameAlg >> 8), byte(nameAlg)}), nil
}

// loadedKey is a key blob opened for one operation.
type loadedKey struct {
	pub  *tpm2.TPMTPublic
	name []byte
	priv *ecdsa.PrivateKey
}

// load is TPM2_Load under the storage root key: the private area must open
// with the storage seed for the public area's name, and hold the private
// key of the public area's point. what names the key in errors, as
// device/tpm does. The caller holds t.mu.
func (t *TPM) load(k *tpm.KeyBlob, what string) (*loadedKey, error) {
	if k == nil || len(k.Public) == 0 || len(k.Private) == 0 {
		return nil, fmt.Errorf("load %s: empty key blob", what)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
	if err != nil {
		return nil, fmt.Errorf("load %s: public area: %w", what, err)
	}
	// The name is computed over the bytes as stored. The private area's
	// integrity HMAC covers the name createKey computed over the canonical
	// encoding, so any other encoding of the public area fails the check
	// below: no need to encode pub again to compare.
	name, err := objectName(pub.NameAlg, k.Public)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", what, paramErr(tpm2.TPMRCHash, 2))
	}
	sensitive, err := unprotect(t.storageSeed(), name, k.Private)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", what, err)
	}
	priv, err := eccPrivate(pub, sensitive)
	clear(sensitive)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", what, err)
	}
	return &loadedKey{pub: pub, name: name, priv: priv}, nil
}

// eccPrivate checks that a sensitive area holds the private key of an ECC
// P-256 public area and returns it (TPM_RC_BINDING when it does not).
func eccPrivate(pub *tpm2.TPMTPublic, sensitive []byte) (*ecdsa.PrivateKey, error) {
	binding := paramErr(tpm2.TPMRCBinding, 1)
	s, err := tpm2.Unmarshal[tpm2.TPMTSensitive](sensitive)
	if err != nil || s.SensitiveType != tpm2.TPMAlgECC || pub.Type != tpm2.TPMAlgECC {
		return nil, binding
	}
	d, err := s.Sensitive.ECC()
	if err != nil {
		return nil, binding
	}
	priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d.Buffer)
	if err != nil {
		return nil, binding
	}
	want, err := tpm2.Pub(*pub)
	if err != nil || !priv.PublicKey.Equal(want) {
		return nil, binding
	}
	return priv, nil
}

// PublicKey returns the public key of a blob (no TPM access).
func (t *TPM) PublicKey(key *tpm.KeyBlob) (crypto.PublicKey, error) {
	if key == nil {
		return nil, fmt.Errorf("softtpm: public key: %w", errNilBlob)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](key.Public)
	if err != nil {
		return nil, fmt.Errorf("softtpm: public key: %w", err)
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("softtpm: public key: %w", err)
	}
	return k, nil
}

// Signer returns a crypto.Signer for an ECC signing key blob (the
// transport key), usable as tls.Certificate.PrivateKey and with
// x509.CreateCertificateRequest. Each Sign is TPM2_Sign with a null
// validation ticket, so a restricted key (the AK) refuses to sign with
// TPM_RC_TICKET, as a TPM does. The blob is loaded on the first Sign and the
// opened key kept for the next ones.
func (t *TPM) Signer(key *tpm.KeyBlob) (crypto.Signer, error) {
	if key == nil {
		return nil, fmt.Errorf("softtpm: signer: %w", errNilBlob)
	}
	pub, err := t.PublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("softtpm: signer: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("softtpm: signer: key is %T, want ECDSA", pub)
	}
	return &signer{t: t, key: tpm.KeyBlob{Public: bytes.Clone(key.Public), Private: bytes.Clone(key.Private)}, pub: ec}, nil
}

type signer struct {
	t   *TPM
	key tpm.KeyBlob
	pub *ecdsa.PublicKey

	mu     sync.Mutex
	loaded *loadedKey
}

var _ crypto.Signer = (*signer)(nil)

func (s *signer) Public() crypto.PublicKey { return s.pub }

// Sign signs a SHA-256 digest and returns an ASN.1 DER ECDSA signature, as
// crypto/ecdsa does. rand is ignored.
func (s *signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != sha256.Size {
		return nil, errors.New("softtpm: sign: only SHA-256 digests are supported")
	}
	var der []byte
	err := s.t.do("sign", func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.loaded == nil {
			k, err := s.t.load(&s.key, "signing key")
			if err != nil {
				return err
			}
			s.loaded = k
		}
		if a := s.loaded.pub.ObjectAttributes; a.Restricted {
			return paramErr(tpm2.TPMRCTicket, 3)
		} else if !a.SignEncrypt {
			return tpm2.TPMRC(uint32(tpm2.TPMRCKey) | 1<<8) // handle 1
		}
		var err error
		der, err = ecdsa.SignASN1(rand.Reader, s.loaded.priv, digest)
		return err
	})
	return der, err
}

// sign signs digest with k and returns the TPMT_SIGNATURE (ECDSA-SHA256,
// r and s padded to 32 bytes as a TPM returns them).
func sign(k *loadedKey, digest []byte) (tpm2.TPMTSignature, error) {
	der, err := ecdsa.SignASN1(rand.Reader, k.priv, digest)
	if err != nil {
		return tpm2.TPMTSignature{}, err
	}
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		return tpm2.TPMTSignature{}, err
	}
	return tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: rs.R.FillBytes(make([]byte, 32))},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: rs.S.FillBytes(make([]byte, 32))},
		}),
	}, nil
}

// qualifiedName is the qualified name of a child of the storage root key:
// nameAlg || SHA-256(QN(SRK) || name). The caller holds t.mu.
func (t *TPM) qualifiedName(name []byte) []byte {
	if t.srk == nil {
		t.srk = t.srkQualifiedName()
	}
	h := sha256.New()
	h.Write(t.srk)
	h.Write(name)
	return h.Sum([]byte{byte(tpm2.TPMAlgSHA256 >> 8), byte(tpm2.TPMAlgSHA256)})
}

// srkQualifiedName derives the storage root key (the TCG ECC SRK template,
// a primary of the owner hierarchy, as device/tpm creates it) and returns
// its qualified name: nameAlg || SHA-256(TPM_RH_OWNER || name).
func (t *TPM) srkQualifiedName() []byte {
	priv, err := deriveP256(t.seed[:], "SRK", tpm2.ECCSRKTemplate)
	if err != nil {
		panic("softtpm: " + err.Error()) // odds of 2^-2048
	}
	pub := eccPublic(tpm2.ECCSRKTemplate, priv.PublicKey().Bytes())
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		panic("softtpm: SRK name: " + err.Error()) // SHA-256 is always available
	}
	h := sha256.New()
	h.Write(tpm2.PrimaryHandleName(tpm2.TPMRHOwner))
	h.Write(name.Buffer)
	return h.Sum([]byte{byte(tpm2.TPMAlgSHA256 >> 8), byte(tpm2.TPMAlgSHA256)})
}
