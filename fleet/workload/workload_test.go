package workload

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/sigil-iot/sigil/fleet/audit/audittest"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

const td = "fleet.test"

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// devices is an inventory of a few devices.
type devices struct {
	mu sync.Mutex
	m  map[string]inventory.Device
}

func (d *devices) Device(_ context.Context, id string) (*inventory.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dev, ok := d.m[id]
	if !ok {
		return nil, inventory.ErrNotFound
	}
	return &dev, nil
}

func (d *devices) set(dev inventory.Device) {
	d.mu.Lock()
	d.m[dev.ID] = dev
	d.mu.Unlock()
}

// verdicts says a device's attestation is current unless it is in stale.
type verdicts struct {
	mu    sync.Mutex
	stale map[string]bool
}

func (v *verdicts) Current(id string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stale[id] {
		return errors.New("no verdict in this session")
	}
	return nil
}

type fixture struct {
	svc   *Service
	ca    *ca.CA
	devs  *devices
	vd    *verdicts
	clock *clock
	risk  map[string]int
}

// newFixture builds a service with two active, attested devices: d1 in
// group g1 (model m1) and d2 in group g2 (model m1).
func newFixture(t *testing.T, issuer string, mod func(*Config)) *fixture {
	t.Helper()
	c, err := ca.Open(ca.Config{Dir: t.TempDir(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: c, clock: &clock{t: time.Now()}, risk: map[string]int{},
		devs: &devices{m: map[string]inventory.Device{}}, vd: &verdicts{stale: map[string]bool{}}}
	f.devs.set(inventory.Device{ID: "d1", State: inventory.StateActive, Attestation: wire.VerdictPass, Group: "g1", Model: "m1"})
	f.devs.set(inventory.Device{ID: "d2", State: inventory.StateActive, Attestation: wire.VerdictPass, Group: "g2", Model: "m1"})
	cfg := Config{Store: openStore(t), CA: c, Devices: f.devs, Verdicts: f.vd, TrustDomain: td, Issuer: issuer,
		Now: f.clock.Now, Risk: func(id string) (int, error) { return f.risk[id], nil }}
	if mod != nil {
		mod(&cfg)
	}
	if f.svc, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	return f
}

func uid(n uint32) *uint32 { return &n }

// TestRegistrations stores, lists and deletes registrations and refuses
// invalid ones.
func TestRegistrations(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	bad := []Registration{
		{Name: "web", Scope: ScopeGroup, Target: "g1"},                                     // no selector
		{Name: "Web", Scope: ScopeGroup, Target: "g1", UID: uid(1)},                        // name
		{Name: "web", Scope: "fleet", Target: "g1", UID: uid(1)},                           // scope
		{Name: "web", Scope: ScopeDevice, UID: uid(1)},                                     // target
		{Name: "web", Scope: ScopeGroup, Target: "g1", ExePath: "bin/web"},                 // relative path
		{Name: "web", Scope: ScopeGroup, Target: "g1", ExeSHA256: strings.Repeat("A", 64)}, // not lowercase
	}
	for i, r := range bad {
		if err := st.Put(ctx, r); !errors.Is(err, ErrInvalid) {
			t.Errorf("bad registration %d: %v, want ErrInvalid", i, err)
		}
	}
	good := Registration{Name: "web", Scope: ScopeGroup, Target: "g1", UID: uid(0), ExePath: "/usr/bin/web", ExeSHA256: strings.Repeat("ab", 32)}
	if err := st.Put(ctx, good); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, Registration{Name: "db", Scope: ScopeModel, Target: "m1", GID: uid(5)}); err != nil {
		t.Fatal(err)
	}
	got, err := st.Get(ctx, "web")
	if err != nil || got.UID == nil || *got.UID != 0 || got.ExeSHA256 != good.ExeSHA256 {
		t.Fatalf("Get: %+v, %v", got, err)
	}
	all, err := st.List(ctx)
	if err != nil || len(all) != 2 || all[0].Name != "db" || all[1].Name != "web" {
		t.Fatalf("List: %+v, %v", all, err)
	}
	if err := st.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
	if _, err := st.Get(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get deleted: %v, want ErrNotFound", err)
	}
}

// TestKeyRotation rotates the JWT signing key: the retired key stays in
// the JWKS while tokens it signed may be valid, and is deleted after.
func TestKeyRotation(t *testing.T) {
	f := newFixture(t, "", nil)
	ctx := context.Background()
	first, _, err := f.svc.keys.active(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next, err := f.svc.RotateKeys(ctx)
	if err != nil || next == first {
		t.Fatalf("rotate: %q, %v", next, err)
	}
	kids := func() []string {
		set, err := f.svc.keys.jwks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range set.Keys {
			out = append(out, k.Kid)
		}
		return out
	}
	if got := kids(); len(got) != 2 || got[0] != next || got[1] != first {
		t.Fatalf("after rotation: %v, want [%s %s]", got, next, first)
	}
	if err := f.svc.PruneKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if got := kids(); len(got) != 2 {
		t.Fatalf("pruned before the retired key's tokens expired: %v", got)
	}
	f.clock.Add(DefaultJWTTTL + keySkew + time.Second)
	if err := f.svc.PruneKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if got := kids(); len(got) != 1 || got[0] != next {
		t.Fatalf("after pruning: %v, want [%s]", got, next)
	}
	if kid, _, err := f.svc.keys.active(ctx); err != nil || kid != next {
		t.Fatalf("active: %q, %v", kid, err)
	}
}

// TestKeysListed: Keys lists the published signing keys, newest first,
// the retired one with its date, without creating a key itself; a
// pruned key is no longer listed.
func TestKeysListed(t *testing.T) {
	f := newFixture(t, "https://fleet.example", nil)
	ctx := context.Background()
	if ks, err := f.svc.Keys(ctx); err != nil || len(ks) != 0 {
		t.Fatalf("before any key: %+v %v", ks, err)
	}
	if ks, _ := f.svc.Keys(ctx); len(ks) != 0 {
		t.Fatalf("Keys made a key: %+v", ks)
	}
	first, _, err := f.svc.keys.active(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next, err := f.svc.RotateKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := f.svc.Keys(ctx)
	if err != nil || len(ks) != 2 || ks[0].ID != next || !ks[0].Retired.IsZero() || ks[1].ID != first || ks[1].Retired.IsZero() {
		t.Fatalf("after rotation: %+v %v", ks, err)
	}
	f.clock.Add(DefaultJWTTTL + keySkew + time.Second)
	if ks, _ = f.svc.Keys(ctx); len(ks) != 1 || ks[0].ID != next {
		t.Fatalf("past the retired key's keep time: %+v", ks)
	}
	if f.svc.Issuer() != "https://fleet.example" || f.svc.TrustDomain() != td {
		t.Fatalf("issuer %q, trust domain %q", f.svc.Issuer(), f.svc.TrustDomain())
	}
}

func csr(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func refusedWith(t *testing.T, what string, err error, want wire.Reason) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) || we.Reason != want {
		t.Errorf("%s: %v, want a refusal with %s", what, err, want)
	}
}

// TestIssueX509 issues X.509-SVIDs under the asking device's own SPIFFE ID
// only for a registration that applies to it, only while it is active
// with a current passing attestation and a risk score under the limit.
func TestIssueX509(t *testing.T) {
	rec := &recorder{}
	f := newFixture(t, "", func(c *Config) { c.MaxRisk = 50; c.Audit = rec })
	ctx := context.Background()
	if _, err := f.svc.Register(ctx, Registration{Name: "web", Scope: ScopeGroup, Target: "g1", UID: uid(1000)}, "alice"); err != nil {
		t.Fatal(err)
	}
	x509req := &wire.WorkloadRequest{Op: wire.WorkloadX509, Name: "web", CSR: csr(t)}
	res, err := f.svc.Answer(ctx, "d1", x509req)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(res.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://"+td+"/device/d1/workload/web" || leaf.Subject.CommonName != "" {
		t.Fatalf("SVID names %v (CN %q)", leaf.URIs, leaf.Subject.CommonName)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got > DefaultX509TTL+2*time.Minute || res.Validity != 3600 {
		t.Fatalf("SVID lifetime %s, validity %d", got, res.Validity)
	}
	roots := x509.NewCertPool()
	for _, der := range res.Bundle {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("SVID does not verify against the bundle: %v", err)
	}
	if _, err := identity.FromCertificate(leaf, td); err == nil {
		t.Fatal("the broker's identity check accepts a workload SVID as a device certificate")
	}

	ent, err := f.svc.Answer(ctx, "d1", &wire.WorkloadRequest{Op: wire.WorkloadEntries})
	if err != nil || len(ent.Entries) != 1 || ent.Entries[0].SPIFFEID != "spiffe://"+td+"/device/d1/workload/web" || !ent.Entries[0].HasUID || ent.Entries[0].UID != 1000 {
		t.Fatalf("entries of d1: %+v, %v", ent, err)
	}
	if ent, err := f.svc.Answer(ctx, "d2", &wire.WorkloadRequest{Op: wire.WorkloadEntries}); err != nil || len(ent.Entries) != 0 {
		t.Fatalf("entries of d2: %+v, %v", ent, err)
	}

	// d2 is not in g1: the registration does not apply to it.
	_, err = f.svc.Answer(ctx, "d2", x509req)
	refusedWith(t, "another group's workload", err, wire.ReasonBadRequest)
	_, err = f.svc.Answer(ctx, "d1", &wire.WorkloadRequest{Op: wire.WorkloadX509, Name: "nope", CSR: x509req.CSR})
	refusedWith(t, "unregistered workload", err, wire.ReasonBadRequest)
	bad := csr(t)
	bad[len(bad)-3] ^= 1
	_, err = f.svc.Answer(ctx, "d1", &wire.WorkloadRequest{Op: wire.WorkloadX509, Name: "web", CSR: bad})
	refusedWith(t, "bad CSR signature", err, wire.ReasonCSRInvalid)
	weak, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	weakCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, weak)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := x509.ParseCertificateRequest(weakCSR); err != nil || c.CheckSignature() != nil {
		t.Fatal("the P-224 CSR does not parse: the refusal below would not be the key's")
	}
	_, err = f.svc.Answer(ctx, "d1", &wire.WorkloadRequest{Op: wire.WorkloadX509, Name: "web", CSR: weakCSR})
	refusedWith(t, "P-224 key", err, wire.ReasonCSRInvalid)

	f.risk["d1"] = 51
	_, err = f.svc.Answer(ctx, "d1", x509req)
	refusedWith(t, "risk above the limit", err, wire.ReasonAttestationFailed)
	f.risk["d1"] = 50
	f.vd.stale["d1"] = true
	_, err = f.svc.Answer(ctx, "d1", x509req)
	refusedWith(t, "no current verdict", err, wire.ReasonAttestationFailed)
	f.vd.stale["d1"] = false
	f.devs.set(inventory.Device{ID: "d1", State: inventory.StateActive, Attestation: wire.VerdictFail, Group: "g1"})
	_, err = f.svc.Answer(ctx, "d1", x509req)
	refusedWith(t, "failed attestation", err, wire.ReasonAttestationFailed)
	f.devs.set(inventory.Device{ID: "d1", State: inventory.StateQuarantined, Attestation: wire.VerdictPass, Group: "g1"})
	for _, req := range []*wire.WorkloadRequest{x509req, {Op: wire.WorkloadEntries}, {Op: wire.WorkloadJWT, Name: "web", Audience: []string{"a"}}} {
		_, err = f.svc.Answer(ctx, "d1", req)
		refusedWith(t, "quarantined device", err, wire.ReasonQuarantined)
	}

	// Counted, and audited in aggregate.
	f.svc.flushAudit(ctx)
	es := rec.Entries()
	if len(es) != 1 || es[0].Action != "workload.svids" || es[0].Details["x509"] != "1" || es[0].Details["entries"] != "2" {
		t.Fatalf("audit entries: %+v", es)
	}
}

type recorder struct{ audittest.Recorder }

// TestOIDCVerifier has an independent verifier (coreos/go-oidc, fetching
// the discovery document and the JWKS over HTTPS) accept a workload's
// JWT-SVID and refuse an expired one, one for another audience and one
// signed by a retired key once that key is gone from the JWKS.
func TestOIDCVerifier(t *testing.T) {
	var svc *Service
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b []byte
		var err error
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			b, err = svc.Discovery()
		case JWKSPath:
			b, err = svc.JWKS(r.Context())
		default:
			http.NotFound(w, r)
			return
		}
		if err != nil {
			http.Error(w, "internal", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	}))
	defer srv.Close()
	f := newFixture(t, srv.URL, nil)
	svc = f.svc
	ctx := oidc.ClientContext(context.Background(), srv.Client())
	if _, err := svc.Register(ctx, Registration{Name: "agent", Scope: ScopeDevice, Target: "d1", ExePath: "/usr/bin/agent"}, "alice"); err != nil {
		t.Fatal(err)
	}
	token := func(aud string) string {
		t.Helper()
		res, err := svc.Answer(ctx, "d1", &wire.WorkloadRequest{Op: wire.WorkloadJWT, Name: "agent", Audience: []string{aud}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Validity != 300 || len(res.JWKS) == 0 {
			t.Fatalf("answer: validity %d, JWKS %d bytes", res.Validity, len(res.JWKS))
		}
		return res.JWT
	}
	verifier := func(cfg oidc.Config) *oidc.IDTokenVerifier {
		t.Helper()
		p, err := oidc.NewProvider(ctx, srv.URL) // fetches the discovery document
		if err != nil {
			t.Fatal(err)
		}
		cfg.ClientID = "sts.amazonaws.com"
		cfg.Now = f.clock.Now
		return p.Verifier(&cfg)
	}
	v := verifier(oidc.Config{})
	tok := token("sts.amazonaws.com")
	idt, err := v.Verify(ctx, tok)
	if err != nil {
		t.Fatalf("a valid JWT-SVID refused: %v", err)
	}
	if idt.Subject != "spiffe://"+td+"/device/d1/workload/agent" || idt.Issuer != srv.URL {
		t.Fatalf("token for %q from %q", idt.Subject, idt.Issuer)
	}
	if _, err := v.Verify(ctx, token("storage.googleapis.com")); err == nil {
		t.Fatal("a JWT-SVID for another audience accepted")
	}
	tampered := tok[:len(tok)-4] + "AAAA"
	if tampered != tok {
		if _, err := v.Verify(ctx, tampered); err == nil {
			t.Fatal("a JWT-SVID with a bad signature accepted")
		}
	}

	// A rotation leaves the tokens the retired key signed valid.
	if _, err := svc.RotateKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := verifier(oidc.Config{}).Verify(ctx, tok); err != nil {
		t.Fatalf("a token of the key just retired refused: %v", err)
	}
	fresh := token("sts.amazonaws.com")
	if _, err := v.Verify(ctx, fresh); err != nil {
		t.Fatalf("a token of the new key refused (the verifier fetches the JWKS again): %v", err)
	}

	// Expired.
	f.clock.Add(DefaultJWTTTL + time.Second)
	if _, err := verifier(oidc.Config{}).Verify(ctx, fresh); err == nil {
		t.Fatal("an expired JWT-SVID accepted")
	}
	// Signed by a retired key that is gone from the JWKS: refused even
	// with the expiry not checked, for its key.
	f.clock.Add(keySkew)
	if err := svc.PruneKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := verifier(oidc.Config{SkipExpiryCheck: true}).Verify(ctx, tok); err == nil {
		t.Fatal("a JWT-SVID signed by a retired key accepted")
	}
	if _, err := verifier(oidc.Config{SkipExpiryCheck: true}).Verify(ctx, fresh); err != nil {
		t.Fatalf("the active key's token (expiry not checked) refused: %v", err)
	}
}

// TestKeyRotationByAge: the key upkeep rotates the active key once it is
// KeyRotation old by its stored creation time, and deletes the retired
// one once its tokens have expired.
func TestKeyRotationByAge(t *testing.T) {
	f := newFixture(t, "", func(c *Config) { c.KeyRotation = time.Hour })
	ctx := context.Background()
	first, _, err := f.svc.keys.active(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Add(time.Hour - time.Second)
	f.svc.maintainKeys(ctx)
	if kid, _, _ := f.svc.keys.active(ctx); kid != first {
		t.Fatal("rotated before the key was KeyRotation old")
	}
	f.clock.Add(time.Second)
	f.svc.maintainKeys(ctx)
	second, _, err := f.svc.keys.active(ctx)
	if err != nil || second == first {
		t.Fatalf("not rotated at KeyRotation: %q, %v", second, err)
	}
	if set, _ := f.svc.keys.jwks(ctx); len(set.Keys) != 2 {
		t.Fatalf("the retired key left the JWKS at once: %d keys", len(set.Keys))
	}
	f.clock.Add(DefaultJWTTTL + keySkew + time.Second)
	f.svc.maintainKeys(ctx)
	if set, _ := f.svc.keys.jwks(ctx); len(set.Keys) != 1 || set.Keys[0].Kid != second {
		t.Fatalf("after its tokens expired: %+v", set.Keys)
	}
}
