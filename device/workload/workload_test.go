package workload

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// fakeFleet answers workload requests as the fleet would: the entries it
// holds, X.509-SVIDs from a test CA, RS256 JWT-SVIDs; refused says every
// SVID is refused (a quarantined device).
type fakeFleet struct {
	t       *testing.T
	m       *Manager
	caCert  *x509.Certificate
	caKey   *ecdsa.PrivateKey
	jwtKey  *rsa.PrivateKey
	mu      sync.Mutex
	entries []wire.WorkloadEntry
	refused bool
	issued  int
	// validity of X.509-SVIDs in seconds; 0 is 3600.
	validity int64
}

func newFakeFleet(t *testing.T, m *Manager) *fakeFleet {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	jk, _ := rsa.GenerateKey(rand.Reader, 2048)
	return &fakeFleet{t: t, m: m, caCert: ca, caKey: caKey, jwtKey: jk}
}

func (f *fakeFleet) jwks() []byte {
	b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
		"n": base64.RawURLEncoding.EncodeToString(f.jwtKey.N.Bytes()), "e": "AQAB"}}})
	return b
}

// publish is the session's publish: it answers at once through Down.
func (f *fakeFleet) publish(_ context.Context, kind string, payload []byte) error {
	env, err := wire.Decode(payload)
	if err != nil || kind != wire.KindWorkload {
		f.t.Errorf("publish %s: %v", kind, err)
		return err
	}
	var req wire.WorkloadRequest
	if err := wire.DecodeBody(env, wire.TypeWorkloadRequest, &req); err != nil {
		f.t.Errorf("request: %v", err)
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a := &wire.WorkloadAnswer{Status: wire.StatusActive}
	var entry *wire.WorkloadEntry
	for i := range f.entries {
		if f.entries[i].Name == req.Name {
			entry = &f.entries[i]
		}
	}
	switch {
	case f.refused:
		a = &wire.WorkloadAnswer{Status: wire.StatusRefused, Reason: wire.ReasonQuarantined}
	case req.Op == wire.WorkloadEntries:
		a.Entries, a.Bundle, a.JWKS = f.entries, [][]byte{f.caCert.Raw}, f.jwks()
	case entry == nil:
		a = &wire.WorkloadAnswer{Status: wire.StatusRefused, Reason: wire.ReasonBadRequest}
	case req.Op == wire.WorkloadX509:
		csr, err := x509.ParseCertificateRequest(req.CSR)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(f.issued + 2)), URIs: csr.URIs, KeyUsage: x509.KeyUsageDigitalSignature,
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, f.caCert, csr.PublicKey, f.caKey)
		if err != nil {
			return err
		}
		f.issued++
		a.Chain, a.Bundle, a.Validity = [][]byte{der}, [][]byte{f.caCert.Raw}, 3600
		if f.validity != 0 {
			a.Validity = f.validity
		}
	case req.Op == wire.WorkloadJWT:
		a.JWT, a.JWKS, a.Validity = f.sign(entry.SPIFFEID, req.Audience, time.Now().Add(5*time.Minute)), f.jwks(), 300
		f.issued++
	}
	b, err := wire.Encode(wire.TypeWorkloadAnswer, env.ID, time.Now(), a)
	if err != nil {
		return err
	}
	ans, _ := wire.Decode(b)
	go f.m.Down(ans) // as the agent's session delivers it: on another goroutine
	return nil
}

func (f *fakeFleet) sign(sub string, aud []string, exp time.Time) string {
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "k1", "typ": "JWT"})
	p, _ := json.Marshal(map[string]any{"sub": sub, "aud": aud, "exp": exp.Unix(), "iat": time.Now().Unix()})
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p)
	sum := sha256.Sum256([]byte(in))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, f.jwtKey, crypto.SHA256, sum[:])
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func (f *fakeFleet) set(refused bool, entries ...wire.WorkloadEntry) {
	f.mu.Lock()
	f.entries, f.refused = entries, refused
	f.mu.Unlock()
	f.m.Attested() // ask for the entries again on the next call
}

func selfSHA256(t *testing.T) []byte {
	b, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return s[:]
}

