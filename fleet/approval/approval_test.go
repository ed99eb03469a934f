package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/internal/clocktest"
	"github.com/sigil-iot/sigil/internal/runtest"
)

// memAuditor keeps events in memory; fail makes Record fail for an action.
type memAuditor struct {
	mu     sync.Mutex
	events []Event
	fail   string
}

func (a *memAuditor) Record(_ context.Context, e Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e.Action == a.fail {
		return errors.New("audit log unavailable")
	}
	a.events = append(a.events, e)
	return nil
}

func (a *memAuditor) actions(id string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, e := range a.events {
		if e.RequestID == id {
			out = append(out, e.Action+":"+e.Actor)
		}
	}
	return out
}

// counter is an executor that counts its runs and remembers the request.
type counter struct {
	n    atomic.Int64
	mu   sync.Mutex
	last Request
	err  error
}

func (c *counter) exec(_ context.Context, r Request, as Actor) error {
	if as.Subject() != r.Requester {
		return fmt.Errorf("run as %s, requested by %s", as.Subject(), r.Requester)
	}
	c.n.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = r
	return c.err
}

// asFiled is a Config.Requester for tests: the requester exactly as the
// credential they filed with says.
func asFiled(_ context.Context, c auth.Credential) (Actor, error) {
	return auth.Principal{User: c.User, Role: c.Scope}, nil
}

// People, as auth would authenticate them.
var (
	root     = auth.Principal{User: "root", Role: auth.RoleAdmin}
	alice    = auth.Principal{User: "alice", Role: auth.RoleOperator}
	carol    = auth.Principal{User: "carol", Role: auth.RoleOperator}
	viewer   = auth.Principal{User: "vic", Role: auth.RoleViewer}
	dave     = auth.Principal{User: "dave", Role: auth.RoleReleaseApprover}
	erin     = auth.Principal{User: "erin", Role: auth.RoleReleaseApprover}
	sec      = auth.Principal{User: "sec", Role: auth.RoleSecurityAdmin}
	sec2     = auth.Principal{User: "sec2", Role: auth.RoleSecurityAdmin}
	aliceTok = auth.Principal{User: "alice", Role: auth.RoleOperator, Method: auth.MethodToken}
)

type fixture struct {
	m     *Manager
	clk   *clocktest.Clock
	audit *memAuditor
	exec  map[Kind]*counter
}

