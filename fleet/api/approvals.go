package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
)

// Two-person rule. With Config.Approvals set, the dangerous routes (CA
// rotation, policy changes, secret changes, fleet-wide rotation jobs) do
// not act when called: they file a request with the caller's justification
// (header JustificationHeader) and answer 202 with it. Another person
// holding the kind's approve permission approves it in the inbox
// (/api/v1/approvals); the request is then carried out once, by running
// the same handler with the stored method, path values and body, as the
// requester (established again from the credential they filed with, and
// only if they still hold the route's permission). Its outcome (the
// handler's status) is recorded on the request and in the audit log. No
// one approves their own request, nor with an account created or changed
// after it was filed. User creation, role changes and tokens that may
// approve fall under the rule too (users.go).

// JustificationHeader carries why a dangerous change is requested.
const JustificationHeader = "X-Sigil-Justification"

// Pending is the 202 answer of a route that needs approval.
type Pending struct {
	Approval approval.Request `json:"approval"`
	Message  string           `json:"message"`
}

// storedCall is a dangerous call as filed for approval.
type storedCall struct {
	Pattern string            `json:"pattern"`
	Path    string            `json:"path"`
	Values  map[string]string `json:"values,omitempty"`
	Body    json.RawMessage   `json:"body,omitempty"`
}

// gated holds the handlers of the dangerous routes, by pattern.
type gated struct {
	handlers map[string]func(http.ResponseWriter, *http.Request, string)
}

// dangerous registers a route whose calls need a second person's approval
// when approvals are on.
func (h *handler) dangerous(pattern string, perm auth.Permission, kind approval.Kind, fn func(http.ResponseWriter, *http.Request, string)) {
	if h.cfg.Approvals == nil {
		h.route(pattern, perm, fn)
		return
	}
	if h.gated.handlers == nil {
		h.gated.handlers = map[string]func(http.ResponseWriter, *http.Request, string){}
		for _, k := range []approval.Kind{approval.KindCARotation, approval.KindPolicyChange, approval.KindSecretChange, approval.KindMassRotation} {
			if err := h.cfg.Approvals.Register(k, h.execute); err != nil {
				h.log.Error("approvals: registering an executor failed", "kind", k, "err", err)
			}
		}
	}
	h.gated.handlers[pattern] = fn
	h.route(pattern, perm, func(w http.ResponseWriter, r *http.Request, who string) {
		h.requestApproval(w, r, pattern, kind)
	})
}

// requestApproval files the call for approval.
func (h *handler) requestApproval(w http.ResponseWriter, r *http.Request, pattern string, kind approval.Kind) {
	why := strings.TrimSpace(r.Header.Get(JustificationHeader))
	if why == "" {
		problem(w, http.StatusBadRequest, "bad request", "this change needs a second person's approval: say why in the "+JustificationHeader+" header")
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		problem(w, http.StatusRequestEntityTooLarge, "request too large", fmt.Sprintf("the body must be at most %d bytes", maxBody))
		return
	}
	if len(body) > 0 && !json.Valid(body) {
		problem(w, http.StatusBadRequest, "bad request", "the body is not valid JSON")
		return
	}
	call := storedCall{Pattern: pattern, Path: r.URL.Path, Body: body, Values: map[string]string{}}
	for _, k := range []string{"id", "name"} {
		if v := r.PathValue(k); v != "" {
			call.Values[k] = v
		}
	}
	params, _ := json.Marshal(call)
	p, _ := auth.PrincipalFrom(r.Context())
	req, err := h.cfg.Approvals.Submit(r.Context(), p, approval.Draft{Kind: kind, Target: pattern + " " + routeTarget(r), Params: params, Justification: why})
	if err != nil {
		h.approvalError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, Pending{Approval: req, Message: "filed for approval by a second person: see /api/v1/approvals/" + req.ID})
}

