package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Operators: log in and out (browser sessions), who am I, users (admins),
// and API tokens (each person their own; admins everyone's).
//
// A credential never does more than its own scope: every route here that
// creates, changes or revokes a user or a token acts through the auth
// service's *As methods with the request's principal, whose effective
// permissions are its credential's scope within its user's current role
// (403 beyond them). Under the two-person rule (Config.Approvals) a new
// account is created disabled and a role change or re-enabling is filed,
// until a second person approves (approval.KindUserChange); a token that
// may approve is created pending until a second person approves
// (approval.KindApproverToken).

// Me is GET /api/v1/me.
type Me struct {
	User        string            `json:"user"`
	Role        auth.Role         `json:"role"`
	Method      auth.Method       `json:"method"`
	Permissions []auth.Permission `json:"permissions"`
	Expires     time.Time         `json:"expires,omitzero"`
}

// UserRequest is the body of POST /api/v1/users. An empty password makes
// the server generate one, returned once.
type UserRequest struct {
	Name     string    `json:"name"`
	Role     auth.Role `json:"role"`
	Password string    `json:"password,omitempty"`
}

// UserCreated answers POST /api/v1/users.
type UserCreated struct {
	auth.User
	Password string `json:"password,omitempty"` // only when generated
	// Approval, under the two-person rule, is the request that enables the
	// account (created disabled) once a second person approves.
	Approval *approval.Request `json:"approval,omitempty"`
}

// UserPatch is the body of PATCH /api/v1/users/{name}.
type UserPatch struct {
	Role     *auth.Role `json:"role,omitempty"`
	Disabled *bool      `json:"disabled,omitempty"`
}

// PasswordRequest is the body of POST /api/v1/users/me/password: the
// caller's current password and the new one (at least
// auth.MinPasswordLen characters).
type PasswordRequest struct {
	Current string `json:"current_password"`
	New     string `json:"new_password"`
}

// PasswordChanged answers POST /api/v1/users/me/password. Every session of
// the user ended; a browser that made the change with its session gets a
// new session cookie (a new ID) and its new CSRF token here. API tokens
// are not affected.
type PasswordChanged struct {
	User          string    `json:"user"`
	SessionsEnded int       `json:"sessions_ended"`
	CSRFToken     string    `json:"csrf_token,omitempty"`
	Expires       time.Time `json:"expires,omitzero"` // the new session's
	Note          string    `json:"note"`
}

// TokenRequest is the body of POST /api/v1/tokens: a token for the caller,
// scoped to a role their own covers.
type TokenRequest struct {
	Name string          `json:"name"`
	Role auth.Role       `json:"role"`
	TTL  config.Duration `json:"ttl"`
}

// TokenCreated answers POST /api/v1/tokens; Secret is shown only here.
type TokenCreated struct {
	auth.Token
	Secret string `json:"secret"`
	// Approval, under the two-person rule for a token that may approve, is
	// the request that lets it authenticate (it is created pending) once a
	// second person approves.
	Approval *approval.Request `json:"approval,omitempty"`
}

func (h *handler) routesUsers() {
	if h.cfg.Auth == nil {
		return
	}
	h.public("POST /api/v1/login", h.cfg.Auth.LoginHandler().ServeHTTP)
	h.public("POST /api/v1/logout", h.cfg.Auth.LogoutHandler().ServeHTTP)
	h.route("GET /api/v1/me", auth.PermDevicesRead, h.me)
	h.route("POST /api/v1/users/me/password", auth.PermDevicesRead, h.changePassword)
	h.route("GET /api/v1/users", auth.PermUsersAdmin, h.listUsers)
	h.route("POST /api/v1/users", auth.PermUsersAdmin, h.createUser)
	h.route("PATCH /api/v1/users/{name}", auth.PermUsersAdmin, h.patchUser)
	h.route("DELETE /api/v1/users/{name}", auth.PermUsersAdmin, h.deleteUser)
	h.route("GET /api/v1/tokens", auth.PermDevicesRead, h.listTokens)
	h.route("POST /api/v1/tokens", auth.PermDevicesRead, h.createAPIToken)
	h.route("DELETE /api/v1/tokens/{id}", auth.PermDevicesRead, h.revokeAPIToken)
	if h.cfg.Approvals != nil {
		for kind, exec := range map[approval.Kind]approval.Executor{
			approval.KindUserChange: h.executeUserChange, approval.KindApproverToken: h.executeApproverToken,
		} {
			if err := h.cfg.Approvals.Register(kind, exec); err != nil {
				h.log.Error("approvals: registering an executor failed", "kind", kind, "err", err)
			}
		}
	}
}

