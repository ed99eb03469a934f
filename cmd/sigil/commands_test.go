package main

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
)

// Canned answers of the fake API, as the fleet's API writes them.
const (
	jDevice = `{"id":"dev-1","state":"active","model":"gw-1","owner":"plant-a","ek_fingerprint":"ab12","trust_path":"ek-cert",` +
		`"cert_expiry":"2027-01-01T00:00:00Z","connected":true}`
	jDevice2 = `{"id":"dev-2","state":"quarantined","model":"gw-2","ek_fingerprint":"cd34","connected":false}`
	jRequest = `{"id":"apr-1","kind":"campaign.start","target":"cmp-1","params":{},"requester":"ana","justification":"CHG-7",` +
		`"created":"2026-12-01T10:00:00Z","expires":"2026-12-02T10:00:00Z","approve":"security.approve","required":1,"state":"pending"}`
	jPending  = `202 {"approval":` + jRequest + `,"message":"filed for approval"}`
	jRotation = `{"id":"rot-1","created":"2026-12-01T10:00:00Z","reason":"incident 42","selector":{"all":true},"rate":10,"state":"running",` +
		`"progress":{"Total":3,"Sent":2,"Renewed":1,"Waiting":1}}`
	jGeneration = `{"n":2,"state":"active","subject":"Sigil fleet CA sigil.local G2","not_after":"2036-12-01T00:00:00Z",` +
		`"fingerprint":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}`
	jRelease = `{"id":"rel-1","name":"gw-os","version":"2.0.0","security_version":2,"models":["gw-1"],"size":120000,"sha256":"ff",` +
		`"expires":"2027-03-01T00:00:00Z","state":"approved","signers":["k1"],"uploaded_by":"ana","uploaded_at":"2026-12-01T10:00:00Z",` +
		`"approvals":[{"by":"bo","at":"2026-12-01T11:00:00Z"}],"offerable":false,"not_offerable":"no device runs a model it names","manifest":null,"bundles":null}`
	jCampaign = `{"id":"cmp-1","definition":{"name":"wave test","release":"rel-1","targets":{"group":"kiosks"},"waves":{"canary":1,"growth":2}},` +
		`"state":"running","created":"2026-12-01T10:00:00Z","created_by":"ana","changed_by":"ana","why":"CHG-7","wave":1,` +
		`"waves":[{"number":1,"size":1,"need":1,"max_failures":0,"counts":{"pending":0,"announced":1,"downloading":0,"verifying":0,` +
		`"installing":0,"switching":0,"health":0,"committed":0,"failed":0,"rolled_back":0,"timed_out":0}}],"total":3,` +
		`"counts":{"pending":2,"announced":1,"committed":0,"failed":0,"rolled_back":0,"timed_out":0},"in_window":true,"claimed_fetched_bytes":70123}`
	jSecretInfo = `{"name":"db-password","version":3,"target":{"model":"gw-1"},"pcr_bound":true,"created":"2026-12-01T10:00:00Z"}`
	jAlert      = `{"id":7,"fingerprint":"f7","rule_id":"cpu-hot","rule_name":"CPU hot","kind":"threshold","device_id":"dev-1","key":"cpu0",` +
		`"severity":"critical","state":"acknowledged","summary":"cpu.busy 97 > 90","evidence":{"value":"97","band":"90"},"count":3,` +
		`"starts_at":"2026-12-01T10:00:00Z","last_fired_at":"2026-12-01T10:05:00Z","action":"quarantine","acked_by":"ana",` +
		`"ack_note":"looking","acked_at":"2026-12-01T10:06:00Z"}`
	jRule   = `{"id":"cpu-hot","name":"CPU hot","severity":"critical","action":"quarantine","threshold":{"metric":"cpu.busy","op":">","value":90}}`
	jOwner  = `{"id":"ana","name":"Ana","kind":"person","contact":"ana@example.net","status":"active","created":"2026-12-01T10:00:00Z","updated":"2026-12-01T10:00:00Z"}`
	jShadow = `{"key":"unknown-ek/ab12","kind":"unknown-ek","ek_fingerprint":"ab12","first_seen":"2026-12-01T10:00:00Z",` +
		`"last_seen":"2026-12-01T11:00:00Z","count":4,"remotes":["192.0.2.7","192.0.2.8"],"reason":"unknown EK","decision":"block"}`
	jRisk      = `{"device_id":"dev-1","score":42,"factors":[{"name":"dormant","points":30,"evidence":"silent 40 days"},{"name":"no-owner","points":12,"evidence":"orphaned"}],"at":"2026-12-01T10:00:00Z"}`
	jSweep     = `{"devices":10,"orphaned":1,"dormant":2,"revoked":1,"clones":0,"scored":10,"failed":0}`
	jComponent = `{"purl":"pkg:deb/debian/openssl@3.0.1","name":"openssl","version":"3.0.1"}`
	jFinding   = `{"device_id":"dev-1","group":"kiosks","model":"gw-1","owner":"plant-a","release":"rel-1","release_version":"2.0.0",` +
		`"component":` + jComponent + `,"first_seen":"2026-12-01T10:00:00Z","attested":"2026-12-01T11:00:00Z","fixed":"3.0.8","fix_release":"rel-2","campaign":"cmp-1","campaign_step":"announced"}`
	jReport = `{"advisory":{"id":"OSV-2026-1","aliases":["CVE-2026-1"],"affected":[]},"generated":"2026-12-01T12:00:00Z","devices":[` + jFinding + `],` +
		`"by_group":{"kiosks":1},"by_model":{"gw-1":1},"by_owner":{"plant-a":1},"unknown":0}`
	jUser = `{"name":"bo","role":"operator","disabled":false,"created":"2026-12-01T10:00:00Z","password_changed":"2026-12-01T10:00:00Z"}`
)

// apiCase is one command run against the fake API.
type apiCase struct {
	name  string
	args  []string
	stdin string
	api   map[string]string // the fake API's answers (newFakeAPI)
}

