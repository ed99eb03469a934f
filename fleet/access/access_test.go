package access

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/audit/audittest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"golang.org/x/crypto/ssh"
)

// TestTransitions: only the listed changes are allowed, and every final
// state allows none.
func TestTransitions(t *testing.T) {
	all := []State{StateRequested, StateApproved, StateActive, StateExpired, StateRevoked, StateDenied}
	allowed := map[[2]State]bool{
		{StateRequested, StateApproved}: true, {StateRequested, StateDenied}: true, {StateRequested, StateExpired}: true,
		{StateApproved, StateActive}: true, {StateApproved, StateExpired}: true, {StateApproved, StateRevoked}: true,
		{StateActive, StateExpired}: true, {StateActive, StateRevoked}: true,
	}
	for _, from := range all {
		for _, to := range all {
			got, err := Transition(from, to)
			if allowed[[2]State{from, to}] {
				if err != nil || got != to {
					t.Errorf("%s -> %s refused: %v", from, to, err)
				}
			} else if !errors.Is(err, ErrTransition) || got != from {
				t.Errorf("%s -> %s allowed (%s, %v)", from, to, got, err)
			}
		}
	}
	for _, s := range []State{StateExpired, StateRevoked, StateDenied} {
		if !s.Final() {
			t.Errorf("%s is not final", s)
		}
	}
}

func pubKey(t testing.TB) string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ssh.NewPublicKey(pub)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " alice@laptop"
}