func principal(r *http.Request) auth.Principal {
	p, _ := auth.PrincipalFrom(r.Context())
	return p
}

func (h *handler) me(w http.ResponseWriter, r *http.Request, _ string) {
	p := principal(r)
	var perms []auth.Permission
	for _, x := range auth.Permissions() {
		if p.Can(x) {
			perms = append(perms, x)
		}
	}
	writeJSON(w, http.StatusOK, Me{User: p.User, Role: p.Role, Method: p.Method, Permissions: perms, Expires: p.Expires})
}

// authError maps the auth service's errors to answers.
func (h *handler) authError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, auth.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", "no such user or token")
	case errors.Is(err, auth.ErrExists):
		problem(w, http.StatusConflict, "conflict", "a user with that name exists")
	case errors.Is(err, auth.ErrLastAdmin):
		problem(w, http.StatusConflict, "conflict", "the last enabled admin cannot be removed, disabled or demoted")
	case errors.Is(err, auth.ErrForbidden):
		problem(w, http.StatusForbidden, "forbidden", strings.TrimPrefix(err.Error(), "auth: "))
	case errors.Is(err, auth.ErrInvalid):
		problem(w, http.StatusBadRequest, "bad request", err.Error())
	default:
		h.internal(w, err)
	}
}

// changePassword changes the caller's own password (any role may): see
// auth.Service.ChangeOwnPassword. 400 for a new password that breaks the
// rules, 403 for a wrong current password, 409 for an account that signs
// in through single sign-on, 429 with Retry-After when throttled like a
// login.
func (h *handler) changePassword(w http.ResponseWriter, r *http.Request, who string) {
	var req PasswordRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Current == "" || req.New == "" {
		problem(w, http.StatusBadRequest, "bad request", "current_password and new_password are required")
		return
	}
	p := principal(r)
	res, err := h.cfg.Auth.ChangeOwnPassword(r.Context(), p, req.Current, req.New, auth.ClientAddr(r))
	var te *auth.ThrottleError
	switch {
	case errors.As(err, &te):
		secs := int((te.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		problem(w, http.StatusTooManyRequests, "too many requests",
			fmt.Sprintf("too many wrong passwords; retry in %d seconds", secs))
		return
	case errors.Is(err, auth.ErrInvalidCredentials):
		problem(w, http.StatusForbidden, "forbidden", "the current password is wrong")
		return
	case errors.Is(err, auth.ErrExternalAccount):
		problem(w, http.StatusConflict, "conflict", "this account signs in through single sign-on: change its password at the identity provider")
		return
	case errors.Is(err, auth.ErrSamePassword):
		problem(w, http.StatusBadRequest, "bad request", "the new password must differ from the current one")
		return
	case errors.Is(err, auth.ErrInvalid):
		problem(w, http.StatusBadRequest, "bad request",
			fmt.Sprintf("the new password must be at least %d characters (and at most 1024 bytes)", auth.MinPasswordLen))
		return
	case err != nil:
		h.internal(w, err)
		return
	}
	out := PasswordChanged{User: who, SessionsEnded: res.SessionsEnded,
		Note: "every session of this user ended; API tokens are not affected (revoke them on their own)"}
	if res.Session.ID != "" {
		http.SetCookie(w, h.cfg.Auth.Cookie(res.Session))
		out.CSRFToken, out.Expires = res.Session.CSRFToken, res.Session.Expires
		out.Note = "every other session of this user ended; this one continues under a new ID (the cookie sent with this answer); API tokens are not affected (revoke them on their own)"
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) listUsers(w http.ResponseWriter, _ *http.Request, _ string) {
	us, err := h.cfg.Auth.Users(context.Background())
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": us})
}

func (h *handler) createUser(w http.ResponseWriter, r *http.Request, who string) {
	var req UserRequest
	if !decode(w, r, &req) {
		return
	}
	p := principal(r)
	out := UserCreated{}
	if req.Password == "" {
		raw := make([]byte, 18)
		if _, err := rand.Read(raw); err != nil {
			h.internal(w, err)
			return
		}
		req.Password = base64.RawURLEncoding.EncodeToString(raw)
		out.Password = req.Password
	}
	held := h.cfg.Approvals != nil
	u, err := h.cfg.Auth.CreateUserAs(r.Context(), p, auth.NewUser{Name: req.Name, Password: req.Password, Role: req.Role, Disabled: held})
	if err != nil {
		h.authError(w, err)
		return
	}
	out.User = u
	if held {
		no := false
		ar, err := h.fileUserChange(r, p, userChange{User: u.Name, Disabled: &no},
			fmt.Sprintf("enable the new account %s (%s)", u.Name, u.Role))
		if err != nil {
			if derr := h.cfg.Auth.DeleteUser(r.Context(), u.Name); derr != nil {
				h.log.Error("removing a new account whose approval could not be filed failed", "user", u.Name, "err", derr)
			}
			h.approvalError(w, err)
			return
		}
		out.Approval = &ar
	}
	h.log.Info("user created", "user", u.Name, "role", u.Role, "disabled", u.Disabled, "by", who)
	writeJSON(w, http.StatusCreated, out)
}

// userChange is a change to a user filed for approval (KindUserChange).
type userChange struct {
	User     string     `json:"user"`
	Role     *auth.Role `json:"role,omitempty"`
	Disabled *bool      `json:"disabled,omitempty"`
}

// fileUserChange files c for a second person's approval, with the
// request's justification header or, without one, what.
func (h *handler) fileUserChange(r *http.Request, p auth.Principal, c userChange, what string) (approval.Request, error) {
	params, err := json.Marshal(c)
	if err != nil {
		return approval.Request{}, err
	}
	return h.cfg.Approvals.Submit(r.Context(), p, approval.Draft{Kind: approval.KindUserChange, Target: "user " + c.User,
		Params: params, Justification: justification(r, what)})
}

// justification is the request's X-Sigil-Justification, or what.
func justification(r *http.Request, what string) string {
	if why := strings.TrimSpace(r.Header.Get(JustificationHeader)); why != "" {
		return why
	}
	return what
}

// executeUserChange carries out an approved user change as its requester.
func (h *handler) executeUserChange(_ context.Context, req approval.Request, as approval.Actor) error {
	p, ok := as.(auth.Principal)
	if !ok {
		return fmt.Errorf("the requester is a %T, not a principal", as)
	}
	var c userChange
	if err := json.Unmarshal(req.Params, &c); err != nil {
		return fmt.Errorf("stored change: %w", err)
	}
	u, err := h.cfg.Auth.ChangeUserAs(context.Background(), p, c.User, auth.UserChange{Role: c.Role, Disabled: c.Disabled})
	if err != nil {
		return err
	}
	h.log.Info("user changed after approval", "user", u.Name, "role", u.Role, "disabled", u.Disabled, "request_id", req.ID, "by", p.User)
	return nil
}

func (h *handler) patchUser(w http.ResponseWriter, r *http.Request, who string) {
	var req UserPatch
	if !decode(w, r, &req) {
		return
	}
	name := r.PathValue("name")
	if req.Role == nil && req.Disabled == nil {
		problem(w, http.StatusBadRequest, "bad request", "set role or disabled")
		return
	}
	p := principal(r)
	c := auth.UserChange{Role: req.Role, Disabled: req.Disabled}
	if h.cfg.Approvals != nil && (req.Role != nil || !*req.Disabled) {
		// A role change or enabling again waits for a second person;
		// refuse at once what the requester may not do anyway.
		if err := h.cfg.Auth.CheckChangeUserAs(r.Context(), p, name, c); err != nil {
			h.authError(w, err)
			return
		}
		ar, err := h.fileUserChange(r, p, userChange{User: normalizeUser(name), Role: req.Role, Disabled: req.Disabled}, "change user "+name)
		if err != nil {
			h.approvalError(w, err)
			return
		}
		writeJSON(w, http.StatusAccepted, Pending{Approval: ar, Message: "filed for approval by a second person: see /api/v1/approvals/" + ar.ID})
		return
	}
	u, err := h.cfg.Auth.ChangeUserAs(r.Context(), p, name, c)
	if err != nil {
		h.authError(w, err)
		return
	}
	h.log.Info("user changed", "user", u.Name, "role", u.Role, "disabled", u.Disabled, "by", who)
	writeJSON(w, http.StatusOK, u)
}

// normalizeUser is how the auth service spells a user name.
func normalizeUser(name string) string { return strings.ToLower(name) }

func (h *handler) deleteUser(w http.ResponseWriter, r *http.Request, who string) {
	if err := h.cfg.Auth.DeleteUserAs(r.Context(), principal(r), r.PathValue("name")); err != nil {
		h.authError(w, err)
		return
	}
	h.log.Info("user deleted", "user", r.PathValue("name"), "by", who)
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) listTokens(w http.ResponseWriter, r *http.Request, who string) {
	owner := who
	if o := r.URL.Query().Get("owner"); o != "" && o != who {
		if !principal(r).Can(auth.PermUsersAdmin) {
			problem(w, http.StatusForbidden, "forbidden", "listing another user's tokens needs users.admin")
			return
		}
		owner = o
	}
	ts, err := h.cfg.Auth.Tokens(r.Context(), owner)
	if err != nil {
		h.authError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": ts})
}

// mayApprove reports whether a token of scope role could approve
// requests: such a token is held for approval under the two-person rule.
func mayApprove(role auth.Role) bool {
	return role.Has(auth.PermSecurityApprove) || role.Has(auth.PermFirmwareApprove)
}

func (h *handler) createAPIToken(w http.ResponseWriter, r *http.Request, who string) {
	var req TokenRequest
	if !decode(w, r, &req) {
		return
	}
	if req.TTL == 0 {
		req.TTL = config.Duration(90 * 24 * time.Hour)
	}
	p := principal(r)
	held := h.cfg.Approvals != nil && mayApprove(req.Role)
	secret, tok, err := h.cfg.Auth.CreateTokenAs(r.Context(), p, auth.TokenSpec{Name: req.Name, Role: req.Role, TTL: time.Duration(req.TTL), Pending: held})
	if err != nil {
		h.authError(w, err)
		return
	}
	out := TokenCreated{Token: tok, Secret: secret}
	if held {
		params, _ := json.Marshal(approverToken{Token: tok.ID})
		ar, err := h.cfg.Approvals.Submit(r.Context(), p, approval.Draft{Kind: approval.KindApproverToken, Target: "token " + tok.ID + " (" + string(tok.Role) + ")",
			Params: params, Justification: justification(r, fmt.Sprintf("API token %q of %s scoped to %s", tok.Name, tok.Owner, tok.Role))})
		if err != nil {
			if _, rerr := h.cfg.Auth.RevokeToken(r.Context(), tok.ID); rerr != nil {
				h.log.Error("revoking a pending token whose approval could not be filed failed", "token_id", tok.ID, "err", rerr)
			}
			h.approvalError(w, err)
			return
		}
		out.Approval = &ar
	}
	h.log.Info("API token created", "token_id", tok.ID, "role", tok.Role, "pending", tok.Pending, "by", who)
	writeJSON(w, http.StatusCreated, out)
}

// approverToken is a pending token filed for approval (KindApproverToken).
type approverToken struct {
	Token string `json:"token"`
}

// executeApproverToken lets an approved pending token authenticate, as its
// requester.
func (h *handler) executeApproverToken(_ context.Context, req approval.Request, as approval.Actor) error {
	p, ok := as.(auth.Principal)
	if !ok {
		return fmt.Errorf("the requester is a %T, not a principal", as)
	}
	var a approverToken
	if err := json.Unmarshal(req.Params, &a); err != nil {
		return fmt.Errorf("stored token: %w", err)
	}
	t, err := h.cfg.Auth.ActivateTokenAs(context.Background(), p, a.Token)
	if err != nil {
		return err
	}
	h.log.Info("API token activated after approval", "token_id", t.ID, "role", t.Role, "request_id", req.ID)
	return nil
}

func (h *handler) revokeAPIToken(w http.ResponseWriter, r *http.Request, who string) {
	t, err := h.cfg.Auth.RevokeTokenAs(r.Context(), principal(r), r.PathValue("id"))
	if err != nil {
		h.authError(w, err)
		return
	}
	h.log.Info("API token revoked", "token_id", t.ID, "by", who)
	w.WriteHeader(http.StatusNoContent)
}

// CreateUser adds an operator; an empty password is generated and returned.
func (c *Client) CreateUser(ctx context.Context, req UserRequest) (*UserCreated, error) {
	var out UserCreated
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/users", req, &out)
}

// CreateAPIToken creates an API token for the caller.
func (c *Client) CreateAPIToken(ctx context.Context, req TokenRequest) (*TokenCreated, error) {
	var out TokenCreated
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/tokens", req, &out)
}

// RevokeAPIToken revokes a token by ID.
func (c *Client) RevokeAPIToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// ChangePassword changes the caller's own password; the current one is
// required.
func (c *Client) ChangePassword(ctx context.Context, current, password string) (*PasswordChanged, error) {
	var out PasswordChanged
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/users/me/password", PasswordRequest{Current: current, New: password}, &out)
}

// Me returns the caller's identity and permissions.
func (c *Client) Me(ctx context.Context) (*Me, error) {
	var out Me
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/me", nil, &out)
}