// execute carries out an approved call as its requester.
func (h *handler) execute(ctx context.Context, req approval.Request, as approval.Actor) error {
	if p, ok := as.(auth.Principal); ok {
		ctx = auth.NewContext(ctx, p)
	}
	var call storedCall
	if err := json.Unmarshal(req.Params, &call); err != nil {
		return fmt.Errorf("stored call: %w", err)
	}
	fn := h.gated.handlers[call.Pattern]
	if fn == nil {
		return fmt.Errorf("no route %q", call.Pattern)
	}
	method, _, _ := strings.Cut(call.Pattern, " ")
	r := httptest.NewRequestWithContext(ctx, method, call.Path, bytes.NewReader(call.Body))
	r.Header.Set("Content-Type", "application/json")
	for k, v := range call.Values {
		r.SetPathValue(k, v)
	}
	rec := httptest.NewRecorder()
	fn(rec, r, req.Requester)
	if rec.Code/100 != 2 {
		var pr struct {
			Detail string `json:"detail"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &pr)
		return fmt.Errorf("%d %s: %s", rec.Code, http.StatusText(rec.Code), pr.Detail)
	}
	return nil
}

func (h *handler) approvalError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, approval.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", "no such approval request")
	case errors.Is(err, approval.ErrForbidden), errors.Is(err, approval.ErrSelfApproval), errors.Is(err, approval.ErrAccountChanged):
		problem(w, http.StatusForbidden, "forbidden", publicApprovalError(err))
	case errors.Is(err, approval.ErrNotPending), errors.Is(err, approval.ErrExpired), errors.Is(err, approval.ErrAlreadyApproved):
		problem(w, http.StatusConflict, "conflict", publicApprovalError(err))
	case errors.Is(err, approval.ErrInvalid), errors.Is(err, approval.ErrUnknownKind):
		problem(w, http.StatusBadRequest, "bad request", publicApprovalError(err))
	default:
		h.internal(w, err)
	}
}

// publicApprovalError is the approval package's message without its
// prefix; those messages name rules and states, never internals.
func publicApprovalError(err error) string {
	return strings.TrimPrefix(err.Error(), "approval: ")
}

func (h *handler) routesApprovals() {
	if h.cfg.Approvals == nil {
		return
	}
	h.route("GET /api/v1/approvals", auth.PermApprovalsRead, h.listApprovals)
	h.route("GET /api/v1/approvals/{id}", auth.PermApprovalsRead, h.getApproval)
	h.route("POST /api/v1/approvals/{id}/approve", auth.PermApprovalsRead, h.decideApproval)
	h.route("POST /api/v1/approvals/{id}/reject", auth.PermApprovalsRead, h.decideApproval)
}

// ApprovalList is GET /api/v1/approvals: with ?all the history (newest
// first, paged by ?before), else the caller's inbox: pending requests they
// may decide.
type ApprovalList struct {
	Approvals []approval.Request `json:"approvals"`
	Next      string             `json:"next,omitempty"`
}

func (h *handler) listApprovals(w http.ResponseWriter, r *http.Request, _ string) {
	p, _ := auth.PrincipalFrom(r.Context())
	var out ApprovalList
	var err error
	if r.URL.Query().Has("all") {
		out.Approvals, out.Next, err = h.cfg.Approvals.List(r.Context(), approval.Filter{State: approval.State(r.URL.Query().Get("state")), Before: r.URL.Query().Get("before")})
	} else {
		out.Approvals, err = h.cfg.Approvals.Inbox(r.Context(), p)
	}
	if err != nil {
		h.approvalError(w, err)
		return
	}
	if out.Approvals == nil {
		out.Approvals = []approval.Request{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) getApproval(w http.ResponseWriter, r *http.Request, _ string) {
	req, err := h.cfg.Approvals.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		h.approvalError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, req)
}

// DecisionRequest is the body of POST /api/v1/approvals/{id}/approve (an
// optional comment) and .../reject (a required reason).
type DecisionRequest struct {
	Comment string `json:"comment,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func (h *handler) decideApproval(w http.ResponseWriter, r *http.Request, _ string) {
	var d DecisionRequest
	if r.ContentLength != 0 && !decode(w, r, &d) {
		return
	}
	p, _ := auth.PrincipalFrom(r.Context())
	var req approval.Request
	var err error
	if strings.HasSuffix(r.URL.Path, "/approve") {
		req, err = h.cfg.Approvals.Approve(r.Context(), p, r.PathValue("id"), d.Comment)
	} else {
		req, err = h.cfg.Approvals.Reject(r.Context(), p, r.PathValue("id"), d.Reason)
	}
	if err != nil {
		h.approvalError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, req)
}
