package conformance_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/softtpm/conformance"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// TestSwtpm runs the suite against device/tpm on real swtpm processes
// (RSA-2048 EK, certificates from a private swtpm-localca). Without swtpm
// it is skipped, and fails under CI=true.
func TestSwtpm(t *testing.T) {
	ca := swtpmtest.NewCA(t)
	conformance.Run(t, conformance.Backend{
		New: func(t *testing.T) *conformance.Device {
			inst := swtpmtest.New(t, ca)
			tp, err := tpm.Open(inst.URI())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tp.Close() })
			return &conformance.Device{TPM: tp, Reboot: func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				return inst.Reboot(ctx)
			}}
		},
		Trust: func(t *testing.T) (*x509.CertPool, *x509.CertPool) { return swtpmTrust(t, ca) },
	})
}

func swtpmTrust(t *testing.T, ca *swtpm.CA) (*x509.CertPool, *x509.CertPool) {
	t.Helper()
	roots, err := ca.Roots()
	if err != nil {
		t.Fatal(err)
	}
	inters, err := ca.Intermediates()
	if err != nil {
		t.Fatal(err)
	}
	return roots, inters
}

// TestSoftTPM runs the suite against the software TPM with its default
// ECC P-256 EK.
func TestSoftTPM(t *testing.T) {
	runSoft(t, nil)
}

// TestSoftTPMRSA runs the suite against the software TPM with RSA-2048
// EKs, the kind swtpm has.
func TestSoftTPMRSA(t *testing.T) {
	runSoft(t, func(t *testing.T) []softtpm.Option {
		return []softtpm.Option{softtpm.WithRSAEK(rsaKey(t))}
	})
}

// TestSoftTPMFromDirectory runs the suite against software TPMs whose
// manufacturer is a CA kept in a directory, which the fleet loads as its EK
// CA directory (verifier.LoadCADir), as sigil serve does from ek_ca_dir.
func TestSoftTPMFromDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ek-ca")
	ca, err := softtpm.OpenCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	conformance.Run(t, conformance.Backend{
		New: func(t *testing.T) *conformance.Device { return newSoft(t, ca) },
		Trust: func(t *testing.T) (*x509.CertPool, *x509.CertPool) {
			roots, inters, err := verifier.LoadCADir(dir)
			if err != nil {
				t.Fatal(err)
			}
			return roots, inters
		},
	})
}

func runSoft(t *testing.T, opts func(*testing.T) []softtpm.Option) {
	ca, err := softtpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	conformance.Run(t, conformance.Backend{
		New: func(t *testing.T) *conformance.Device {
			var o []softtpm.Option
			if opts != nil {
				o = opts(t)
			}
			return newSoft(t, ca, o...)
		},
		Trust: func(*testing.T) (*x509.CertPool, *x509.CertPool) { return ca.Roots(), ca.Intermediates() },
	})
}

func newSoft(t *testing.T, ca *softtpm.CA, opts ...softtpm.Option) *conformance.Device {
	tp, err := softtpm.New(append([]softtpm.Option{softtpm.WithCA(ca)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return &conformance.Device{TPM: tp, Reboot: tp.Reboot}
}

var _ conformance.TPM = (*softtpm.TPM)(nil)

func rsaKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
