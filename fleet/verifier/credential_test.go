package verifier

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestCredentialActivation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ek     []byte
		handle tpm2.TPMHandle
	}{
		{"RSA EK", fx.rsaEK, rsaEKHandle},
		{"ECC EK", fx.eccEK, eccEKHandle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ek, ak := mustEK(t, tc.ek), mustAK(t, fx.ak)
			secret := nonce(t)
			blob, enc, err := MakeCredential(rand.Reader, ek, ak, secret)
			if err != nil {
				t.Fatal(err)
			}
			got, err := fx.activate(tc.handle, fx.ak, blob, enc)
			if err != nil {
				t.Fatalf("ActivateCredential: %v", err)
			}
			if !bytes.Equal(got, secret) {
				t.Fatalf("activated %x, want %x", got, secret)
			}

			// A credential bound to another AK's name does not activate
			// with this AK.
			blob2, enc2, err := MakeCredential(rand.Reader, ek, mustAK(t, fx.ak2), secret)
			if err != nil {
				t.Fatal(err)
			}
			_, err = fx.activate(tc.handle, fx.ak, blob2, enc2)
			if !errors.Is(err, tpm2.TPMRCIntegrity) {
				t.Fatalf("activation for another AK: %v, want TPM_RC_INTEGRITY", err)
			}
		})
	}
}

func TestMakeCredentialArguments(t *testing.T) {
	ek, ak := mustEK(t, fx.rsaEK), mustAK(t, fx.ak)
	for _, secret := range [][]byte{nil, make([]byte, 33)} {
		if _, _, err := MakeCredential(rand.Reader, ek, ak, secret); err == nil {
			t.Fatalf("secret of %d bytes accepted", len(secret))
		}
	}
	if _, _, err := MakeCredential(rand.Reader, nil, ak, []byte("s")); err == nil {
		t.Fatal("nil EK accepted")
	}
}

func TestCheckActivation(t *testing.T) {
	secret, session, n := nonce(t), nonce(t)[:16], nonce(t)
	proof := ActivationProof(secret, session, n)
	if err := CheckActivation(secret, session, n, proof); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, CheckActivation(secret, session, nonce(t), proof), wire.ReasonActivationFailed)
	wantRefusal(t, CheckActivation(nonce(t), session, n, proof), wire.ReasonActivationFailed)
	wantRefusal(t, CheckActivation(secret, session, n, proof[:31]), wire.ReasonActivationFailed)
	wantRefusal(t, CheckActivation(secret, session, n, nil), wire.ReasonActivationFailed)
}
