package api

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

type approver struct{ inv *inventory.Store }

func (a approver) Approve(id, _ string) error {
	return a.inv.Update(context.Background(), id, func(d *inventory.Device) error {
		if d.State != inventory.StatePending {
			return enroll.ErrNotPending
		}
		return nil
	})
}

const token = "sga_test-token"

func newAPI(t *testing.T) (*httptest.Server, *inventory.Store) {
	t.Helper()
	inv := inventorytest.Open(t)
	return serve(t, Config{Inventory: inv, Approver: approver{inv}}), inv
}

// serve serves the API of cfg, with token as its admin token, until the
// test ends.
func serve(t testing.TB, cfg Config) *httptest.Server {
	t.Helper()
	sum := sha256.Sum256([]byte(token))
	cfg.AdminTokenHash = sum[:]
	srv := httptest.NewServer(New(cfg))
	t.Cleanup(srv.Close)
	return srv
}

// call calls the API at srv with a bearer token (if tok is not empty), a
// JSON body (if not empty) and the header pairs in hdr; it returns the
// response and its body.
func call(t testing.TB, srv *httptest.Server, method, path, tok, body string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func wantProblem(t *testing.T, resp *http.Response, body string, status int, detail string) {
	t.Helper()
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("got %d %s %s, want %d problem+json", resp.StatusCode, resp.Header.Get("Content-Type"), body, status)
	}
	var p Problem
	if err := json.Unmarshal([]byte(body), &p); err != nil || p.Status != status || !strings.Contains(p.Detail, detail) {
		t.Fatalf("problem %+v (%v), want detail containing %q", p, err, detail)
	}
}

func TestAuth(t *testing.T) {
	srv, _ := newAPI(t)
	for _, tok := range []string{"", "wrong", token + "x"} {
		resp, body := call(t, srv, "GET", "/api/v1/devices", tok, "")
		wantProblem(t, resp, body, 401, "bearer token")
	}
	if resp, _ := call(t, srv, "GET", "/api/v1/devices", token, ""); resp.StatusCode != 200 {
		t.Fatalf("valid token: %d", resp.StatusCode)
	}
	if resp, _ := call(t, srv, "GET", "/healthz", "", ""); resp.StatusCode != 200 {
		t.Fatal("healthz needs no token")
	}
}

func TestBadRequests(t *testing.T) {
	srv, _ := newAPI(t)
	cases := []struct {
		method, path, body string
		status             int
		detail             string
	}{
		{"POST", "/api/v1/enrollment-tokens", `{"model":`, 400, "syntax"},
		{"POST", "/api/v1/enrollment-tokens", `{"model":7}`, 400, `"model" has the wrong type`},
		{"POST", "/api/v1/enrollment-tokens", `{"colour":"red"}`, 400, "unknown field"},
		{"POST", "/api/v1/enrollment-tokens", `{"ttl":"forever"}`, 400, "ttl"},
		{"POST", "/api/v1/enrollment-tokens", `{} {}`, 400, "trailing"},
		{"POST", "/api/v1/enrollment-tokens", `{"model":"` + strings.Repeat("a", 70000) + `"}`, 413, "limited"},
		{"GET", "/api/v1/devices?state=zombie", "", 400, "state"},
		{"GET", "/api/v1/devices?limit=0", "", 400, "limit"},
		{"GET", "/api/v1/devices/nope", "", 404, "no device"},
		{"POST", "/api/v1/devices/nope/approve", "", 404, "no device"},
		{"GET", "/api/v1/nothing", "", 404, "no such resource"},
	}
	for _, c := range cases {
		resp, body := call(t, srv, c.method, c.path, token, c.body)
		wantProblem(t, resp, body, c.status, c.detail)
	}
}

func TestTokensAndDevices(t *testing.T) {
	srv, inv := newAPI(t)
	resp, body := call(t, srv, "POST", "/api/v1/enrollment-tokens", token, `{"model":"gw-1","owner":"ops","ttl":"1h"}`)
	if resp.StatusCode != 201 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var tr TokenResponse
	json.Unmarshal([]byte(body), &tr)
	if !strings.HasPrefix(tr.Token, "sgt_") || tr.Model != "gw-1" || time.Until(tr.Expires) > time.Hour {
		t.Fatalf("token %+v", tr)
	}
	if _, err := inv.CheckToken(t.Context(), tr.Token, "gw-1", time.Now()); err != nil {
		t.Fatalf("created token unusable: %v", err)
	}
	now := time.Now().UTC()
	for i, st := range []inventory.State{inventory.StateActive, inventory.StatePending} {
		d := &inventory.Device{ID: strings.Repeat(string(rune('a'+i)), 32), EKFingerprint: strings.Repeat(string(rune('a'+i)), 64), Model: "gw-1", State: st, FirstSeen: now}
		if err := inv.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	_, body = call(t, srv, "GET", "/api/v1/devices?state=pending", token, "")
	var list struct{ Devices []Device }
	json.Unmarshal([]byte(body), &list)
	if len(list.Devices) != 1 || list.Devices[0].State != "pending" {
		t.Fatalf("pending list %s", body)
	}
	if strings.Contains(body, "ek_public") || strings.Contains(body, "ak_public") {
		t.Fatal("API exposes raw key material fields")
	}
	pending := list.Devices[0].ID
	if resp, body := call(t, srv, "POST", "/api/v1/devices/"+pending+"/approve", token, ""); resp.StatusCode != 200 {
		t.Fatalf("approve: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/devices/"+strings.Repeat("a", 32)+"/approve", token, "")
	wantProblem(t, resp, body, 409, "not pending")
	resp, body = call(t, srv, "PATCH", "/api/v1/devices/"+pending, token, `{"group":"line-3","owner":"team-ot"}`)
	var dv Device
	if json.Unmarshal([]byte(body), &dv); resp.StatusCode != 200 || dv.Group != "line-3" || dv.Owner != "team-ot" {
		t.Fatalf("patch: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "PATCH", "/api/v1/devices/"+pending, token, `{"group":"a\nb"}`)
	wantProblem(t, resp, body, 400, "one line")
	resp, _ = call(t, srv, "GET", "/api/v1/devices", token, "")
	for _, h := range []string{"X-Content-Type-Options", "Strict-Transport-Security", "Cache-Control"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("missing header %s", h)
		}
	}
}

// TestDeviceTags: PATCH sets a device's tags (sorted, de-duplicated);
// invalid tags are refused with the offending tag named.
func TestDeviceTags(t *testing.T) {
	srv, inv := newAPI(t)
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev-1", State: inventory.StateActive}); err != nil {
		t.Fatal(err)
	}
	resp, body := call(t, srv, "PATCH", "/api/v1/devices/dev-1", token, `{"tags":["site:plant-7","canary","canary"]}`)
	var d Device
	if json.Unmarshal([]byte(body), &d); resp.StatusCode != 200 || strings.Join(d.Tags, ",") != "canary,site:plant-7" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "PATCH", "/api/v1/devices/dev-1", token, `{"tags":["Not OK"]}`)
	wantProblem(t, resp, body, 400, `"Not OK"`)
	if got, _ := inv.Device(t.Context(), "dev-1"); strings.Join(got.Tags, ",") != "canary,site:plant-7" {
		t.Fatalf("tags after a refused change: %v", got.Tags)
	}
}
