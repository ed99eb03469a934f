//go:build cgo

package secrets_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/simulator"

	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestWrapOnReferenceTPM imports wrapped secrets into the in-process
// reference TPM with plain TPM commands (independently of device/tpm), for
// an RSA and an ECC EK, and checks what the policy allows: unsealing, and
// only while the PCRs hold the bound values; never duplication.
func TestWrapOnReferenceTPM(t *testing.T) {
	tr, err := simulator.OpenSimulator()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	for _, c := range []struct {
		name string
		tmpl tpm2.TPMTPublic
	}{{"RSA", tpm2.RSAEKTemplate}, {"ECC", tpm2.ECCEKTemplate}} {
		t.Run(c.name, func(t *testing.T) {
			ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(c.tmpl)}.Execute(tr)
			if err != nil {
				t.Fatal(err)
			}
			defer tpm2.FlushContext{FlushHandle: ek.ObjectHandle}.Execute(tr)
			ekh := tpm2.NamedHandle{Handle: ek.ObjectHandle, Name: ek.Name}

			secret := []byte("reference secret " + c.name)
			b, err := secrets.Wrap(nil, ek.OutPublic.Bytes(), secret, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			obj := importAndLoad(t, tr, ekh, b)
			got, err := unseal(tr, obj, nil)
			tpm2.FlushContext{FlushHandle: obj.Handle}.Execute(tr)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("unseal: %q %v", got, err)
			}

			// PCR-bound to PCR 16's current value.
			sel := wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{16}}
			pcrSel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0, 0, 1}}}}
			rd, err := tpm2.PCRRead{PCRSelectionIn: pcrSel}.Execute(tr)
			if err != nil {
				t.Fatal(err)
			}
			b, err = secrets.Wrap(nil, ek.OutPublic.Bytes(), secret, &sel, [][]byte{rd.PCRValues.Digests[0].Buffer})
			if err != nil {
				t.Fatal(err)
			}
			obj = importAndLoad(t, tr, ekh, b)
			defer tpm2.FlushContext{FlushHandle: obj.Handle}.Execute(tr)
			if got, err := unseal(tr, obj, &pcrSel); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("PCR-bound unseal: %q %v", got, err)
			}
			if _, err := unseal(tr, obj, nil); err == nil {
				t.Fatal("PCR-bound object unsealed without PolicyPCR")
			}

			// The policy never grants the DUP role, even with the PCRs right.
			for _, cc := range []tpm2.TPMCC{tpm2.TPMCCUnseal, tpm2.TPMCCDuplicate} {
				sess, closeSess, err := tpm2.PolicySession(tr, tpm2.TPMAlgSHA256, 16)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: pcrSel}).Execute(tr); err != nil {
					t.Fatal(err)
				}
				if _, err := (tpm2.PolicyCommandCode{PolicySession: sess.Handle(), Code: cc}).Execute(tr); err != nil {
					t.Fatal(err)
				}
				_, err = tpm2.Duplicate{
					ObjectHandle:    tpm2.AuthHandle{Handle: obj.Handle, Name: obj.Name, Auth: sess},
					NewParentHandle: tpm2.TPMRHNull,
					Symmetric:       tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
				}.Execute(tr)
				closeSess()
				if !errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.Is(err, tpm2.TPMRCPolicyCC) {
					t.Fatalf("duplication (policy command code %v): %v, want a policy refusal", cc, err)
				}
			}

			// Extend PCR 16: refused with a policy failure.
			d := sha256.Sum256([]byte(c.name))
			if _, err := (tpm2.PCRExtend{
				PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)},
				Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
			}).Execute(tr); err != nil {
				t.Fatal(err)
			}
			if _, err := unseal(tr, obj, &pcrSel); !errors.Is(err, tpm2.TPMRCPolicyFail) {
				t.Fatalf("unseal after extend: %v", err)
			}
		})
	}
}

// ekAuth authorizes the EK with PolicySecret(TPM_RH_ENDORSEMENT).
func ekAuth(t *testing.T, tr transport.TPM, ek tpm2.NamedHandle) (tpm2.AuthHandle, func()) {
	t.Helper()
	sess, closeSess, err := tpm2.PolicySession(tr, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: sess.Handle(),
		NonceTPM:      sess.NonceTPM(),
	}).Execute(tr); err != nil {
		t.Fatal(err)
	}
	return tpm2.AuthHandle{Handle: ek.Handle, Name: ek.Name, Auth: sess}, func() { closeSess() }
}

func importAndLoad(t *testing.T, tr transport.TPM, ek tpm2.NamedHandle, b *secrets.Blob) tpm2.NamedHandle {
	t.Helper()
	auth, done := ekAuth(t, tr, ek)
	imp, err := tpm2.Import{
		ParentHandle: auth,
		ObjectPublic: tpm2.BytesAs2B[tpm2.TPMTPublic](b.Public),
		Duplicate:    tpm2.TPM2BPrivate{Buffer: b.Duplicate},
		InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: b.Seed},
		Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
	}.Execute(tr)
	done()
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	auth, done = ekAuth(t, tr, ek)
	defer done()
	ld, err := tpm2.Load{ParentHandle: auth, InPrivate: imp.OutPrivate, InPublic: tpm2.BytesAs2B[tpm2.TPMTPublic](b.Public)}.Execute(tr)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return tpm2.NamedHandle{Handle: ld.ObjectHandle, Name: ld.Name}
}

func unseal(tr transport.TPM, obj tpm2.NamedHandle, pcrs *tpm2.TPMLPCRSelection) ([]byte, error) {
	sess, closeSess, err := tpm2.PolicySession(tr, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		return nil, err
	}
	defer closeSess()
	if pcrs != nil {
		if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: *pcrs}).Execute(tr); err != nil {
			return nil, err
		}
	}
	if _, err := (tpm2.PolicyCommandCode{PolicySession: sess.Handle(), Code: tpm2.TPMCCUnseal}).Execute(tr); err != nil {
		return nil, err
	}
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: obj.Handle, Name: obj.Name, Auth: sess}}.Execute(tr)
	if err != nil {
		return nil, err
	}
	return rsp.OutData.Buffer, nil
}
