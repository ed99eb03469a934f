package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

// challenges is an attestation service that records the challenges sent.
type challenges struct {
	mu   sync.Mutex
	sent []string
}

func (c *challenges) Challenge(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent = append(c.sent, id)
	return nil
}
func (c *challenges) Release(string, string, string) error                          { return nil }
func (c *challenges) History(context.Context, string, int) ([]attest.Record, error) { return nil, nil }
func (c *challenges) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(slices.Values(c.sent))
}
func bulkID(i int) string { return fmt.Sprintf("dev-%03d", i) }
func (f *bulkFixture) post(t *testing.T, action string, role auth.Role, body any, hdr ...string) (*http.Response, string) {
	t.Helper()
	raw, _ := json.Marshal(body)
	return call(t, f.srv, "POST", "/api/v1/devices/bulk/"+action, f.tokens[role], string(raw), hdr...)
}

type bulkFixture struct {
	srv    *httptest.Server
	inv    *inventory.Store
	log    *audit.Log
	att    *challenges
	tokens map[auth.Role]string
}

// newBulkFixture is an API with operators, an audit log, quarantine over
// the real inventory, a recording attestation service and live sessions
// for the even devices; 30 devices: dev-000 … dev-029, every third one in
// group "pumps", dev-005 pending.
func newBulkFixture(t *testing.T, twoPerson bool) *bulkFixture {
	t.Helper()
	a, lg := openOperators(t)
	inv := inventorytest.Open(t)
	f := &bulkFixture{inv: inv, log: lg, att: &challenges{}, tokens: map[auth.Role]string{}}
	for _, role := range auth.Roles() {
		name := "u-" + string(role)
		if _, err := a.CreateUser(context.Background(), name, "a long enough password", role); err != nil {
			t.Fatal(err)
		}
		token, _, err := a.CreateToken(t.Context(), name, "t", role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f.tokens[role] = token
	}
	for i := range 30 {
		d := &inventory.Device{ID: bulkID(i), State: inventory.StateActive, CertSerial: fmt.Sprintf("c%03d", i), Model: "gw-1"}
		if i%3 == 0 {
			d.Group = "pumps"
		}
		if i == 5 {
			d.State, d.CertSerial = inventory.StatePending, ""
		}
		if err := inv.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{Inventory: inv, Approver: approver{inv}, Auth: a, Audit: lg, RateLimit: -1, Attestation: f.att,
		Quarantiner: governance.InventoryQuarantiner{Inventory: inv, Source: inventory.CauseOperator},
		Connected:   func(id string) bool { var n int; fmt.Sscanf(id, "dev-%d", &n); return n%2 == 0 }}
	if twoPerson {
		cfg.Approvals = openApprovals(t, t.TempDir(), a)
	}
	f.srv = httptest.NewServer(New(cfg))
	t.Cleanup(f.srv.Close)
	return f
}

// deviceAudit returns the per-device audit entries of an action.
func (f *bulkFixture) deviceAudit(t *testing.T, action string) map[string]audit.Entry {
	t.Helper()
	page, err := f.log.List(t.Context(), audit.Filter{Action: "api.devices.bulk." + action + ".device", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]audit.Entry{}
	for _, e := range page.Entries {
		out[e.Target] = e
	}
	return out
}

// TestBulkPermissions: each bulk route needs its own permission: a viewer
// or a release approver is refused every one, and the refusal changes
// nothing.
func TestBulkPermissions(t *testing.T) {
	f := newBulkFixture(t, false)
	sel := BulkRequest{DeviceIDs: []string{bulkID(1)}, Add: []string{"x"}, Justification: "because"}
	for _, role := range []auth.Role{auth.RoleViewer, auth.RoleReleaseApprover} {
		for _, action := range []string{"tag", "attest", "quarantine", "rotate"} {
			if resp, body := f.post(t, action, role, sel); resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s %s: %d %s", role, action, resp.StatusCode, body)
			}
		}
	}
	if d, _ := f.inv.Device(t.Context(), bulkID(1)); d.State != inventory.StateActive || len(d.Tags) != 0 || len(f.att.ids()) != 0 {
		t.Fatalf("refused calls changed the device: %+v, challenges %v", d, f.att.ids())
	}
}

// TestBulkTagAndAttestSelection: tags are added to and removed from the
// named devices only, an unknown ID is reported, each device has its audit
// entry; attest challenges the connected enrolled devices and says why it
// skipped the others.
func TestBulkTagAndAttestSelection(t *testing.T) {
	f := newBulkFixture(t, false)
	resp, body := f.post(t, "tag", auth.RoleOperator, BulkRequest{DeviceIDs: []string{bulkID(1), bulkID(2), "dev-nope"}, Add: []string{"canary", "lab"}})
	var res BulkResult
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &res) != nil {
		t.Fatalf("tag: %d %s", resp.StatusCode, body)
	}
	if !slices.Equal(res.Done, []string{bulkID(1), bulkID(2)}) || len(res.Skipped) != 1 || res.Skipped[0].ID != "dev-nope" {
		t.Fatalf("tag result %+v", res)
	}
	resp, body = f.post(t, "tag", auth.RoleOperator, BulkRequest{DeviceIDs: []string{bulkID(2)}, Remove: []string{"lab"}})
	if resp.StatusCode != 200 {
		t.Fatalf("untag: %d %s", resp.StatusCode, body)
	}
	for i, want := range map[int][]string{0: nil, 1: {"canary", "lab"}, 2: {"canary"}, 3: nil} {
		if d, _ := f.inv.Device(t.Context(), bulkID(i)); !slices.Equal(d.Tags, want) {
			t.Errorf("%s tags %v, want %v", d.ID, d.Tags, want)
		}
	}
	au := f.deviceAudit(t, "tag")
	if e, ok := au[bulkID(1)]; !ok || e.Outcome != audit.OK || e.Actor != audit.User("u-operator") || e.RequestID == "" {
		t.Errorf("audit of %s: %+v", bulkID(1), e)
	}
	if e := au["dev-nope"]; e.Outcome != audit.Failed || !strings.Contains(e.Reason, "no such device") {
		t.Errorf("audit of the unknown device: %+v", e)
	}

	resp, body = f.post(t, "attest", auth.RoleOperator, BulkRequest{DeviceIDs: []string{bulkID(2), bulkID(3), bulkID(4)}})
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &res) != nil {
		t.Fatalf("attest: %d %s", resp.StatusCode, body)
	}
	if got := f.att.ids(); !slices.Equal(got, []string{bulkID(2), bulkID(4)}) {
		t.Errorf("challenged %v", got)
	}
	if len(res.Skipped) != 1 || res.Skipped[0].ID != bulkID(3) || !strings.Contains(res.Skipped[0].Reason, "not connected") {
		t.Errorf("attest skipped %+v", res.Skipped)
	}

	for _, bad := range []struct {
		req  BulkRequest
		want string
	}{
		{BulkRequest{Add: []string{"x"}}, "choose the devices"},
		{BulkRequest{DeviceIDs: []string{bulkID(1)}, Filter: &DeviceFilter{}, Add: []string{"x"}}, "choose the devices"},
		{BulkRequest{DeviceIDs: []string{bulkID(1)}}, "tags"},
		{BulkRequest{DeviceIDs: []string{bulkID(1)}, Add: []string{"Bad Tag"}}, "a tag is"},
		{BulkRequest{DeviceIDs: make([]string, BulkLimit+1), Add: []string{"x"}}, "at most"},
		{BulkRequest{Filter: &DeviceFilter{State: "sleepy"}, Add: []string{"x"}}, "state"},
		{BulkRequest{Filter: &DeviceFilter{}, After: "!!", Add: []string{"x"}}, "after"},
	} {
		resp, body := f.post(t, "tag", auth.RoleOperator, bad.req)
		wantProblem(t, resp, body, 400, bad.want)
	}
}

