package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/sshca"
)

func TestSSHCA(t *testing.T) {
	srv, _ := newAPI(t)
	resp, body := call(t, srv, "GET", "/api/v1/ssh/ca", "", "")
	wantProblem(t, resp, body, http.StatusNotFound, "no SSH host CA")

	c, err := sshca.Open(sshca.Config{KeyFile: filepath.Join(t.TempDir(), "ssh_ca.key"), TrustDomain: "fleet.example"})
	if err != nil {
		t.Fatal(err)
	}
	srv = httptest.NewServer(New(Config{SSHCA: c}))
	t.Cleanup(srv.Close)

	// Public: no token needed.
	resp, body = call(t, srv, "GET", "/api/v1/ssh/ca", "", "")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") || body != c.AuthorizedKey()+"\n" {
		t.Fatalf("authorized_keys: %d %q", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/ssh/ca?format=known_hosts", "", "")
	if resp.StatusCode != http.StatusOK || body != "@cert-authority *.fleet.example "+c.AuthorizedKey()+"\n" {
		t.Fatalf("known_hosts: %d %q", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/ssh/ca?format=json", "", "")
	var v SSHCA
	if err := json.Unmarshal([]byte(body), &v); err != nil || resp.StatusCode != http.StatusOK || v.Fingerprint != c.Fingerprint() || v.KnownHosts != c.KnownHosts() {
		t.Fatalf("json: %d %q %v", resp.StatusCode, body, err)
	}
	resp, body = call(t, srv, "GET", "/api/v1/ssh/ca?format=pem", "", "")
	wantProblem(t, resp, body, http.StatusBadRequest, "format")

	cl := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	got, err := cl.SSHCA(context.Background())
	if err != nil || got.PublicKey != c.AuthorizedKey() {
		t.Fatalf("client: %+v %v", got, err)
	}
	text, err := cl.SSHCAText(context.Background(), "known_hosts")
	if err != nil || text != c.KnownHosts()+"\n" {
		t.Fatalf("client text: %q %v", text, err)
	}
}
