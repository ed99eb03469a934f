package crl

import (
	"bytes"
	"encoding/pem"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestRotationWakesWaitingSyncs: with the fleet CA as its signer, a
// request waiting for a newer CRL (a broker's sync, GET
// /crl?after=N&set=generations) is answered when a CA rotation step is
// made, without a revocation, with a set that lists the new generation's
// root and a CRL of it (ca.CA.OnGenerations).
func TestRotationWakesWaitingSyncs(t *testing.T) {
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(t.TempDir(), "ca"), TrustDomain: "crl.test"})
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeFleet(t)
	p := New(Config{Revocations: f, Signer: fleetCA, Hold: time.Hour})
	cur, err := p.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := blocks(cur.Set); n["CERTIFICATE"] != 1 || n["X509 CRL"] != 1 {
		t.Fatalf("set before the rotation: %v; want one root and its CRL", n)
	}
	res := waitFor(t.Context(), p, "a", cur.Number)
	g, err := fleetCA.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-res:
	case <-time.After(wait.Timeout):
		t.Fatalf("no answer in %v after the rotation step (the hold is an hour)", wait.Timeout)
	}
	if r.err != nil || r.l == nil {
		t.Fatalf("Wait = %v, %v", r.l, r.err)
	}
	// Two roots and the new one's cross certificate, a CRL of each.
	if n := blocks(r.l.Set); n["CERTIFICATE"] != 3 || n["X509 CRL"] != 2 {
		t.Fatalf("set after generation %d was prepared: %v; want 3 certificates and 2 CRLs", g.N, n)
	}
	if !bytes.Contains(r.l.Set, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: r.l.DER})) {
		t.Fatal("the set does not hold the active generation's CRL (GET /crl's)")
	}
}

// blocks counts the PEM blocks of b by type.
func blocks(b []byte) map[string]int {
	n := map[string]int{}
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		n[blk.Type]++
	}
	return n
}
