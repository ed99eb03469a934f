package api

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
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

// crlWaitFixture is an API with real operators whose CRL publisher holds
// requests for an hour, bounded as cfg says.
type crlWaitFixture struct {
	h    http.Handler
	pub  *crl.Publisher
	auth *auth.Service
	cur  *big.Int
}

func newCRLWaitFixture(t *testing.T, cfg crl.Config) *crlWaitFixture {
	t.Helper()
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	a, err := auth.Open(auth.Config{Path: filepath.Join(dir, "operators.db"), Params: cheapParams, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if _, err := a.CreateUser(t.Context(), "root", rootPW, auth.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "test.local"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Revocations, cfg.Signer, cfg.Hold = inv, fleetCA, time.Hour
	pub := crl.New(cfg)
	cur, err := pub.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{Inventory: inv, Approver: approver{inv}, Auth: a, CA: fleetCA, CRL: pub, RateLimit: -1})
	return &crlWaitFixture{h: h, pub: pub, auth: a, cur: cur.Number}
}

// token returns a new API token of root scoped to role.
func (f *crlWaitFixture) token(t *testing.T, role auth.Role) string {
	t.Helper()
	secret, _, err := f.auth.CreateToken(t.Context(), "root", "crl "+string(role), role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// wait sends GET /crl?after=<current> from addr (with tok when set) and
// returns its status, or 0 when it is still waiting once the publisher
// counts it; the request ends with the test.
func (f *crlWaitFixture) wait(t *testing.T, addr, tok string) int {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	req := httptest.NewRequestWithContext(ctx, "GET", "/crl?after="+f.cur.String(), nil)
	req.RemoteAddr = addr
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	before := f.pub.Waiting()
	done := make(chan int, 1)
	go func() {
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, req)
		done <- rec.Code
	}()
	var code int
	wait.For(t, "the request to wait or be answered", func() bool {
		select {
		case code = <-done:
			return true
		default:
			return f.pub.Waiting() > before
		}
	})
	t.Cleanup(func() {
		cancel()
		if code == 0 {
			<-done
		}
	})
	return code
}

// TestCRLWaitBoundedPerSlash64: the waiting requests are bounded per IPv6
// /64 (one host usually holds a whole /64), per IPv4 address.
func TestCRLWaitBoundedPerSlash64(t *testing.T) {
	f := newCRLWaitFixture(t, crl.Config{MaxPerSource: 2, MaxWaiting: 100})
	for _, addr := range []string{"[2001:db8:1:2::a]:4000", "[2001:db8:1:2::b]:4001"} {
		if code := f.wait(t, addr, ""); code != 0 {
			t.Fatalf("a request from %s: %d, want it waiting", addr, code)
		}
	}
	for i := range 20 {
		addr := fmt.Sprintf("[2001:db8:1:2:%x::1]:%d", i+1, 5000+i)
		if code := f.wait(t, addr, ""); code != http.StatusTooManyRequests {
			t.Fatalf("a request from %s, in a /64 with 2 waiting: %d, want 429", addr, code)
		}
	}
	for _, addr := range []string{"[2001:db8:1:3::a]:4000", "192.0.2.1:4000", "192.0.2.2:4000", "[::ffff:192.0.2.1]:4001"} {
		if code := f.wait(t, addr, ""); code != 0 {
			t.Fatalf("a request from %s: %d, want it waiting", addr, code)
		}
	}
	if code := f.wait(t, "192.0.2.1:4002", ""); code != http.StatusTooManyRequests {
		t.Fatalf("a third request from 192.0.2.1: %d, want 429", code)
	}
	if n := f.pub.Waiting(); n != 6 {
		t.Fatalf("%d waiting, want 6", n)
	}
}

// TestCRLWaitSlotsForBrokerSyncs: with every anonymous slot taken, a
// broker sync presenting its token (scope broker-sync) still waits; a
// credential without auth.PermBrokersSync, or an invalid one, is refused
// rather than counted as anonymous.
func TestCRLWaitSlotsForBrokerSyncs(t *testing.T) {
	f := newCRLWaitFixture(t, crl.Config{MaxPerSource: 1, MaxWaiting: 2, Reserved: 1})
	for _, addr := range []string{"192.0.2.1:4000", "192.0.2.2:4000"} {
		if code := f.wait(t, addr, ""); code != 0 {
			t.Fatalf("a request from %s: %d, want it waiting", addr, code)
		}
	}
	if code := f.wait(t, "192.0.2.3:4000", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("an anonymous request past the slots: %d, want 503", code)
	}
	for tok, want := range map[string]int{f.token(t, auth.RoleViewer): http.StatusForbidden, "sga_not-a-token": http.StatusUnauthorized} {
		if code := f.wait(t, "192.0.2.9:4000", tok); code != want {
			t.Fatalf("a request with a token lacking %s: %d, want %d", auth.PermBrokersSync, code, want)
		}
	}
	// The sync shares its address with an anonymous waiter.
	if code := f.wait(t, "192.0.2.1:4001", f.token(t, auth.RoleBrokerSync)); code != 0 {
		t.Fatalf("a broker sync's request with the anonymous slots full: %d, want it waiting", code)
	}
	if n := f.pub.Waiting(); n != 3 {
		t.Fatalf("%d waiting, want 3", n)
	}
}