// apiCases cover every command that calls the API, and their error paths.
// Each case's golden file (testdata/api/NAME.golden) holds the requests
// the command sent (method, path and query, JSON body, justification),
// its exit status, stdout and stderr.
// jGrant is an approved access grant as the API serves it.
const jGrant = `{"id":"48f8cb4d1c0cd3d4","serial":765809127581247287,"requester":"ana","device":"dev-1","login":"root","public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPzBGqKIaTOkgrfO72MnqB0aeAWFJYSa/ECXaTbVdEYU","fingerprint":"SHA256:abDhzEWa8+UKf2EE0No4uyn8k9v8OvuQRcAMxe1Vp1Q","justification":"INC-7 disk full","duration":"30m0s","state":"approved","created":"2026-12-08T03:00:00Z","approval_id":"apr-2","approval_expires":"2026-12-09T03:00:00Z","approvers":["bo"],"start":"2026-12-08T03:05:00Z","end":"2026-12-08T03:35:00Z","certificate":"ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29t sigil-grant:48f8cb4d1c0cd3d4","sessions":[{"device":"dev-1","user":"root","from":"192.0.2.9","port":50022,"start":"2026-12-08T03:06:00Z","end":"2026-12-08T03:09:00Z"}]}`

var apiCases = []apiCase{
	// devices
	{name: "devices-list", args: []string{"devices", "list", "--state", "active"},
		api: map[string]string{"GET /api/v1/devices": `{"devices":[` + jDevice + `,` + jDevice2 + `]}`}},
	{name: "devices-default-list", args: []string{"devices", "-o", "json"},
		api: map[string]string{"GET /api/v1/devices": `{"devices":[` + jDevice + `]}`}},
	{name: "devices-show", args: []string{"devices", "show", "dev-1"},
		api: map[string]string{"GET /api/v1/devices/dev-1": strings.TrimSuffix(jDevice, "}") + `,"events":[]}`}},
	{name: "devices-show-404", args: []string{"devices", "show", "nope"}},
	{name: "devices-show-missing-id", args: []string{"devices", "show"}},
	{name: "devices-approve", args: []string{"devices", "approve", "dev-2"},
		api: map[string]string{"POST /api/v1/devices/dev-2/approve": jDevice2}},
	{name: "devices-approve-403", args: []string{"devices", "approve", "dev-2"},
		api: map[string]string{"POST /api/v1/devices/dev-2/approve": `403 {"type":"about:blank","title":"Forbidden","status":403,"detail":"needs devices.write"}`}},
	{name: "devices-attest", args: []string{"devices", "attest", "dev-1"},
		api: map[string]string{"POST /api/v1/devices/dev-1/attest": `{}`}},
	{name: "devices-attestations", args: []string{"devices", "attestations", "dev-1"},
		api: map[string]string{"GET /api/v1/devices/dev-1/attestations": `{"device_id":"dev-1","attestation":"pass","attestations":[` +
			`{"seq":2,"time":"2026-12-01T10:00:00Z","device_id":"dev-1","result":"fail","reason":"pcr-mismatch","code":3,"message":"PCR 7 differs",` +
			`"policy_id":"golden","policy_version":2,"evidence_digest":"aa","event_log":true,"reset_count":1,"restart_count":0,"clock":5,"action":"quarantined"},` +
			`{"seq":1,"time":"2026-12-01T09:00:00Z","device_id":"dev-1","result":"pass","reason":"ok","code":0,"evidence_digest":"bb","event_log":false,"reset_count":1,"restart_count":0,"clock":4}]}`}},
	{name: "devices-release", args: []string{"devices", "release", "dev-2", "--justification", "fixed"},
		api: map[string]string{"POST /api/v1/devices/dev-2/release": jDevice2}},
	{name: "devices-revoke", args: []string{"devices", "revoke", "dev-1", "--reason", "keyCompromise", "--comment", "stolen"},
		api: map[string]string{"POST /api/v1/devices/dev-1/revoke": jDevice}},
	{name: "devices-decommission", args: []string{"devices", "decommission", "dev-1", "--comment", "scrapped"},
		api: map[string]string{"POST /api/v1/devices/dev-1/decommission": `{"id":"dev-1","state":"decommissioned","model":"gw-1","ek_fingerprint":"ab12","connected":false}`}},
	{name: "devices-decommission-409", args: []string{"devices", "decommission", "dev-1"},
		api: map[string]string{"POST /api/v1/devices/dev-1/decommission": `409 {"type":"about:blank","title":"Conflict","status":409,"detail":"device dev-1 is decommissioned already"}`}},
	{name: "devices-rotate", args: []string{"devices", "rotate", "dev-1"},
		api: map[string]string{"POST /api/v1/devices/dev-1/rotate": jRotation}},
	{name: "devices-cert", args: []string{"devices", "cert", "dev-1"},
		api: map[string]string{"GET /api/v1/devices/dev-1/certificate": `{"device_id":"dev-1","spiffe_id":"spiffe://sigil.local/device/dev-1","serial":"0a1b",` +
			`"not_before":"2026-12-01T00:00:00Z","not_after":"2027-01-01T00:00:00Z","revoked":false,"issuer":` + jGeneration + `,` +
			`"certificate_pem":"CERT\n","chain_pem":"CERT\nROOT\n"}`}},
	{name: "devices-cert-pem", args: []string{"devices", "cert", "dev-1", "--pem"},
		api: map[string]string{"GET /api/v1/devices/dev-1/certificate": `{"device_id":"dev-1","chain_pem":"-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n"}`}},

	// bridges
	{name: "bridge-list", args: []string{"bridge", "list"},
		api: map[string]string{"GET /api/v1/bridges": `{"bridges":[{"site":"plant1","created":"2026-12-01T10:00:00Z","certs":[{"serial":"4a1b","not_before":"2026-12-01T10:00:00Z",` +
			`"not_after":"2027-03-01T10:00:00Z","issued_by":"user:ana"}],"prefix":"sigil/site/plant1/","current":"4a1b",` +
			`"health":{"connected":true,"last_seen":"2026-12-08T04:00:00Z","accepted":12,"refused":{"replay":1,"signature":2}}},` +
			`{"site":"plant2","created":"2026-12-01T10:00:00Z","certs":[],"prefix":"sigil/site/plant2/"}]}`}},
	{name: "bridge-revoke", args: []string{"bridge", "revoke", "plant1", "--reason", "keyCompromise", "--comment", "stolen"},
		api: map[string]string{"POST /api/v1/bridges/plant1/revoke": `{"site":"plant1","created":"2026-12-01T10:00:00Z","certs":[],"prefix":"sigil/site/plant1/"}`}},
	{name: "bridge-revoke-404", args: []string{"bridge", "revoke", "plant9"}},
	{name: "bridge-assign", args: []string{"bridge", "assign", "plant1", "dev-1"},
		api: map[string]string{"PUT /api/v1/bridges/plant1/devices/dev-1": `{"device":"dev-1","site":"plant1"}`}},
	{name: "bridge-unassign", args: []string{"bridge", "unassign", "plant1", "dev-1"},
		api: map[string]string{"DELETE /api/v1/bridges/plant1/devices/dev-1": `{"device":"dev-1","site":""}`}},

	// tokens
	{name: "tokens-create", args: []string{"tokens", "create", "--model", "gw-1", "--owner", "plant-a", "--ttl", "2h"},
		api: map[string]string{"POST /api/v1/enrollment-tokens": `{"id":"et-1","token":"sge_secret","model":"gw-1","owner":"plant-a","expires":"2026-12-01T12:00:00Z"}`}},
	{name: "tokens-create-pending", args: []string{"tokens", "create", "--group", "kiosks"},
		api: map[string]string{"POST /api/v1/enrollment-tokens": `{"id":"et-2","token":"sge_secret2","group":"kiosks","expires":"2026-12-02T10:00:00Z","pending":true,"approval":` + jRequest + `}`}},
	{name: "tokens-no-subcommand", args: []string{"tokens"}},

	// rotations
	{name: "rotations-list", args: []string{"rotations", "list"},
		api: map[string]string{"GET /api/v1/rotations": `{"rotations":[{"id":"rot-1","state":"done"}]}`}},
	{name: "rotations-show", args: []string{"rotations", "show", "rot-1"},
		api: map[string]string{"GET /api/v1/rotations/rot-1": jRotation}},
	{name: "rotations-cancel", args: []string{"rotations", "cancel", "rot-1"},
		api: map[string]string{"POST /api/v1/rotations/rot-1/cancel": jRotation}},
	{name: "rotations-start", args: []string{"rotations", "start", "--devices", "dev-1,dev-2", "--rate", "5", "--reason", "incident 42"},
		api: map[string]string{"POST /api/v1/rotations": jRotation}},
	{name: "rotations-start-no-selector", args: []string{"rotations", "start"}},

	// ca
	{name: "ca-status", args: []string{"ca", "status"},
		api: map[string]string{"GET /api/v1/ca": `{"generations":[` + jGeneration + `],"bundle_pem":"ROOT G2\n"}`}},
	{name: "ca-status-bundle", args: []string{"ca", "status", "--bundle"},
		api: map[string]string{"GET /api/v1/ca": `{"generations":[` + jGeneration + `],"bundle_pem":"ROOT G2\n"}`}},
	{name: "ca-prepare", args: []string{"ca", "prepare"},
		api: map[string]string{"POST /api/v1/ca/prepare": jGeneration}},
	{name: "ca-prepare-pending", args: []string{"ca", "prepare", "--justification", "yearly"},
		api: map[string]string{"POST /api/v1/ca/prepare": jPending}},
	{name: "ca-activate", args: []string{"ca", "activate", "--rate", "20"},
		api: map[string]string{"POST /api/v1/ca/activate": `{"generation":` + jGeneration + `,"rotation":` + jRotation + `}`}},
	{name: "ca-activate-bad-rate", args: []string{"ca", "activate", "--rate", "0"}},
	{name: "ca-retire", args: []string{"ca", "retire"},
		api: map[string]string{"POST /api/v1/ca/retire": `{"retired":[` + jGeneration + `]}`}},

	// users and API tokens
	{name: "users-list", args: []string{"users", "list"},
		api: map[string]string{"GET /api/v1/users": `{"users":[` + jUser + `,{"name":"ana","role":"admin","created":"2026-12-01T10:00:00Z","password_changed":"2026-12-01T10:00:00Z","last_login":"2026-12-01T11:00:00Z"}]}`}},
	{name: "users-create", args: []string{"users", "create", "bo", "--role", "operator"},
		api: map[string]string{"POST /api/v1/users": strings.TrimSuffix(jUser, "}") + `,"password":"generated-pw"}`}},
	{name: "users-role", args: []string{"users", "role", "bo", "--role", "admin"},
		api: map[string]string{"PATCH /api/v1/users/bo": `{"name":"bo","role":"admin"}`}},
	{name: "users-disable", args: []string{"users", "disable", "bo"},
		api: map[string]string{"PATCH /api/v1/users/bo": `{"name":"bo","role":"operator","disabled":true}`}},
	{name: "users-enable", args: []string{"users", "enable", "bo"},
		api: map[string]string{"PATCH /api/v1/users/bo": `{"name":"bo","role":"operator"}`}},
	{name: "users-delete", args: []string{"users", "delete", "bo"},
		api: map[string]string{"DELETE /api/v1/users/bo": `{}`}},
	{name: "users-passwd", args: []string{"users", "passwd", "--stdin"}, stdin: "old password\nnew password\n",
		api: map[string]string{"POST /api/v1/users/me/password": `{"user":"ana","sessions_ended":2,"note":"ok"}`}},
	{name: "users-passwd-wrong", args: []string{"users", "passwd", "--stdin"}, stdin: "wrong\nnew password\n",
		api: map[string]string{"POST /api/v1/users/me/password": `403 {"type":"about:blank","title":"Forbidden","status":403,"detail":"the current password is wrong"}`}},
	{name: "users-passwd-args", args: []string{"users", "passwd", "old password", "new password"}},
	{name: "api-tokens-list", args: []string{"api-tokens", "list"},
		api: map[string]string{"GET /api/v1/tokens": `{"tokens":[{"id":"apt_0011223344556677","name":"scraper","owner":"ana","role":"viewer","created":"2026-12-01T10:00:00Z","expires":"2027-03-01T10:00:00Z"}]}`}},
	{name: "api-tokens-create", args: []string{"api-tokens", "create", "scraper", "--role", "viewer", "--ttl", "720h"},
		api: map[string]string{"POST /api/v1/tokens": `{"id":"apt_0011223344556677","name":"scraper","owner":"ana","role":"viewer","created":"2026-12-01T10:00:00Z","expires":"2026-12-31T10:00:00Z","secret":"sga_secret"}`}},
	{name: "api-tokens-revoke", args: []string{"api-tokens", "revoke", "apt_0011223344556677"},
		api: map[string]string{"DELETE /api/v1/tokens/apt_0011223344556677": `{}`}},

	// access
	{name: "access-request", args: []string{"access", "request", "--device", "dev-1", "--key", "id_ed25519.pub", "--justification", "INC-7 disk full", "--duration", "30m"},
		api: map[string]string{"POST /api/v1/access": strings.Replace(jGrant, `"state":"approved"`, `"state":"requested"`, 1)}},
	{name: "access-request-usage", args: []string{"access", "request", "--device", "dev-1"}},
	{name: "access-list", args: []string{"access", "list", "--state", "approved"},
		api: map[string]string{"GET /api/v1/access": `{"grants":[` + jGrant + `],"policy":{"max_duration":"8h0m0s","default_duration":"1h0m0s","logins":["root"],"allow_forwarding":false}}`}},
	{name: "access-show", args: []string{"access", "show", "48f8cb4d1c0cd3d4"},
		api: map[string]string{"GET /api/v1/access/48f8cb4d1c0cd3d4": jGrant}},
	{name: "access-approve", args: []string{"access", "approve", "48f8cb4d1c0cd3d4", "--comment", "ok"},
		api: map[string]string{"POST /api/v1/access/48f8cb4d1c0cd3d4/approve": jGrant}},
	{name: "access-deny", args: []string{"access", "deny", "48f8cb4d1c0cd3d4", "--reason", "no ticket"},
		api: map[string]string{"POST /api/v1/access/48f8cb4d1c0cd3d4/deny": strings.Replace(jGrant, `"state":"approved"`, `"state":"denied"`, 1)}},
	{name: "access-revoke", args: []string{"access", "revoke", "48f8cb4d1c0cd3d4", "--reason", "done"},
		api: map[string]string{"POST /api/v1/access/48f8cb4d1c0cd3d4/revoke": strings.Replace(jGrant, `"state":"approved"`, `"state":"revoked","revoked":"2026-12-08T03:10:00Z","revoked_by":"bo","reason":"done"`, 1)}},
	{name: "access-revoke-usage", args: []string{"access", "revoke", "48f8cb4d1c0cd3d4"}},

	// approvals
	{name: "approvals-list", args: []string{"approvals", "list", "--all"},
		api: map[string]string{"GET /api/v1/approvals": `{"approvals":[` + jRequest + `]}`}},
	{name: "approvals-show", args: []string{"approvals", "show", "apr-1"},
		api: map[string]string{"GET /api/v1/approvals/apr-1": jRequest}},
	{name: "approvals-approve", args: []string{"approvals", "approve", "apr-1", "--comment", "ok"},
		api: map[string]string{"POST /api/v1/approvals/apr-1/approve": strings.Replace(jRequest, `"state":"pending"`, `"state":"executed","error":"campaign started"`, 1)}},
	{name: "approvals-reject", args: []string{"approvals", "reject", "apr-1", "--reason", "not now"},
		api: map[string]string{"POST /api/v1/approvals/apr-1/reject": strings.Replace(jRequest, `"state":"pending"`, `"state":"rejected"`, 1)}},
	{name: "approvals-reject-no-reason", args: []string{"approvals", "reject", "apr-1"}},

	// audit
	{name: "audit-list", args: []string{"audit", "list", "--actor", "user:ana", "--limit", "2"},
		api: map[string]string{"GET /api/v1/audit": `{"entries":[{"seq":9,"time":"2026-12-01T10:00:00Z","actor":{"kind":"user","id":"ana"},"action":"api.devices.approve",` +
			`"target":"dev-2","outcome":"denied","reason":"needs devices.write","prev":"` + strings.Repeat("0", 64) + `","hash":"` + strings.Repeat("1", 64) + `"}]}`}},
	{name: "audit-export", args: []string{"audit", "export"},
		api: map[string]string{"GET /api/v1/audit/export": `{"seq":1}` + "\n"}},
	{name: "audit-export-403", args: []string{"audit", "export"},
		api: map[string]string{"GET /api/v1/audit/export": `403 {"type":"about:blank","title":"Forbidden","status":403,"detail":"needs audit.read"}`}},
	{name: "audit-checkpoint", args: []string{"audit", "checkpoint"},
		api: map[string]string{"POST /api/v1/audit/checkpoint": `{"seq":9,"head":"` + strings.Repeat("ab", 32) + `","time":"2026-12-01T10:00:00Z","key_id":"audit-1","signature":"AA=="}`}},

	// policies
	{name: "policies-list", args: []string{"policies", "list"},
		api: map[string]string{"GET /api/v1/policies": `{"Policies":[{"id":"golden","version":2,"name":"gw-1 golden","model":"gw-1","action":"alert"}]}`}},
	{name: "policies-show", args: []string{"policies", "show", "golden"},
		api: map[string]string{"GET /api/v1/policies/golden": `{"id":"golden","version":2,"name":"gw-1 golden","pcrs":{"sha256":{"7":"aa"}}}`}},
	{name: "policies-learn", args: []string{"policies", "learn", "--device", "dev-1", "--name", "gw-1 golden", "--pcrs", "0,7", "--action", "alert"},
		api: map[string]string{"POST /api/v1/policies/learn": `{"id":"gw-1-golden","version":1,"name":"gw-1 golden","pcrs":{"sha256":{"0":"aa","7":"bb"}}}`}},
	{name: "policies-put", args: []string{"policies", "put", "policy.json"},
		api: map[string]string{"POST /api/v1/policies": `{"id":"golden","version":3,"name":"gw-1 golden"}`}},
	{name: "policies-delete", args: []string{"policies", "delete", "golden"},
		api: map[string]string{"DELETE /api/v1/policies/golden": `{}`}},

	// firmware (the API part; keygen, trust and sign are TestFirmwareOffline)
	{name: "firmware-list", args: []string{"firmware", "list"},
		api: map[string]string{"GET /api/v1/firmware": `{"releases":[` + jRelease + `]}`}},
	{name: "firmware-show", args: []string{"firmware", "show", "rel-1"},
		api: map[string]string{"GET /api/v1/firmware/rel-1": jRelease}},
	{name: "firmware-approve", args: []string{"firmware", "approve", "rel-1"},
		api: map[string]string{"POST /api/v1/firmware/rel-1/approve": jRelease}},
	{name: "firmware-withdraw", args: []string{"firmware", "withdraw", "rel-1", "--reason", "bricks gw-1"},
		api: map[string]string{"POST /api/v1/firmware/rel-1/withdraw": strings.Replace(jRelease, `"state":"approved"`, `"state":"withdrawn"`, 1)}},
	{name: "firmware-upload", args: []string{"firmware", "upload", "--manifest", "gw-os.manifest.json", "--bundle", "a.bundle", "--bundle", "b.bundle", "--image", "gw-os.img"},
		api: map[string]string{"PUT /api/v1/firmware/images/" + imageDigest: `{}`, "POST /api/v1/firmware": jRelease}},
	{name: "firmware-upload-no-bundle", args: []string{"firmware", "upload", "--manifest", "gw-os.manifest.json"}},
	{name: "firmware-sbom", args: []string{"firmware", "sbom", "rel-1", "gw-os.cdx.json"},
		api: map[string]string{"POST /api/v1/firmware/rel-1/sbom": `{"release":"rel-1","components":[` + jComponent + `]}`}},
	{name: "firmware-sbom-422", args: []string{"firmware", "sbom", "rel-1", "gw-os.cdx.json"},
		api: map[string]string{"POST /api/v1/firmware/rel-1/sbom": `422 {"type":"about:blank","title":"SBOM refused","status":422,"detail":"exposure: the SBOM's digest differs from the one in the signed manifest"}`}},
	{name: "firmware-components", args: []string{"firmware", "components", "rel-1", "-o", "json"},
		api: map[string]string{"GET /api/v1/firmware/rel-1/components": `{"release":"rel-1","components":[` + jComponent + `]}`}},

	// exposure
	{name: "exposure-query", args: []string{"exposure", "query", "--purl", "pkg:deb/debian/openssl", "--range", ">= 3.0.0, < 3.0.8"},
		api: map[string]string{"GET /api/v1/exposure": `{"devices":[` + jFinding + `]}`}},
	{name: "exposure-query-no-purl", args: []string{"exposure", "query"}},
	{name: "exposure-import", args: []string{"exposure", "import", "osv.json"},
		api: map[string]string{"POST /api/v1/advisories": jReport}},
	{name: "exposure-advisories", args: []string{"exposure"},
		api: map[string]string{"GET /api/v1/advisories": `{"advisories":["OSV-2026-1"]}`}},
	{name: "exposure-report", args: []string{"exposure", "report", "OSV-2026-1", "--format", "json"},
		api: map[string]string{"GET /api/v1/advisories/OSV-2026-1/report": jReport}},
	{name: "exposure-report-csv", args: []string{"exposure", "report", "OSV-2026-1", "--format", "csv"},
		api: map[string]string{"GET /api/v1/advisories/OSV-2026-1/report": "advisory,device_id\nOSV-2026-1,dev-1\n"}},

	// campaigns
	{name: "campaigns-create", args: []string{"campaigns", "create", "--release", "rel-1", "--group", "kiosks", "--canary", "1", "--growth", "2", "--failure", "0.1", "--timeout", "30m", "--justification", "CHG-7"},
		api: map[string]string{"POST /api/v1/campaigns": jCampaign}},
	{name: "campaigns-create-definition", args: []string{"campaigns", "create", "--definition", "campaign.json", "--sizes", "1,10"},
		api: map[string]string{"POST /api/v1/campaigns": jCampaign}},
	{name: "campaigns-start", args: []string{"campaigns", "start", "cmp-1", "--at", "2026-12-02T03:00:00Z", "--justification", "CHG-7"},
		api: map[string]string{"POST /api/v1/campaigns/cmp-1/start": jCampaign}},
	{name: "campaigns-start-pending", args: []string{"campaigns", "start", "cmp-1", "--justification", "CHG-7"},
		api: map[string]string{"POST /api/v1/campaigns/cmp-1/start": jPending}},
	{name: "campaigns-pause", args: []string{"campaigns", "pause", "cmp-1", "--justification", "looks bad"},
		api: map[string]string{"POST /api/v1/campaigns/cmp-1/pause": jCampaign}},
	{name: "campaigns-resume", args: []string{"campaigns", "resume", "cmp-1"},
		api: map[string]string{"POST /api/v1/campaigns/cmp-1/resume": jCampaign}},
	{name: "campaigns-abort", args: []string{"campaigns", "abort", "cmp-1"},
		api: map[string]string{"POST /api/v1/campaigns/cmp-1/abort": jCampaign}},
	{name: "campaigns-rollback", args: []string{"campaigns", "rollback", "cmp-1", "--release", "rel-0", "--justification", "bricks"},
		api: map[string]string{"POST /api/v1/campaigns/cmp-1/rollback": jCampaign}},
	{name: "campaigns-list", args: []string{"campaigns", "list"},
		api: map[string]string{"GET /api/v1/campaigns": `{"campaigns":[` + jCampaign + `]}`}},
	{name: "campaigns-show", args: []string{"campaigns", "show", "cmp-1"},
		api: map[string]string{"GET /api/v1/campaigns/cmp-1": jCampaign, "GET /api/v1/firmware/rel-1": jRelease}},
	{name: "campaigns-devices", args: []string{"campaigns", "devices", "cmp-1", "--step", "failed", "--wave", "1", "--limit", "1"},
		api: map[string]string{"GET /api/v1/campaigns/cmp-1/devices": `{"devices":[{"id":"dev-1","wave":1,"step":"failed","reason":77,"attempts":1,` +
			`"updated":"2026-12-01T10:00:00Z","running_version":"1.0.0","claimed_fetched_bytes":4242}],"next":"dev-1"}`,
			"GET /api/v1/campaigns/cmp-1": jCampaign, "GET /api/v1/firmware/rel-1": jRelease}},

	// secrets
	{name: "secrets-list", args: []string{"secrets", "list"},
		api: map[string]string{"GET /api/v1/secrets": `{"secrets":[{"name":"db-password","version":3,"target":{"model":"gw-1","group":"kiosks"},"pcr_bound":true,` +
			`"created":"2026-12-01T10:00:00Z","versions":[2,3],"history":[],"delivery":{"acked":4,"pending":1,"failed":0}}]}`}},
	{name: "secrets-device", args: []string{"secrets", "device", "dev-1"},
		api: map[string]string{"GET /api/v1/devices/dev-1/secrets": `{"device_id":"dev-1","secrets":[{"name":"db-password","latest":3,"pcr_bound":true,"sent":3,"acked":2,"error":"policy mismatch"}]}`}},
	{name: "secrets-put", args: []string{"secrets", "put", "db-password", "--model", "gw-1", "--pcr-bound"}, stdin: "hunter2\n",
		api: map[string]string{"PUT /api/v1/secrets/db-password": jSecretInfo}},
	{name: "secrets-put-empty", args: []string{"secrets", "put", "db-password", "--model", "gw-1"}, stdin: "\n"},
	{name: "secrets-schedule", args: []string{"secrets", "schedule", "db-password", "--every", "720h", "--grace", "1h", "--length", "24", "--encoding", "hex"},
		api: map[string]string{"PUT /api/v1/secrets/db-password/rotation": `{}`}},
	{name: "secrets-schedule-clear", args: []string{"secrets", "schedule", "db-password", "--every", "0"},
		api: map[string]string{"DELETE /api/v1/secrets/db-password/rotation": `{}`}},
	{name: "secrets-rotate", args: []string{"secrets", "rotate", "db-password"},
		api: map[string]string{"POST /api/v1/secrets/db-password/rotate": jSecretInfo}},
	{name: "secrets-delete", args: []string{"secrets", "delete", "db-password"},
		api: map[string]string{"DELETE /api/v1/secrets/db-password": `{}`}},
	{name: "workloads-list", args: []string{"workloads", "list"},
		api: map[string]string{"GET /api/v1/workloads": `{"workloads":[{"name":"web","scope":"group","target":"kiosks","uid":1000,"exe_path":"/usr/bin/web",` +
			`"created_at":"2026-12-01T10:00:00Z","created_by":"ana"}]}`}},
	{name: "workloads-add", args: []string{"workloads", "add", "web", "--group", "kiosks", "--uid", "1000", "--exe", "/usr/bin/web"},
		api: map[string]string{"PUT /api/v1/workloads/web": `{"name":"web","scope":"group","target":"kiosks","uid":1000,"exe_path":"/usr/bin/web","created_at":"2026-12-01T10:00:00Z"}`}},
	{name: "workloads-add-two-scopes", args: []string{"workloads", "add", "web", "--group", "kiosks", "--model", "gw-1", "--uid", "1000"}},
	{name: "workloads-add-no-selector", args: []string{"workloads", "add", "web", "--device", "dev-1"}},
	{name: "workloads-delete", args: []string{"workloads", "delete", "web"},
		api: map[string]string{"DELETE /api/v1/workloads/web": `{}`}},
	{name: "workloads-rotate-key", args: []string{"workloads", "rotate-key"},
		api: map[string]string{"POST /api/v1/workloads/keys/rotate": `{"kid":"k2"}`}},

	// alerts
	{name: "alerts-list", args: []string{"alerts", "list", "--device", "dev-1", "--state", "open", "--limit", "1"},
		api: map[string]string{"GET /api/v1/alerts": `{"alerts":[` + jAlert + `],"next":6}`}},
	{name: "alerts-show", args: []string{"alerts", "show", "7"},
		api: map[string]string{"GET /api/v1/alerts/7": jAlert}},
	{name: "alerts-show-bad-id", args: []string{"alerts", "show", "seven"}},
	{name: "alerts-ack", args: []string{"alerts", "ack", "7", "--note", "looking"},
		api: map[string]string{"POST /api/v1/alerts/7/ack": jAlert}},
	{name: "alerts-resolve", args: []string{"alerts", "resolve", "7", "--note", "fan replaced"},
		api: map[string]string{"POST /api/v1/alerts/7/resolve": strings.Replace(jAlert, `"state":"acknowledged"`, `"state":"resolved"`, 1)}},
	{name: "alerts-rules", args: []string{"alerts", "rules"},
		api: map[string]string{"GET /api/v1/alerts/rules": `{"rules":[` + jRule + `]}`}},
	{name: "alerts-rules-put", args: []string{"alerts", "rules", "put", "rule.json"},
		api: map[string]string{"PUT /api/v1/alerts/rules/cpu-hot": jRule}},
	{name: "alerts-rules-delete", args: []string{"alerts", "rules", "delete", "cpu-hot"},
		api: map[string]string{"DELETE /api/v1/alerts/rules/cpu-hot": `{}`}},
	{name: "alerts-deadletters", args: []string{"alerts", "deadletters", "--limit", "1"},
		api: map[string]string{"GET /api/v1/alerts/deadletters": `{"dead_letters":[{"id":3,"route":"pager","notification":{"transition":"firing","at":"2026-12-01T10:00:00Z","alert":` + jAlert + `},` +
			`"attempts":5,"error":"503 from pager","at":"2026-12-01T10:10:00Z"}],"next":2}`}},
	{name: "alerts-redrive", args: []string{"alerts", "redrive", "3"},
		api: map[string]string{"POST /api/v1/alerts/deadletters/3/redrive": `{}`}},
	{name: "alerts-redrive-all", args: []string{"alerts", "redrive", "--all", "--route", "pager"},
		api: map[string]string{"POST /api/v1/alerts/deadletters/redrive": `{"queued":4}`}},
	{name: "alerts-redrive-neither", args: []string{"alerts", "redrive"}},
	{name: "alerts-sinks", args: []string{"alerts", "sinks"},
		api: map[string]string{"GET /api/v1/alerts/sinks": `{"sinks":[{"name":"pager","type":"webhook","target":"https://pager.example.net/hook","min_severity":"critical","signed":true}]}`}},

	// telemetry
	{name: "telemetry", args: []string{"telemetry", "dev-1"},
		api: map[string]string{"GET /api/v1/devices/dev-1/telemetry": `{"device_id":"dev-1","last_seen":"2026-12-01T10:00:00Z","last_point":"2026-12-01T09:59:50Z",` +
			`"metrics":{"cpu.busy":12.5,"mem.used":0.5},"sets":{"ports":["22","8883"]},"info":{"kernel":"6.1"},"stream":"00","through":9,` +
			`"counts":{"batches":3,"ingested":30,"duplicates":1,"dropped":2,"rejected":0,"device_reported":2,"reboots":1,"new_streams":1},"charted":["cpu.busy"]}`}},
	{name: "telemetry-metric", args: []string{"telemetry", "dev-1", "--metric", "cpu.busy", "--since", "2h"},
		api: map[string]string{"GET /api/v1/devices/dev-1/telemetry/series": `{"device_id":"dev-1","metric":"cpu.busy","since":"2026-12-01T08:00:00Z",` +
			`"samples":[{"time":"2026-12-01T09:00:00Z","value":12.5,"min":3,"max":40,"count":60}]}`}},

	// identity governance
	{name: "owners-list", args: []string{"owners", "list"},
		api: map[string]string{"GET /api/v1/owners": `{"owners":[` + jOwner + `]}`}},
	{name: "owners-show", args: []string{"owners", "show", "ana"},
		api: map[string]string{"GET /api/v1/owners/ana": jOwner}},
	{name: "owners-put", args: []string{"owners", "put", "ana", "--name", "Ana", "--kind", "person", "--contact", "ana@example.net"},
		api: map[string]string{"PUT /api/v1/owners/ana": jOwner}},
	{name: "owners-status", args: []string{"owners", "status", "ana", "departed"},
		api: map[string]string{"POST /api/v1/owners/ana/status": strings.Replace(jOwner, `"status":"active"`, `"status":"departed"`, 1)}},
	{name: "owners-assign", args: []string{"owners", "assign", "dev-1", "ana", "--purpose", "door controller"},
		api: map[string]string{"PUT /api/v1/devices/dev-1/owner": `{"device_id":"dev-1","owner":"ana","purpose":"door controller",` +
			`"status":{"device_id":"dev-1","orphaned":true,"orphan_reason":"owner ana departed","checked":"2026-12-01T10:00:00Z"}}`}},
	{name: "owners-orphans", args: []string{"owners", "orphans"},
		api: map[string]string{"GET /api/v1/governance/orphans": `{"devices":[{"device_id":"dev-2","orphaned":true,"orphan_reason":"no owner","orphaned_since":"2026-11-01T00:00:00Z","checked":"2026-12-01T10:00:00Z"}]}`}},
	{name: "triage-list", args: []string{"triage", "list", "--all", "--kind", "unknown-ek"},
		api: map[string]string{"GET /api/v1/triage": `{"entries":[` + jShadow + `],"stats":{"entries":1,"pending":0,"dropped":5,"evicted":0}}`}},
	{name: "triage-show", args: []string{"triage", "show", "unknown-ek/ab12"},
		api: map[string]string{"GET /api/v1/triage/unknown-ek/ab12": jShadow}},
	{name: "triage-enroll", args: []string{"triage", "enroll", "unknown-ek/ab12", "--note", "new batch"},
		api: map[string]string{"POST /api/v1/triage/unknown-ek/ab12/decision": jShadow}},
	{name: "triage-block", args: []string{"triage", "block", "unknown-ek/ab12"},
		api: map[string]string{"POST /api/v1/triage/unknown-ek/ab12/decision": jShadow}},
	{name: "triage-dismiss", args: []string{"triage", "dismiss", "unknown-ek/ab12"},
		api: map[string]string{"POST /api/v1/triage/unknown-ek/ab12/decision": jShadow}},
	{name: "blocks-list", args: []string{"blocks", "list"},
		api: map[string]string{"GET /api/v1/blocks": `{"blocks":[{"kind":"address","value":"192.0.2.7","reason":"scanner","by":"ana","at":"2026-12-01T10:00:00Z"}]}`}},
	{name: "blocks-add", args: []string{"blocks", "add", "address", "192.0.2.7", "--reason", "scanner"},
		api: map[string]string{"POST /api/v1/blocks": `{}`}},
	{name: "blocks-remove", args: []string{"blocks", "remove", "address", "192.0.2.7"},
		api: map[string]string{"DELETE /api/v1/blocks": `{}`}},
	{name: "clones-list", args: []string{"clones"},
		api: map[string]string{"GET /api/v1/clones": `{"clones":[{"device_id":"dev-1","kind":"certificate","hosts":["192.0.2.7","198.51.100.9"],` +
			`"evidence":"two sessions","detected_at":"2026-12-01T10:00:00Z","quarantined":true}]}`}},
	{name: "clones-resolve", args: []string{"clones", "resolve", "dev-1", "--kind", "certificate", "--note", "lab copy"},
		api: map[string]string{"POST /api/v1/clones/dev-1/resolve": `{}`}},
	{name: "clones-resolve-no-kind", args: []string{"clones", "resolve", "dev-1"}},
	{name: "risk", args: []string{"risk", "--limit", "5"},
		api: map[string]string{"GET /api/v1/risk": `{"risks":[` + jRisk + `]}`}},
	{name: "risk-device", args: []string{"risk", "dev-1"},
		api: map[string]string{"GET /api/v1/devices/dev-1/risk": jRisk}},
	{name: "risk-sweep", args: []string{"risk", "sweep"},
		api: map[string]string{"POST /api/v1/governance/sweep": jSweep}},
	{name: "governance-sweep", args: []string{"governance", "sweep", "-o", "json"},
		api: map[string]string{"POST /api/v1/governance/sweep": jSweep}},
	{name: "governance-dormant", args: []string{"governance", "dormant"},
		api: map[string]string{"GET /api/v1/governance/dormant": `{"devices":[{"device_id":"dev-2","dormant":true,"dormant_since":"2026-11-01T00:00:00Z",` +
			`"last_seen":"2026-09-01T00:00:00Z","revoked_serial":"0a1b","checked":"2026-12-01T10:00:00Z"}]}`}},
	{name: "governance-no-subcommand", args: []string{"governance"}},

	{name: "version", args: []string{"version"}},
	{name: "unknown-command", args: []string{"nope"}},
	{name: "unknown-subcommand", args: []string{"devices", "nope", "x"}},
}