func newFixture(t testing.TB, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{
		clk:   clocktest.New(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)),
		audit: &memAuditor{},
		exec:  make(map[Kind]*counter),
	}
	cfg := Config{Path: filepath.Join(t.TempDir(), "approvals.db"), Now: f.clk.Now, Auditor: f.audit, NoSync: true, Requester: asFiled}
	if mod != nil {
		mod(&cfg)
	}
	m, err := openBackend(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	f.m = m
	for k := range m.cfg.Rules {
		c := &counter{}
		f.exec[k] = c
		if err := m.Register(k, c.exec); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fixture) release(t testing.TB, by Actor) Request {
	t.Helper()
	r, err := f.m.Submit(context.Background(), by, Draft{
		Kind: KindFirmwareRelease, Target: "campaign-42",
		Params:        json.RawMessage(`{"image": "fw-2.1.0", "waves": [1, 10, 100]}`),
		Justification: "fixes CVE-2026-0001 in the TLS stack",
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTwoPersonRule(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	r := f.release(t, root) // even an admin needs someone else
	if r.State != StatePending || r.Required != 1 || r.Approve != auth.PermFirmwareApprove || r.Requester != "root" {
		t.Fatalf("submitted %+v", r)
	}
	if _, err := f.m.Approve(ctx, root, r.ID, ""); !errors.Is(err, ErrSelfApproval) {
		t.Fatalf("self-approval: %v", err)
	}
	for _, p := range []auth.Principal{viewer, carol, sec} { // none holds firmware.approve
		if _, err := f.m.Approve(ctx, p, r.ID, ""); !errors.Is(err, ErrForbidden) {
			t.Fatalf("%s approves: %v", p.User, err)
		}
	}
	if n := f.exec[KindFirmwareRelease].n.Load(); n != 0 {
		t.Fatalf("executor ran %d times before any valid approval", n)
	}
	got, err := f.m.Approve(ctx, dave, r.ID, "checked the release notes")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateExecuted || len(got.Approvals) != 1 || got.Approvals[0].By != "dave" || got.Executed.IsZero() {
		t.Fatalf("after approval: %+v", got)
	}
	c := f.exec[KindFirmwareRelease]
	if c.n.Load() != 1 || c.last.ID != r.ID || string(c.last.Params) != `{"image":"fw-2.1.0","waves":[1,10,100]}` {
		t.Fatalf("executor: runs=%d request=%+v", c.n.Load(), c.last)
	}
	if _, err := f.m.Approve(ctx, erin, r.ID, ""); !errors.Is(err, ErrNotPending) {
		t.Fatalf("approval after execution: %v", err)
	}
	if c.n.Load() != 1 {
		t.Fatal("executor ran again")
	}
	want := []string{"requested:root", "approved:dave", "executed:"}
	if got := f.audit.actions(r.ID); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("audit %v, want %v", got, want)
	}
	stored, err := f.m.Get(ctx, r.ID)
	if err != nil || stored.State != StateExecuted {
		t.Fatalf("stored: %+v %v", stored, err)
	}
}

func TestSelfApprovalThroughAToken(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Rules = map[Kind]Rule{KindFirmwareRelease: {Request: auth.PermFirmwareWrite, Approve: auth.PermFirmwareWrite}}
	})
	r := f.release(t, alice)
	if _, err := f.m.Approve(context.Background(), aliceTok, r.ID, ""); !errors.Is(err, ErrSelfApproval) {
		t.Fatalf("requester approving with her API token: %v", err)
	}
	if _, err := f.m.Approve(context.Background(), carol, r.ID, ""); err != nil {
		t.Fatalf("another operator: %v", err)
	}
}

func TestApprovalCount(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Rules = map[Kind]Rule{KindCARotation: {Request: auth.PermCAAdmin, Approve: auth.PermSecurityApprove, Approvals: 2}}
	})
	ctx := context.Background()
	r, err := f.m.Submit(ctx, root, Draft{Kind: KindCARotation, Target: "fleet-ca", Justification: "yearly rotation"})
	if err != nil {
		t.Fatal(err)
	}
	if rule := f.m.Rules()[KindCARotation]; rule.Approvals != 2 || rule.TTL != 72*time.Hour {
		t.Fatalf("rule in force %+v", rule)
	}
	if string(r.Params) != "{}" {
		t.Fatalf("empty params stored as %q", r.Params)
	}
	got, err := f.m.Approve(ctx, sec, r.ID, "")
	if err != nil || got.State != StatePending || len(got.Approvals) != 1 {
		t.Fatalf("first approval: %+v %v", got, err)
	}
	if _, err := f.m.Approve(ctx, sec, r.ID, "again"); !errors.Is(err, ErrAlreadyApproved) {
		t.Fatalf("second approval by the same person: %v", err)
	}
	if n := f.exec[KindCARotation].n.Load(); n != 0 {
		t.Fatalf("executed after 1 of 2 approvals (%d runs)", n)
	}
	got, err = f.m.Approve(ctx, sec2, r.ID, "")
	if err != nil || got.State != StateExecuted {
		t.Fatalf("second approval: %+v %v", got, err)
	}
	if n := f.exec[KindCARotation].n.Load(); n != 1 {
		t.Fatalf("%d runs, want 1", n)
	}
}

