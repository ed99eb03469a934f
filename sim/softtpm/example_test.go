package softtpm_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log"

	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// A simulated device's TPM, made by a simulated manufacturer whose CA the
// fleet trusts, going through the TPM side of enrollment with the fleet's
// own verification code.
func Example() {
	ca, err := softtpm.NewCA() // or softtpm.OpenCA(dir), dir being the fleet's ek_ca_dir
	if err != nil {
		log.Fatal(err)
	}
	seed := sha256.Sum256([]byte("device 0001")) // the same seed: the same device after a restart
	tp, err := softtpm.New(softtpm.WithSeed(seed[:]), softtpm.WithCA(ca))
	if err != nil {
		log.Fatal(err)
	}
	defer tp.Close()

	ek, _ := tp.EK()
	ak, _ := tp.CreateAK()

	// The fleet: EK chain, AK attributes, a credential for the AK.
	trust := &verifier.EKTrust{Roots: ca.Roots(), Intermediates: ca.Intermediates()}
	vek, err := trust.VerifyEK(ek.Public, ek.Cert, nil)
	if err != nil {
		log.Fatal(err)
	}
	vak, err := verifier.VerifyAK(ak.Public)
	if err != nil {
		log.Fatal(err)
	}
	secret := []byte("enrollment challenge")
	blob, enc, err := verifier.MakeCredential(rand.Reader, vek, vak, secret)
	if err != nil {
		log.Fatal(err)
	}

	// The device.
	got, err := tp.ActivateCredential(ak, blob, enc)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("EK certificate chains to the manufacturer:", vek.ChainVerified)
	fmt.Println("credential activated:", bytes.Equal(got, secret))
	// Output:
	// EK certificate chains to the manufacturer: true
	// credential activated: true
}