// imageDigest is the SHA-256 of the image TestCommands uploads.
var imageDigest = func() string {
	h := sha256.Sum256(testImage)
	return hexString(h[:])
}()

var testImage = []byte(strings.Repeat("gw-os 2.0.0 ", 100))

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// writeCommandFiles writes the files the cases name, in the working
// directory.
func writeCommandFiles(t *testing.T) {
	t.Helper()
	m := &manifest.Manifest{Name: "gw-os", Version: "2.0.0", SecurityVersion: 2, Size: int64(len(testImage)), Models: []string{"gw-1"},
		Expires: time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)}
	copy(m.SHA256[:], func() []byte { h := sha256.Sum256(testImage); return h[:] }())
	raw, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"gw-os.img":           string(testImage),
		"gw-os.manifest.json": string(raw),
		"a.bundle":            `{"bundle":"a"}`,
		"b.bundle":            `{"bundle":"b"}`,
		"policy.json":         `{"id":"golden","name":"gw-1 golden","model":"gw-1","pcrs":{"sha256":{"7":"` + strings.Repeat("aa", 32) + `"}}}`,
		"rule.json":           jRule,
		"campaign.json":       `{"name":"from file","release":"rel-1","targets":{"model":"gw-1"},"on_failure":"abort","max_in_flight":5}`,
		"id_ed25519.pub":      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPzBGqKIaTOkgrfO72MnqB0aeAWFJYSa/ECXaTbVdEYU ana@laptop\n",
		"gw-os.cdx.json":      `{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"openssl","purl":"pkg:deb/debian/openssl@3.0.1"}]}`,
		"osv.json":            `{"id":"OSV-2026-1","affected":[{"package":{"purl":"pkg:deb/debian/openssl"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.8"}]}]}]}`,
	}
	for name, text := range files {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCommands runs every case of apiCases against a fake API and compares
// the requests each command sent, its exit status and its output with its
// golden file.
func TestCommands(t *testing.T) {
	golden, err := filepath.Abs(filepath.Join("testdata", "api"))
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	writeCommandFiles(t)
	seen := map[string]bool{}
	for _, tc := range apiCases {
		if seen[tc.name] {
			t.Fatalf("two cases named %s", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t, tc.api)
			stdout, stderr, code := runCLI(t, tc.stdin, tc.args...)
			checkGolden(t, golden, tc.name, transcript(tc.args, f.requests(), code, stdout, stderr))
		})
	}
	if *update {
		return
	}
	for _, name := range goldenNames(t, golden) {
		if !seen[name] && !slices.Contains(otherGolden, name) {
			t.Errorf("testdata/api/%s.golden belongs to no case", name)
		}
	}
}

