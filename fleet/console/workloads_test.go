package console_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
)

// TestWorkloadsPage: an admin registers a workload in the console (a bad
// form is refused with the reason, nothing registered); the page lists
// it with its scope, selectors and SPIFFE ID, the OIDC issuer and the
// signing keys; a viewer sees it without the forms; the admin deletes it.
func TestWorkloadsPage(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	admin := ff.login("ada", auth.RoleAdmin)
	viewer := ff.login("vera", auth.RoleViewer)
	ff.clock.Advance(time.Second)

	page := body(t, admin.get("/workloads"), http.StatusOK)
	mustContain(t, page, "No workload is registered yet", "https://fleet.example/.well-known/openid-configuration", "No signing key yet", `action="/workloads/register"`)

	mustContain(t, body(t, admin.post("/workloads/register", url.Values{"name": {"Bad Name"}, "scope": {"group"}, "target": {"kiosks"}, "uid": {"1000"}}), http.StatusBadRequest), "name")
	mustContain(t, body(t, admin.post("/workloads/register", url.Values{"name": {"metrics"}, "scope": {"group"}, "target": {"kiosks"}}), http.StatusBadRequest), "selector")
	mustContain(t, body(t, admin.post("/workloads/register", url.Values{"name": {"metrics"}, "scope": {"group"}, "target": {"kiosks"}, "uid": {"-1"}}), http.StatusBadRequest), "uid")
	if regs, _ := ff.workloads.Registrations(t.Context()); len(regs) != 0 {
		t.Fatalf("a refused form registered %+v", regs)
	}

	sum := strings.Repeat("ab", 32)
	if to := redirect(t, admin.post("/workloads/register", url.Values{"name": {"metrics"}, "scope": {"group"}, "target": {"kiosks"},
		"uid": {"1000"}, "exe_path": {"/usr/bin/collector"}, "exe_sha256": {sum}})); to != "/workloads?ok=workloads.register" {
		t.Fatalf("redirected to %q", to)
	}
	regs, err := ff.workloads.Registrations(t.Context())
	if err != nil || len(regs) != 1 || regs[0].Name != "metrics" || regs[0].CreatedBy != "ada" || *regs[0].UID != 1000 || regs[0].ExeSHA256 != sum {
		t.Fatalf("registered %+v %v", regs, err)
	}
	if _, err := ff.workloads.JWKS(t.Context()); err != nil { // makes the first signing key
		t.Fatal(err)
	}
	keys, _ := ff.workloads.Keys(t.Context())
	if len(keys) != 1 {
		t.Fatalf("keys %+v", keys)
	}
	page = body(t, admin.get("/workloads"), http.StatusOK)
	mustContain(t, page, "metrics", "group", "kiosks", "uid 1000", "executable /usr/bin/collector", "SHA-256 "+sum,
		"spiffe://fleet.example/device/&lt;device ID&gt;/workload/metrics", keys[0].ID, "active", `action="/workloads/metrics/delete"`)

	page = body(t, viewer.get("/workloads"), http.StatusOK)
	mustContain(t, page, "metrics", keys[0].ID)
	mustNotContain(t, page, `action="/workloads/register"`, `action="/workloads/metrics/delete"`)
	if w := viewer.post("/workloads/metrics/delete", url.Values{}); w.Code != http.StatusForbidden {
		t.Fatalf("a viewer's delete: %d", w.Code)
	}

	if to := redirect(t, admin.post("/workloads/metrics/delete", url.Values{})); to != "/workloads?ok=workloads.delete" {
		t.Fatalf("redirected to %q", to)
	}
	if regs, _ := ff.workloads.Registrations(t.Context()); len(regs) != 0 {
		t.Fatalf("after delete %+v", regs)
	}
}
