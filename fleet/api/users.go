package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Operators: log in and out (browser sessions), who am I, users (admins),
// and API tokens (each person their own; admins everyone's).

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
}

// UserPatch is the body of PATCH /api/v1/users/{name}.
type UserPatch struct {
	Role     *auth.Role `json:"role,omitempty"`
	Disabled *bool      `json:"disabled,omitempty"`
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
}

func (h *handler) routesUsers() {
	if h.cfg.Auth == nil {
		return
	}
	h.public("POST /api/v1/login", h.cfg.Auth.LoginHandler().ServeHTTP)
	h.public("POST /api/v1/logout", h.cfg.Auth.LogoutHandler().ServeHTTP)
	h.route("GET /api/v1/me", auth.PermDevicesRead, h.me)
	h.route("GET /api/v1/users", auth.PermUsersAdmin, h.listUsers)
	h.route("POST /api/v1/users", auth.PermUsersAdmin, h.createUser)
	h.route("PATCH /api/v1/users/{name}", auth.PermUsersAdmin, h.patchUser)
	h.route("DELETE /api/v1/users/{name}", auth.PermUsersAdmin, h.deleteUser)
	h.route("GET /api/v1/tokens", auth.PermDevicesRead, h.listTokens)
	h.route("POST /api/v1/tokens", auth.PermDevicesRead, h.createAPIToken)
	h.route("DELETE /api/v1/tokens/{id}", auth.PermDevicesRead, h.revokeAPIToken)
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
	case errors.Is(err, auth.ErrInvalid), errors.Is(err, auth.ErrForbidden):
		problem(w, http.StatusBadRequest, "bad request", err.Error())
	default:
		h.internal(w, err)
	}
}

func (h *handler) listUsers(w http.ResponseWriter, _ *http.Request, _ string) {
	us, err := h.cfg.Auth.Users()
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
	u, err := h.cfg.Auth.CreateUser(r.Context(), req.Name, req.Password, req.Role)
	if err != nil {
		h.authError(w, err)
		return
	}
	out.User = u
	h.log.Info("user created", "user", u.Name, "role", u.Role, "by", who)
	writeJSON(w, http.StatusCreated, out)
}

func (h *handler) patchUser(w http.ResponseWriter, r *http.Request, who string) {
	var req UserPatch
	if !decode(w, r, &req) {
		return
	}
	name := r.PathValue("name")
	var u auth.User
	var err error
	if req.Role == nil && req.Disabled == nil {
		problem(w, http.StatusBadRequest, "bad request", "set role or disabled")
		return
	}
	if req.Role != nil {
		if u, err = h.cfg.Auth.SetRole(name, *req.Role); err != nil {
			h.authError(w, err)
			return
		}
	}
	if req.Disabled != nil {
		if u, err = h.cfg.Auth.SetDisabled(name, *req.Disabled); err != nil {
			h.authError(w, err)
			return
		}
	}
	h.log.Info("user changed", "user", u.Name, "role", u.Role, "disabled", u.Disabled, "by", who)
	writeJSON(w, http.StatusOK, u)
}

func (h *handler) deleteUser(w http.ResponseWriter, r *http.Request, who string) {
	if err := h.cfg.Auth.DeleteUser(r.PathValue("name")); err != nil {
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
	ts, err := h.cfg.Auth.Tokens(owner)
	if err != nil {
		h.authError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": ts})
}

func (h *handler) createAPIToken(w http.ResponseWriter, r *http.Request, who string) {
	var req TokenRequest
	if !decode(w, r, &req) {
		return
	}
	if req.TTL == 0 {
		req.TTL = config.Duration(90 * 24 * time.Hour)
	}
	secret, tok, err := h.cfg.Auth.CreateToken(who, req.Name, req.Role, time.Duration(req.TTL))
	if err != nil {
		h.authError(w, err)
		return
	}
	h.log.Info("API token created", "token_id", tok.ID, "role", tok.Role, "by", who)
	writeJSON(w, http.StatusCreated, TokenCreated{Token: tok, Secret: secret})
}

func (h *handler) revokeAPIToken(w http.ResponseWriter, r *http.Request, who string) {
	t, err := h.cfg.Auth.Token(r.PathValue("id"))
	if err != nil {
		h.authError(w, err)
		return
	}
	if t.Owner != who && !principal(r).Can(auth.PermUsersAdmin) {
		problem(w, http.StatusNotFound, "not found", "no such user or token")
		return
	}
	if _, err := h.cfg.Auth.RevokeToken(t.ID); err != nil {
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

// Me returns the caller's identity and permissions.
func (c *Client) Me(ctx context.Context) (*Me, error) {
	var out Me
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/me", nil, &out)
}
