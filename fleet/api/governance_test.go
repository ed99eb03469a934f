package api

import (
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

func newGovernanceAPI(t *testing.T) (*httptest.Server, *inventory.Store, *governance.Service) {
	t.Helper()
	dir := t.TempDir()
	inv := inventorytest.Open(t)
	gov, err := governance.Open(governance.Config{Path: filepath.Join(dir, "gov.db"), NoSync: true, Devices: inv})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gov.Close() })
	srv := serve(t, Config{Inventory: inv, Approver: approver{inv}, Governance: gov})
	return srv, inv, gov
}

func decodeBody[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return v
}

// TestOwnersAssignAndOrphans: an assignment names a registered owner,
// is mirrored into the inventory's owner and purpose, and a departed
// owner orphans the device at the next sweep.
func TestOwnersAssignAndOrphans(t *testing.T) {
	srv, inv, _ := newGovernanceAPI(t)
	const dev = "0123456789abcdef0123456789abcdef"
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: dev, State: inventory.StateActive, Owner: "from-token"}); err != nil {
		t.Fatal(err)
	}
	resp, body := call(t, srv, "PUT", "/api/v1/devices/"+dev+"/owner", token, `{"owner":"alice","purpose":"line 3 gateway"}`)
	wantProblem(t, resp, body, 404, `owner "alice"`)
	if resp, body := call(t, srv, "PUT", "/api/v1/owners/alice", token, `{"name":"Alice","kind":"robot"}`); resp.StatusCode != 400 {
		t.Fatalf("invalid kind: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "PUT", "/api/v1/owners/alice", token, `{"name":"Alice","contact":"alice@example.com"}`)
	if o := decodeBody[governance.Owner](t, body); resp.StatusCode != 200 || o.Status != governance.OwnerActive || o.Kind != governance.OwnerPerson {
		t.Fatalf("put owner: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "PUT", "/api/v1/devices/"+dev+"/owner", token, `{"owner":"alice","purpose":"line 3 gateway"}`)
	own := decodeBody[DeviceOwnership](t, body)
	if resp.StatusCode != 200 || own.Owner != "alice" || own.OwnerRecord == nil || own.Assignment == nil || own.Assignment.By != "admin" {
		t.Fatalf("assign: %d %s", resp.StatusCode, body)
	}
	if own.Status == nil || own.Status.Orphaned {
		t.Fatalf("assigned device judged orphaned: %s", body)
	}
	d, _ := inv.Device(t.Context(), dev)
	if d.Owner != "alice" || d.Purpose != "line 3 gateway" {
		t.Fatalf("inventory owner %q purpose %q", d.Owner, d.Purpose)
	}
	if resp, body := call(t, srv, "GET", "/api/v1/devices/"+dev, token, ""); decodeBody[Device](t, body).Purpose != "line 3 gateway" {
		t.Fatalf("device view: %d %s", resp.StatusCode, body)
	}

	if resp, body := call(t, srv, "POST", "/api/v1/owners/alice/status", token, `{"status":"departed"}`); resp.StatusCode != 200 {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/governance/orphans", token, "")
	if l := decodeBody[GovernanceStatusList](t, body); resp.StatusCode != 200 || len(l.Devices) != 0 {
		t.Fatalf("orphans before the sweep: %s", body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/governance/sweep", token, "")
	if rep := decodeBody[SweepReport](t, body); resp.StatusCode != 200 || rep.Devices != 1 || rep.Orphaned != 1 {
		t.Fatalf("sweep: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/governance/orphans", token, "")
	l := decodeBody[GovernanceStatusList](t, body)
	if resp.StatusCode != 200 || len(l.Devices) != 1 || l.Devices[0].DeviceID != dev || l.Devices[0].OrphanReason != `owner "alice" is departed` {
		t.Fatalf("orphans: %s", body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/devices/"+dev+"/risk", token, "")
	risk := decodeBody[governance.Risk](t, body)
	if _, ok := risk.Factor(governance.FactorOrphaned); resp.StatusCode != 200 || !ok {
		t.Fatalf("risk: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/risk?limit=1", token, "")
	if rl := decodeBody[RiskList](t, body); resp.StatusCode != 200 || len(rl.Risks) != 1 || rl.Risks[0].Score != risk.Score {
		t.Fatalf("ranking: %s (live score %d)", body, risk.Score)
	}
	resp, body = call(t, srv, "GET", "/api/v1/devices/ffffffffffffffffffffffffffffffff/risk", token, "")
	wantProblem(t, resp, body, 404, "no device")
	resp, body = call(t, srv, "GET", "/api/v1/risk?limit=0", token, "")
	wantProblem(t, resp, body, 400, "limit")
}

// TestTriageKeysInPathsAndBlocks: a triage key holds '/' and ':' and is
// addressed path-escaped; a block decision puts the client ID on the block
// list, which DELETE /api/v1/blocks removes; bad kinds are 400s.
func TestTriageKeysInPathsAndBlocks(t *testing.T) {
	srv, _, gov := newGovernanceAPI(t)
	at := time.Now()
	if err := gov.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: "intruder-1", Remote: "192.0.2.7:4242", Reason: "no token", Time: at}); err != nil {
		t.Fatal(err)
	}
	if err := gov.Flush(); err != nil {
		t.Fatal(err)
	}
	resp, body := call(t, srv, "GET", "/api/v1/triage?undecided=true&kind=unknown-client", token, "")
	tl := decodeBody[TriageList](t, body)
	if resp.StatusCode != 200 || len(tl.Entries) != 1 || tl.Stats.Entries != 1 {
		t.Fatalf("triage: %d %s", resp.StatusCode, body)
	}
	key := tl.Entries[0].Key
	if key != "unknown-client/client:intruder-1" || tl.Entries[0].Remotes[0] != "192.0.2.7" {
		t.Fatalf("entry %+v", tl.Entries[0])
	}
	if resp, body := call(t, srv, "GET", "/api/v1/triage/"+url.PathEscape(key), token, ""); resp.StatusCode != 200 || decodeBody[governance.Shadow](t, body).Key != key {
		t.Fatalf("get entry: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/triage/"+url.PathEscape(key)+"/decision", token, `{"decision":"adopt"}`)
	wantProblem(t, resp, body, 400, "decision")
	resp, body = call(t, srv, "POST", "/api/v1/triage/"+url.PathEscape(key)+"/decision", token, `{"decision":"enroll"}`)
	wantProblem(t, resp, body, 501, "cannot enroll")
	resp, body = call(t, srv, "POST", "/api/v1/triage/"+url.PathEscape(key)+"/decision", token, `{"decision":"block","note":"not ours"}`)
	if sh := decodeBody[governance.Shadow](t, body); resp.StatusCode != 200 || sh.Decision != governance.DecisionBlock || sh.DecidedBy != "admin" {
		t.Fatalf("block decision: %d %s", resp.StatusCode, body)
	}
	if !gov.IsBlocked("intruder-1", "", "") {
		t.Fatal("client ID not blocked after the decision")
	}
	resp, body = call(t, srv, "GET", "/api/v1/triage?undecided=true", token, "")
	if tl := decodeBody[TriageList](t, body); resp.StatusCode != 200 || len(tl.Entries) != 0 {
		t.Fatalf("decided entry still undecided: %s", body)
	}

	if resp, body := call(t, srv, "POST", "/api/v1/blocks", token, `{"kind":"address","value":"10.1.0.0/16","reason":"lab"}`); resp.StatusCode != 204 {
		t.Fatalf("block prefix: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/blocks", token, `{"kind":"ek","value":"abc"}`)
	wantProblem(t, resp, body, 400, "64 hex digits")
	if !gov.IsBlocked("", "10.1.2.3:5", "") {
		t.Fatal("address in the blocked prefix not blocked")
	}
	resp, body = call(t, srv, "GET", "/api/v1/blocks", token, "")
	if bl := decodeBody[BlockList](t, body); resp.StatusCode != 200 || len(bl.Blocks) != 2 {
		t.Fatalf("blocks: %s", body)
	}
	resp, body = call(t, srv, "DELETE", "/api/v1/blocks?kind=address&value="+url.QueryEscape("10.1.0.0/16"), token, "")
	if resp.StatusCode != 204 || gov.IsBlocked("", "10.1.2.3:5", "") {
		t.Fatalf("unblock: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "DELETE", "/api/v1/blocks?kind=address&value=10.1.0.0/16", token, "")
	wantProblem(t, resp, body, 404, "block")

	resp, body = call(t, srv, "GET", "/api/v1/clones", token, "")
	if cl := decodeBody[CloneList](t, body); resp.StatusCode != 200 || len(cl.Clones) != 0 {
		t.Fatalf("clones: %s", body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/clones/0123456789abcdef0123456789abcdef/resolve", token, `{"kind":"certificate"}`)
	wantProblem(t, resp, body, 404, "clone incident")
}

// TestGovernanceOff: without a governance service the routes answer 501.
func TestGovernanceOff(t *testing.T) {
	srv, _ := newAPI(t)
	resp, body := call(t, srv, "GET", "/api/v1/risk", token, "")
	wantProblem(t, resp, body, 501, "governance")
}
