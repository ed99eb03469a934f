package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/sigil-iot/sigil/fleet/auth"
)

// route is one registered API route: its pattern and the permission it
// requires ("" for a public route).
type route struct {
	Pattern string
	Perm    auth.Permission
	// Fields are request body fields whose setting (or change) needs a
	// further permission, FieldPerm (see fieldsNeed).
	Fields    []string
	FieldPerm auth.Permission
}

// Routes lists the handler's routes with their permissions, for the
// OpenAPI document and the authorization tests.
func Routes(h http.Handler) []route {
	if hh, ok := h.(*handler); ok {
		return hh.routes
	}
	return nil
}

// Handles reports whether h, a handler made by New, has a route for r's
// path (with any method): the console uses it to leave the API's paths to
// the API and answer others with its own 404 page. A handler New did not
// make is assumed to handle everything.
func Handles(h http.Handler, r *http.Request) bool {
	hh, ok := h.(*handler)
	if !ok {
		return true
	}
	_, pattern := hh.mux.Handler(r)
	return pattern != "/"
}

// route registers an authenticated route that requires perm. The
// handler gets the principal's user name as who.
func (h *handler) route(pattern string, perm auth.Permission, fn func(http.ResponseWriter, *http.Request, string)) {
	h.routes = append(h.routes, route{Pattern: pattern, Perm: perm})
	h.mux.Handle(pattern, h.audited(pattern, h.authorize(perm, fn)))
}

// fieldsNeed records that setting fields of pattern's body needs perm as
// well as the route's permission; the handler checks it with can.
func (h *handler) fieldsNeed(pattern string, perm auth.Permission, fields ...string) {
	for i := range h.routes {
		if h.routes[i].Pattern == pattern {
			h.routes[i].Fields, h.routes[i].FieldPerm = fields, perm
		}
	}
}

// can reports whether the caller of r holds perm (beyond its route's
// permission). Without an auth service only the admin token gets this far,
// and it holds every permission.
func (h *handler) can(r *http.Request, perm auth.Permission) bool {
	if h.cfg.Auth == nil {
		return true
	}
	p, ok := auth.PrincipalFrom(r.Context())
	return ok && p.Can(perm)
}

// public registers a route anyone may call.
func (h *handler) public(pattern string, fn http.HandlerFunc) {
	h.routes = append(h.routes, route{Pattern: pattern})
	h.mux.HandleFunc(pattern, fn)
}

// authorize authenticates the request (session cookie with CSRF checks, or
// API token; see auth.Service.Authenticate) and requires perm. Without an
// auth service (tests of this package), only the admin token is accepted.
func (h *handler) authorize(perm auth.Permission, fn func(http.ResponseWriter, *http.Request, string)) http.Handler {
	if h.cfg.Auth != nil {
		return h.cfg.Auth.Require(perm)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, _ := auth.PrincipalFrom(r.Context())
			noteWho(r, p.User, p.TokenID)
			fn(w, r, p.User)
		}))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(tok))
		if !ok || tok == "" || len(h.cfg.AdminTokenHash) != len(sum) || subtle.ConstantTimeCompare(sum[:], h.cfg.AdminTokenHash) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sigil"`)
			problem(w, http.StatusUnauthorized, "unauthorized", "a valid bearer token is required")
			return
		}
		noteWho(r, "admin", "")
		fn(w, r, "admin")
	})
}
