package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/crl"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/pkg/identity"
)

func csrPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "plant"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// TestBridgeRoutes: POST /api/v1/bridges issues a site's credential for
// a CSR (once while it is current), the list and the site show it, and
// revoking it puts its serial in the fleet's CRL (GET /crl) beside the
// devices' revocations.
func TestBridgeRoutes(t *testing.T) {
	c, err := ca.Open(ca.Config{Dir: t.TempDir(), TrustDomain: "fleet.test"})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := bridge.Open(bridge.Config{Path: filepath.Join(t.TempDir(), bridge.File), CA: c, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	inv := inventorytest.Open(t)
	srv := serve(t, Config{Inventory: inv, Approver: approver{inv}, CA: c, Bridges: svc,
		CRL: crl.New(crl.Config{Revocations: svc.AndDevices(inv), Signer: c})})

	body, _ := json.Marshal(BridgeRequest{Site: "plant1", CSR: csrPEM(t), Lifetime: "720h"})
	resp, out := call(t, srv, "POST", "/api/v1/bridges", token, string(body))
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, out)
	}
	var created BridgeCreated
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(created.Certificate))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if site, err := identity.BridgeFromCertificate(cert, "fleet.test"); err != nil || site != "plant1" {
		t.Fatalf("certificate site %q, %v", site, err)
	}
	if created.Current != created.Serial || created.Prefix != "sigil/site/plant1/" || !strings.Contains(created.CA, "BEGIN CERTIFICATE") {
		t.Fatalf("created %+v", created.BridgeView)
	}

	resp, out = call(t, srv, "POST", "/api/v1/bridges", token, string(body))
	wantProblem(t, resp, out, 409, "revoke it first")
	for _, bad := range []BridgeRequest{
		{Site: "plant2", CSR: "nope"},
		{Site: "plant2", CSR: strings.Replace(csrPEM(t), "CERTIFICATE REQUEST", "CERTIFICATE", 2)},
		{Site: "Plant/2", CSR: csrPEM(t)},
		{Site: "plant2", CSR: csrPEM(t), Lifetime: "-1h"},
	} {
		b, _ := json.Marshal(bad)
		resp, out := call(t, srv, "POST", "/api/v1/bridges", token, string(b))
		if resp.StatusCode != 400 {
			t.Errorf("%+v: %d %s", bad, resp.StatusCode, out)
		}
	}

	resp, out = call(t, srv, "GET", "/api/v1/bridges", token, "")
	var list BridgeList
	if err := json.Unmarshal([]byte(out), &list); resp.StatusCode != 200 || err != nil || len(list.Bridges) != 1 || list.Bridges[0].Site != "plant1" {
		t.Fatalf("list: %d %s", resp.StatusCode, out)
	}
	resp, out = call(t, srv, "GET", "/api/v1/bridges/plant9", token, "")
	wantProblem(t, resp, out, 404, "no bridge")

	// A device is assigned to a site by an operator, and unassigned.
	resp, out = call(t, srv, "PUT", "/api/v1/bridges/plant1/devices/d1", token, "")
	if resp.StatusCode != 200 || !strings.Contains(out, `"site":"plant1"`) {
		t.Fatalf("assign: %d %s", resp.StatusCode, out)
	}
	if site, err := svc.Site(t.Context(), "d1"); err != nil || site != "plant1" {
		t.Fatalf("assigned to %q, %v", site, err)
	}
	resp, out = call(t, srv, "PUT", "/api/v1/bridges/plant9/devices/d1", token, "")
	wantProblem(t, resp, out, 404, "no bridge")
	resp, out = call(t, srv, "DELETE", "/api/v1/bridges/plant2/devices/d1", token, "")
	wantProblem(t, resp, out, 404, "not assigned")
	resp, out = call(t, srv, "DELETE", "/api/v1/bridges/plant1/devices/d1", token, "")
	if site, _ := svc.Site(t.Context(), "d1"); resp.StatusCode != 200 || site != "" {
		t.Fatalf("unassign: %d %s, still at %q", resp.StatusCode, out, site)
	}
	resp, out = call(t, srv, "GET", "/api/v1/bridges/plant1", token, "")
	if resp.StatusCode != 200 || !strings.Contains(out, `"health":{"connected":false`) || !strings.Contains(out, `"replay":0`) {
		t.Fatalf("a bridge's health: %d %s", resp.StatusCode, out)
	}

	resp, out = call(t, srv, "POST", "/api/v1/bridges/plant1/revoke", token, `{"reason":"keyCompromise","comment":"stolen"}`)
	if resp.StatusCode != 200 || !strings.Contains(out, `"revoked"`) {
		t.Fatalf("revoke: %d %s", resp.StatusCode, out)
	}
	resp, out = call(t, srv, "POST", "/api/v1/bridges/plant1/revoke", token, `{}`)
	wantProblem(t, resp, out, 404, "no current")

	resp, out = call(t, srv, "GET", "/crl", "", "")
	if resp.StatusCode != 200 {
		t.Fatalf("crl: %d", resp.StatusCode)
	}
	rl, err := x509.ParseRevocationList([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range rl.RevokedCertificateEntries {
		found = found || e.SerialNumber.Cmp(cert.SerialNumber) == 0
	}
	if !found {
		t.Fatalf("the revoked bridge serial %s is not in the CRL", created.Serial)
	}
}

// TestBridgePermissions: reading bridges is the viewer's; issuing and
// revoking their credentials is trust, the security admin's (and the
// admin's), not the operator's.
func TestBridgePermissions(t *testing.T) {
	for _, c := range []struct {
		role        auth.Role
		read, write bool
	}{
		{auth.RoleViewer, true, false}, {auth.RoleOperator, true, false}, {auth.RoleSecurityAdmin, true, true},
		{auth.RoleAdmin, true, true}, {auth.RoleBrokerSync, false, false},
	} {
		if c.role.Has(auth.PermBridgesRead) != c.read || c.role.Has(auth.PermBridgesWrite) != c.write {
			t.Errorf("%s: bridges.read %v, bridges.write %v", c.role, c.role.Has(auth.PermBridgesRead), c.role.Has(auth.PermBridgesWrite))
		}
	}
	want := map[string]auth.Permission{
		"GET /api/v1/bridges": auth.PermBridgesRead, "GET /api/v1/bridges/{site}": auth.PermBridgesRead,
		"POST /api/v1/bridges": auth.PermBridgesWrite, "POST /api/v1/bridges/{site}/revoke": auth.PermBridgesWrite,
		"PUT /api/v1/bridges/{site}/devices/{id}": auth.PermBridgesWrite, "DELETE /api/v1/bridges/{site}/devices/{id}": auth.PermBridgesWrite,
	}
	for _, r := range Routes(New(Config{})) {
		if p, ok := want[r.Pattern]; ok {
			if r.Perm != p {
				t.Errorf("%s needs %s, want %s", r.Pattern, r.Perm, p)
			}
			delete(want, r.Pattern)
		}
	}
	if len(want) != 0 {
		t.Errorf("routes missing: %v", want)
	}
}
