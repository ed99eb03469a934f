//go:build cgo

package softtpm_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/simulator"

	"github.com/sigil-iot/sigil/sim/softtpm"
)

// TestReferenceTPMEncrypts has the TCG reference TPM (the in-process
// simulator, cgo) encrypt to the software TPM's EK, with its own
// implementation of the TPM's cryptography instead of go-tpm's: a
// credential (TPM2_MakeCredential) the software TPM must activate, and a
// duplicate of a sealed object (TPM2_Duplicate with the EK as new parent)
// it must import. This holds the ECC EK's ECDH and KDFe, which swtpm
// cannot check (device/tpm uses swtpm's RSA EK), to the reference.
func TestReferenceTPMEncrypts(t *testing.T) {
	tr, err := simulator.OpenSimulator()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { flushRef(tr, srk.ObjectHandle) })

	rsaEK, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		opts []softtpm.Option
	}{{"ECC", nil}, {"RSA", []softtpm.Option{softtpm.WithRSAEK(rsaEK)}}} {
		t.Run(c.name, func(t *testing.T) {
			tp := newTPM(t, c.opts...)
			ek, err := tp.EK()
			if err != nil {
				t.Fatal(err)
			}
			ext, err := tpm2.LoadExternal{InPublic: tpm2.BytesAs2B[tpm2.TPMTPublic](ek.Public), Hierarchy: tpm2.TPMRHOwner}.Execute(tr)
			if err != nil {
				t.Fatal(err)
			}
			defer flushRef(tr, ext.ObjectHandle)

			// TPM2_MakeCredential for the software TPM's AK.
			ak, err := tp.CreateAK()
			if err != nil {
				t.Fatal(err)
			}
			akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ak.Public)
			if err != nil {
				t.Fatal(err)
			}
			akName, err := tpm2.ObjectName(akPub)
			if err != nil {
				t.Fatal(err)
			}
			secret := []byte("reference credential")
			mc, err := tpm2.MakeCredential{Handle: ext.ObjectHandle, Credential: tpm2.TPM2BDigest{Buffer: secret}, ObjectName: *akName}.Execute(tr)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tp.ActivateCredential(ak, mc.CredentialBlob.Buffer, mc.Secret.Buffer)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("activate the reference TPM's credential: %q %v", got, err)
			}

			// TPM2_Duplicate of a sealed object to the software TPM's EK.
			calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
			if err != nil {
				t.Fatal(err)
			}
			if err := (tpm2.PolicyCommandCode{Code: tpm2.TPMCCDuplicate}).Update(calc); err != nil {
				t.Fatal(err)
			}
			tmpl := tpm2.TPMTPublic{
				Type:             tpm2.TPMAlgKeyedHash,
				NameAlg:          tpm2.TPMAlgSHA256,
				ObjectAttributes: tpm2.TPMAObject{NoDA: true},
				AuthPolicy:       tpm2.TPM2BDigest{Buffer: calc.Hash().Digest},
				Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
					Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
				}),
			}
			cr, err := tpm2.Create{
				ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
				InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
					Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: []byte("reference secret")}),
				}},
				InPublic: tpm2.New2B(tmpl),
			}.Execute(tr)
			if err != nil {
				t.Fatal(err)
			}
			ld, err := tpm2.Load{
				ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
				InPrivate:    cr.OutPrivate, InPublic: cr.OutPublic,
			}.Execute(tr)
			if err != nil {
				t.Fatal(err)
			}
			defer flushRef(tr, ld.ObjectHandle)
			sess, closeSess, err := tpm2.PolicySession(tr, tpm2.TPMAlgSHA256, 16)
			if err != nil {
				t.Fatal(err)
			}
			defer closeSess()
			if _, err := (tpm2.PolicyCommandCode{PolicySession: sess.Handle(), Code: tpm2.TPMCCDuplicate}).Execute(tr); err != nil {
				t.Fatal(err)
			}
			dup, err := tpm2.Duplicate{
				ObjectHandle:    tpm2.AuthHandle{Handle: ld.ObjectHandle, Name: ld.Name, Auth: sess},
				NewParentHandle: tpm2.NamedHandle{Handle: ext.ObjectHandle, Name: ext.Name},
				Symmetric:       tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
			}.Execute(tr)
			if err != nil {
				t.Fatal(err)
			}
			sealed, err := tp.ImportSecret(cr.OutPublic.Bytes(), dup.Duplicate.Buffer, dup.OutSymSeed.Buffer, nil)
			if err != nil {
				t.Fatalf("import the reference TPM's duplicate: %v", err)
			}
			// Its policy allows duplication, not the unseal policy device/tpm
			// runs: the software TPM refuses as a TPM would.
			if _, err := tp.Unseal(sealed); !errors.Is(err, tpm2.TPMRCPolicyFail) {
				t.Fatalf("unseal of an object whose policy is not the device's: %v", err)
			}
			// Altered, the duplicate does not import.
			if _, err := tp.ImportSecret(cr.OutPublic.Bytes(), flipByte(dup.Duplicate.Buffer, 40), dup.OutSymSeed.Buffer, nil); !errors.Is(err, tpm2.TPMRCIntegrity) {
				t.Fatalf("altered duplicate: %v", err)
			}
		})
	}
}

func flushRef(tr transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tr)
}

func flipByte(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i%len(b)] ^= 0x40
	return b
}
