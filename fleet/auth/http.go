package auth

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Method is how a principal authenticated.
type Method string

// Methods.
const (
	MethodSession Method = "session" // a browser session cookie
	MethodToken   Method = "token"   // an API token (bearer)
)

// Principal is an authenticated person, as Authenticate found them.
type Principal struct {
	// User is the person: the session's user, or the API token's owner.
	User string
	// Role is the session user's role, or the token's scope.
	Role   Role
	Method Method
	// TokenID is the API token's ID (MethodToken only).
	TokenID string
	// CSRFToken is what state-changing requests of this session must carry
	// (MethodSession only): put it in forms (field csrf_token) or send it as
	// the X-CSRF-Token header. Never log it.
	CSRFToken string
	// External is the issuer of the identity provider that manages the
	// session's user (User.External); empty for a local account or a
	// token.
	External string
	// Expires is when the credential ends if nothing else ends it sooner:
	// the token's expiry, or the sooner of the session's absolute and idle
	// expiry.
	Expires time.Time

	// ownerRole is the user's current role when Role is a scope that may
	// be wider than it: a token's owner (MethodToken), or the requester of
	// an approved action (Service.Principal).
	ownerRole Role
	since     time.Time // the user's User.Since
}

// Can reports whether p holds perm. An API token (or an approved request
// carried out for its requester) holds a permission only while both its
// scope and the user's current role grant it: its effective permissions
// are the intersection of the two.
func (p Principal) Can(perm Permission) bool {
	if !p.Role.Has(perm) {
		return false
	}
	if p.Method == MethodToken || p.ownerRole != "" {
		return p.ownerRole.Has(perm)
	}
	return true
}

// Covers reports whether p holds every permission role grants (false for
// an unknown role): what p may hand out (a token's scope, a user's role)
// and whom p may manage (users, tokens) never exceeds p's own effective
// permissions.
func (p Principal) Covers(role Role) bool { return role.Valid() && p.coversAll(role.Permissions()) }

func (p Principal) coversAll(perms []Permission) bool {
	for _, perm := range perms {
		if !p.Can(perm) {
			return false
		}
	}
	return true
}

// Subject returns the person's user name (a token acts for its owner).
func (p Principal) Subject() string { return p.User }

// Since returns when the person's account last gained authority (see
// User.Since); the zero time when unknown.
func (p Principal) Since() time.Time { return p.since }

// Credential names the credential p authenticated with, without its
// secret (see Service.Principal).
func (p Principal) Credential() Credential {
	return Credential{User: p.User, Method: p.Method, Scope: p.Role, TokenID: p.TokenID}
}

// Credential names what a principal authenticated with, without any
// secret: enough for Service.Principal to establish the same principal
// again later, as its user and token are then. An approved request keeps
// its requester's, so that it runs with only what the requester may still
// do.
type Credential struct {
	User   string `json:"user"`
	Method Method `json:"method"`
	// Scope is the role the principal acted with: a session's user role at
	// the time, or a token's scope.
	Scope   Role   `json:"scope"`
	TokenID string `json:"token_id,omitempty"` // MethodToken only
}

// String names the user, role and method, without secrets.
func (p Principal) String() string {
	if p.Method == MethodToken {
		return fmt.Sprintf("%s (%s, token %s)", p.User, p.Role, p.TokenID)
	}
	return fmt.Sprintf("%s (%s, %s)", p.User, p.Role, p.Method)
}

// LogValue implements slog.LogValuer without the CSRF token.
func (p Principal) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("user", p.User), slog.String("role", string(p.Role)), slog.String("method", string(p.Method))}
	if p.TokenID != "" {
		attrs = append(attrs, slog.String("token_id", p.TokenID))
	}
	return slog.GroupValue(attrs...)
}

// Headers and form fields.
const (
	// CSRFHeader carries a session's CSRF token on state-changing requests.
	CSRFHeader = "X-CSRF-Token"
	// CSRFField carries it in a posted HTML form.
	CSRFField = "csrf_token"
)

