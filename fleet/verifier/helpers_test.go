package verifier

import (
	"crypto"
	"crypto/ecdsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// wantRefusal fails unless err is a *wire.Error with reason r and an
// internal cause.
func wantRefusal(t *testing.T, err error, r wire.Reason) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("error = %v, want a *wire.Error with reason %v", err, r)
	}
	if we.Reason != r {
		t.Fatalf("reason = %v (%v), want %v", we.Reason, err, r)
	}
	if errors.Unwrap(err) == nil {
		t.Fatalf("refusal %v carries no internal cause", err)
	}
	t.Logf("refused as expected: %v (cause: %v)", err, errors.Unwrap(err))
}

// tpmSigner signs with a key in the simulator, as the device's transport
// key signs its CSR.
type tpmSigner struct {
	key *simKey
}

func (s tpmSigner) Public() crypto.PublicKey {
	k, err := tpm2.Pub(s.key.pub)
	if err != nil {
		panic(err)
	}
	return k.(*ecdsa.PublicKey)
}

func (s tpmSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("hash %v not supported", opts.HashFunc())
	}
	h, flush, err := fx.load(s.key)
	if err != nil {
		return nil, err
	}
	defer flush()
	rsp, err := tpm2.Sign{
		KeyHandle:  h,
		Digest:     tpm2.TPM2BDigest{Buffer: digest},
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(fx.tpm)
	if err != nil {
		return nil, err
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer),
		new(big.Int).SetBytes(sig.SignatureS.Buffer),
	})
}

// mustAK verifies a fixture attestation key.
func mustAK(t testing.TB, k *simKey) *AK {
	t.Helper()
	ak, err := VerifyAK(k.pubBytes)
	if err != nil {
		t.Fatal(err)
	}
	return ak
}

// mustTK verifies a fixture transport key.
func mustTK(t testing.TB, k *simKey) *TransportKey {
	t.Helper()
	tk, err := VerifyTransportKeyPublic(k.pubBytes)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// mustEK verifies a fixture endorsement key without certificate.
func mustEK(t testing.TB, ekPublic []byte) *EK {
	t.Helper()
	ek, err := (&EKTrust{}).VerifyEK(ekPublic, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ek
}

// marshalPublic re-encodes a public area after edit changed a copy of it.
func marshalPublic(pub tpm2.TPMTPublic, edit func(*tpm2.TPMTPublic)) []byte {
	edit(&pub)
	return tpm2.Marshal(pub)
}
