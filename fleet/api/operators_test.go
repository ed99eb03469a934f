package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

// opsFixture is an API with real operators (auth), optionally the
// two-person rule (approvals) and an audit log, and one API token of the
// admin "root" per scope.
type opsFixture struct {
	srv    *httptest.Server
	auth   *auth.Service
	apr    *approval.Manager // nil without the two-person rule
	inv    *inventory.Store
	log    *audit.Log
	scoped map[auth.Role]string // root's tokens, by scope
	n      int                  // for fresh names
}

// cheapParams are argon2id parameters that cost nothing in tests.
var cheapParams = auth.Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}

const rootPW = "root's long password"

// openOperators opens the operators' store (with cheapParams) and an
// audit log in a temporary directory; both are closed when t ends.
func openOperators(t testing.TB) (*auth.Service, *audit.Log) {
	t.Helper()
	dir := t.TempDir()
	a, err := auth.Open(auth.Config{Path: filepath.Join(dir, "operators.db"), Params: cheapParams, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	lg, err := audit.Open(audit.Config{Path: filepath.Join(dir, "audit.db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
	return a, lg
}

func newOpsFixture(t testing.TB, twoPerson bool) *opsFixture {
	t.Helper()
	a, lg := openOperators(t)
	inv := inventorytest.Open(t)
	f := &opsFixture{auth: a, inv: inv, log: lg, scoped: map[auth.Role]string{}}
	ctx := context.Background()
	if _, err := a.CreateUser(ctx, "root", rootPW, auth.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateUser(ctx, "sec", "sec's long password", auth.RoleSecurityAdmin); err != nil {
		t.Fatal(err)
	}
	for _, role := range auth.Roles() {
		secret, _, err := a.CreateToken(ctx, "root", "scoped "+string(role), role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f.scoped[role] = secret
	}
	cfg := Config{Inventory: inv, Approver: approver{inv}, Auth: a, Audit: lg, RateLimit: -1}
	if twoPerson {
		f.apr = openApprovals(t, t.TempDir(), a)
		cfg.Approvals = f.apr
	}
	f.srv = httptest.NewServer(New(cfg))
	t.Cleanup(f.srv.Close)
	return f
}

// fresh returns a new unique name.
func (f *opsFixture) fresh(prefix string) string {
	f.n++
	return fmt.Sprintf("%s%d", prefix, f.n)
}

// user creates a user with a role directly in the store.
func (f *opsFixture) user(t testing.TB, role auth.Role) string {
	t.Helper()
	name := f.fresh("u")
	if _, err := f.auth.CreateUser(context.Background(), name, "a long enough password", role); err != nil {
		t.Fatal(err)
	}
	return name
}

// do calls the API with a bearer token and a JSON body (or none).
func (f *opsFixture) do(t testing.TB, method, path, tok string, body any, hdr ...string) (*http.Response, string) {
	t.Helper()
	b := ""
	if body != nil {
		raw, _ := json.Marshal(body)
		b = string(raw)
	}
	return call(t, f.srv, method, path, tok, b, hdr...)
}

// TestScopeBoundsOperatorRoutes: on every route that creates, changes or
// revokes users, roles, tokens or approvals, a credential never does more
// than its own scope: an admin's API token scoped to each role is tried
// against every target role, and is allowed exactly when its scope covers
// both the route's permission and the role it hands out or acts on. The
// same holds for what steers secrets (a device's model and group, a token
// granting them), which the two-person rule holds for a second person.
func TestScopeBoundsOperatorRoutes(t *testing.T) {
	for _, twoPerson := range []bool{false, true} {
		t.Run(fmt.Sprintf("two_person_rule=%v", twoPerson), func(t *testing.T) {
			f := newOpsFixture(t, twoPerson)
			admin := func(s auth.Role) bool { return s.Has(auth.PermUsersAdmin) }
			changed := http.StatusOK // a role change: done, or filed for approval
			if twoPerson {
				changed = http.StatusAccepted
			}
			type cell struct {
				route        string
				scope, role  auth.Role // role: the one handed out, or of the user or token acted on
				allowed      bool
				got, wantAny []int
			}
			var cells []cell
			// The token routes need devices.read, which every scope but a
			// broker sync's holds.
			tokens := func(s auth.Role) bool { return s.Has(auth.PermDevicesRead) }
			check := func(route string, scope, role auth.Role, allowed bool, status int, ok ...int) {
				cells = append(cells, cell{route: route, scope: scope, role: role, allowed: allowed, got: []int{status}, wantAny: ok})
			}
			for _, scope := range auth.Roles() {
				tok := f.scoped[scope]
				for _, role := range auth.Roles() {
					// POST /api/v1/tokens: a token for the caller, scoped to role.
					resp, body := f.do(t, "POST", "/api/v1/tokens", tok, TokenRequest{Name: "child", Role: role})
					check("POST /api/v1/tokens", scope, role, tokens(scope) && scope.Covers(role), resp.StatusCode, http.StatusCreated)
					var tc TokenCreated
					if json.Unmarshal([]byte(body), &tc); resp.StatusCode == http.StatusCreated && tc.Pending != (twoPerson && mayApprove(role)) {
						t.Errorf("a %s token under two_person_rule=%v: pending=%v", role, twoPerson, tc.Pending)
					}

					// POST /api/v1/users with role.
					resp, body = f.do(t, "POST", "/api/v1/users", tok, UserRequest{Name: f.fresh("new"), Role: role})
					check("POST /api/v1/users", scope, role, admin(scope) && scope.Covers(role), resp.StatusCode, http.StatusCreated)
					var uc UserCreated
					if json.Unmarshal([]byte(body), &uc); resp.StatusCode == http.StatusCreated && (uc.Disabled != twoPerson || (uc.Approval != nil) != twoPerson) {
						t.Errorf("a user created under two_person_rule=%v: disabled=%v approval=%v", twoPerson, uc.Disabled, uc.Approval)
					}

					// PATCH /api/v1/users/{name}: a viewer promoted to role,
					// and a user of role demoted to viewer.
					up := f.user(t, auth.RoleViewer)
					resp, _ = f.do(t, "PATCH", "/api/v1/users/"+up, tok, UserPatch{Role: &role}, JustificationHeader, "table test")
					check("PATCH /api/v1/users/{name} (promote)", scope, role, admin(scope) && scope.Covers(role), resp.StatusCode, changed)
					down := f.user(t, role)
					viewer := auth.RoleViewer
					resp, _ = f.do(t, "PATCH", "/api/v1/users/"+down, tok, UserPatch{Role: &viewer}, JustificationHeader, "table test")
					check("PATCH /api/v1/users/{name} (demote)", scope, role, admin(scope) && scope.Covers(role), resp.StatusCode, changed)

					// PATCH disabled, DELETE: a user of role.
					yes := true
					resp, _ = f.do(t, "PATCH", "/api/v1/users/"+f.user(t, role), tok, UserPatch{Disabled: &yes})
					check("PATCH /api/v1/users/{name} (disable)", scope, role, admin(scope) && scope.Covers(role), resp.StatusCode, http.StatusOK)
					resp, _ = f.do(t, "DELETE", "/api/v1/users/"+f.user(t, role), tok, nil)
					check("DELETE /api/v1/users/{name}", scope, role, admin(scope) && scope.Covers(role), resp.StatusCode, http.StatusNoContent)

					// DELETE /api/v1/tokens/{id}: another token of the same
					// owner, scoped to role.
					_, other, err := f.auth.CreateToken(t.Context(), "root", "victim", role, time.Hour)
					if err != nil {
						t.Fatal(err)
					}
					resp, _ = f.do(t, "DELETE", "/api/v1/tokens/"+other.ID, tok, nil)
					check("DELETE /api/v1/tokens/{id}", scope, role, tokens(scope) && scope.Covers(role), resp.StatusCode, http.StatusNoContent)
					if got, _ := f.auth.Token(t.Context(), other.ID); got.Revoked.IsZero() == (resp.StatusCode == http.StatusNoContent) {
						t.Errorf("DELETE token as %s: answered %d but revoked=%v", scope, resp.StatusCode, !got.Revoked.IsZero())
					}
				}
			}
			// Secret steering: moving a device into another model or group,
			// and an enrollment token that grants one, need devices.write
			// and secrets.write; under the two-person rule the move is filed
			// (202) and the token created pending.
			moved := http.StatusOK
			if twoPerson {
				moved = http.StatusAccepted
			}
			steer := func(s auth.Role) bool { return s.Has(auth.PermDevicesWrite) && s.Has(assignPerm) }
			for i, scope := range auth.Roles() {
				tok := f.scoped[scope]
				id := fmt.Sprintf("%032x", 0x5ee700+i)
				if err := f.inv.PutDevice(t.Context(), &inventory.Device{ID: id, State: inventory.StateActive}); err != nil {
					t.Fatal(err)
				}
				for _, field := range []string{"model", "group"} {
					resp, _ := f.do(t, "PATCH", "/api/v1/devices/"+id, tok, map[string]string{field: "steer-" + string(scope)})
					check("PATCH /api/v1/devices/{id} ("+field+")", scope, scope, steer(scope), resp.StatusCode, moved)
					if d, _ := f.inv.Device(t.Context(), id); (resp.StatusCode == http.StatusOK) != (d.Model != "" || d.Group != "") {
						t.Errorf("PATCH %s with a %s-scoped token answered %d; the device has model %q group %q", field, scope, resp.StatusCode, d.Model, d.Group)
					}
					resp, body := f.do(t, "POST", "/api/v1/enrollment-tokens", tok, map[string]string{field: "steer"})
					check("POST /api/v1/enrollment-tokens ("+field+")", scope, scope, steer(scope), resp.StatusCode, http.StatusCreated)
					var tr TokenResponse
					if json.Unmarshal([]byte(body), &tr); resp.StatusCode == http.StatusCreated && (tr.Pending != twoPerson || (tr.Approval != nil) != twoPerson) {
						t.Errorf("a token granting a %s with a %s-scoped token under two_person_rule=%v: pending=%v approval=%v", field, scope, twoPerson, tr.Pending, tr.Approval != nil)
					}
				}
			}
			if twoPerson {
				sec := authenticate(t, f.auth, f.scopedOf(t, "sec", auth.RoleSecurityAdmin))
				root := authenticate(t, f.auth, f.scoped[auth.RoleAdmin])
				for _, scope := range auth.Roles() {
					tok := f.scoped[scope]
					// Approve and reject someone else's secret change.
					r := submitSecretChange(t, f.apr, sec)
					resp, _ := f.do(t, "POST", "/api/v1/approvals/"+r.ID+"/approve", tok, DecisionRequest{})
					check("POST /api/v1/approvals/{id}/approve", scope, auth.RoleSecurityAdmin, scope.Has(auth.PermSecurityApprove), resp.StatusCode, http.StatusOK)
					r = submitSecretChange(t, f.apr, sec)
					resp, _ = f.do(t, "POST", "/api/v1/approvals/"+r.ID+"/reject", tok, DecisionRequest{Reason: "no"})
					check("POST /api/v1/approvals/{id}/reject", scope, auth.RoleSecurityAdmin, scope.Has(auth.PermSecurityApprove), resp.StatusCode, http.StatusOK)
					// Withdraw the owner's own request: needs what filing it
					// needed.
					r = submitSecretChange(t, f.apr, root)
					resp, _ = f.do(t, "POST", "/api/v1/approvals/"+r.ID+"/reject", tok, DecisionRequest{Reason: "withdrawn"})
					check("POST /api/v1/approvals/{id}/reject (withdraw)", scope, auth.RoleAdmin, scope.Has(auth.PermSecretsWrite), resp.StatusCode, http.StatusOK)
				}
			}
			bad := 0
			for _, c := range cells {
				got := c.got[0]
				ok := false
				for _, w := range c.wantAny {
					ok = ok || got == w
				}
				switch {
				case c.allowed && !ok:
					t.Errorf("%s with a %s-scoped token on role %s: %d, want one of %v", c.route, c.scope, c.role, got, c.wantAny)
					bad++
				case !c.allowed && got != http.StatusForbidden:
					t.Errorf("%s with a %s-scoped token on role %s: %d, want 403 (the scope does not cover it)", c.route, c.scope, c.role, got)
					bad++
				}
			}
			t.Logf("%d route × scope × role cells checked, %d wrong", len(cells), bad)
		})
	}
}

// TestTokenRevokesItself: any token may revoke itself, whatever its
// scope; a token of another user is not found.
func TestTokenRevokesItself(t *testing.T) {
	f := newOpsFixture(t, false)
	other := f.user(t, auth.RoleOperator)
	secret, theirs, err := f.auth.CreateToken(t.Context(), other, "theirs", auth.RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, scope := range auth.Roles() {
		if scope == auth.RoleAdmin {
			continue // users.admin revokes anyone's tokens
		}
		want := http.StatusNotFound
		if scope == auth.RoleBrokerSync {
			want = http.StatusForbidden // the token routes need devices.read
		}
		resp, _ := f.do(t, "DELETE", "/api/v1/tokens/"+theirs.ID, f.scoped[scope], nil)
		if resp.StatusCode != want {
			t.Errorf("%s-scoped token revoking another user's token: %d, want %d", scope, resp.StatusCode, want)
		}
	}
	p := authenticate(t, f.auth, secret)
	resp, _ := f.do(t, "DELETE", "/api/v1/tokens/"+p.TokenID, secret, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("a viewer token revoking itself: %d", resp.StatusCode)
	}
}

// scopedOf returns a new API token of user scoped to role.
func (f *opsFixture) scopedOf(t testing.TB, user string, role auth.Role) string {
	t.Helper()
	secret, _, err := f.auth.CreateToken(t.Context(), user, "scoped", role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// authenticate returns the principal an API token authenticates as.
func authenticate(t testing.TB, a *auth.Service, secret string) auth.Principal {
	t.Helper()
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+secret)
	p, err := a.Authenticate(r)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// submitSecretChange files a secret change as p.
func submitSecretChange(t testing.TB, m *approval.Manager, p auth.Principal) approval.Request {
	t.Helper()
	call, _ := json.Marshal(storedCall{Pattern: "DELETE /api/v1/secrets/{name}", Path: "/api/v1/secrets/s", Values: map[string]string{"name": "s"}})
	r, err := m.Submit(context.Background(), p, approval.Draft{Kind: approval.KindSecretChange, Target: "DELETE /api/v1/secrets/{name} s", Params: call, Justification: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// openApprovals opens an approvals manager for the fixture.
func openApprovals(t testing.TB, dir string, a *auth.Service) *approval.Manager {
	t.Helper()
	m, err := approval.Open(approval.Config{Path: filepath.Join(dir, "approvals.db"), NoSync: true, Requester: approval.RequesterFrom(a)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestDeniedReadsAndLongTargetsAudited: a read refused for a missing
// permission is in the audit log (with the token that tried), and a
// request whose target is longer than an entry's target may be is
// recorded with the target truncated, not dropped.
func TestDeniedReadsAndLongTargetsAudited(t *testing.T) {
	f := newOpsFixture(t, false)
	if resp, _ := f.do(t, "GET", "/api/v1/users", f.scoped[auth.RoleViewer], nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("viewer listing users: %d", resp.StatusCode)
	}
	if resp, _ := f.do(t, "GET", "/api/v1/devices", f.scoped[auth.RoleViewer], nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("viewer listing devices: %d", resp.StatusCode)
	}
	long := strings.Repeat("d", 300)
	if resp, _ := f.do(t, "PATCH", "/api/v1/devices/"+long, f.scoped[auth.RoleAdmin], map[string]string{"owner": "ops"}); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("patch a long device ID: %d", resp.StatusCode)
	}
	page, err := f.log.List(t.Context(), audit.Filter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var denied, patched, reads int
	for _, e := range page.Entries {
		switch {
		case e.Action == "api.users.get" && e.Outcome == audit.Denied && e.Actor == audit.User("root") && e.Details["token"] != "":
			denied++
		case e.Action == "api.devices.get":
			reads++
		case e.Action == "api.devices.patch" && e.Outcome == audit.Failed && strings.HasPrefix(e.Target, "ddd") && len(e.Target) <= audit.MaxID:
			patched++
		}
	}
	if denied != 1 || patched != 1 || reads != 0 {
		t.Fatalf("audit log: %d denied reads (want 1), %d long-target patches (want 1), %d allowed reads (want 0): %+v", denied, patched, reads, page.Entries)
	}
}