// Authenticate resolves the request's credentials:
//
//   - An Authorization header must be "Bearer <API token>"; the token must
//     be known, unrevoked and unexpired, and its owner enabled
//     (ErrTokenInvalid, ErrTokenExpired). A request with one is never
//     judged by its cookie, and never needs a CSRF token.
//   - Otherwise the session cookie must name a live session
//     (ErrSessionInvalid, ErrSessionExpired) of an enabled user whose
//     password has not changed since. For a method other than GET, HEAD,
//     OPTIONS or TRACE it also checks, in this order, that Sec-Fetch-Site
//     (if sent) is same-origin, that Origin (if sent) is one of
//     Config.Origins, and that the CSRF token (CSRFHeader, or the CSRFField
//     of a posted form) is the session's, compared in constant time
//     (ErrCSRF).
//   - With neither, it fails with ErrNoCredentials.
//
// A session's idle timer restarts only once these checks pass.
func (s *Service) Authenticate(r *http.Request) (Principal, error) {
	ctx := r.Context()
	if hs := r.Header.Values("Authorization"); len(hs) > 0 {
		if len(hs) > 1 {
			return Principal{}, fmt.Errorf("%w: several Authorization headers", ErrTokenInvalid)
		}
		scheme, tok, ok := strings.Cut(hs[0], " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return Principal{}, fmt.Errorf("%w: not a bearer token", ErrTokenInvalid)
		}
		return s.token(ctx, strings.TrimSpace(tok))
	}
	c, err := r.Cookie(s.cfg.CookieName)
	if err != nil {
		return Principal{}, ErrNoCredentials
	}
	var check func(raw []byte) error
	if !safeMethod(r.Method) {
		check = func(raw []byte) error { return s.checkCSRF(r, raw) }
	}
	return s.session(ctx, c.Value, check)
}

func safeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// checkOrigin refuses a request that a browser says came from another
// site.
func (s *Service) checkOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return fmt.Errorf("%w: Sec-Fetch-Site is %q", ErrCSRF, site)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil // not sent by this client; the CSRF token decides
	}
	allowed := s.cfg.Origins
	if len(allowed) == 0 {
		allowed = []string{"https://" + r.Host}
	}
	for _, a := range allowed {
		if strings.EqualFold(origin, a) {
			return nil
		}
	}
	return fmt.Errorf("%w: origin %q is not the console's", ErrCSRF, origin)
}

// checkCSRF checks the origin and the session's synchronizer token.
func (s *Service) checkCSRF(r *http.Request, rawID []byte) error {
	if err := s.checkOrigin(r); err != nil {
		return err
	}
	got := r.Header.Get(CSRFHeader)
	if got == "" && isForm(r) {
		got = r.PostFormValue(CSRFField)
	}
	if got == "" {
		return fmt.Errorf("%w: no CSRF token", ErrCSRF)
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(csrfToken(rawID))) != 1 {
		return fmt.Errorf("%w: wrong CSRF token", ErrCSRF)
	}
	return nil
}

func isForm(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && (mt == "application/x-www-form-urlencoded" || mt == "multipart/form-data")
}

type principalKey struct{}

// PrincipalFrom returns the principal Require (or NewContext) stored in
// ctx.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// NewContext returns ctx carrying p, for handlers that run outside Require
// as a principal established otherwise (an approved request carried out
// for its requester, with Service.Principal).
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// Require returns middleware that lets a request through only when it
// authenticates (Authenticate) and its principal holds every permission in
// perms (none: any authenticated principal). The handler finds the
// principal with PrincipalFrom.
//
// Refusals are RFC 9457 application/problem+json documents whose detail is
// public: 401 for missing, invalid or expired credentials (with
// WWW-Authenticate, and a cookie-clearing Set-Cookie for a dead session),
// 403 for a refused cross-site request or a missing permission, 500 when
// the store fails (the cause is logged, never returned).
func (s *Service) Require(perms ...Permission) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, err := s.Authenticate(r)
			if err != nil {
				s.deny(w, r, err)
				return
			}
			for _, perm := range perms {
				if !p.Can(perm) {
					s.log.Warn("permission denied", "principal", p, "permission", perm, "method", r.Method, "path", r.URL.Path)
					problem(w, http.StatusForbidden, "forbidden",
						fmt.Sprintf("this action needs the permission %s, which role %s does not grant", perm, p.Role))
					return
				}
			}
			next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), p)))
		})
	}
}

// deny answers a failed Authenticate.
func (s *Service) deny(w http.ResponseWriter, r *http.Request, err error) {
	bearer := func(e string) {
		v := `Bearer realm="sigil"`
		if e != "" {
			v += `, error="` + e + `"`
		}
		w.Header().Set("WWW-Authenticate", v)
	}
	switch {
	case errors.Is(err, ErrNoCredentials):
		bearer("")
		problem(w, http.StatusUnauthorized, "unauthorized", "log in or present an API token")
	case errors.Is(err, ErrSessionExpired), errors.Is(err, ErrSessionInvalid):
		s.log.Info("session refused", "err", err, "path", r.URL.Path)
		http.SetCookie(w, s.ClearCookie())
		bearer("")
		problem(w, http.StatusUnauthorized, "unauthorized", "the session has ended or expired; log in again")
	case errors.Is(err, ErrTokenExpired):
		s.log.Info("API token refused", "err", err, "path", r.URL.Path)
		bearer("invalid_token")
		problem(w, http.StatusUnauthorized, "unauthorized", "the API token has expired")
	case errors.Is(err, ErrTokenInvalid):
		s.log.Info("API token refused", "err", err, "path", r.URL.Path)
		bearer("invalid_token")
		problem(w, http.StatusUnauthorized, "unauthorized", "the API token is invalid or revoked")
	case errors.Is(err, ErrCSRF):
		s.log.Warn("cross-site request refused", "err", err, "method", r.Method, "path", r.URL.Path)
		problem(w, http.StatusForbidden, "forbidden",
			"cross-site request refused: state changes must come from the console with the session's CSRF token")
	default:
		s.log.Error("authentication failed", "err", err, "path", r.URL.Path)
		problem(w, http.StatusInternalServerError, "internal error", "the server could not complete the request")
	}
}