// TestBulkQuarantineFilterInBatches: a filter is worked through in bounded
// batches: each answer acts on at most BulkLimit devices and names the
// cursor to continue; the batches together quarantine every match, once,
// each with the justification; a missing justification changes nothing.
func TestBulkQuarantineFilterInBatches(t *testing.T) {
	f := newBulkFixture(t, false)
	for i := 30; i < 30+BulkLimit+20; i++ {
		if err := f.inv.PutDevice(t.Context(), &inventory.Device{ID: bulkID(i), State: inventory.StateActive, Group: "pumps"}); err != nil {
			t.Fatal(err)
		}
	}
	filter := &DeviceFilter{Group: "PUMPS"}
	resp, body := f.post(t, "quarantine", auth.RoleOperator, BulkRequest{Filter: filter, Justification: " "})
	wantProblem(t, resp, body, 400, "justification")
	var done []string
	after := ""
	for batch := 0; ; batch++ {
		if batch > 5 {
			t.Fatal("the batches do not end")
		}
		resp, body := f.post(t, "quarantine", auth.RoleOperator, BulkRequest{Filter: filter, After: after, Justification: "pump firmware recalled"})
		var res BulkResult
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &res) != nil {
			t.Fatalf("batch %d: %d %s", batch, resp.StatusCode, body)
		}
		if len(res.Done)+len(res.Skipped) > BulkLimit {
			t.Fatalf("batch %d acted on %d devices", batch, len(res.Done)+len(res.Skipped))
		}
		done = append(done, res.Done...)
		if res.Next == "" {
			break
		}
		after = res.Next
	}
	// Every third of the first 30 (dev-005 is not one) and all the new ones.
	if want := 10 + BulkLimit + 20; len(done) != want {
		t.Fatalf("quarantined %d devices, want %d", len(done), want)
	}
	for _, id := range []string{bulkID(0), bulkID(27), bulkID(30 + BulkLimit + 19)} {
		d, _ := f.inv.Device(t.Context(), id)
		if d.State != inventory.StateQuarantined || len(d.Quarantine) != 1 || d.Quarantine[0].Source != inventory.CauseOperator ||
			d.Quarantine[0].Reason != "quarantined by u-operator: pump firmware recalled" {
			t.Errorf("%s: %s %+v", id, d.State, d.Quarantine)
		}
	}
	if d, _ := f.inv.Device(t.Context(), bulkID(1)); d.State != inventory.StateActive {
		t.Errorf("a device outside the filter was quarantined")
	}
	if au := f.deviceAudit(t, "quarantine"); len(au) != len(done) {
		t.Errorf("%d per-device audit entries for %d devices", len(au), len(done))
	}
}

// TestBulkRotateTwoPersonRule: under the two-person rule a bulk rotation
// is filed for approval as a mass rotation, like POST /api/v1/rotations,
// and nothing is rotated yet.
func TestBulkRotateTwoPersonRule(t *testing.T) {
	f := newBulkFixture(t, true)
	resp, body := f.post(t, "rotate", auth.RoleOperator, BulkRequest{DeviceIDs: []string{bulkID(1), bulkID(2)}})
	wantProblem(t, resp, body, 400, JustificationHeader)
	resp, body = f.post(t, "rotate", auth.RoleOperator, BulkRequest{DeviceIDs: []string{bulkID(1), bulkID(2)}}, JustificationHeader, "suspected key leak")
	var p Pending
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal([]byte(body), &p) != nil || p.Approval.Kind != approval.KindMassRotation {
		t.Fatalf("bulk rotate under the two-person rule: %d %s", resp.StatusCode, body)
	}
}
