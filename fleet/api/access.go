package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/sshca"
)

// Access is what the just-in-time access routes need (*access.Service).
type Access interface {
	Request(ctx context.Context, actor approval.Actor, d access.Draft) (access.Grant, error)
	Approve(ctx context.Context, actor approval.Actor, id, comment string) (access.Grant, error)
	Deny(ctx context.Context, actor approval.Actor, id, reason string) (access.Grant, error)
	Revoke(ctx context.Context, actor approval.Actor, id, reason string) (access.Grant, error)
	Get(ctx context.Context, id string) (access.Grant, error)
	List(ctx context.Context, actor approval.Actor, f access.Filter) ([]access.Grant, error)
	CA() *sshca.CA
	Policy() access.Policy
}

// AccessList is GET /api/v1/access: grants newest first (every grant for
// holders of access.approve, one's own otherwise) and the policy.
type AccessList struct {
	Grants []access.Grant `json:"grants"`
	Policy access.Policy  `json:"policy"`
}

func (h *handler) routesAccess() {
	if h.cfg.Access == nil {
		return
	}
	h.public("GET /api/v1/access/ca", h.accessCA)
	h.route("POST /api/v1/access", auth.PermAccessRequest, h.requestAccess)
	h.route("GET /api/v1/access", auth.PermAccessRequest, h.listAccess)
	h.route("GET /api/v1/access/{id}", auth.PermAccessRequest, h.getAccess)
	h.route("POST /api/v1/access/{id}/approve", auth.PermAccessApprove, h.decideAccess)
	h.route("POST /api/v1/access/{id}/deny", auth.PermAccessRequest, h.decideAccess)
	h.route("POST /api/v1/access/{id}/revoke", auth.PermAccessRequest, h.decideAccess)
	h.describe("GET /api/v1/access/ca", "The SSH user CA (authorized_keys line) devices' sshd trusts for operator certificates (TrustedUserCAKeys)", nil, nil)
	h.alsoServes("GET /api/v1/access/ca", "text/plain")
	h.describe("POST /api/v1/access", "Request SSH access to a device or group for a login, with a justification and a duration the policy bounds; filed for a second person's approval (access.request)", access.Draft{}, access.Grant{}, http.StatusCreated)
	h.describe("GET /api/v1/access", "Grants newest first, ?state= and ?device= filter (all with access.approve, one's own otherwise), and the policy", nil, AccessList{})
	h.describe("GET /api/v1/access/{id}", "A grant with its certificate once approved, and the sessions devices reported", nil, access.Grant{})
	h.describe("POST /api/v1/access/{id}/approve", "Approve another's grant (access.approve; never one's own): the approval that completes the rule signs the certificate", DecisionRequest{}, access.Grant{})
	h.describe("POST /api/v1/access/{id}/deny", "Reject a requested grant (an approver) or withdraw it (its requester)", DecisionRequest{}, access.Grant{})
	h.describe("POST /api/v1/access/{id}/revoke", "End an approved or active grant at once (its requester, or access.approve): its serial goes on the KRL pushed to the devices", DecisionRequest{}, access.Grant{})
}

func (h *handler) accessCA(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, h.cfg.Access.CA().AuthorizedKey()+"\n")
}

func (h *handler) requestAccess(w http.ResponseWriter, r *http.Request, _ string) {
	var d access.Draft
	if !decode(w, r, &d) {
		return
	}
	p, _ := auth.PrincipalFrom(r.Context())
	g, err := h.cfg.Access.Request(r.Context(), p, d)
	if err != nil {
		h.accessError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, g)
}

func (h *handler) listAccess(w http.ResponseWriter, r *http.Request, _ string) {
	p, _ := auth.PrincipalFrom(r.Context())
	q := r.URL.Query()
	gs, err := h.cfg.Access.List(r.Context(), p, access.Filter{State: access.State(q.Get("state")), Device: q.Get("device")})
	if err != nil {
		h.accessError(w, err)
		return
	}
	if gs == nil {
		gs = []access.Grant{}
	}
	writeJSON(w, http.StatusOK, AccessList{Grants: gs, Policy: h.cfg.Access.Policy()})
}