// otherGolden are golden files that tests other than TestCommands write.
var otherGolden = []string{}

// TestAPIErrors: a 4xx from the API ends the command with the API's
// reason on stderr, nothing on stdout and the exit status scripts test
// (4 not found, 5 denied, 7 pending approval, 1 otherwise), whichever
// way the command talks to the API (JSON calls, the audit export's
// stream, the firmware image upload).
func TestAPIErrors(t *testing.T) {
	t.Chdir(t.TempDir())
	writeCommandFiles(t)
	problem := func(status int, detail string) string {
		return fmt.Sprintf(`%d {"type":"about:blank","title":%q,"status":%d,"detail":%q}`, status, http.StatusText(status), status, detail)
	}
	for _, tc := range []struct {
		args   []string
		route  string
		answer string
		code   int
		want   string
	}{
		{[]string{"devices", "show", "dev-9"}, "GET /api/v1/devices/dev-9", problem(404, "no device dev-9"), exitNotFound, "404 Not Found: no device dev-9"},
		{[]string{"devices", "list"}, "GET /api/v1/devices", problem(401, "bad token"), exitDenied, "401 Unauthorized: bad token"},
		{[]string{"secrets", "list"}, "GET /api/v1/secrets", problem(403, "needs secrets.read"), exitDenied, "403 Forbidden: needs secrets.read"},
		{[]string{"campaigns", "start", "cmp-1"}, "POST /api/v1/campaigns/cmp-1/start", problem(409, "campaign cmp-1 is finished"), exitError, "409 Conflict: campaign cmp-1 is finished"},
		{[]string{"policies", "learn", "--device", "dev-1", "--name", "x"}, "POST /api/v1/policies/learn", problem(400, "device dev-1 has no attestation"), exitError, "400 Bad Request: device dev-1 has no attestation"},
		{[]string{"ca", "activate"}, "POST /api/v1/ca/activate", jPending, exitPending, "request apr-1 filed; approve it with: sigil approvals approve apr-1"},
		{[]string{"audit", "export"}, "GET /api/v1/audit/export", problem(403, "needs audit.read"), exitDenied, "403 Forbidden: needs audit.read"},
		{[]string{"audit", "export", "--out", "audit.jsonl"}, "GET /api/v1/audit/export", problem(404, "no such log"), exitNotFound, "404 Not Found: no such log"},
		{[]string{"firmware", "upload", "--manifest", "gw-os.manifest.json", "--bundle", "a.bundle", "--image", "gw-os.img"},
			"PUT /api/v1/firmware/images/" + imageDigest, problem(413, "image larger than 64 MiB"), exitError, "413 Request Entity Too Large: image larger than 64 MiB"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			newFakeAPI(t, map[string]string{tc.route: tc.answer})
			stdout, stderr, code := runCLI(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) || stdout != "" {
				t.Errorf("exit %d (want %d), stdout %q, stderr %q (want it to hold %q)", code, tc.code, stdout, stderr, tc.want)
			}
		})
	}
}

