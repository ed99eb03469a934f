package bridge_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"math/big"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/pkg/identity"
)

// conformanceTests run on bbolt (as package tests) and on PostgreSQL
// (TestConformance).
var conformanceTests = []pgtest.Test{
	{Name: "CreateAdmitRevoke", Fn: TestCreateAdmitRevoke},
	{Name: "AdmitOnlyTheCurrentCredential", Fn: TestAdmitOnlyTheCurrentCredential},
	{Name: "RecordsSurviveReopen", Fn: TestRecordsSurviveReopen},
	{Name: "AdmitRefusesARetiredCAGeneration", Fn: TestAdmitRefusesARetiredCAGeneration},
	{Name: "CounterStore", Fn: TestCounterStore},
	{Name: "AssignSite", Fn: TestAssignSite},
}

// TestConformance runs the store's tests on PostgreSQL (skipped without
// one unless CI=true).
func TestConformance(t *testing.T) { pgtest.Conformance(t, conformanceTests) }

// fixture is a CA, a clock and an audit recorder for a bridge store.
type fixture struct {
	ca    *ca.CA
	now   time.Time
	mu    sync.Mutex
	audit []audit.Entry
	revok []string
	path  string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{now: time.Date(2026, 12, 8, 3, 0, 0, 0, time.UTC), path: filepath.Join(t.TempDir(), bridge.File)}
	c, err := ca.Open(ca.Config{Dir: t.TempDir(), TrustDomain: "fleet.test", Now: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	f.ca = c
	return f
}

func (f *fixture) clock() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }

func (f *fixture) advance(d time.Duration) { f.mu.Lock(); f.now = f.now.Add(d); f.mu.Unlock() }

func (f *fixture) open(t testing.TB) *bridge.Service {
	t.Helper()
	cfg := bridge.Config{Path: f.path, CA: f.ca, Now: f.clock, NoSync: true,
		Audit: audit.RecorderFunc(func(_ context.Context, e audit.Entry) error {
			f.mu.Lock()
			f.audit = append(f.audit, e)
			f.mu.Unlock()
			return nil
		}),
		OnRevoke: func(site string) { f.mu.Lock(); f.revok = append(f.revok, site); f.mu.Unlock() },
	}
	s, err := pgtest.OpenBackend(t, f.path, cfg, bridge.Open, bridge.OpenPostgres)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var operator = audit.User("alice")

// TestCreateAdmitRevoke: a site's credential is a bridge certificate of
// the fleet CA naming the site, admitted until revoked; the revocation
// reaches the CRL's list, the hook and the audit log, and the site may
// then be given a new credential (one current credential at a time).
func TestCreateAdmitRevoke(t *testing.T) {
	f := newFixture(t)
	s := f.open(t)
	ctx := context.Background()
	key := newKey(t)
	cert, err := s.Create(ctx, operator, "plant1", key.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if site, err := identity.BridgeFromCertificate(cert, "fleet.test"); err != nil || site != "plant1" {
		t.Fatalf("bridge identity = %q, %v", site, err)
	}
	if _, err := identity.FromCertificate(cert, "fleet.test"); err == nil {
		t.Fatal("a bridge certificate reads as a device's")
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Fatalf("ext key usage %v", cert.ExtKeyUsage)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: f.ca.Pool(), CurrentTime: f.clock(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if got := cert.NotAfter.Sub(cert.NotBefore); got < bridge.DefaultLifetime || got > bridge.DefaultLifetime+2*time.Minute {
		t.Fatalf("lifetime %v", got)
	}
	if err := s.Admit(ctx, "plant1", cert); err != nil {
		t.Fatalf("Admit: %v", err)
	}
	if _, err := s.Create(ctx, operator, "plant1", newKey(t).Public(), 0); !errors.Is(err, bridge.ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || list[0].Site != "plant1" || len(list[0].Certs) != 1 {
		t.Fatalf("List = %+v, %v", list, err)
	}

	if err := s.Revoke(ctx, operator, "plant1", inventory.ReasonKeyCompromise, "stolen"); err != nil {
		t.Fatal(err)
	}
	if err := s.Admit(ctx, "plant1", cert); !errors.Is(err, bridge.ErrRevoked) {
		t.Fatalf("Admit after revoke = %v, want ErrRevoked", err)
	}
	revs, err := s.Revocations(ctx, f.clock())
	if err != nil || len(revs) != 1 || revs[0].Serial != serialHex(cert.SerialNumber) || revs[0].Reason != inventory.ReasonKeyCompromise {
		t.Fatalf("Revocations = %+v, %v", revs, err)
	}
	if err := s.Revoke(ctx, operator, "plant1", 0, ""); !errors.Is(err, bridge.ErrNotFound) {
		t.Fatalf("second Revoke = %v, want ErrNotFound", err)
	}

	cert2, err := s.Create(ctx, operator, "plant1", newKey(t).Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Admit(ctx, "plant1", cert2); err != nil {
		t.Fatal(err)
	}
	if err := s.Admit(ctx, "plant1", cert); !errors.Is(err, bridge.ErrRevoked) {
		t.Fatalf("old credential = %v", err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Equal(f.revok, []string{"plant1"}) {
		t.Fatalf("OnRevoke calls %v", f.revok)
	}
	var actions []string
	for _, e := range f.audit {
		actions = append(actions, e.Action+":"+string(e.Outcome))
	}
	want := []string{"bridge.create:ok", "bridge.create:failed", "bridge.revoke:ok", "bridge.revoke:failed", "bridge.create:ok"}
	if !slices.Equal(actions, want) {
		t.Fatalf("audit %v, want %v", actions, want)
	}
}

// TestAdmitOnlyTheCurrentCredential: Admit refuses an unknown site, a
// certificate the fleet never issued to the site (another site's, one
// with a foreign serial), an expired credential, and bad requests.
func TestAdmitOnlyTheCurrentCredential(t *testing.T) {
	f := newFixture(t)
	s := f.open(t)
	ctx := context.Background()
	c1, err := s.Create(ctx, operator, "plant1", newKey(t).Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := s.Create(ctx, operator, "plant2", newKey(t).Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Admit(ctx, "plant3", c1); !errors.Is(err, bridge.ErrNotFound) {
		t.Errorf("unknown site: %v", err)
	}
	if err := s.Admit(ctx, "plant1", c2); !errors.Is(err, bridge.ErrNotHeld) {
		t.Errorf("another site's certificate: %v", err)
	}
	forged := *c1
	forged.SerialNumber = big.NewInt(42)
	if err := s.Admit(ctx, "plant1", &forged); !errors.Is(err, bridge.ErrNotHeld) {
		t.Errorf("foreign serial: %v", err)
	}
	f.advance(2 * time.Hour)
	if err := s.Admit(ctx, "plant1", c1); !errors.Is(err, bridge.ErrExpired) {
		t.Errorf("expired: %v", err)
	}
	// An expired credential is not current: the site may be given another.
	if _, err := s.Create(ctx, operator, "plant1", newKey(t).Public(), 0); err != nil {
		t.Errorf("Create after expiry: %v", err)
	}
	for _, site := range []string{"", "Plant", "a/b", "a+b", "#", "-x"} {
		if _, err := s.Create(ctx, operator, site, newKey(t).Public(), 0); !errors.Is(err, bridge.ErrInvalid) {
			t.Errorf("site %q: %v", site, err)
		}
	}
	if _, err := s.Create(ctx, operator, "plant9", newKey(t).Public(), bridge.MaxLifetime+time.Hour); !errors.Is(err, bridge.ErrInvalid) {
		t.Errorf("lifetime: %v", err)
	}
	if _, err := s.Create(ctx, operator, "plant9", nil, 0); !errors.Is(err, bridge.ErrInvalid) {
		t.Errorf("no key: %v", err)
	}
}

// TestRecordsSurviveReopen: what was issued and revoked is there after a
// restart.
func TestRecordsSurviveReopen(t *testing.T) {
	f := newFixture(t)
	s := f.open(t)
	ctx := context.Background()
	c, err := s.Create(ctx, operator, "plant1", newKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, operator, "plant1", inventory.ReasonCessationOfOperation, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = f.open(t)
	if err := s.Admit(ctx, "plant1", c); !errors.Is(err, bridge.ErrRevoked) {
		t.Fatalf("after reopen: %v", err)
	}
	b, err := s.Get(ctx, "plant1")
	if err != nil || len(b.Certs) != 1 || b.Certs[0].Reason != inventory.ReasonCessationOfOperation {
		t.Fatalf("Get = %+v, %v", b, err)
	}
}

func serialHex(n *big.Int) string { return hex.EncodeToString(n.Bytes()) }

// TestAdmitRefusesARetiredCAGeneration: once the CA generation that
// issued a bridge's credential is retired, the credential is refused
// (the broker's TLS pool still holds retired roots); a new one issued by
// the active generation is admitted.
func TestAdmitRefusesARetiredCAGeneration(t *testing.T) {
	f := newFixture(t)
	s := f.open(t)
	ctx := context.Background()
	old, err := s.Create(ctx, operator, "plant1", newKey(t).Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Activate(); err != nil {
		t.Fatal(err)
	}
	if err := s.Admit(ctx, "plant1", old); err != nil {
		t.Fatalf("superseded but not retired: %v", err)
	}
	if _, err := f.ca.Retire(); err != nil {
		t.Fatal(err)
	}
	if err := s.Admit(ctx, "plant1", old); !errors.Is(err, bridge.ErrRetired) {
		t.Fatalf("retired generation: %v, want ErrRetired", err)
	}
	if err := s.Revoke(ctx, operator, "plant1", inventory.ReasonSuperseded, "CA rotation"); err != nil {
		t.Fatal(err)
	}
	renewed, err := s.Create(ctx, operator, "plant1", newKey(t).Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Admit(ctx, "plant1", renewed); err != nil {
		t.Fatalf("credential of the active generation: %v", err)
	}
}
