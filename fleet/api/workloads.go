package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/workload"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Workloads serves the workload registrations, the JWT-SVID signing keys
// and the OpenID Connect documents (*workload.Service).
type Workloads interface {
	Registrations(ctx context.Context) ([]workload.Registration, error)
	Register(ctx context.Context, r workload.Registration, who string) (workload.Registration, error)
	Unregister(ctx context.Context, name string) error
	RotateKeys(ctx context.Context) (string, error)
	Discovery() ([]byte, error)
	JWKS(ctx context.Context) ([]byte, error)
}

var _ Workloads = (*workload.Service)(nil)

// WorkloadList is GET /api/v1/workloads.
type WorkloadList struct {
	Workloads []workload.Registration `json:"workloads"`
}

// KeyRotation is POST /api/v1/workloads/keys/rotate: the new key's ID.
type KeyRotation struct {
	KeyID string `json:"kid"`
}

func (h *handler) routesWorkloads() {
	h.route("GET /api/v1/workloads", auth.PermWorkloadsRead, h.listWorkloads)
	h.route("PUT /api/v1/workloads/{name}", auth.PermWorkloadsWrite, h.putWorkload)
	h.route("DELETE /api/v1/workloads/{name}", auth.PermWorkloadsWrite, h.deleteWorkload)
	h.route("POST /api/v1/workloads/keys/rotate", auth.PermWorkloadsWrite, h.rotateWorkloadKeys)
	// Public: clouds' workload identity federation fetches them.
	h.public("GET /.well-known/openid-configuration", h.oidcDiscovery)
	h.public("GET "+workload.JWKSPath, h.oidcJWKS)
	h.describe("GET /api/v1/workloads", "List workload registrations", nil, WorkloadList{})
	h.describe("PUT /api/v1/workloads/{name}", "Create or replace a workload registration: scope (device, group or model) and target, selectors (uid, gid, exe_path, exe_sha256)", workload.Registration{}, workload.Registration{})
	h.describe("DELETE /api/v1/workloads/{name}", "Delete a workload registration: devices get no new SVID for it", nil, nil, 204)
	h.describe("POST /api/v1/workloads/keys/rotate", "Rotate the JWT-SVID signing key (the retired key stays in the JWKS until its tokens expire)", nil, KeyRotation{})
	h.describe("GET /.well-known/openid-configuration", "OpenID Connect discovery document of the JWT-SVID issuer (workload_issuer)", nil, map[string]any{})
	h.describe("GET "+workload.JWKSPath, "The JWT-SVID signing keys (RFC 7517 JWKS)", nil, workload.JWKS{})
}

func (h *handler) workloadsOn(w http.ResponseWriter) bool {
	if h.cfg.Workloads == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "workload identities are not configured")
		return false
	}
	return true
}

func (h *handler) listWorkloads(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.workloadsOn(w) {
		return
	}
	regs, err := h.cfg.Workloads.Registrations(r.Context())
	if err != nil {
		h.internal(w, err)
		return
	}
	if regs == nil {
		regs = []workload.Registration{}
	}
	writeJSON(w, http.StatusOK, WorkloadList{Workloads: regs})
}

func (h *handler) putWorkload(w http.ResponseWriter, r *http.Request, who string) {
	if !h.workloadsOn(w) {
		return
	}
	var reg workload.Registration
	if !decodeAt(w, r, &reg, &reg.Name, "name") {
		return
	}
	name := reg.Name
	out, err := h.cfg.Workloads.Register(r.Context(), reg, who)
	if errors.Is(err, workload.ErrInvalid) {
		problem(w, http.StatusBadRequest, "bad request", err.Error())
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	h.log.Info("workload registered", "name", name, "scope", string(reg.Scope), "by", who)
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) deleteWorkload(w http.ResponseWriter, r *http.Request, who string) {
	if !h.workloadsOn(w) {
		return
	}
	name := r.PathValue("name")
	if !wire.ValidWorkloadName(name) {
		problem(w, http.StatusNotFound, "not found", "no workload registration with that name")
		return
	}
	err := h.cfg.Workloads.Unregister(r.Context(), name)
	if errors.Is(err, workload.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no workload registration with that name")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	h.log.Info("workload registration deleted", "name", name, "by", who)
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) rotateWorkloadKeys(w http.ResponseWriter, r *http.Request, who string) {
	if !h.workloadsOn(w) {
		return
	}
	kid, err := h.cfg.Workloads.RotateKeys(r.Context())
	if err != nil {
		h.internal(w, err)
		return
	}
	h.log.Info("JWT-SVID signing key rotated", "kid", kid, "by", who)
	writeJSON(w, http.StatusOK, KeyRotation{KeyID: kid})
}

// oidcDiscovery and oidcJWKS may be cached for a few minutes: a rotated
// key is published before anything it signs, and a verifier that meets
// an unknown key ID fetches the set again.
func (h *handler) oidcDiscovery(w http.ResponseWriter, r *http.Request) {
	if !h.workloadsOn(w) {
		return
	}
	b, err := h.cfg.Workloads.Discovery()
	if errors.Is(err, workload.ErrNoIssuer) {
		problem(w, http.StatusNotImplemented, "not implemented", "this fleet publishes no OpenID Connect issuer (workload_issuer)")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	writeRaw(w, b)
}

func (h *handler) oidcJWKS(w http.ResponseWriter, r *http.Request) {
	if !h.workloadsOn(w) {
		return
	}
	b, err := h.cfg.Workloads.JWKS(r.Context())
	if err != nil {
		h.internal(w, err)
		return
	}
	writeRaw(w, b)
}

func writeRaw(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// Workloads lists the workload registrations.
func (c *Client) Workloads(ctx context.Context) (*WorkloadList, error) {
	var out WorkloadList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/workloads", nil, &out)
}

// RegisterWorkload creates or replaces a workload registration.
func (c *Client) RegisterWorkload(ctx context.Context, r workload.Registration) (*workload.Registration, error) {
	var out workload.Registration
	return &out, c.Do(ctx, http.MethodPut, "/api/v1/workloads/"+url.PathEscape(r.Name), r, &out)
}

// DeleteWorkload deletes a workload registration.
func (c *Client) DeleteWorkload(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/workloads/"+url.PathEscape(name), nil, nil)
}

// RotateWorkloadKeys rotates the JWT-SVID signing key.
func (c *Client) RotateWorkloadKeys(ctx context.Context) (*KeyRotation, error) {
	var out KeyRotation
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/workloads/keys/rotate", nil, &out)
}
