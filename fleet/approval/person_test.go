package approval

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// person is an actor whose account changed at since.
type person struct {
	auth.Principal
	since time.Time
}

func (p person) Since() time.Time { return p.since }

// TestAccountChangedAfterTheRequestCannotApprove: one person cannot make
// (or take over) a second account and approve their own request with it:
// an account created or changed after the request was filed is refused,
// and its inbox does not offer the request.
func TestAccountChangedAfterTheRequestCannotApprove(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	filed := f.clk.Now()
	r := f.release(t, alice)
	f.clk.Advance(time.Minute)
	for name, since := range map[string]time.Time{"created after": filed.Add(time.Second), "at the same instant": filed} {
		shadow := person{Principal: dave, since: since}
		if _, err := f.m.Approve(ctx, shadow, r.ID, ""); !errors.Is(err, ErrAccountChanged) {
			t.Fatalf("an account %s the request: %v", name, err)
		}
		if in, err := f.m.Inbox(ctx, shadow); err != nil || len(in) != 0 {
			t.Fatalf("inbox of an account %s the request: %+v %v", name, in, err)
		}
	}
	if got, _ := f.m.Get(ctx, r.ID); got.State != StatePending || len(got.Approvals) != 0 {
		t.Fatalf("after refused approvals: %+v", got)
	}
	older := person{Principal: dave, since: filed.Add(-time.Hour)}
	if in, err := f.m.Inbox(ctx, older); err != nil || len(in) != 1 {
		t.Fatalf("inbox of an older account: %+v %v", in, err)
	}
	if got, err := f.m.Approve(ctx, older, r.ID, ""); err != nil || got.State != StateExecuted {
		t.Fatalf("an account older than the request: %+v %v", got, err)
	}
}

// people is a Config.Requester whose answers a test changes.
type people struct {
	mu  sync.Mutex
	now map[string]Actor
	err error
	got []auth.Credential
}

func (p *people) requester(_ context.Context, c auth.Credential) (Actor, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, c)
	if p.err != nil {
		return nil, p.err
	}
	return p.now[c.User], nil
}

func (p *people) set(name string, a Actor) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now[name] = a
}

// TestRequesterCheckedWhenItRuns: an approved request runs as its
// requester established again from the credential they filed with, and
// only if they still hold the request's permission.
func TestRequesterCheckedWhenItRuns(t *testing.T) {
	ppl := &people{now: map[string]Actor{"alice": alice, "sec": sec}}
	f := newFixture(t, func(c *Config) { c.Requester = ppl.requester })
	ctx := context.Background()

	r := f.release(t, alice)
	if r.Permission != auth.PermFirmwareWrite || r.Credential != alice.Credential() {
		t.Fatalf("request keeps %q and %+v", r.Permission, r.Credential)
	}
	ppl.set("alice", auth.Principal{User: "alice", Role: auth.RoleViewer}) // demoted meanwhile
	got, err := f.m.Approve(ctx, dave, r.ID, "")
	if err != nil || got.State != StateFailed || !strings.Contains(got.Error, string(auth.PermFirmwareWrite)) {
		t.Fatalf("a demoted requester's approved request: %+v %v", got, err)
	}
	if n := f.exec[KindFirmwareRelease].n.Load(); n != 0 {
		t.Fatalf("the executor ran %d times", n)
	}
	if a := f.audit.actions(r.ID); a[len(a)-1] != "failed:" {
		t.Fatalf("audit %v", a)
	}
	if c := ppl.got[len(ppl.got)-1]; c != alice.Credential() {
		t.Fatalf("established again from %+v", c)
	}

	// A credential that no longer authenticates (a revoked token, a
	// disabled user) does not run either.
	ppl.set("alice", alice)
	ppl.err = auth.ErrCredentialGone
	r = f.release(t, alice)
	if got, _ := f.m.Approve(ctx, dave, r.ID, ""); got.State != StateFailed || !strings.Contains(got.Error, "no longer") {
		t.Fatalf("a gone credential's approved request: %+v", got)
	}
	// Nor one that names someone else.
	ppl.err = nil
	ppl.set("alice", carol)
	r = f.release(t, alice)
	if got, _ := f.m.Approve(ctx, dave, r.ID, ""); got.State != StateFailed {
		t.Fatalf("run as someone else: %+v", got)
	}
	// Still holding it: it runs.
	ppl.set("alice", alice)
	r = f.release(t, alice)
	if got, err := f.m.Approve(ctx, dave, r.ID, ""); err != nil || got.State != StateExecuted {
		t.Fatalf("a requester who still may: %+v %v", got, err)
	}
}

// TestNoRequesterNoRun: without Config.Requester nothing approved runs.
func TestNoRequesterNoRun(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Requester = nil })
	r := f.release(t, alice)
	got, err := f.m.Approve(context.Background(), dave, r.ID, "")
	if err != nil || got.State != StateFailed || f.exec[KindFirmwareRelease].n.Load() != 0 {
		t.Fatalf("%+v %v", got, err)
	}
}

// TestOlderRequestsRunAsTheRequestersRole: a request stored before
// requests kept a permission and a credential runs as its requester's
// current role allows, under the kind's rule.
func TestOlderRequestsRunAsTheRequestersRole(t *testing.T) {
	ppl := &people{now: map[string]Actor{"alice": alice}}
	f := newFixture(t, func(c *Config) { c.Requester = ppl.requester })
	r := f.release(t, alice)
	r.Permission, r.Credential = "", auth.Credential{}
	if err := f.m.db.Update(t.Context(), func(tx kv.Tx) error { return putRequest(tx, &r) }); err != nil {
		t.Fatal(err)
	}
	if got, err := f.m.Approve(context.Background(), dave, r.ID, ""); err != nil || got.State != StateExecuted {
		t.Fatalf("%+v %v", got, err)
	}
	if c := ppl.got[0]; c.User != "alice" || c.Method != auth.MethodSession {
		t.Fatalf("established again from %+v", c)
	}
}

// TestWithdrawNeedsTheRequestPermission: a requester withdraws only with a
// credential that could have filed the request.
func TestWithdrawNeedsTheRequestPermission(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	r := f.release(t, alice)
	aliceAsViewer := auth.Principal{User: "alice", Role: auth.RoleViewer}
	if _, err := f.m.Reject(ctx, aliceAsViewer, r.ID, "never mind"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("withdrawal with a viewer's scope: %v", err)
	}
	if got, err := f.m.Reject(ctx, alice, r.ID, "never mind"); err != nil || got.State != StateRejected {
		t.Fatalf("withdrawal: %+v %v", got, err)
	}
}