// TestPolicyBounds: the policy refuses what it does not allow and fills
// in defaults.
func TestPolicyBounds(t *testing.T) {
	p, err := Policy{MaxDuration: config.Duration(2 * time.Hour), Logins: []string{"ops", "root"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	ok := Draft{Device: "dev-1", PublicKey: pubKey(t), Justification: "ticket 42"}
	d, key, err := p.Check(ok)
	if err != nil || key == nil || d.Login != "ops" || d.Duration != config.Duration(time.Hour) {
		t.Fatalf("defaults: %+v %v", d, err)
	}
	for name, mut := range map[string]func(*Draft){
		"over max":          func(d *Draft) { d.Duration = config.Duration(2*time.Hour + time.Second) },
		"negative":          func(d *Draft) { d.Duration = config.Duration(-time.Minute) },
		"no justification":  func(d *Draft) { d.Justification = "  " },
		"login not allowed": func(d *Draft) { d.Login = "admin" },
		"both targets":      func(d *Draft) { d.Group = "kiosks" },
		"no target":         func(d *Draft) { d.Device = "" },
		"forwarding":        func(d *Draft) { d.PortForwarding = true },
		"agent":             func(d *Draft) { d.AgentForwarding = true },
		"bad source":        func(d *Draft) { d.SourceAddress = "10.0.0.0/8,example.com" },
		"private key":       func(d *Draft) { d.PublicKey = "-----BEGIN OPENSSH PRIVATE KEY-----" },
		"not a key":         func(d *Draft) { d.PublicKey = "ssh-ed25519 AAAAAAAAAAAAAAAAAAAA" },
	} {
		d := ok
		mut(&d)
		if _, _, err := p.Check(d); !errors.Is(err, ErrPolicy) {
			t.Errorf("%s: %v, want ErrPolicy", name, err)
		}
	}
	d = ok
	d.Duration, d.SourceAddress = config.Duration(2*time.Hour), " 10.1.2.3/8, 192.0.2.7"
	if d, _, err := p.Check(d); err != nil || d.SourceAddress != "10.0.0.0/8,192.0.2.7" {
		t.Fatalf("max duration and sources: %+v %v", d, err)
	}
	if _, err := (Policy{MaxDuration: -1}).withDefaults(); err == nil {
		t.Error("negative max accepted")
	}
	if _, err := (Policy{Logins: []string{"../etc"}}).withDefaults(); err == nil {
		t.Error("unsafe login accepted")
	}
}

// actor is an approval.Actor with a fixed set of permissions.
type actor struct {
	name  string
	perms []auth.Permission
}

func (a actor) Subject() string            { return a.name }
func (a actor) Can(p auth.Permission) bool { return slices.Contains(a.perms, p) }
func (a actor) Since() time.Time           { return time.Time{} }
func (a actor) Credential() auth.Credential {
	return auth.Credential{User: a.name, Method: auth.MethodSession, Scope: auth.RoleAdmin}
}

var (
	alice = actor{"alice", []auth.Permission{auth.PermAccessRequest}}
	bob   = actor{"bob", []auth.Permission{auth.PermAccessRequest, auth.PermAccessApprove}}
	carol = actor{"carol", []auth.Permission{auth.PermAccessRequest}}
)

type devices map[string]*inventory.Device

func (d devices) Device(_ context.Context, id string) (*inventory.Device, error) {
	if v, ok := d[id]; ok {
		return v, nil
	}
	return nil, inventory.ErrNotFound
}

func (d devices) Query(_ context.Context, q inventory.Query) (inventory.Page, error) {
	var p inventory.Page
	for _, v := range d {
		if v.Group == q.Where[inventory.FieldGroup] {
			p.Devices = append(p.Devices, *v)
		}
	}
	return p, nil
}

type memAudit struct{ audittest.Recorder }

func (m *memAudit) find(action, target string) *audit.Entry {
	es := m.Find(func(e audit.Entry) bool { return e.Action == action && e.Target == target })
	if len(es) == 0 {
		return nil
	}
	return &es[0]
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type fixture struct {
	s    *Service
	aud  *memAudit
	clk  *clock
	sent map[string][][]byte
	mu   sync.Mutex
}

func newFixture(t *testing.T) *fixture { t.Helper(); return newFixtureRule(t, 1) }

// newFixtureRule is newFixture with the fleet's rule asking for n
// approvals of a grant.
func newFixtureRule(t *testing.T, n int) *fixture {
	t.Helper()
	rules := approval.DefaultRules()
	rule := rules[approval.KindAccessGrant]
	rule.Approvals = n
	rules[approval.KindAccessGrant] = rule
	dir := t.TempDir()
	f := &fixture{aud: &memAudit{}, clk: &clock{t: time.Date(2026, 12, 8, 3, 0, 0, 0, time.UTC)}, sent: map[string][][]byte{}}
	ap, err := approval.Open(approval.Config{Path: filepath.Join(dir, "approvals.db"), Now: f.clk.Now, NoSync: true, Rules: rules,
		Requester: func(_ context.Context, c auth.Credential) (approval.Actor, error) {
			for _, a := range []actor{alice, bob, carol} {
				if a.name == c.User {
					return a, nil
				}
			}
			return nil, errors.New("unknown")
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ap.Close() })
	devs := devices{"dev-1": {ID: "dev-1", Group: "kiosks"}, "dev-2": {ID: "dev-2", Group: "kiosks"}, "dev-3": {ID: "dev-3"}}
	var db *postgres.DB
	if pg, ok := pgtest.Database(t, dir); ok {
		db = pg
	}
	f.s, err = Open(Config{Dir: dir, Database: db, TrustDomain: "fleet.example",
		Approvals: ap, Devices: devs, Audit: f.aud, Now: f.clk.Now, NoSync: true,
		Send: func(id, kind string, b []byte) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.sent[id] = append(f.sent[id], b)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.s.Close() })
	return f
}

// TestGrantLifecycle: requested → approved (by someone else only; the
// certificate says what the grant gives) → active (a device's session
// report) → revoked (the KRL lists it and goes to the device), and
// expiry by the clock.
func TestGrantLifecycle(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	g, err := f.s.Request(ctx, alice, Draft{Device: "dev-1", PublicKey: pubKey(t), Justification: "INC-7 disk full", Duration: config.Duration(30 * time.Minute), SourceAddress: "192.0.2.0/24"})
	if err != nil || g.State != StateRequested || g.ApprovalID == "" {
		t.Fatalf("request: %+v %v", g, err)
	}
	if _, err := f.s.Approve(ctx, alice, g.ID, ""); !errors.Is(err, approval.ErrSelfApproval) {
		t.Fatalf("self-approval: %v", err)
	}
	if _, err := f.s.Approve(ctx, carol, g.ID, ""); !errors.Is(err, approval.ErrForbidden) {
		t.Fatalf("approval without access.approve: %v", err)
	}
	if _, err := f.s.Revoke(ctx, bob, g.ID, "x"); !errors.Is(err, ErrTransition) {
		t.Fatalf("revoke before approval: %v", err)
	}
	g, err = f.s.Approve(ctx, bob, g.ID, "ok")
	if err != nil || g.State != StateApproved || !slices.Equal(g.Approvers, []string{"bob"}) {
		t.Fatalf("approve: %+v %v", g, err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(g.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	cert := pk.(*ssh.Certificate)
	if cert.CertType != ssh.UserCert || cert.Serial != g.Serial || cert.KeyId != KeyIDPrefix+g.ID ||
		!slices.Equal(cert.ValidPrincipals, []string{"root@dev-1"}) || !time.Unix(int64(cert.ValidBefore), 0).Equal(g.End) ||
		!g.End.Equal(f.clk.Now().Add(30*time.Minute)) || cert.CriticalOptions["source-address"] != "192.0.2.0/24" ||
		len(cert.Extensions) != 1 || ssh.FingerprintSHA256(cert.SignatureKey) != f.s.CA().Fingerprint() {
		t.Fatalf("certificate %+v for grant %+v", cert, g)
	}
	if e := f.aud.find("access.approved", g.ID); e == nil || e.Details["approvers"] != "bob" || e.Details["requester"] != "alice" {
		t.Fatalf("approval audit: %+v", e)
	}
	// Approving again is a transition the machine refuses.
	if _, err := f.s.Approve(ctx, bob, g.ID, ""); !errors.Is(err, ErrTransition) {
		t.Fatalf("second approval: %v", err)
	}

	// A session on the granted device makes it active; the audit ties it
	// to the grant, the requester and the approver, as a device claim.
	start := wire.AccessSession{Event: wire.AccessSessionStart, User: "root", From: "192.0.2.9", Port: 5000, KeyID: cert.KeyId, Serial: cert.Serial, CA: f.s.CA().Fingerprint()}
	f.s.Sessions(ctx, "dev-1", &wire.AccessSessions{Events: []wire.AccessSession{start}})
	g, _ = f.s.Get(ctx, g.ID)
	if g.State != StateActive || len(g.Sessions) != 1 {
		t.Fatalf("after a session: %+v", g)
	}
	e := f.aud.find("access.session.start", g.ID)
	if e == nil || e.Actor != audit.Device("dev-1") || e.Details["claim"] != "device" || e.Details["approvers"] != "bob" ||
		e.Details["requester"] != "alice" || e.Reason != "INC-7 disk full" {
		t.Fatalf("session audit: %+v", e)
	}
	// The same certificate reported from another device is a failed claim.
	f.s.Sessions(ctx, "dev-2", &wire.AccessSessions{Events: []wire.AccessSession{start}})
	var bad *audit.Entry
	es := f.aud.Entries()
	for i := range es {
		if es[i].Actor == audit.Device("dev-2") {
			bad = &es[i]
		}
	}
	if bad == nil || bad.Outcome == audit.OK {
		t.Fatalf("a session on an ungranted device was recorded as %+v", bad)
	}
	end := start
	end.Event = wire.AccessSessionEnd
	f.s.Sessions(ctx, "dev-1", &wire.AccessSessions{Events: []wire.AccessSession{end}})
	if g, _ = f.s.Get(ctx, g.ID); g.Sessions[0].End.IsZero() {
		t.Fatalf("session not ended: %+v", g.Sessions)
	}

	// Carol may not revoke Alice's grant; Bob may.
	if _, err := f.s.Revoke(ctx, carol, g.ID, "x"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("carol revoked: %v", err)
	}
	g, err = f.s.Revoke(ctx, bob, g.ID, "done")
	if err != nil || g.State != StateRevoked {
		t.Fatalf("revoke: %+v %v", g, err)
	}
	if _, err := f.s.Revoke(ctx, bob, g.ID, "again"); !errors.Is(err, ErrTransition) {
		t.Fatalf("revoke twice: %v", err)
	}
	f.mu.Lock()
	pushed := f.sent["dev-1"]
	f.mu.Unlock()
	if len(pushed) != 1 {
		t.Fatalf("pushed to dev-1: %d messages", len(pushed))
	}
	env, err := wire.Decode(pushed[0])
	if err != nil {
		t.Fatal(err)
	}
	var tr wire.AccessTrust
	if err := wire.DecodeBody(env, wire.TypeAccessTrust, &tr); err != nil {
		t.Fatal(err)
	}
	if tr.Generation != 1 || len(tr.RevokedKeys) <= 60 || tr.Logins[0].Login != "root" || !slices.Equal(tr.Logins[0].Principals, []string{"root@dev-1", "root@group:kiosks"}) {
		t.Fatalf("trust %+v", tr)
	}
}

// TestGrantExpiry: grants end with the clock (and unapproved requests
// with their approval request); expired grants cannot be revoked, and the
// sweep records the change.
func TestGrantExpiry(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	g, err := f.s.Request(ctx, alice, Draft{Group: "kiosks", PublicKey: pubKey(t), Justification: "rollout", Duration: config.Duration(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if g, err = f.s.Approve(ctx, bob, g.ID, ""); err != nil || g.Principal() != "root@group:kiosks" {
		t.Fatalf("%+v %v", g, err)
	}
	f.clk.Add(time.Minute)
	f.s.Sweep(ctx)
	if g, _ = f.s.Get(ctx, g.ID); g.State != StateExpired {
		t.Fatalf("after its end: %s", g.State)
	}
	if f.aud.find("access.expired", g.ID) == nil {
		t.Fatal("expiry not audited")
	}
	if _, err := f.s.Revoke(ctx, bob, g.ID, "late"); !errors.Is(err, ErrTransition) {
		t.Fatalf("revoking an expired grant: %v", err)
	}
	// An unapproved request lapses with its approval request.
	r, err := f.s.Request(ctx, alice, Draft{Device: "dev-3", PublicKey: pubKey(t), Justification: "x"})
	if err != nil {
		t.Fatal(err)
	}
	f.clk.Add(25 * time.Hour)
	if r, _ = f.s.Get(ctx, r.ID); r.State != StateExpired {
		t.Fatalf("lapsed request: %s", r.State)
	}
	if _, err := f.s.Approve(ctx, bob, r.ID, ""); !errors.Is(err, ErrTransition) {
		t.Fatalf("approving a lapsed request: %v", err)
	}
	// A denied request stays denied.
	d, _ := f.s.Request(ctx, alice, Draft{Device: "dev-3", PublicKey: pubKey(t), Justification: "y"})
	if d, err = f.s.Deny(ctx, bob, d.ID, "no ticket"); err != nil || d.State != StateDenied {
		t.Fatalf("deny: %+v %v", d, err)
	}
	if _, err := f.s.Approve(ctx, bob, d.ID, ""); !errors.Is(err, ErrTransition) {
		t.Fatalf("approving a denied request: %v", err)
	}
	// Lists: Alice sees her own, Carol none, Bob all.
	if l, _ := f.s.List(ctx, carol, Filter{}); len(l) != 0 {
		t.Fatalf("carol sees %d", len(l))
	}
	if l, _ := f.s.List(ctx, bob, Filter{State: StateDenied}); len(l) != 1 {
		t.Fatalf("bob sees %d denied", len(l))
	}
}

// principals establishes the test actors again from their credentials
// (approval.PrincipalSource).
type principals struct{}

func (principals) Principal(_ context.Context, c auth.Credential) (auth.Principal, error) {
	switch c.User {
	case "alice", "carol":
		return auth.Principal{User: c.User, Role: auth.RoleOperator}, nil
	case "bob", "dan":
		return auth.Principal{User: c.User, Role: auth.RoleSecurityAdmin}, nil
	}
	return auth.Principal{}, errors.New("unknown")
}

// openOwn opens a service without the fleet's two-person rule: it keeps
// its own approvals.
func openOwn(t *testing.T, pol Policy) (*Service, *memAudit) {
	t.Helper()
	dir := t.TempDir()
	aud := &memAudit{}
	var db *postgres.DB
	if pg, ok := pgtest.Database(t, dir); ok {
		db = pg
	}
	s, err := Open(Config{Dir: dir, Database: db, TrustDomain: "fleet.example", Principals: principals{}, Policy: pol,
		Devices: devices{"dev-1": {ID: "dev-1"}}, Audit: aud, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, aud
}

// TestWithoutTwoPersonRule: a fleet without two_person_rule still grants
// access, on one approval by someone else with access.approve; never on
// the requester's own, nor on an operator's.
func TestWithoutTwoPersonRule(t *testing.T) {
	s, aud := openOwn(t, Policy{})
	ctx := t.Context()
	ana := auth.Principal{User: "alice", Role: auth.RoleOperator}
	sid := auth.Principal{User: "bob", Role: auth.RoleSecurityAdmin}
	g, err := s.Request(ctx, ana, Draft{Device: "dev-1", PublicKey: pubKey(t), Justification: "INC-12"})
	if err != nil || g.State != StateRequested || g.ApprovalID == "" {
		t.Fatalf("request: %+v %v", g, err)
	}
	if _, err := s.Approve(ctx, ana, g.ID, ""); !errors.Is(err, approval.ErrSelfApproval) {
		t.Fatalf("self-approval: %v", err)
	}
	if _, err := s.Approve(ctx, auth.Principal{User: "carol", Role: auth.RoleOperator}, g.ID, ""); !errors.Is(err, approval.ErrForbidden) {
		t.Fatalf("approval without access.approve: %v", err)
	}
	if g, err = s.Approve(ctx, sid, g.ID, "ok"); err != nil || g.State != StateApproved || g.Certificate == "" || !slices.Equal(g.Approvers, []string{"bob"}) {
		t.Fatalf("approve: %+v %v", g, err)
	}
	if e := aud.find("access.approved", g.ID); e == nil || e.Details["approvers"] != "bob" {
		t.Fatalf("approval audit: %+v", e)
	}
	// The requester may still withdraw a request.
	w, err := s.Request(ctx, ana, Draft{Device: "dev-1", PublicKey: pubKey(t), Justification: "INC-13"})
	if err != nil {
		t.Fatal(err)
	}
	if w, err = s.Deny(ctx, ana, w.ID, "not needed"); err != nil || w.State != StateDenied {
		t.Fatalf("withdraw: %+v %v", w, err)
	}
}

// TestApprovalsPolicy: the access policy's approvals count how many other
// people must approve a grant; under the fleet's two-person rule at least
// that rule's count.
func TestApprovalsPolicy(t *testing.T) {
	s, _ := openOwn(t, Policy{Approvals: 2})
	ctx := t.Context()
	ana := auth.Principal{User: "alice", Role: auth.RoleOperator}
	g, err := s.Request(ctx, ana, Draft{Device: "dev-1", PublicKey: pubKey(t), Justification: "INC-14"})
	if err != nil {
		t.Fatal(err)
	}
	if g, err = s.Approve(ctx, auth.Principal{User: "bob", Role: auth.RoleSecurityAdmin}, g.ID, ""); err != nil || g.State != StateRequested || g.Certificate != "" {
		t.Fatalf("after one of two approvals: %+v %v", g, err)
	}
	if g, err = s.Approve(ctx, auth.Principal{User: "dan", Role: auth.RoleSecurityAdmin}, g.ID, ""); err != nil || g.State != StateApproved ||
		!slices.Equal(g.Approvers, []string{"bob", "dan"}) {
		t.Fatalf("after two: %+v %v", g, err)
	}
	for _, n := range []int{-1, approval.MaxApprovals + 1} {
		if _, err := (Policy{Approvals: n}).withDefaults(); err == nil {
			t.Errorf("%d approvals accepted", n)
		}
	}
	// The fleet's rule asks for two; the policy's one does not lower it.
	f := newFixtureRule(t, 2)
	g, err = f.s.Request(ctx, alice, Draft{Device: "dev-1", PublicKey: pubKey(t), Justification: "INC-15"})
	if err != nil {
		t.Fatal(err)
	}
	if g, err = f.s.Approve(ctx, bob, g.ID, ""); err != nil || g.State != StateRequested {
		t.Fatalf("one approval under a rule of two: %+v %v", g, err)
	}
}

// TestNoApprovalsNoGrant: with neither the fleet's approvals nor a way
// to establish requesters again nobody gets access.
func TestNoApprovalsNoGrant(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, TrustDomain: "fleet.example", Devices: devices{"dev-1": {ID: "dev-1"}}, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Request(t.Context(), alice, Draft{Device: "dev-1", PublicKey: pubKey(t), Justification: "x"}); !errors.Is(err, ErrNoApprovals) {
		t.Fatalf("%v", err)
	}
	if _, err := s.Request(t.Context(), actor{name: "eve"}, Draft{}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("%v", err)
	}
}

// TestConformance runs the grant tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	pgtest.Conformance(t, []pgtest.Test{
		{Name: "GrantLifecycle", Fn: TestGrantLifecycle},
		{Name: "GrantExpiry", Fn: TestGrantExpiry},
		{Name: "WithoutTwoPersonRule", Fn: TestWithoutTwoPersonRule},
		{Name: "ApprovalsPolicy", Fn: TestApprovalsPolicy},
	})
}

// TestSessionEventsBounded: a device cannot record more than
// MaxSessionEvents session claims a minute.
func TestSessionEventsBounded(t *testing.T) {
	f := newFixture(t)
	bogus := wire.AccessSession{Event: wire.AccessSessionStart, User: "root", From: "192.0.2.1", KeyID: "x"}
	for range MaxSessionEvents/wire.MaxAccessEvents + 2 {
		evs := make([]wire.AccessSession, wire.MaxAccessEvents)
		for i := range evs {
			evs[i] = bogus
		}
		f.s.Sessions(t.Context(), "dev-1", &wire.AccessSessions{Events: evs})
	}
	if n := len(f.aud.Entries()); n != MaxSessionEvents {
		t.Fatalf("%d claims recorded, want %d", n, MaxSessionEvents)
	}
	f.clk.Add(time.Minute)
	f.s.Sessions(t.Context(), "dev-1", &wire.AccessSessions{Events: []wire.AccessSession{bogus}})
	if n := len(f.aud.Entries()); n != MaxSessionEvents+1 {
		t.Fatalf("the next minute: %d claims recorded", n)
	}
}

// TestTrustOnRequest: an empty access.sessions from a device is answered
// with its access.trust (user CA, its principals, the KRL).
func TestTrustOnRequest(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	b, err := wire.Encode(wire.TypeAccessSessions, nil, f.clk.Now(), &wire.AccessSessions{})
	if err != nil {
		t.Fatal(err)
	}
	env, err := wire.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	f.s.Submit("dev-3", env)
	var got [][]byte
	if !wait.Poll(wait.Timeout, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		got = f.sent["dev-3"]
		return len(got) > 0
	}) {
		t.Fatal("no trust sent")
	}
	env, _ = wire.Decode(got[0])
	var tr wire.AccessTrust
	if err := wire.DecodeBody(env, wire.TypeAccessTrust, &tr); err != nil {
		t.Fatal(err)
	}
	if tr.UserCAKeys[0] != f.s.CA().AuthorizedKey() || !slices.Equal(tr.Logins[0].Principals, []string{"root@dev-3"}) {
		t.Fatalf("trust %+v", tr)
	}
}
