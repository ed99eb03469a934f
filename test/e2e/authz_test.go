package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
)

// concrete turns a route pattern into a method and a path with made-up
// path values.
func concrete(pattern string) (string, string) {
	method, path, _ := strings.Cut(pattern, " ")
	for _, p := range []string{"{id}", "{name}"} {
		path = strings.ReplaceAll(path, p, "no-such-thing")
	}
	return method, path
}

// TestAuthorizationMatrix: every API route, called by an API token of
// every role (and by the admin's token scoped to every role), is refused with 403 exactly when the role lacks the route's
// permission; without credentials every non-public route answers 401.
// State-changing calls carry an empty body and made-up IDs, so an allowed
// call fails on its input (400, 404, 409, 501) rather than doing much.
// A route whose body fields need a further permission (a device's model
// and group, a token that grants them: secrets.write) is called once more
// per field, on a real device, and refused with 403 exactly when the role
// lacks either permission.
func TestAuthorizationMatrix(t *testing.T) {
	f := startFleet(t, nil)
	c, _ := f.Client()
	ctx := context.Background()
	// For each role: a token of a user holding it, and a token of the admin
	// scoped down to it. Both hold exactly the role's permissions.
	tokens := map[auth.Role]string{}
	scoped := map[auth.Role]string{}
	for _, role := range auth.Roles() {
		u, err := c.CreateUser(ctx, api.UserRequest{Name: "u-" + string(role), Role: role})
		if err != nil || u.Password == "" {
			t.Fatalf("create %s: %+v %v", role, u, err)
		}
		secret, _, err := f.Auth.CreateToken(ctx, u.Name, "matrix", role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		tokens[role] = secret
		if scoped[role], _, err = f.Auth.CreateToken(ctx, auth.BootstrapAdmin, "matrix "+string(role), role, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	routes := api.Routes(f.API())
	if len(routes) < 40 {
		t.Fatalf("only %d routes registered", len(routes))
	}
	dev := &inventory.Device{ID: "0123456789abcdef0123456789abcdef", State: inventory.StateActive}
	if err := f.Inv.PutDevice(ctx, dev); err != nil {
		t.Fatal(err)
	}
	doBody := func(method, path, tok, body string) int {
		req, _ := http.NewRequestWithContext(ctx, method, f.APIURL()+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	do := func(method, path, tok string) int { return doBody(method, path, tok, "{}") }
	checked, fields := 0, 0
	for _, r := range routes {
		method, path := concrete(r.Pattern)
		if r.Perm == "" {
			continue
		}
		if got := do(method, path, ""); got != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d, want 401", r.Pattern, got)
		}
		for _, role := range auth.Roles() {
			for who, tok := range map[string]string{"a " + string(role): tokens[role], "the admin scoped to " + string(role): scoped[role]} {
				got := do(method, path, tok)
				allowed := role.Has(r.Perm)
				switch {
				case got == http.StatusUnauthorized:
					t.Errorf("%s as %s: 401 with a valid token", r.Pattern, who)
				case allowed && got == http.StatusForbidden:
					t.Errorf("%s as %s: 403, but the role grants %s", r.Pattern, who, r.Perm)
				case !allowed && got != http.StatusForbidden:
					t.Errorf("%s as %s: %d, want 403 (the role lacks %s)", r.Pattern, who, got, r.Perm)
				}
				checked++
			}
		}
		for _, field := range r.Fields {
			method, path := concrete(r.Pattern)
			path = strings.ReplaceAll(path, "no-such-thing", dev.ID)
			for _, role := range auth.Roles() {
				// A value of its own per role: setting what the device
				// already has changes nothing and needs nothing more.
				body, _ := json.Marshal(map[string]string{field: "matrix-" + string(role)})
				got := doBody(method, path, tokens[role], string(body))
				allowed := role.Has(r.Perm) && role.Has(r.FieldPerm)
				switch {
				case got == http.StatusUnauthorized:
					t.Errorf("%s setting %s as %s: 401 with a valid token", r.Pattern, field, role)
				case allowed && got/100 != 2:
					t.Errorf("%s setting %s as %s: %d, but the role grants %s and %s", r.Pattern, field, role, got, r.Perm, r.FieldPerm)
				case !allowed && got != http.StatusForbidden:
					t.Errorf("%s setting %s as %s: %d, want 403 (the role lacks %s or %s)", r.Pattern, field, role, got, r.Perm, r.FieldPerm)
				}
				fields++
			}
		}
	}
	if fields == 0 {
		t.Fatal("no route declares fields that need a further permission (model, group)")
	}
	t.Logf("%d route × role calls and %d field × role calls checked over %d routes", checked, fields, len(routes))
}

// TestSessionAndCSRF: a browser session from POST /api/v1/login carries a
// Secure, HttpOnly, SameSite=Strict cookie; reads work with it; a state
// change without the session's CSRF token is refused (403), with it
// accepted; logout ends the session.
func TestSessionAndCSRF(t *testing.T) {
	f := startFleet(t, nil)
	c, _ := f.Client()
	ctx := context.Background()
	if _, err := c.CreateUser(ctx, api.UserRequest{Name: "olga", Role: auth.RoleOperator, Password: "correct horse battery staple"}); err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Transport: c.HTTP.Transport}
	post := func(path, csrf string, body any) *http.Response {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest("POST", f.APIURL()+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", f.APIURL())
		if csrf != "" {
			req.Header.Set(auth.CSRFHeader, csrf)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := post("/api/v1/login", "", map[string]string{"user": "olga", "password": "wrong password here"})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d", resp.StatusCode)
	}
	// Throttled: right after a failure even the right password waits.
	resp = post("/api/v1/login", "", map[string]string{"user": "olga", "password": "correct horse battery staple"})
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("login right after a failure: %d, want 429", resp.StatusCode)
	}
	after, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || after < 1 {
		t.Fatalf("429 with Retry-After %q", resp.Header.Get("Retry-After"))
	}
	// sleep: the client waits as long as the throttle's Retry-After says; then it is admitted
	time.Sleep(time.Duration(after) * time.Second)
	resp = post("/api/v1/login", "", map[string]string{"user": "olga", "password": "correct horse battery staple"})
	var login auth.LoginResponse
	json.NewDecoder(resp.Body).Decode(&login)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || login.CSRFToken == "" {
		t.Fatalf("login: %d %+v", resp.StatusCode, login)
	}
	sc := resp.Header.Get("Set-Cookie")
	for _, attr := range []string{"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(sc, attr) {
			t.Fatalf("session cookie lacks %s: %s", attr, sc)
		}
	}
	get, err := hc.Get(f.APIURL() + "/api/v1/me")
	if err != nil || get.StatusCode != 200 {
		t.Fatalf("GET /me with the session: %v %v", get, err)
	}
	get.Body.Close()
	body := map[string]any{"name": "olga-token", "role": "viewer", "ttl": "1h"}
	if r := post("/api/v1/tokens", "", body); r.StatusCode != http.StatusForbidden {
		t.Fatalf("state change without CSRF token: %d", r.StatusCode)
	}
	if r := post("/api/v1/tokens", "not-the-token", body); r.StatusCode != http.StatusForbidden {
		t.Fatalf("state change with a wrong CSRF token: %d", r.StatusCode)
	}
	r := post("/api/v1/tokens", login.CSRFToken, body)
	var tok api.TokenCreated
	json.NewDecoder(r.Body).Decode(&tok)
	if r.StatusCode != http.StatusCreated || !strings.HasPrefix(tok.Secret, "sga_") || tok.Role != auth.RoleViewer {
		t.Fatalf("with the CSRF token: %d %+v", r.StatusCode, tok.Token)
	}
	// The new viewer token reads but cannot change devices.
	viewer := api.NewClient(f.APIURL(), tok.Secret, nil)
	viewer.HTTP = c.HTTP
	if _, err := viewer.Devices(ctx, ""); err != nil {
		t.Fatalf("viewer token read: %v", err)
	}
	if _, err := viewer.CreateToken(ctx, "gw", "", time.Hour); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("viewer token created an enrollment token: %v", err)
	}
	if r := post("/api/v1/logout", login.CSRFToken, nil); r.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d", r.StatusCode)
	}
	get, _ = hc.Get(f.APIURL() + "/api/v1/me")
	if get.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after logout: %d", get.StatusCode)
	}
}

// TestAPIRateLimit: a client over its rate gets 429 with Retry-After and
// problem+json, before any work is done; other clients are unaffected by
// construction (one bucket per address).
func TestAPIRateLimit(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.APIRateLimit, c.APIRateBurst = 1, 5 })
	c, _ := f.Client()
	var last *http.Response
	for range 6 {
		req, _ := http.NewRequest("GET", f.APIURL()+"/api/v1/devices", nil)
		req.Header.Set("Authorization", "Bearer "+f.AdminToken())
		resp, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		last = resp
	}
	if last.StatusCode != http.StatusTooManyRequests || last.Header.Get("Retry-After") == "" || last.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("6th request in a burst of 5: %d %v", last.StatusCode, last.Header)
	}
}
