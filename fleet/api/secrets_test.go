package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/fleet/secrets"
)

// fakeSecrets is the real store without delivery.
type fakeSecrets struct{ st *secrets.Store }

func (f fakeSecrets) Put(name string, value []byte, t secrets.Target, pcr bool) (*secrets.Info, error) {
	v, err := f.st.Put(context.Background(), name, value, t, pcr)
	if err != nil {
		return nil, err
	}
	s, err := f.st.GetVersion(context.Background(), name, v)
	if err != nil {
		return nil, err
	}
	return &s.Info, nil
}

func (f fakeSecrets) List() ([]SecretStatus, error) {
	l, err := f.st.List(context.Background())
	out := []SecretStatus{}
	for _, x := range l {
		out = append(out, SecretStatus{Listing: x, Delivery: DeliverySummary{Pending: 1}})
	}
	return out, err
}

func (f fakeSecrets) Delete(name string) error { return f.st.Delete(context.Background(), name) }

func (f fakeSecrets) DeviceSecrets(string) ([]DeviceSecret, error) { return nil, nil }
func (f fakeSecrets) SetRotation(name string, r *secrets.Rotation) error {
	return f.st.SetRotation(context.Background(), name, r)
}
func (f fakeSecrets) Rotate(name string) (*secrets.Info, error) {
	return f.st.Rotate(context.Background(), name)
}

func newSecretsAPI(t *testing.T) (*httptest.Server, *secrets.Store, *inventory.Store) {
	t.Helper()
	inv := inventorytest.Open(t)
	st, err := secrets.Open(secrets.Config{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := serve(t, Config{Inventory: inv, Approver: approver{inv}, Secrets: fakeSecrets{st}})
	return srv, st, inv
}

func TestSecretsAPI(t *testing.T) {
	srv, st, inv := newSecretsAPI(t)
	value := "s3cret-value-never-echoed"
	body := `{"value_b64":"` + base64.StdEncoding.EncodeToString([]byte(value)) + `","target":{"model":"gw-1"},"pcr_bound":true}`

	for _, c := range []struct{ method, path, body string }{
		{"PUT", "/api/v1/secrets/db", body}, {"GET", "/api/v1/secrets", ""},
		{"DELETE", "/api/v1/secrets/db", ""}, {"GET", "/api/v1/devices/x/secrets", ""},
	} {
		resp, b := call(t, srv, c.method, c.path, "wrong", c.body)
		wantProblem(t, resp, b, 401, "bearer token")
	}
	if _, err := st.Get(t.Context(), "db"); !errors.Is(err, secrets.ErrNotFound) {
		t.Fatal("an unauthenticated PUT stored a secret")
	}

	resp, b := call(t, srv, "PUT", "/api/v1/secrets/db", token, body)
	if resp.StatusCode != 201 || strings.Contains(b, value) || strings.Contains(b, "value") {
		t.Fatalf("put: %d %s", resp.StatusCode, b)
	}
	var info secrets.Info
	if err := json.Unmarshal([]byte(b), &info); err != nil || info.Version != 1 || !info.PCRBound || info.Target.Model != "gw-1" {
		t.Fatalf("put answer %s", b)
	}
	if s, err := st.Get(t.Context(), "db"); err != nil || string(s.Value) != value {
		t.Fatalf("stored %v %v", s, err)
	}
	resp, b = call(t, srv, "PUT", "/api/v1/secrets/db", token, body)
	if resp.StatusCode != 201 || !strings.Contains(b, `"version":2`) {
		t.Fatalf("second put: %d %s", resp.StatusCode, b)
	}
	resp, b = call(t, srv, "GET", "/api/v1/secrets", token, "")
	if resp.StatusCode != 200 || strings.Contains(b, value) || strings.Contains(b, base64.StdEncoding.EncodeToString([]byte(value))[:10]) ||
		!strings.Contains(b, `"versions":[1,2]`) || !strings.Contains(b, `"pending":1`) {
		t.Fatalf("list: %d %s", resp.StatusCode, b)
	}

	for _, c := range []struct{ path, body, detail string }{
		{"/api/v1/secrets/Bad%2Fname", body, "secret name"},
		{"/api/v1/secrets/-x", body, "secret name"},
		{"/api/v1/secrets/db", `{"value_b64":"!!","target":{"model":"gw-1"}}`, "base64"},
		{"/api/v1/secrets/db", `{"value_b64":"","target":{"model":"gw-1"}}`, "1 to 128 bytes"},
		{"/api/v1/secrets/db", `{"value_b64":"` + base64.StdEncoding.EncodeToString(make([]byte, 129)) + `","target":{"model":"gw-1"}}`, "1 to 128 bytes"},
		{"/api/v1/secrets/db", `{"value_b64":"eA==","target":{}}`, "target must name"},
		{"/api/v1/secrets/db", `{"value_b64":"eA==","target":{"group":"Plant A"}}`, "target.group"},
		{"/api/v1/secrets/db", `{"value":"x","target":{"model":"gw-1"}}`, "unknown field"},
		{"/api/v1/secrets/db", `{"value_b64":"eA==","target":{"model":"gw-1"}} x`, "trailing"},
	} {
		resp, b := call(t, srv, "PUT", c.path, token, c.body)
		wantProblem(t, resp, b, 400, c.detail)
		if strings.Contains(b, value) {
			t.Fatalf("a problem echoes the value: %s", b)
		}
	}
	if s, _ := st.Get(t.Context(), "db"); s.Version != 2 {
		t.Fatalf("bad input stored version %d", s.Version)
	}

	resp, b = call(t, srv, "GET", "/api/v1/devices/nope/secrets", token, "")
	wantProblem(t, resp, b, 404, "no device")
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev1", State: inventory.StateActive}); err != nil {
		t.Fatal(err)
	}
	if resp, b = call(t, srv, "GET", "/api/v1/devices/dev1/secrets", token, ""); resp.StatusCode != 200 || !strings.Contains(b, `"secrets":[]`) {
		t.Fatalf("device secrets: %d %s", resp.StatusCode, b)
	}

	if resp, _ = call(t, srv, "DELETE", "/api/v1/secrets/db", token, ""); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	resp, b = call(t, srv, "DELETE", "/api/v1/secrets/db", token, "")
	wantProblem(t, resp, b, 404, "no secret")
}

func TestSecretsAPIDisabled(t *testing.T) {
	srv, _ := newAPI(t)
	resp, b := call(t, srv, "GET", "/api/v1/secrets", token, "")
	wantProblem(t, resp, b, 501, "not enabled")
}