// TestDraftApprovals: a draft may ask for more approvals than its rule,
// never fewer, and never more than MaxApprovals.
func TestDraftApprovals(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Rules = map[Kind]Rule{KindCARotation: {Request: auth.PermCAAdmin, Approve: auth.PermSecurityApprove, Approvals: 1}}
	})
	ctx := context.Background()
	for _, n := range []int{-1, MaxApprovals + 1} {
		if _, err := f.m.Submit(ctx, root, Draft{Kind: KindCARotation, Target: "fleet-ca", Justification: "x", Approvals: n}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%d approvals: %v", n, err)
		}
	}
	r, err := f.m.Submit(ctx, root, Draft{Kind: KindCARotation, Target: "fleet-ca", Justification: "x", Approvals: 2})
	if err != nil || r.Required != 2 {
		t.Fatalf("two approvals: %+v %v", r, err)
	}
	if got, err := f.m.Approve(ctx, sec, r.ID, ""); err != nil || got.State != StatePending {
		t.Fatalf("first approval: %+v %v", got, err)
	}
	if got, err := f.m.Approve(ctx, sec2, r.ID, ""); err != nil || got.State != StateExecuted {
		t.Fatalf("second approval: %+v %v", got, err)
	}
	f2 := newFixture(t, func(c *Config) {
		c.Rules = map[Kind]Rule{KindCARotation: {Request: auth.PermCAAdmin, Approve: auth.PermSecurityApprove, Approvals: 2}}
	})
	if r, err := f2.m.Submit(ctx, root, Draft{Kind: KindCARotation, Target: "fleet-ca", Justification: "x", Approvals: 1}); err != nil || r.Required != 2 {
		t.Fatalf("a draft lowered the rule: %+v %v", r, err)
	}
}