func (h *handler) getAccess(w http.ResponseWriter, r *http.Request, _ string) {
	p, _ := auth.PrincipalFrom(r.Context())
	g, err := h.cfg.Access.Get(r.Context(), r.PathValue("id"))
	if err == nil && !p.Can(auth.PermAccessApprove) && g.Requester != p.Subject() {
		err = access.ErrNotFound // another's grant is not the caller's to see
	}
	if err != nil {
		h.accessError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, g)
}

func (h *handler) decideAccess(w http.ResponseWriter, r *http.Request, _ string) {
	var d DecisionRequest
	if r.ContentLength != 0 && !decode(w, r, &d) {
		return
	}
	p, _ := auth.PrincipalFrom(r.Context())
	id := r.PathValue("id")
	var g access.Grant
	var err error
	switch {
	case strings.HasSuffix(r.URL.Path, "/approve"):
		g, err = h.cfg.Access.Approve(r.Context(), p, id, d.Comment)
	case strings.HasSuffix(r.URL.Path, "/deny"):
		g, err = h.cfg.Access.Deny(r.Context(), p, id, d.Reason)
	default:
		g, err = h.cfg.Access.Revoke(r.Context(), p, id, d.Reason)
	}
	if err != nil {
		h.accessError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, g)
}

// accessError maps the access and approval errors to answers; their
// messages name rules and states, never internals.
func (h *handler) accessError(w http.ResponseWriter, err error) {
	public := strings.TrimPrefix(strings.TrimPrefix(err.Error(), "access: "), "approval: ")
	switch {
	case errors.Is(err, access.ErrNotFound), errors.Is(err, approval.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", "no such grant")
	case errors.Is(err, access.ErrForbidden), errors.Is(err, approval.ErrForbidden), errors.Is(err, approval.ErrSelfApproval), errors.Is(err, approval.ErrAccountChanged):
		problem(w, http.StatusForbidden, "forbidden", public)
	case errors.Is(err, access.ErrTransition), errors.Is(err, approval.ErrNotPending), errors.Is(err, approval.ErrExpired), errors.Is(err, approval.ErrAlreadyApproved):
		problem(w, http.StatusConflict, "conflict", public)
	case errors.Is(err, access.ErrNoApprovals):
		problem(w, http.StatusServiceUnavailable, "unavailable", public)
	case errors.Is(err, access.ErrPolicy), errors.Is(err, approval.ErrInvalid):
		problem(w, http.StatusBadRequest, "bad request", public)
	default:
		h.internal(w, err)
	}
}

// RequestAccess files a grant request.
func (c *Client) RequestAccess(ctx context.Context, d access.Draft) (*access.Grant, error) {
	var g access.Grant
	return &g, c.Do(ctx, http.MethodPost, "/api/v1/access", d, &g)
}

// Access fetches a grant.
func (c *Client) Access(ctx context.Context, id string) (*access.Grant, error) {
	var g access.Grant
	return &g, c.Do(ctx, http.MethodGet, "/api/v1/access/"+url.PathEscape(id), nil, &g)
}

// ListAccess lists grants (state and device may be empty).
func (c *Client) ListAccess(ctx context.Context, state, device string) (*AccessList, error) {
	var out AccessList
	q := url.Values{}
	if state != "" {
		q.Set("state", state)
	}
	if device != "" {
		q.Set("device", device)
	}
	path := "/api/v1/access"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return &out, c.Do(ctx, http.MethodGet, path, nil, &out)
}

// DecideAccess approves, denies or revokes a grant: action is "approve",
// "deny" or "revoke"; text is the comment (approve) or reason.
func (c *Client) DecideAccess(ctx context.Context, id, action, text string) (*access.Grant, error) {
	var g access.Grant
	d := DecisionRequest{Reason: text}
	if action == "approve" {
		d = DecisionRequest{Comment: text}
	}
	return &g, c.Do(ctx, http.MethodPost, "/api/v1/access/"+url.PathEscape(id)+"/"+url.PathEscape(action), d, &g)
}
