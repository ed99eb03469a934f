package verifier

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// MakeCredential encrypts secret to the EK so that only the TPM holding the
// EK, and only for an object named ak.Name, can recover it with
// TPM2_ActivateCredential. It works for RSA and ECC EKs. secret must be 1 to
// 32 bytes (a TPM2B_DIGEST of the EK's name algorithm). It returns the
// TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents, as
// wire.EnrollChallenge carries them.
func MakeCredential(rand io.Reader, ek *EK, ak *AK, secret []byte) (credBlob, encSecret []byte, err error) {
	if ek == nil || ak == nil || len(ak.Name) == 0 {
		return nil, nil, errors.New("verifier: make credential: EK and AK are required")
	}
	if len(secret) == 0 || len(secret) > sha256.Size {
		return nil, nil, fmt.Errorf("verifier: make credential: secret of %d bytes, want 1 to %d", len(secret), sha256.Size)
	}
	key, err := tpm2.ImportEncapsulationKey(&ek.Public)
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: make credential: %w", err)
	}
	credBlob, encSecret, err = tpm2.CreateCredential(rand, key, ak.Name, secret)
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: make credential: %w", err)
	}
	return credBlob, encSecret, nil
}

// ActivationProof is what the device answers a credential activation
// challenge with: HMAC-SHA256 keyed with the activated secret over
// session || nonce. The device computes it itself; it is here for tests and
// tools.
func ActivationProof(secret, session, nonce []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(session)
	m.Write(nonce)
	return m.Sum(nil)
}

// CheckActivation checks the answer to a credential activation challenge:
// proof must equal ActivationProof(secret, session, nonce), compared in
// constant time. A wrong proof is refused with wire.ReasonActivationFailed.
func CheckActivation(secret, session, nonce, proof []byte) error {
	if len(secret) == 0 {
		return errors.New("verifier: check activation: no secret")
	}
	if !hmac.Equal(ActivationProof(secret, session, nonce), proof) {
		return refuse(wire.ReasonActivationFailed, "credential activation proof is wrong",
			"activation proof does not match the issued secret")
	}
	return nil
}
