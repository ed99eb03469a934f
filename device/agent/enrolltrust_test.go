package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math"
	"math/big"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// enrollAnswer is an active enrollment result for the transport key tk,
// with a certificate from a fresh CA, carrying firmware trust ft.
func enrollAnswer(t *testing.T, tk *ecdsa.PrivateKey, ft []byte) *wire.EnrollResult {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "0123456789abcdef0123456789abcdef"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &tk.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &wire.EnrollResult{Status: wire.StatusActive, DeviceID: "0123456789abcdef0123456789abcdef", Certificate: der,
		TrustBundle: [][]byte{caDER}, FirmwareTrust: ft}
}

// TestRogueEnrollmentAnswerKeepsTheReleaseTrust: whoever answers a
// re-enrollment cannot choose the keys that sign firmware. A result whose
// release trust set is the attacker's, with sequence 2^64-1, is not taken:
// the device keeps the set it holds, and a rotation its keys signed still
// applies afterwards.
func TestRogueEnrollmentAnswerKeepsTheReleaseTrust(t *testing.T) {
	a := trustAgent(t)
	a.now = time.Now
	k := releaseKeys(t, 3)
	s1 := trustSet(t, 1, 1, k[0])
	if err := a.st.SaveReleaseTrust(s1); err != nil {
		t.Fatal(err)
	}
	tk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := &state.Identity{Status: state.StatusKeys}
	rogue := trustSet(t, math.MaxUint64, 1, k[2]) // the attacker's key
	if _, err := a.accept(id, enrollAnswer(t, tk, rogue), tk.Public()); err != nil {
		t.Fatal(err)
	}
	if held, _ := a.st.ReleaseTrust(); string(held) != string(s1) {
		t.Fatalf("a re-enrollment answer replaced the release trust set:\n held %s\n want %s", held, s1)
	}
	s2 := trustSet(t, 2, 1, k[1])
	a.applyTrust(&wire.FirmwareTrust{Trust: s2, Rotations: []wire.TrustRotation{rotation(t, s2, k[0], k[1])}})
	if got := heldSequence(t, a); got != 2 {
		t.Fatalf("a signed rotation after the rogue answer: sequence %d, want 2", got)
	}
}

// TestEnrollmentRotatesTheReleaseTrust: a re-enrollment result that
// carries the signed rotations from the set the device holds to the
// fleet's moves the device along them, as a firmware.trust message does;
// a chain with a forged step stops before it, and a chain that skips a
// sequence number is not followed.
func TestEnrollmentRotatesTheReleaseTrust(t *testing.T) {
	k := releaseKeys(t, 4)
	s1, s2, s3 := trustSet(t, 1, 1, k[0]), trustSet(t, 2, 2, k[1], k[2]), trustSet(t, 3, 1, k[3])
	r2, r3 := rotation(t, s2, k[0], k[1], k[2]), rotation(t, s3, k[1], k[2], k[3])
	forged := rotation(t, s3, k[3])
	skip := trustSet(t, 3, 1, k[3])
	tk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, c := range []struct {
		name string
		rots []wire.TrustRotation
		want []byte
	}{
		{"signed chain", []wire.TrustRotation{r2, r3}, s3},
		{"forged last step", []wire.TrustRotation{r2, forged}, s2},
		{"skipped sequence", []wire.TrustRotation{rotation(t, skip, k[0], k[3])}, s1},
		{"no rotations", nil, s1},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := trustAgent(t)
			a.now = time.Now
			if err := a.st.SaveReleaseTrust(s1); err != nil {
				t.Fatal(err)
			}
			res := enrollAnswer(t, tk, s3)
			res.FirmwareRotations = c.rots
			if _, err := a.accept(&state.Identity{Status: state.StatusKeys}, res, tk.Public()); err != nil {
				t.Fatal(err)
			}
			if held, _ := a.st.ReleaseTrust(); string(held) != string(c.want) {
				t.Fatalf("held %s\nwant %s", held, c.want)
			}
		})
	}
}