func TestExecutesOnceUnderConcurrentApprovals(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Rules = map[Kind]Rule{KindMassRevocation: {Request: auth.PermRotationWrite, Approve: auth.PermSecurityApprove, Approvals: 2}}
	})
	ctx := context.Background()
	approvers := make([]auth.Principal, 8)
	for i := range approvers {
		approvers[i] = auth.Principal{User: fmt.Sprintf("sec%d", i), Role: auth.RoleSecurityAdmin}
	}
	const requests = 10
	for i := range requests {
		r, err := f.m.Submit(ctx, alice, Draft{Kind: KindMassRevocation, Target: fmt.Sprintf("group=batch-%d", i), Justification: "leaked keys"})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var ok, notPending atomic.Int64
		for _, p := range approvers {
			wg.Go(func() {
				_, err := f.m.Approve(ctx, p, r.ID, "")
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrNotPending):
					notPending.Add(1)
				default:
					t.Errorf("approve: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 2 || notPending.Load() != int64(len(approvers)-2) {
			t.Fatalf("request %d: %d approvals accepted, %d refused; want 2 and %d", i, ok.Load(), notPending.Load(), len(approvers)-2)
		}
		if n := f.exec[KindMassRevocation].n.Load(); n != int64(i+1) {
			t.Fatalf("after %d requests the executor ran %d times", i+1, n)
		}
		got, _ := f.m.Get(ctx, r.ID)
		if got.State != StateExecuted || len(got.Approvals) != 2 {
			t.Fatalf("request %d: %+v", i, got)
		}
	}
}

func TestExpiredCannotBeApproved(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	r, err := f.m.Submit(ctx, alice, Draft{Kind: KindFirmwareRelease, Target: "campaign-7", Justification: "hotfix", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Expires.Equal(f.clk.Now().Add(time.Hour)) {
		t.Fatalf("expires %v", r.Expires)
	}
	f.clk.Advance(59 * time.Minute)
	if in, _ := f.m.Inbox(ctx, dave); len(in) != 1 {
		t.Fatalf("inbox before expiry: %d", len(in))
	}
	f.clk.Advance(time.Minute)
	if in, _ := f.m.Inbox(ctx, dave); len(in) != 0 {
		t.Fatalf("inbox lists an expired request")
	}
	got, err := f.m.Approve(ctx, dave, r.ID, "")
	if !errors.Is(err, ErrExpired) || got.State != StateExpired {
		t.Fatalf("approve after expiry: %+v %v", got, err)
	}
	if _, err := f.m.Approve(ctx, erin, r.ID, ""); !errors.Is(err, ErrNotPending) {
		t.Fatalf("approve an expired request again: %v", err)
	}
	if n := f.exec[KindFirmwareRelease].n.Load(); n != 0 {
		t.Fatalf("an expired request ran %d times", n)
	}
	if got := f.audit.actions(r.ID); strings.Join(got, " ") != "requested:alice expired:" {
		t.Fatalf("audit %v", got)
	}
}

func TestRejectedCannotBeExecuted(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	r := f.release(t, alice)
	if _, err := f.m.Reject(ctx, viewer, r.ID, "no"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("viewer rejects: %v", err)
	}
	if _, err := f.m.Reject(ctx, dave, r.ID, " "); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reject without reason: %v", err)
	}
	got, err := f.m.Reject(ctx, dave, r.ID, "wave sizes too aggressive")
	if err != nil || got.State != StateRejected || got.Rejection == nil || got.Rejection.By != "dave" {
		t.Fatalf("reject: %+v %v", got, err)
	}
	if _, err := f.m.Approve(ctx, erin, r.ID, ""); !errors.Is(err, ErrNotPending) {
		t.Fatalf("approve a rejected request: %v", err)
	}
	if n := f.exec[KindFirmwareRelease].n.Load(); n != 0 {
		t.Fatalf("a rejected request ran %d times", n)
	}
	// The requester may withdraw their own.
	r2 := f.release(t, alice)
	if got, err := f.m.Reject(ctx, alice, r2.ID, "wrong image"); err != nil || got.State != StateRejected {
		t.Fatalf("withdraw: %+v %v", got, err)
	}
	if got := f.audit.actions(r.ID); strings.Join(got, " ") != "requested:alice rejected:dave" {
		t.Fatalf("audit %v", got)
	}
}

func TestExecutorFailureAndPanicAreRecorded(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	f.exec[KindFirmwareRelease].err = errors.New("campaign-42 no longer exists")
	r := f.release(t, alice)
	got, err := f.m.Approve(ctx, dave, r.ID, "")
	if err != nil || got.State != StateFailed || got.Error != "campaign-42 no longer exists" {
		t.Fatalf("failed execution: %+v %v", got, err)
	}
	if _, err := f.m.Approve(ctx, erin, r.ID, ""); !errors.Is(err, ErrNotPending) {
		t.Fatalf("a failed request can be approved again: %v", err)
	}
	if a := f.audit.actions(r.ID); a[len(a)-1] != "failed:" {
		t.Fatalf("audit %v", a)
	}

	p, err := openBackend(t, Config{Path: filepath.Join(t.TempDir(), "p.db"), Now: f.clk.Now, NoSync: true, Requester: asFiled})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Register(KindSecretChange, func(context.Context, Request, Actor) error { panic("nil map") })
	r2, err := p.Submit(ctx, sec, Draft{Kind: KindSecretChange, Target: "wifi-psk", Justification: "rotate"})
	if err != nil {
		t.Fatal(err)
	}
	got, err = p.Approve(ctx, sec2, r2.ID, "")
	if err != nil || got.State != StateFailed || !strings.Contains(got.Error, "panicked") {
		t.Fatalf("panicking executor: %+v %v", got, err)
	}
}

func TestExecutorOutlivesTheApproversContext(t *testing.T) {
	f := newFixture(t, nil)
	var sawErr error
	var sawDeadline bool
	m, err := openBackend(t, Config{Path: filepath.Join(t.TempDir(), "x.db"), Now: f.clk.Now, NoSync: true, ExecTimeout: time.Minute, Requester: asFiled})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.Register(KindPolicyChange, func(ctx context.Context, r Request, _ Actor) error {
		sawErr = ctx.Err()
		_, sawDeadline = ctx.Deadline()
		return nil
	})
	r, err := m.Submit(context.Background(), sec, Draft{Kind: KindPolicyChange, Target: "policy/kiosk", Justification: "new firmware"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the approving client went away
	if got, err := m.Approve(ctx, sec2, r.ID, ""); err != nil || got.State != StateExecuted {
		t.Fatalf("%+v %v", got, err)
	}
	if sawErr != nil || !sawDeadline {
		t.Fatalf("executor context: err=%v deadline=%v", sawErr, sawDeadline)
	}
}

func TestAuditorFailureBlocksTheDecision(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	r := f.release(t, alice)
	f.audit.fail = "approved"
	if _, err := f.m.Approve(ctx, dave, r.ID, ""); err == nil {
		t.Fatal("an approval the audit log could not record went through")
	}
	got, _ := f.m.Get(ctx, r.ID)
	if got.State != StatePending || len(got.Approvals) != 0 || f.exec[KindFirmwareRelease].n.Load() != 0 {
		t.Fatalf("after a failed audit: %+v", got)
	}
	f.audit.fail = "requested"
	if _, err := f.m.Submit(ctx, alice, Draft{Kind: KindFirmwareRelease, Target: "c", Justification: "j"}); err == nil {
		t.Fatal("a request the audit log could not record was stored")
	}
	if all, _ := f.m.Pending(ctx); len(all) != 1 {
		t.Fatalf("%d pending, want 1", len(all))
	}
	f.audit.fail = ""
	if got, err := f.m.Approve(ctx, dave, r.ID, ""); err != nil || got.State != StateExecuted {
		t.Fatalf("after the audit log recovered: %+v %v", got, err)
	}
}

func TestInbox(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Rules = DefaultRules()
		rule := c.Rules[KindFirmwareRelease]
		rule.Approvals = 2
		c.Rules[KindFirmwareRelease] = rule
	})
	ctx := context.Background()
	fw := f.release(t, alice)
	pol, err := f.m.Submit(ctx, sec, Draft{Kind: KindPolicyChange, Target: "policy/gateway", Justification: "allow the new bootloader"})
	if err != nil {
		t.Fatal(err)
	}
	ids := func(rs []Request) string {
		var s []string
		for _, r := range rs {
			s = append(s, r.ID)
		}
		return strings.Join(s, ",")
	}
	for _, tc := range []struct {
		who  auth.Principal
		want string
	}{
		{dave, fw.ID},                // release approver: the firmware release
		{sec, ""},                    // her own policy change; no firmware.approve
		{sec2, pol.ID},               // the other security admin
		{root, fw.ID + "," + pol.ID}, // admin holds every permission
		{alice, ""},                  // her own release; no approve permission
		{viewer, ""},
	} {
		got, err := f.m.Inbox(ctx, tc.who)
		if err != nil {
			t.Fatal(err)
		}
		if ids(got) != tc.want {
			t.Errorf("inbox of %s: %s, want %s", tc.who.User, ids(got), tc.want)
		}
	}
	if _, err := f.m.Approve(ctx, dave, fw.ID, ""); err != nil {
		t.Fatal(err)
	}
	in, _ := f.m.Inbox(ctx, dave)
	if len(in) != 0 {
		t.Fatalf("dave's inbox still lists what he approved")
	}
	in, _ = f.m.Inbox(ctx, erin)
	if len(in) != 1 || in[0].Justification == "" || in[0].Target != "campaign-42" || len(in[0].Approvals) != 1 {
		t.Fatalf("erin's inbox does not say what and why: %+v", in)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Rules = map[Kind]Rule{KindSecretChange: {Request: auth.PermSecretsWrite, Approve: auth.PermSecurityApprove, Approvals: 2}}
	})
	ctx := context.Background()
	r, err := f.m.Submit(ctx, sec, Draft{Kind: KindSecretChange, Target: "wifi-psk", Params: json.RawMessage(`{"version":3}`), Justification: "rotation"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Approve(ctx, root, r.ID, ""); err != nil {
		t.Fatal(err)
	}
	// A request that was executing when the server died.
	stuck, err := f.m.Submit(ctx, sec, Draft{Kind: KindSecretChange, Target: "mqtt-password", Justification: "leak"})
	if err != nil {
		t.Fatal(err)
	}
	stuck.State = StateExecuting
	if err := f.m.db.Update(ctx, func(tx kv.Tx) error { return putRequest(tx, &stuck) }); err != nil {
		t.Fatal(err)
	}
	path := f.m.cfg.Path
	f.m.Close()

	audit := &memAuditor{}
	m, err := openBackend(t, Config{Path: path, Now: f.clk.Now, NoSync: true, Auditor: audit, Requester: asFiled,
		Rules: map[Kind]Rule{KindSecretChange: {Request: auth.PermSecretsWrite, Approve: auth.PermSecurityApprove, Approvals: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var runs atomic.Int64
	m.Register(KindSecretChange, func(context.Context, Request, Actor) error { runs.Add(1); return nil })
	got, err := m.Get(ctx, stuck.ID)
	if err != nil || got.State != StateInterrupted || got.Error == "" {
		t.Fatalf("executing at shutdown: %+v %v", got, err)
	}
	if a := audit.actions(stuck.ID); len(a) != 1 || a[0] != "interrupted:" {
		t.Fatalf("audit %v", a)
	}
	if _, err := m.Approve(ctx, sec2, stuck.ID, ""); !errors.Is(err, ErrNotPending) {
		t.Fatalf("an interrupted request can be approved: %v", err)
	}
	if _, err := m.Approve(ctx, root, r.ID, ""); !errors.Is(err, ErrAlreadyApproved) {
		t.Fatalf("root's approval was forgotten: %v", err)
	}
	if got, err := m.Approve(ctx, sec2, r.ID, ""); err != nil || got.State != StateExecuted || runs.Load() != 1 {
		t.Fatalf("second approval after restart: %+v %v (runs %d)", got, err, runs.Load())
	}
}

func TestSubmitValidation(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	base := Draft{Kind: KindFirmwareRelease, Target: "campaign-1", Justification: "why"}
	for name, tc := range map[string]struct {
		mod  func(*Draft)
		who  auth.Principal
		want error
	}{
		"unknown kind":     {func(d *Draft) { d.Kind = "reboot.all" }, alice, ErrUnknownKind},
		"no permission":    {func(d *Draft) {}, viewer, ErrForbidden},
		"approver only":    {func(d *Draft) {}, dave, ErrForbidden},
		"no justification": {func(d *Draft) { d.Justification = "  " }, alice, ErrInvalid},
		"long reason":      {func(d *Draft) { d.Justification = strings.Repeat("x", 2001) }, alice, ErrInvalid},
		"no target":        {func(d *Draft) { d.Target = "" }, alice, ErrInvalid},
		"two-line target":  {func(d *Draft) { d.Target = "a\nb" }, alice, ErrInvalid},
		"bad JSON":         {func(d *Draft) { d.Params = json.RawMessage(`{"a":`) }, alice, ErrInvalid},
		"huge params":      {func(d *Draft) { d.Params = json.RawMessage(`"` + strings.Repeat("x", 70000) + `"`) }, alice, ErrInvalid},
		"ttl too long":     {func(d *Draft) { d.TTL = 31 * 24 * time.Hour }, alice, ErrInvalid},
		"negative ttl":     {func(d *Draft) { d.TTL = -time.Hour }, alice, ErrInvalid},
	} {
		d := base
		tc.mod(&d)
		if _, err := f.m.Submit(ctx, tc.who, d); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if all, _ := f.m.Pending(ctx); len(all) != 0 {
		t.Fatalf("refused drafts were stored: %d", len(all))
	}
	m, err := openBackend(t, Config{Path: filepath.Join(t.TempDir(), "n.db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Submit(ctx, alice, base); !errors.Is(err, ErrUnknownKind) {
		t.Fatalf("a kind without executor: %v", err)
	}
	if err := m.Register("reboot.all", func(context.Context, Request, Actor) error { return nil }); !errors.Is(err, ErrUnknownKind) {
		t.Fatalf("register a kind without rule: %v", err)
	}
	m.Register(KindFirmwareRelease, func(context.Context, Request, Actor) error { return nil })
	if err := m.Register(KindFirmwareRelease, func(context.Context, Request, Actor) error { return nil }); !errors.Is(err, ErrExists) {
		t.Fatalf("register twice: %v", err)
	}
}

func TestListPages(t *testing.T) {
	f := newFixture(t, nil)
	var ids []string
	for range 7 {
		ids = append(ids, f.release(t, alice).ID)
		f.clk.Advance(time.Second)
	}
	f.m.Reject(context.Background(), dave, ids[2], "dup")
	var seen []string
	cursor := ""
	for {
		page, next, err := f.m.List(t.Context(), Filter{Before: cursor, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			seen = append(seen, r.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	for i := range ids {
		if seen[i] != ids[len(ids)-1-i] {
			t.Fatalf("List order %v, want newest first of %v", seen, ids)
		}
	}
	rej, _, _ := f.m.List(t.Context(), Filter{State: StateRejected})
	if len(rej) != 1 || rej[0].ID != ids[2] {
		t.Fatalf("filter by state: %+v", rej)
	}
}

func TestRunRecordsExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		audit := &memAuditor{}
		m, err := openBackend(t, Config{Path: filepath.Join(t.TempDir(), "r.db"), NoSync: true, Auditor: audit, SweepInterval: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		m.Register(KindFirmwareRelease, func(context.Context, Request, Actor) error { return nil })
		r, err := m.Submit(context.Background(), alice, Draft{Kind: KindFirmwareRelease, Target: "c", Justification: "j", TTL: 10 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		stop := runtest.Start(t, m.Run)
		time.Sleep(9 * time.Minute)
		synctest.Wait()
		if got, _ := m.Get(t.Context(), r.ID); got.State != StatePending {
			t.Fatalf("before expiry: %s", got.State)
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if got, _ := m.Get(t.Context(), r.ID); got.State != StateExpired {
			t.Fatalf("after expiry and a sweep: %s", got.State)
		}
		if a := audit.actions(r.ID); len(a) != 2 || a[1] != "expired:" {
			t.Fatalf("audit %v", a)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzSubmit feeds arbitrary drafts to Submit: it must refuse them with
// ErrInvalid or store exactly what it was given.
func FuzzSubmit(f *testing.F) {
	fx := newFixture(f, nil)
	f.Add("campaign-1", "why", `{"a":1}`)
	f.Add("", "", "")
	f.Add("t\u0000", "j\n", `[1, 2, {"x": null}]`)
	f.Add("t", "j", `{"a":`)
	f.Add("t", "j", `"\ud800"`)
	f.Fuzz(func(t *testing.T, target, justification, params string) {
		r, err := fx.m.Submit(context.Background(), alice, Draft{Kind: KindFirmwareRelease, Target: target,
			Justification: justification, Params: json.RawMessage(params)})
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		got, err := fx.m.Get(t.Context(), r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Target != target || got.Justification != justification || !json.Valid(got.Params) {
			t.Fatalf("stored %+v from target=%q justification=%q params=%q", got, target, justification, params)
		}
		var a, b any
		if strings.TrimSpace(params) != "" {
			if json.Unmarshal([]byte(params), &a) != nil || json.Unmarshal(got.Params, &b) != nil || fmt.Sprint(a) != fmt.Sprint(b) {
				t.Fatalf("params %q stored as %q", params, got.Params)
			}
		}
	})
}