// TestExposureReportOut: exposure report --out writes the report to the
// file, and a write that fails when the file is flushed and closed
// (/dev/full: no space left) ends the command with an error rather than
// with a lost report and exit 0.
func TestExposureReportOut(t *testing.T) {
	t.Chdir(t.TempDir())
	newFakeAPI(t, map[string]string{"GET /api/v1/advisories/OSV-2026-1/report": jReport})
	for _, format := range []string{"text", "json", "csv"} {
		t.Run(format, func(t *testing.T) {
			if format == "csv" {
				newFakeAPI(t, map[string]string{"GET /api/v1/advisories/OSV-2026-1/report": "advisory,device_id\nOSV-2026-1,dev-1\n"})
			}
			stdout, stderr, code := runCLI(t, "", "exposure", "report", "OSV-2026-1", "--format", format, "--out", "report."+format)
			if code != 0 || stdout != "" || stderr != "" {
				t.Fatalf("--out report.%s: exit %d, stdout %q, stderr %q", format, code, stdout, stderr)
			}
			if b, err := os.ReadFile("report." + format); err != nil || !strings.Contains(string(b), "dev-1") {
				t.Fatalf("report.%s holds %q (%v), want the report", format, b, err)
			}
			if _, err := os.Stat("/dev/full"); err != nil {
				t.Fatalf("this test needs /dev/full: %v", err)
			}
			stdout, stderr, code = runCLI(t, "", "exposure", "report", "OSV-2026-1", "--format", format, "--out", "/dev/full")
			if code != exitError || stdout != "" || !strings.Contains(stderr, "no space left on device") {
				t.Errorf("--out /dev/full: exit %d (want %d), stdout %q, stderr %q (want it to say no space left)", code, exitError, stdout, stderr)
			}
		})
	}
}
