package softtpm_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

func newCA(t testing.TB) *softtpm.CA {
	t.Helper()
	ca, err := softtpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newTPM(t testing.TB, opts ...softtpm.Option) *softtpm.TPM {
	t.Helper()
	tp, err := softtpm.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// credential makes an AK in tp and the enrollment credential the fleet
// makes for tp's EK and that AK (verifier.MakeCredential), protecting
// secret; it returns the AK and the credential's blob and encrypted seed.
func credential(t testing.TB, tp *softtpm.TPM, secret []byte) (ak *tpm.KeyBlob, blob, enc []byte) {
	t.Helper()
	ak, err := tp.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	ek, err := tp.EK()
	if err != nil {
		t.Fatal(err)
	}
	vek, err := (*verifier.EKTrust)(nil).VerifyEK(ek.Public, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	vak, err := verifier.VerifyAK(ak.Public)
	if err != nil {
		t.Fatal(err)
	}
	blob, enc, err = verifier.MakeCredential(rand.Reader, vek, vak, secret)
	if err != nil {
		t.Fatal(err)
	}
	return ak, blob, enc
}

var sel16 = wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{16}}

// verifiedQuote quotes PCR 16 with ak and has the fleet verify it.
func verifiedQuote(t *testing.T, tp *softtpm.TPM, ak *tpm.KeyBlob) *verifier.VerifiedQuote {
	t.Helper()
	v, err := verifier.VerifyAK(ak.Public)
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("0123456789abcdef0123456789abcdef")
	q, err := tp.Quote(ak, nonce, sel16)
	if err != nil {
		t.Fatal(err)
	}
	vq, err := verifier.VerifyQuote(v, nonce, sel16, q)
	if err != nil {
		t.Fatal(err)
	}
	return vq
}

// TestSeed checks that a TPM made again from a seed is the same device:
// the same EK and EK certificate, and the blobs and imported secrets of the
// first one work on it; a TPM of another seed refuses them.
func TestSeed(t *testing.T) {
	ca := newCA(t)
	seed := bytes.Repeat([]byte{0x42}, softtpm.SeedSize)
	first := newTPM(t, softtpm.WithSeed(seed), softtpm.WithCA(ca))
	ak, err := first.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	ek1, err := first.EK()
	if err != nil {
		t.Fatal(err)
	}
	b, err := secrets.Wrap(rand.Reader, ek1.Public, []byte("kept"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := first.ImportSecret(b.Public, b.Duplicate, b.Seed, nil)
	if err != nil {
		t.Fatal(err)
	}
	first.Close()

	again := newTPM(t, softtpm.WithSeed(seed), softtpm.WithCA(ca))
	ek2, err := again.EK()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ek1.Public, ek2.Public) || !bytes.Equal(ek1.Cert, ek2.Cert) {
		t.Fatal("the same seed and CA give another EK or EK certificate")
	}
	verifiedQuote(t, again, ak)
	if got, err := again.Unseal(sealed); err != nil || string(got) != "kept" {
		t.Fatalf("unseal on the TPM made again: %q %v", got, err)
	}

	other := newTPM(t, softtpm.WithSeed(bytes.Repeat([]byte{0x43}, softtpm.SeedSize)), softtpm.WithCA(ca))
	if _, err := other.Quote(ak, nil, sel16); !errors.Is(err, tpm2.TPMRCIntegrity) {
		t.Fatalf("another seed loads the blob: %v", err)
	}
	if _, err := other.Unseal(sealed); !errors.Is(err, tpm2.TPMRCIntegrity) {
		t.Fatalf("another seed unseals: %v", err)
	}
	if _, err := softtpm.New(softtpm.WithSeed(seed[:16])); err == nil {
		t.Fatal("short seed accepted")
	}
	// Without a seed, every TPM is another device.
	a, b2 := newTPM(t), newTPM(t)
	ea, _ := a.EK()
	eb, _ := b2.EK()
	if bytes.Equal(ea.Public, eb.Public) {
		t.Fatal("two TPMs without a seed share an EK")
	}
	if ea.Cert != nil {
		t.Fatal("EK certificate without a CA")
	}
}

// TestState restarts a TPM from its seed and saved state: counters are
// kept, and the fleet sees the reset counter move on and the clock go on.
func TestState(t *testing.T) {
	seed := bytes.Repeat([]byte{7}, softtpm.SeedSize)
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	first := newTPM(t, softtpm.WithSeed(seed), softtpm.WithClock(clock))
	ak, err := first.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.AdvanceSecurityVersion(7); err != nil {
		t.Fatal(err)
	}
	now = now.Add(1500 * time.Millisecond)
	before := verifiedQuote(t, first, ak)
	if before.Clock.Clock != 1500 {
		t.Fatalf("clock %d ms, want 1500", before.Clock.Clock)
	}
	if err := first.Reboot(); err != nil {
		t.Fatal(err)
	}
	st := first.State()
	first.Close()
	if st.ResetCount != 1 || st.Counters[tpm.SecurityVersionIndex] != 7 {
		t.Fatalf("state %+v", st)
	}

	now = now.Add(time.Hour) // the simulation was down for an hour
	again := newTPM(t, softtpm.WithSeed(seed), softtpm.WithClock(clock), softtpm.WithState(st))
	if v, err := again.SecurityVersion(); err != nil || v != 7 {
		t.Fatalf("security version after restart: %d %v", v, err)
	}
	after := verifiedQuote(t, again, ak)
	if after.Clock.ResetCount-before.Clock.ResetCount != 2 {
		t.Fatalf("reset count %d -> %d, want two more (a reboot, then the restart)", before.Clock.ResetCount, after.Clock.ResetCount)
	}
	if after.Clock.Clock != before.Clock.Clock {
		t.Fatalf("clock %d -> %d: it runs only while the TPM is powered", before.Clock.Clock, after.Clock.Clock)
	}
	if _, err := softtpm.New(softtpm.WithState(&softtpm.State{Counters: map[uint32]uint64{0x81000001: 1}})); err == nil {
		t.Fatal("state with a counter at a persistent object handle accepted")
	}
}

// TestOpenCA keeps a CA in a directory: opened again, it is the same CA,
// and the directory is an EK CA directory the fleet loads.
func TestOpenCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vendor")
	ca, err := softtpm.OpenCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := softtpm.OpenCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca.RootCertPEM(), again.RootCertPEM()) || !bytes.Equal(ca.IntermediateCertPEM(), again.IntermediateCertPEM()) {
		t.Fatal("OpenCA made another CA over an existing one")
	}
	tp := newTPM(t, softtpm.WithCA(again))
	ek, err := tp.EK()
	if err != nil {
		t.Fatal(err)
	}
	roots, inters, err := verifier.LoadCADir(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := (&verifier.EKTrust{Roots: roots, Intermediates: inters}).VerifyEK(ek.Public, ek.Cert, nil)
	if err != nil || !v.ChainVerified {
		t.Fatalf("fleet does not trust the EK from the CA directory: %v %v", err, v.ChainErr)
	}
	fi, err := os.Stat(filepath.Join(dir, "private", "intermediate.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("issuing key: %v %v", fi, err)
	}

	// A directory with certificates but no key is not overwritten.
	partial := t.TempDir()
	if err := os.WriteFile(filepath.Join(partial, softtpm.RootCertFile), ca.RootCertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := softtpm.OpenCA(partial); err == nil {
		t.Fatal("partial CA directory accepted")
	}
	if b, _ := os.ReadFile(filepath.Join(partial, softtpm.RootCertFile)); !bytes.Equal(b, ca.RootCertPEM()) {
		t.Fatal("partial CA directory overwritten")
	}
}

// TestEKCertificate checks the TCG traits of the EK certificates the CA
// issues, for both EK types.
func TestEKCertificate(t *testing.T) {
	ca := newCA(t)
	rsaEK, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		opts  []softtpm.Option
		usage x509.KeyUsage
		index uint32
	}{
		{"ECC", nil, x509.KeyUsageKeyAgreement, softtpm.EKCertIndexP256},
		{"RSA", []softtpm.Option{softtpm.WithRSAEK(rsaEK)}, x509.KeyUsageKeyEncipherment, softtpm.EKCertIndexRSA},
	} {
		t.Run(c.name, func(t *testing.T) {
			tp := newTPM(t, append(c.opts, softtpm.WithCA(ca))...)
			ek, err := tp.EK()
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(ek.Cert)
			if err != nil {
				t.Fatal(err)
			}
			if len(cert.Subject.Names) != 0 {
				t.Errorf("subject %v, want empty", cert.Subject)
			}
			if cert.KeyUsage != c.usage || cert.IsCA {
				t.Errorf("key usage %v, CA %v", cert.KeyUsage, cert.IsCA)
			}
			if !cert.NotAfter.Equal(time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)) {
				t.Errorf("not after %v", cert.NotAfter)
			}
			var san []byte
			for _, e := range cert.Extensions {
				if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
					if !e.Critical {
						t.Error("SAN not critical")
					}
					san = e.Value
				}
			}
			var names []asn1.RawValue
			if _, err := asn1.Unmarshal(san, &names); err != nil || len(names) != 1 || names[0].Tag != 4 {
				t.Fatalf("SAN %x is not one directoryName: %v", san, err)
			}
			var rdns pkix.RDNSequence
			if _, err := asn1.Unmarshal(names[0].Bytes, &rdns); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, rdn := range rdns {
				for _, atv := range rdn {
					got = append(got, fmt.Sprintf("%v=%v", atv.Type, atv.Value))
				}
			}
			slices.Sort(got) // a DER SET is in the order of its encodings
			want := []string{"2.23.133.2.1=id:5349474C", "2.23.133.2.2=sigil-softtpm", "2.23.133.2.3=id:00010000"}
			if !slices.Equal(got, want) {
				t.Errorf("directoryName %v, want %v", got, want)
			}
			// The TPM keeps the certificate at the TCG index: not a counter.
			if _, err := tp.Counter(c.index); !errors.Is(err, tpm.ErrNotCounter) {
				t.Errorf("EK certificate index 0x%08x: %v", c.index, err)
			}
		})
	}
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := softtpm.New(softtpm.WithRSAEK(weak)); err == nil {
		t.Fatal("RSA-1024 EK accepted")
	}
}

// TestKeyBlobs checks a key blob's private area: the size of a TPM's
// (integrity, IV, encrypted TPM2B_SENSITIVE of a P-256 key), no private
// key in the clear, and keys drawn from the random source (WithRand), so
// that a seeded simulation with a seeded source is reproducible.
func TestKeyBlobs(t *testing.T) {
	seed := bytes.Repeat([]byte{1}, softtpm.SeedSize)
	mk := func() *tpm.KeyBlob {
		tp := newTPM(t, softtpm.WithSeed(seed), softtpm.WithRand(mrand.NewChaCha8([32]byte{9})))
		ak, err := tp.CreateAK()
		if err != nil {
			t.Fatal(err)
		}
		return ak
	}
	ak := mk()
	// TPM2B_DIGEST(32) + TPM2B_IV(16) + TPM2B(TPMT_SENSITIVE: type,
	// authValue 0, seedValue 0, TPM2B_ECC_PARAMETER(32)).
	if want := 2 + 32 + 2 + 16 + 2 + (2 + 2 + 2 + 2 + 32); len(ak.Private) != want {
		t.Fatalf("private area of %d bytes, want %d", len(ak.Private), want)
	}
	if again := mk(); !bytes.Equal(again.Public, ak.Public) || !bytes.Equal(again.Private, ak.Private) {
		t.Fatal("the same seed and random source made another key")
	}
	// The scalar is what ChaCha8 gave first; it must not be in the blob.
	d := make([]byte, 32)
	mrand.NewChaCha8([32]byte{9}).Read(d)
	if bytes.Contains(ak.Private, d) {
		t.Fatal("private key in the clear in the blob")
	}
	// A source that never gives a valid scalar fails instead of looping.
	if _, err := newTPM(t, softtpm.WithSeed(seed), softtpm.WithRand(zeroReader{})).CreateAK(); err == nil {
		t.Fatal("key made from zeros")
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestExtendMatchesSpec checks ExtendPCR's arithmetic and that Reboot
// resets the PCR.
func TestExtendMatchesSpec(t *testing.T) {
	tp := newTPM(t)
	d := sha256.Sum256([]byte("measurement"))
	if err := tp.ExtendPCR(16, d[:]); err != nil {
		t.Fatal(err)
	}
	v, err := tp.ReadPCRs(sel16)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(v[0], want[:]) {
		t.Fatalf("PCR 16 = %x, want %x", v[0], want)
	}
	if err := tp.Reboot(); err != nil {
		t.Fatal(err)
	}
	if v, _ := tp.ReadPCRs(sel16); !bytes.Equal(v[0], make([]byte, 32)) {
		t.Fatalf("PCR 16 after reboot = %x", v[0])
	}
}
