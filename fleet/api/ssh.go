package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// SSHCA is GET /api/v1/ssh/ca?format=json: the fleet's SSH host CA.
type SSHCA struct {
	// PublicKey is the CA key as an authorized_keys line.
	PublicKey string `json:"public_key"`
	// KnownHosts is the "@cert-authority <pattern> <key>" line for a
	// client's known_hosts file.
	KnownHosts string `json:"known_hosts"`
	// Fingerprint is the key's SHA-256 fingerprint ("SHA256:...").
	Fingerprint string `json:"fingerprint"`
}

func (h *handler) routesSSH() {
	// Public, like the CRL: clients need it before they trust anything.
	h.public("GET /api/v1/ssh/ca", h.sshCA)
}

// sshCA serves the SSH host CA's public key: by default as one
// authorized_keys line (text/plain), with ?format=known_hosts as the
// @cert-authority line, with ?format=json as SSHCA.
func (h *handler) sshCA(w http.ResponseWriter, r *http.Request) {
	c := h.cfg.SSHCA
	if c == nil {
		problem(w, http.StatusNotFound, "not found", "this fleet has no SSH host CA")
		return
	}
	var text string
	switch r.URL.Query().Get("format") {
	case "", "authorized_keys":
		text = c.AuthorizedKey()
	case "known_hosts":
		text = c.KnownHosts()
	case "json":
		writeJSON(w, http.StatusOK, SSHCA{PublicKey: c.AuthorizedKey(), KnownHosts: c.KnownHosts(), Fingerprint: c.Fingerprint()})
		return
	default:
		problem(w, http.StatusBadRequest, "bad request", "format must be authorized_keys, known_hosts or json")
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "max-age=300")
	_, _ = io.WriteString(w, text+"\n")
}

// SSHCA fetches the fleet's SSH host CA.
func (c *Client) SSHCA(ctx context.Context) (*SSHCA, error) {
	var out SSHCA
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/ssh/ca?format=json", nil, &out)
}

// SSHCAText fetches the SSH host CA as text: format "" or
// "authorized_keys" (the public key line) or "known_hosts".
func (c *Client) SSHCAText(ctx context.Context, format string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/api/v1/ssh/ca?format="+format, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return "", fmt.Errorf("api: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("api: %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}
