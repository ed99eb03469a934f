package governance_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/governance"
)

// TestEnrollOnlyWhatATPMCanProve: a certificate from another CA and a
// fleet certificate of a device the inventory does not hold are never
// handed to the Enroller — the decision fails with a *NotEnrollableError
// saying why and the entry stays undecided — while an unknown EK and an
// unknown client ID are.
func TestEnrollOnlyWhatATPMCanProve(t *testing.T) {
	enr := &enroller{}
	f := newFleet(t, func(c *governance.Config) { c.Enroller = enr })
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "impostor"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	attempts := []governance.Attempt{
		{Kind: governance.AttemptForeignCert, ClientID: "impostor", Cert: cert, Remote: "198.51.100.1:4000"},
		{Kind: governance.AttemptUnknownDevice, ClientID: "gone", Cert: cert, Remote: "198.51.100.2:4000"},
		{Kind: governance.AttemptUnknownEK, ClientID: "boot-1", EKFingerprint: strings.Repeat("ab", 32)},
		{Kind: governance.AttemptUnknownClient, ClientID: "boot-2", Remote: "198.51.100.3:4000"},
	}
	for _, a := range attempts {
		if err := f.svc.Observe(a); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	list, _, err := f.svc.Triage(governance.TriageFilter{Undecided: true})
	if err != nil || len(list) != len(attempts) {
		t.Fatalf("triage %d entries, %v", len(list), err)
	}
	for _, sh := range list {
		wantOK := sh.Kind == governance.AttemptUnknownEK || sh.Kind == governance.AttemptUnknownClient
		if got := sh.Enrollable(); (got == nil) != wantOK {
			t.Errorf("%s: Enrollable() = %v", sh.Key, got)
		}
		_, err := f.svc.Decide(sh.Key, governance.DecisionEnroll, "otto", "")
		var ne *governance.NotEnrollableError
		switch {
		case wantOK && err != nil:
			t.Errorf("enroll %s: %v", sh.Key, err)
		case !wantOK && (!errors.As(err, &ne) || !errors.Is(err, governance.ErrNotEnrollable) || ne.Reason == ""):
			t.Errorf("enroll %s: %v, want a *NotEnrollableError", sh.Key, err)
		case !wantOK:
			if cur, _ := f.svc.Shadow(sh.Key); cur.Decision != governance.DecisionNone {
				t.Errorf("%s decided %q after a refused enroll", sh.Key, cur.Decision)
			}
		}
	}
	if len(enr.got) != 2 {
		t.Fatalf("enroller got %v, want the EK and the client ID only", enr.got)
	}
	for _, sh := range enr.got {
		if sh.Kind == governance.AttemptForeignCert || sh.Kind == governance.AttemptUnknownDevice {
			t.Fatalf("enroller got %s", sh.Key)
		}
	}
}
