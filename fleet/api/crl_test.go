package api

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/crl"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestCRLLongPoll: GET /crl?after=N answers at once when the fleet's CRL
// is newer than N, waits for a revocation and answers with the CRL that
// lists it, answers 304 when its hold ends with nothing newer (past the
// server's read and write timeouts), refuses a bad N, and bounds the
// requests waiting per client address.
func TestCRLLongPoll(t *testing.T) {
	dir := t.TempDir()
	inv := inventorytest.Open(t)
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "test.local"})
	if err != nil {
		t.Fatal(err)
	}
	pub := crl.New(crl.Config{Revocations: inv, Signer: fleetCA, Hold: time.Second, MinInterval: time.Millisecond, MaxPerSource: 1})
	sum := sha256.Sum256([]byte(token))
	srv := httptest.NewUnstartedServer(New(Config{Inventory: inv, Approver: approver{inv}, AdminTokenHash: sum[:], CA: fleetCA, CRL: pub}))
	// Shorter than the hold, as api.Serve's are.
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev-a", State: inventory.StateActive, CertSerial: "0b"}); err != nil {
		t.Fatal(err)
	}
	number := func(der []byte) *big.Int {
		t.Helper()
		l, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		return l.Number
	}
	der, err := c.CRL(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	n := number(der)
	if der, err := c.CRLAfter(t.Context(), new(big.Int).Sub(n, big.NewInt(1))); err != nil || der == nil || number(der).Cmp(n) != 0 {
		t.Fatalf("after an older number: %v; want the current CRL at once", err)
	}

	type answer struct {
		der []byte
		err error
	}
	held := make(chan answer, 1)
	go func() {
		der, err := c.CRLAfter(t.Context(), n)
		held <- answer{der, err}
	}()
	wait.For(t, "the request to wait", func() bool { return pub.Waiting() == 1 })
	// A second request of the same address is over its bound.
	_, err = c.CRLAfter(t.Context(), n)
	if se := (*StatusError)(nil); !errors.As(err, &se) || se.Status != http.StatusTooManyRequests {
		t.Fatalf("a second waiting request: %v, want 429", err)
	}
	resp, body := call(t, srv, "POST", "/api/v1/devices/dev-a/revoke", token, `{"reason":"keyCompromise","comment":"test"}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %d %s", resp.StatusCode, body)
	}
	a := <-held
	if a.err != nil || a.der == nil {
		t.Fatalf("the waiting request: %v", a.err)
	}
	l, err := x509.ParseRevocationList(a.der)
	if err != nil || l.Number.Cmp(n) <= 0 || len(l.RevokedCertificateEntries) != 1 || l.RevokedCertificateEntries[0].SerialNumber.Int64() != 0x0b {
		t.Fatalf("the waiting request got CRL %v (%v), want a newer one listing 0b", l, err)
	}
	if err := l.CheckSignatureFrom(fleetCA.Certificate()); err != nil {
		t.Fatal(err)
	}

	// Nothing newer: 304 at the hold's end (1s, past the server's 200ms
	// timeouts).
	if der, err := c.CRLAfter(t.Context(), l.Number); err != nil || der != nil {
		t.Fatalf("after the current number: %d bytes, %v; want 304", len(der), err)
	}
	for _, bad := range []string{"abc", "-1", "0x10", ""} {
		resp, body := call(t, srv, "GET", "/crl?after="+bad, "", "")
		wantProblem(t, resp, body, http.StatusBadRequest, "CRL number")
	}
}