// TestWorkloadAPI serves the API on a unix socket over a fake fleet and
// asks it with go-spiffe's client as this test process: nothing for a
// registration of another binary, SVIDs that verify against the API's
// bundles for one that matches, and no new SVID once the fleet refuses.
func TestWorkloadAPI(t *testing.T) {
	m := NewManager(nil, nil)
	f := newFakeFleet(t, m)
	end := m.Session(context.Background(), f.publish)
	defer end()
	ctx, wl, stop := serveAPI(t, m)
	defer stop()

	const id = "spiffe://td.test/device/d1/workload/agent"
	other := make([]byte, 32)
	f.set(false, wire.WorkloadEntry{Name: "agent", SPIFFEID: id, ExeSHA256: other})
	wait.Until(t, func() error {
		_, err := wl.FetchX509SVID(ctx)
		if grpcstatus.Code(err) == codes.PermissionDenied || grpcstatus.Code(unwrapAll(err)) == codes.PermissionDenied {
			return nil
		}
		return err
	})
	if _, err := wl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "aud"}); err == nil {
		t.Fatal("a JWT-SVID for a process of another binary")
	}
	if f.issued != 0 {
		t.Fatalf("the fleet was asked for %d SVIDs for a process no registration matches", f.issued)
	}

	f.set(false, wire.WorkloadEntry{Name: "agent", SPIFFEID: id, HasUID: true, UID: uint32(os.Getuid()), ExeSHA256: selfSHA256(t)})
	svid, err := wl.FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bundles, err := wl.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil || svid.ID.String() != id {
		t.Fatalf("X.509-SVID %s: %v", svid.ID, err)
	}
	jwt, err := wl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "aud"})
	if err != nil {
		t.Fatal(err)
	}
	jb, err := wl.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jb, []string{"aud"}); err != nil {
		t.Fatal(err)
	}
	if v, err := wl.ValidateJWTSVID(ctx, jwt.Marshal(), "aud"); err != nil || v.ID.String() != id {
		t.Fatalf("ValidateJWTSVID: %v %v", v, err)
	}
	if _, err := wl.ValidateJWTSVID(ctx, jwt.Marshal(), "other"); err == nil {
		t.Fatal("ValidateJWTSVID accepts another audience")
	}
	expired := f.sign(id, []string{"aud"}, time.Now().Add(-time.Minute))
	if _, err := wl.ValidateJWTSVID(ctx, expired, "aud"); err == nil {
		t.Fatal("ValidateJWTSVID accepts an expired token")
	}

	// Refused (quarantined): no new SVID; the one held stays until it
	// would have been renewed.
	issued := f.issued
	f.set(true, wire.WorkloadEntry{Name: "agent", SPIFFEID: id, HasUID: true, UID: uint32(os.Getuid()), ExeSHA256: selfSHA256(t)})
	if _, err := wl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "aud"}); err == nil {
		t.Fatal("a JWT-SVID while the fleet refuses")
	}
	if f.issued != issued {
		t.Fatal("the fleet issued while refusing")
	}
}

func unwrapAll(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// TestMatches checks every selector.
func TestMatches(t *testing.T) {
	c := Caller{UID: 1000, GID: 100, ExePath: "/usr/bin/web", ExeSHA256: [32]byte{7}}
	sum := c.ExeSHA256[:]
	for _, tc := range []struct {
		e    wire.WorkloadEntry
		want bool
	}{
		{wire.WorkloadEntry{HasUID: true, UID: 1000}, true},
		{wire.WorkloadEntry{HasUID: true, UID: 0}, false},
		{wire.WorkloadEntry{HasGID: true, GID: 100, ExePath: "/usr/bin/web"}, true},
		{wire.WorkloadEntry{HasGID: true, GID: 100, ExePath: "/usr/bin/db"}, false},
		{wire.WorkloadEntry{ExeSHA256: sum}, true},
		{wire.WorkloadEntry{ExeSHA256: make([]byte, 32)}, false},
		{wire.WorkloadEntry{ExeSHA256: sum[:16]}, false},
		{wire.WorkloadEntry{}, false}, // no selector matches nothing
	} {
		if got := c.Matches(&tc.e); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc.e, got, tc.want)
		}
	}
}

// FuzzVerifyJWT feeds verifyJWT, which parses tokens local processes
// send, arbitrary tokens and key sets: an error, never a panic.
func FuzzVerifyJWT(f *testing.F) {
	f.Add("a.b.c", []byte(`{"keys":[]}`))
	f.Add("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.e30.AA", []byte(`{"keys":[{"kid":"k1","kty":"RSA","n":"AQAB","e":"AQAB"}]}`))
	f.Fuzz(func(t *testing.T, tok string, jwks []byte) {
		_, _ = verifyJWT(tok, jwks, "aud", time.Now())
	})
}

// serveAPI serves m's Workload API on a unix socket and connects go-spiffe's
// client to it as this test process, under ctx; stop closes the client, then
// stops the server and reports its error.
func serveAPI(t *testing.T, m *Manager) (ctx context.Context, wl *workloadapi.Client, stop func()) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(m, nil, "").Serve(ctx, sock) }()
	stopServer := func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	wl, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		stopServer()
		t.Fatal(err)
	}
	return ctx, wl, func() {
		wl.Close()
		stopServer()
	}
}

// TestX509Rotation streams a workload's X.509-SVID and receives a new one,
// for a new key, at half its lifetime (here 2 s: renewed after 1 s).
func TestX509Rotation(t *testing.T) {
	m := NewManager(nil, nil)
	f := newFakeFleet(t, m)
	f.validity = 2
	end := m.Session(context.Background(), f.publish)
	defer end()
	f.set(false, wire.WorkloadEntry{Name: "agent", SPIFFEID: "spiffe://td.test/device/d1/workload/agent", HasUID: true, UID: uint32(os.Getuid())})
	ctx, wl, stop := serveAPI(t, m)
	defer stop()
	got := make(chan *x509svid.SVID, 4)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		_ = wl.WatchX509Context(wctx, watcher{got})
	}()
	defer func() { wcancel(); <-watched }()
	first := wait.Recv(t, got, "the first X.509-SVID")
	second := wait.Recv(t, got, "the renewed X.509-SVID")
	if first.Certificates[0].Equal(second.Certificates[0]) || first.PrivateKey.Public().(*ecdsa.PublicKey).Equal(second.PrivateKey.Public()) {
		t.Fatal("the renewed SVID has the same certificate or key")
	}
}

// watcher hands each X.509 context's default SVID to a channel.
type watcher struct{ c chan *x509svid.SVID }

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	select {
	case w.c <- c.DefaultSVID():
	default:
	}
}

func (w watcher) OnX509ContextWatchError(error) {}