// LoginResponse is what LoginHandler answers on success. The session ID
// travels only in the cookie.
type LoginResponse struct {
	User      string    `json:"user"`
	Role      Role      `json:"role"`
	CSRFToken string    `json:"csrf_token"`
	Expires   time.Time `json:"expires"`
}

const maxLoginBody = 8 << 10

// LoginHandler serves POST with a JSON body {"user": ..., "password": ...}
// or a form with fields user and password. On success it sets the session
// cookie and answers 200 with a LoginResponse. It answers 401 for wrong
// credentials (one answer for unknown users, wrong passwords and disabled
// users), 429 with Retry-After when throttled, 403 for a cross-site
// request (login CSRF) or when password login is turned off
// (Config.NoPasswordLogin), 400 for a malformed body, 405 for other methods.
func (s *Service) LoginHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			problem(w, http.StatusMethodNotAllowed, "method not allowed", "log in with POST")
			return
		}
		if err := s.checkOrigin(r); err != nil {
			s.deny(w, r, err)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
		var creds struct {
			User     string `json:"user"`
			Password string `json:"password"`
		}
		if isForm(r) {
			if err := r.ParseForm(); err != nil {
				problem(w, http.StatusBadRequest, "bad request", "malformed form")
				return
			}
			creds.User, creds.Password = r.PostForm.Get("user"), r.PostForm.Get("password")
		} else {
			dec := json.NewDecoder(r.Body)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&creds); err != nil {
				problem(w, http.StatusBadRequest, "bad request", `send {"user": "...", "password": "..."} as JSON`)
				return
			}
			if _, err := dec.Token(); err != io.EOF {
				problem(w, http.StatusBadRequest, "bad request", "trailing data after the JSON body")
				return
			}
		}
		if creds.User == "" || creds.Password == "" {
			problem(w, http.StatusBadRequest, "bad request", "user and password are required")
			return
		}
		sess, err := s.Login(r.Context(), creds.User, creds.Password, ClientAddr(r))
		var te *ThrottleError
		switch {
		case errors.As(err, &te):
			secs := int((te.RetryAfter + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			problem(w, http.StatusTooManyRequests, "too many requests",
				fmt.Sprintf("too many failed logins; retry in %d seconds", secs))
			return
		case errors.Is(err, ErrPasswordLoginOff):
			problem(w, http.StatusForbidden, "forbidden", "password login is turned off: log in through single sign-on")
			return
		case errors.Is(err, ErrInvalidCredentials):
			w.Header().Set("WWW-Authenticate", `Bearer realm="sigil"`)
			problem(w, http.StatusUnauthorized, "unauthorized", "the user name or password is wrong")
			return
		case err != nil:
			s.log.Error("login failed", "err", err)
			problem(w, http.StatusInternalServerError, "internal error", "the server could not complete the request")
			return
		}
		http.SetCookie(w, s.Cookie(sess))
		writeJSON(w, http.StatusOK, LoginResponse{User: sess.User, Role: sess.Role, CSRFToken: sess.CSRFToken, Expires: sess.Expires})
	})
}

// LogoutHandler serves POST: it ends the request's session (which must
// pass Authenticate, CSRF checks included), clears the cookie and answers
// 204. A bearer request gets 400: API tokens are revoked, not logged out.
func (s *Service) LogoutHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			problem(w, http.StatusMethodNotAllowed, "method not allowed", "log out with POST")
			return
		}
		p, err := s.Authenticate(r)
		if err != nil {
			s.deny(w, r, err)
			return
		}
		if p.Method != MethodSession {
			problem(w, http.StatusBadRequest, "bad request", "API tokens are revoked, not logged out")
			return
		}
		if err := s.Logout(r); err != nil {
			s.log.Error("logout failed", "err", err)
			problem(w, http.StatusInternalServerError, "internal error", "the server could not complete the request")
			return
		}
		s.log.Info("logout", "user", p.User)
		http.SetCookie(w, s.ClearCookie())
		w.WriteHeader(http.StatusNoContent)
	})
}

// Problem is an RFC 9457 problem document.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func problem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: "about:blank", Title: title, Status: status, Detail: detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
