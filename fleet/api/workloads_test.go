package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/workload"
)

// fakeWorkloads keeps registrations in a map; its documents are fixed.
type fakeWorkloads struct {
	mu     sync.Mutex
	regs   map[string]workload.Registration
	issuer bool
}

func (f *fakeWorkloads) Registrations(context.Context) ([]workload.Registration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []workload.Registration
	for _, r := range f.regs {
		out = append(out, r)
	}
	return out, nil
}

func (f *fakeWorkloads) Register(_ context.Context, r workload.Registration, who string) (workload.Registration, error) {
	if err := r.Validate(); err != nil {
		return r, err
	}
	r.CreatedBy = who
	f.mu.Lock()
	f.regs[r.Name] = r
	f.mu.Unlock()
	return r, nil
}

func (f *fakeWorkloads) Unregister(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.regs[name]; !ok {
		return workload.ErrNotFound
	}
	delete(f.regs, name)
	return nil
}

func (f *fakeWorkloads) RotateKeys(context.Context) (string, error) { return "k2", nil }

func (f *fakeWorkloads) Discovery() ([]byte, error) {
	if !f.issuer {
		return nil, workload.ErrNoIssuer
	}
	return []byte(`{"issuer":"https://fleet.example"}`), nil
}

func (f *fakeWorkloads) JWKS(context.Context) ([]byte, error) { return []byte(`{"keys":[]}`), nil }

// TestWorkloadRoutes registers, lists and deletes workloads with a token,
// refuses them without one, refuses invalid registrations, and serves the
// OIDC documents to anyone.
func TestWorkloadRoutes(t *testing.T) {
	srv, _ := newAPI(t)
	resp, body := call(t, srv, "GET", "/api/v1/workloads", token, "")
	wantProblem(t, resp, body, http.StatusNotImplemented, "not configured")

	f := &fakeWorkloads{regs: map[string]workload.Registration{}}
	srv = serve(t, Config{Workloads: f})
	resp, _ = call(t, srv, "PUT", "/api/v1/workloads/web", "", `{"scope":"group","target":"g1","uid":1000}`)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a token: %d", resp.StatusCode)
	}
	resp, body = call(t, srv, "PUT", "/api/v1/workloads/web", token, `{"scope":"group","target":"g1"}`)
	wantProblem(t, resp, body, http.StatusBadRequest, "selector")
	resp, body = call(t, srv, "PUT", "/api/v1/workloads/web", token, `{"name":"db","scope":"group","target":"g1","uid":1}`)
	wantProblem(t, resp, body, http.StatusBadRequest, "differs")
	resp, body = call(t, srv, "PUT", "/api/v1/workloads/web", token, `{"scope":"group","target":"g1","uid":1000,"exe_path":"/usr/bin/web"}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("register: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/workloads", token, "")
	var l WorkloadList
	if err := json.Unmarshal([]byte(body), &l); err != nil || resp.StatusCode != http.StatusOK || len(l.Workloads) != 1 ||
		l.Workloads[0].Name != "web" || *l.Workloads[0].UID != 1000 {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/workloads/keys/rotate", token, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"kid":"k2"`) {
		t.Fatalf("rotate: %d %s", resp.StatusCode, body)
	}
	resp, _ = call(t, srv, "DELETE", "/api/v1/workloads/web", token, "")
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	resp, body = call(t, srv, "DELETE", "/api/v1/workloads/web", token, "")
	wantProblem(t, resp, body, http.StatusNotFound, "no workload")

	// Public documents.
	resp, body = call(t, srv, "GET", "/.well-known/openid-configuration", "", "")
	wantProblem(t, resp, body, http.StatusNotImplemented, "workload_issuer")
	f.issuer = true
	resp, body = call(t, srv, "GET", "/.well-known/openid-configuration", "", "")
	if resp.StatusCode != http.StatusOK || body != `{"issuer":"https://fleet.example"}` || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("discovery: %d %q", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/.well-known/jwks.json", "", "")
	if resp.StatusCode != http.StatusOK || body != `{"keys":[]}` {
		t.Fatalf("jwks: %d %q", resp.StatusCode, body)
	}
}
