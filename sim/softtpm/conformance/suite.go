// Package conformance is the suite a TPM behind the device agent must pass:
// every operation sigild performs through *device/tpm.TPM, checked with the
// fleet's own verification code (fleet/verifier, fleet/secrets,
// fleet/enroll, fleet/attest), including what must fail. It runs against
// device/tpm on a real swtpm and against the software TPM (sim/softtpm),
// so the software TPM is held to what swtpm does, not to what its author
// thought a TPM does.
//
// A backend supplies fresh TPMs made by one manufacturer CA and a way to
// power-cycle them (Backend); Run does the rest. The suite needs nothing
// but the TPM's method set (TPM): no tpm2-tools, no access to TPM
// commands.
package conformance

import (
	"crypto"
	"crypto/x509"
	"testing"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TPM is the method set of *device/tpm.TPM that the device daemon uses,
// which the suite exercises. *device/tpm.TPM and *softtpm.TPM implement it.
type TPM interface {
	EK() (*tpm.EK, error)
	CreateAK() (*tpm.KeyBlob, error)
	CreateTransportKey() (*tpm.KeyBlob, error)
	PublicKey(key *tpm.KeyBlob) (crypto.PublicKey, error)
	Signer(key *tpm.KeyBlob) (crypto.Signer, error)
	Certify(ak, key *tpm.KeyBlob, nonce []byte) (attest, sig []byte, err error)
	Quote(ak *tpm.KeyBlob, nonce []byte, sel wire.PCRSelection) (*wire.Quote, error)
	ReadPCRs(sel wire.PCRSelection) ([][]byte, error)
	ExtendPCR(pcr int, digest []byte) error
	ActivateCredential(ak *tpm.KeyBlob, credBlob, encSecret []byte) ([]byte, error)
	ImportSecret(public, duplicate, seed []byte, pcrs *wire.PCRSelection) (*tpm.SealedBlob, error)
	Unseal(b *tpm.SealedBlob) ([]byte, error)
	Counter(index uint32) (uint64, error)
	AdvanceCounter(index uint32, to uint64) (uint64, error)
	SecurityVersion() (uint64, error)
	AdvanceSecurityVersion(to uint64) (uint64, error)
	Shutdown() error
	Close() error
}

var _ TPM = (*tpm.TPM)(nil)

// Backend makes the TPMs of one implementation for Run.
type Backend struct {
	// New manufactures a TPM with an endorsement key of its own and an EK
	// certificate from the backend's manufacturer CA, started up (PCRs at
	// their reset values). The TPM must be released when the test ends.
	New func(t *testing.T) *Device

	// Trust returns the manufacturer CA the fleet trusts for the backend's
	// EK certificates: its roots and intermediates, as sigil serve loads
	// them from its EK CA directory. Run calls it after New.
	Trust func(t *testing.T) (roots, intermediates *x509.CertPool)
}

// Device is a TPM under test and the means to power-cycle it.
type Device struct {
	TPM

	// Reboot power-cycles the TPM in order: TPM2_Shutdown(CLEAR), then
	// TPM2_Startup(CLEAR). PCRs return to their reset values and the reset
	// counter moves on; the EK, key blobs, imported secrets and NV stay.
	Reboot func() error
}

// env is what the tests of one Run share: two devices of the backend with
// an AK and a transport key each, and the fleet's trust in their
// manufacturer.
type env struct {
	a, b           *Device
	akA, tkA, akB  *tpm.KeyBlob
	roots, interms *x509.CertPool
}

// Run runs the suite against b. Its subtests run in order and share two
// devices; each leaves the devices usable by the next (a test that extends
// PCRs reboots or reads the values it needs).
func Run(t *testing.T, b Backend) {
	e := &env{a: b.New(t), b: b.New(t)}
	e.roots, e.interms = b.Trust(t)
	var err error
	if e.akA, err = e.a.CreateAK(); err != nil {
		t.Fatal(err)
	}
	if e.tkA, err = e.a.CreateTransportKey(); err != nil {
		t.Fatal(err)
	}
	if e.akB, err = e.b.CreateAK(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		test func(*testing.T, *env)
	}{
		{"PCRResetValues", testPCRResetValues},
		{"EK", testEK},
		{"KeyTemplates", testKeyTemplates},
		{"ActivateCredential", testActivateCredential},
		{"Certify", testCertify},
		{"Quote", testQuote},
		{"PCRs", testPCRs},
		{"Signer", testSigner},
		{"ForeignKeyBlobs", testForeignKeyBlobs},
		{"Secrets", testSecrets},
		{"SecretPCRBound", testSecretPCRBound},
		{"Counters", testCounters},
		{"Reboot", testReboot},
		{"EnrollAndAttest", testEnrollAndAttest},
		{"Concurrent", testConcurrent},
		{"Closed", testClosed}, // last: it closes device B
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, e) })
	}
}
