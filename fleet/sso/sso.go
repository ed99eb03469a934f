package sso

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/internal/loglimit"
)

// Sessions is what single sign-on needs of the operators' store
// (*auth.Service).
type Sessions interface {
	Authenticate(r *http.Request) (auth.Principal, error)
	LoginExternal(ctx context.Context, name, issuer string, role auth.Role, source string) (auth.Session, error)
	SyncExternal(ctx context.Context, name, issuer string, role auth.Role) (bool, error)
	Logout(r *http.Request) error
	ExternalState(ctx context.Context, name, issuer string) ([]byte, error)
	SetExternalState(ctx context.Context, name, issuer string, state []byte) error
	EndSessions(ctx context.Context, name string) error
	Cookie(auth.Session) *http.Cookie
	ClearCookie() *http.Cookie
}

var _ Sessions = (*auth.Service)(nil)

// Options are the dependencies of single sign-on.
type Options struct {
	// Auth keeps the operators and their sessions. Required.
	Auth Sessions
	// Audit records logins, the role each was granted and from which
	// group, refused logins and revoked sessions with their reasons. Nil
	// records nothing.
	Audit audit.Recorder
	// Anonymous records the refused logins the provider did not vouch for
	// (a wrong or missing state, a refused code, an ID token that does not
	// verify): anyone can cause them, so it should bound what they add (an
	// audit.Sampler). Nil means Audit. Their log lines are rate-limited per
	// source address too.
	Anonymous audit.Recorder
	// Logger receives the same (never a token, code, secret or cookie).
	// Nil discards it.
	Logger *slog.Logger
	// HTTPClient talks to the provider. Nil means a client with a
	// 10-second timeout.
	HTTPClient *http.Client
	// Now is the clock for token expiry and re-checks. Nil means time.Now.
	Now func() time.Time
	// Rand supplies state, nonce and PKCE verifier. Nil means crypto/rand.
	Rand io.Reader
}

// Errors of a refused login or re-check, with the reason the audit log
// records. Compare with errors.Is.
var (
	// ErrState: the callback's state is unknown, used, expired, or not the
	// one this browser was given.
	ErrState = errors.New("sso: state mismatch")
	// ErrNonce: the ID token's nonce is not the one this login sent.
	ErrNonce = errors.New("sso: nonce mismatch")
	// ErrToken: the provider's answer or ID token did not verify
	// (signature, issuer, audience, expiry, access token hash, subject).
	ErrToken = errors.New("sso: token did not verify")
	// ErrNoRole: none of the person's groups maps to a role.
	ErrNoRole = errors.New("sso: no group maps to a role")
	// ErrProvider: the provider refused or could not be reached.
	ErrProvider = errors.New("sso: identity provider error")
	// ErrUser: the user claim is missing or not a valid user name, or names
	// a local account.
	ErrUser = errors.New("sso: unusable user name")
)

const (
	stateCookie   = "__Host-sigil-sso"
	pendingTTL    = 10 * time.Minute
	maxNext       = 1024
	secretLen     = 32
	maxClaimShown = 256
)

// Service is single sign-on for the console: the login, callback and
// logout handlers, and the middleware that re-checks a signed-in
// operator's groups (Wrap).
type Service struct {
	cfg    Config
	opts   Options
	log    *slog.Logger
	oauth  oauth2.Config // Endpoint is filled in on discovery
	cbPath string

	mu       sync.Mutex
	provider *oidc.Provider        // nil until discovery succeeds
	endSess  string                // the provider's end_session_endpoint, if any
	users    map[string]*userState // cache of the stored state (state.go)
	aead     cipher.AEAD           // seals the stored state
	anonLog  *loglimit.Limiter     // lines of refused logins anyone can cause
}

// pending is a login between the redirect to the provider and its
// callback. It travels sealed in the browser's state cookie (sealPending),
// so that any replica completes it and nobody can fill the fleet's memory
// with logins never finished.
type pending struct {
	State    string    `json:"state"`
	Nonce    string    `json:"nonce"`
	Verifier string    `json:"verifier"`
	Next     string    `json:"next"`
	Created  time.Time `json:"created"`
}

// New checks cfg and builds the service. It does not contact the provider:
// discovery happens at the first login (and again until it succeeds), so
// that the fleet starts, and local accounts work, while the provider is
// down.
func New(cfg Config, opts Options) (*Service, error) {
	if !cfg.Enabled() {
		return nil, errors.New("sso: no issuer configured")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Auth == nil {
		return nil, errors.New("sso: Options.Auth is required")
	}
	secret, err := readSecret(cfg.ClientSecretFile)
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if opts.Audit == nil {
		opts.Audit = audit.Discard{}
	}
	if opts.Anonymous == nil {
		opts.Anonymous = opts.Audit
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	cb, _ := url.Parse(cfg.RedirectURL) // Validate parsed it
	aead, err := stateKey(secret)
	if err != nil {
		return nil, err
	}
	return &Service{
		aead: aead, anonLog: loglimit.New(opts.Logger, loglimit.Config{Now: opts.Now}),
		cfg: cfg, opts: opts, log: opts.Logger, cbPath: cb.Path,
		oauth: oauth2.Config{ClientID: cfg.ClientID, ClientSecret: secret, RedirectURL: cfg.RedirectURL, Scopes: cfg.Scopes},
		users: make(map[string]*userState),
	}, nil
}

// Wrap returns next behind single sign-on when cfg enables it (New), and
// next itself when it does not.
func Wrap(cfg Config, opts Options, next http.Handler) (http.Handler, error) {
	if err := cfg.Validate(); err != nil || !cfg.Enabled() {
		return next, err
	}
	s, err := New(cfg, opts)
	if err != nil {
		return nil, err
	}
	return s.Wrap(next), nil
}

// Wrap serves the login (GET LoginPath), the callback (GET on
// RedirectURL's path) and, for an operator signed in through the provider,
// the console's logout (POST /logout), and hands every other request to
// next after re-checking the groups of a signed-in operator (recheck).
func (s *Service) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == LoginPath && r.Method == http.MethodGet:
			s.login(w, r)
			return
		case r.URL.Path == s.cbPath && r.Method == http.MethodGet:
			s.callback(w, r)
			return
		}
		p, ok := s.principal(r)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == "/logout" && r.Method == http.MethodPost {
			s.logout(w, r, p, next)
			return
		}
		if err := s.recheck(r.Context(), p, r); err != nil {
			s.log.Error("single sign-on: ending a session failed", "user", p.User, "err", err)
			http.Error(w, "the server could not complete the request", http.StatusInternalServerError)
			return
		}
		next.ServeHTTP(w, r) // refuses the request itself if recheck ended the session
	})
}

// principal returns the session principal of a request signed in through
// this provider. The check runs as for a GET: the handler behind makes the
// CSRF checks of the real method.
func (s *Service) principal(r *http.Request) (auth.Principal, bool) {
	if len(r.Header.Values("Authorization")) > 0 {
		return auth.Principal{}, false // API tokens: their owner's role is the last one synchronized
	}
	probe := r.WithContext(r.Context())
	probe.Method = http.MethodGet
	p, err := s.opts.Auth.Authenticate(probe)
	if err != nil || p.Method != auth.MethodSession || p.External == "" {
		return auth.Principal{}, false
	}
	return p, true
}

// discover returns the provider, reading its discovery document if that
// has not succeeded yet.
func (s *Service) discover(ctx context.Context) (*oidc.Provider, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.provider != nil {
		return s.provider, nil
	}
	// The provider keeps this context to fetch its signing keys later.
	pctx := oidc.ClientContext(context.WithoutCancel(ctx), s.opts.HTTPClient)
	p, err := oidc.NewProvider(pctx, s.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("%w: discovery: %w", ErrProvider, err)
	}
	var meta struct {
		EndSession string `json:"end_session_endpoint"`
	}
	if err := p.Claims(&meta); err != nil {
		return nil, fmt.Errorf("%w: discovery: %w", ErrProvider, err)
	}
	s.provider, s.endSess = p, meta.EndSession
	s.oauth.Endpoint = p.Endpoint()
	return p, nil
}

func (s *Service) verifier(p *oidc.Provider) *oidc.IDTokenVerifier {
	return p.Verifier(&oidc.Config{ClientID: s.cfg.ClientID, Now: s.opts.Now})
}

func (s *Service) random() (string, error) {
	b := make([]byte, secretLen)
	if _, err := io.ReadFull(s.opts.Rand, b); err != nil {
		return "", fmt.Errorf("sso: entropy: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// login sends the browser to the provider: authorization code flow with
// PKCE (S256), a fresh state bound to this browser by a cookie, and a
// fresh nonce.
func (s *Service) login(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if _, err := s.discover(ctx); err != nil {
		s.log.Error("single sign-on unavailable", "err", err)
		s.page(w, http.StatusServiceUnavailable, "Single sign-on is unavailable",
			"The identity provider cannot be reached. Try again later; an administrator can use a local account.")
		return
	}
	state, err1 := s.random()
	nonce, err2 := s.random()
	if err := errors.Join(err1, err2); err != nil {
		s.log.Error("single sign-on failed", "err", err)
		s.page(w, http.StatusInternalServerError, "Login failed", "The server could not start the login.")
		return
	}
	verifier := oauth2.GenerateVerifier()
	next := safeNext(r.URL.Query().Get("next"))
	if len(next) > maxNext {
		next = "/"
	}
	sealed, err := s.sealPending(pending{State: state, Nonce: nonce, Verifier: verifier, Next: next, Created: s.opts.Now()})
	if err != nil {
		s.log.Error("single sign-on failed", "err", err)
		s.page(w, http.StatusInternalServerError, "Login failed", "The server could not start the login.")
		return
	}
	s.mu.Lock()
	authURL := s.oauth.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier))
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{
		Name: stateCookie, Value: sealed, Path: "/", MaxAge: int(pendingTTL / time.Second),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode, // sent on the provider's redirect back
	})
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, authURL, http.StatusSeeOther)
}

// loginError is a refused login: the public message for the browser and
// the internal cause for the log and the audit log.
type loginError struct {
	public string
	cause  error
}

func (e *loginError) Error() string { return e.cause.Error() }
func (e *loginError) Unwrap() error { return e.cause }

func refuse(public string, cause error) error { return &loginError{public: public, cause: cause} }

// callback completes a login: it checks the state against this browser's
// cookie and the logins in progress (one use each), exchanges the code with
// the PKCE verifier, verifies the ID token (verify), maps the person's
// groups to a role, and starts a session.
func (s *Service) callback(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	source := auth.ClientAddr(r)
	http.SetCookie(w, &http.Cookie{Name: stateCookie, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	name, res, err := s.complete(ctx, r, source)
	if err != nil {
		var le *loginError
		public := "The login could not be completed."
		if errors.As(err, &le) {
			public = le.public
		}
		e := audit.New(audit.System("sso"), "auth.login", name).Deny(err.Error()).With("source", source).With("method", "sso")
		if anonymous(err) {
			s.anonLog.Log(ctx, slog.LevelWarn, "sso-callback/"+source, "single sign-on login refused", "source", source, "err", err)
			if err := s.opts.Anonymous.Record(context.Background(), e); err != nil {
				s.log.Error("audit: recording a single sign-on event failed", "action", e.Action, "err", err)
			}
		} else {
			s.log.Warn("single sign-on login refused", "user", name, "source", source, "err", err)
			s.record(e)
		}
		s.page(w, http.StatusForbidden, "Login refused", public)
		return
	}
	http.SetCookie(w, s.opts.Auth.Cookie(res.sess))
	s.log.Info("single sign-on login", "user", name, "role", res.sess.Role, "group", res.group, "source", source)
	s.record(audit.New(audit.User(name), "auth.login", name).With("source", source).With("method", "sso").
		With("role", string(res.sess.Role)).With("group", res.group).With("issuer", s.cfg.Issuer))
	// A page, not a redirect: the session cookie is SameSite=Strict, and a
	// redirect that continues the provider's cross-site navigation would
	// not carry it. The page's own navigation is same-site.
	s.continueTo(w, res.next, "Logged in", "Continue to the console")
}

// continueTo answers with a page that sends the browser on to target.
func (s *Service) continueTo(w http.ResponseWriter, target, title, link string) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_ = continuePage.Execute(w, struct{ Target, Title, Link string }{target, title, link})
}

// anonymous reports whether a refused login is one the provider did not
// vouch for: anyone can send such a callback.
func anonymous(err error) bool {
	return errors.Is(err, ErrState) || errors.Is(err, ErrProvider) || errors.Is(err, ErrToken)
}

type loginResult struct {
	sess  auth.Session
	group string
	next  string
}

func (s *Service) complete(ctx context.Context, r *http.Request, source string) (string, loginResult, error) {
	q := r.URL.Query()
	state := q.Get("state")
	var pend pending
	c, err := r.Cookie(stateCookie)
	if err == nil {
		pend, err = s.openPending(c.Value)
	}
	if state == "" || err != nil || subtle.ConstantTimeCompare([]byte(pend.State), []byte(state)) != 1 {
		return "", loginResult{}, refuse("The login expired or did not start in this browser. Log in again.",
			fmt.Errorf("%w: the state is not this browser's", ErrState))
	}
	now := s.opts.Now()
	if age := now.Sub(pend.Created); age >= pendingTTL || age < -time.Minute {
		return "", loginResult{}, refuse("The login expired. Log in again.",
			fmt.Errorf("%w: the login started %s ago", ErrState, age.Round(time.Second)))
	}
	p, err := s.discover(ctx)
	if err != nil {
		return "", loginResult{}, refuse("The identity provider cannot be reached. Try again later.", err)
	}
	if e := q.Get("error"); e != "" {
		return "", loginResult{}, refuse("The identity provider refused the login.",
			fmt.Errorf("%w: the provider answered %s", ErrProvider, clip(e)))
	}
	pctx := oidc.ClientContext(ctx, s.opts.HTTPClient)
	tok, err := s.oauth.Exchange(pctx, q.Get("code"), oauth2.VerifierOption(pend.Verifier))
	if err != nil {
		return "", loginResult{}, refuse("The identity provider did not accept the login.", fmt.Errorf("%w: code exchange: %s", ErrProvider, oauthCause(err)))
	}
	id, claims, err := s.verify(pctx, p, tok, "")
	if err != nil {
		return "", loginResult{}, refuse("The identity provider's answer did not verify.", err)
	}
	if subtle.ConstantTimeCompare([]byte(id.Nonce), []byte(pend.Nonce)) != 1 {
		return "", loginResult{}, refuse("The identity provider's answer did not verify.", fmt.Errorf("%w: the ID token's nonce is not this login's", ErrNonce))
	}
	if err := s.fillFromUserinfo(pctx, p, tok, id.Subject, claims); err != nil {
		return "", loginResult{}, refuse("The identity provider's answer did not verify.", err)
	}
	name, groups, err := s.identity(claims)
	if err != nil {
		return "", loginResult{}, refuse("Your account at the identity provider has no usable user name.", err)
	}
	role, group := s.cfg.role(groups)
	if role == "" {
		// An account that had a role loses it now too (its API tokens).
		if _, err := s.opts.Auth.SyncExternal(ctx, name, s.cfg.Issuer, ""); err != nil && !errors.Is(err, auth.ErrNotFound) && !errors.Is(err, auth.ErrNotExternal) {
			s.log.Error("single sign-on: disabling an account failed", "user", name, "err", err)
		}
		return name, loginResult{}, refuse("None of your groups at the identity provider grants access to this fleet.",
			fmt.Errorf("%w: groups %s", ErrNoRole, clip(strings.Join(groups, ","))))
	}
	sess, err := s.opts.Auth.LoginExternal(ctx, name, s.cfg.Issuer, role, source)
	switch {
	case errors.Is(err, auth.ErrNotExternal), errors.Is(err, auth.ErrInvalid):
		return name, loginResult{}, refuse("Your user name belongs to a local account of this fleet; ask an administrator.",
			fmt.Errorf("%w: %w", ErrUser, err))
	case err != nil:
		return name, loginResult{}, err
	}
	st := s.entry(sess.User)
	st.mu.Lock()
	st.loaded, st.subject, st.token, st.idToken, st.checked, st.role = true, id.Subject, tok, rawIDToken(tok), now, role
	err = s.save(ctx, sess.User, st)
	st.mu.Unlock()
	if err != nil {
		return name, loginResult{}, err
	}
	return sess.User, loginResult{sess: sess, group: group, next: pend.Next}, nil
}

// verify checks the ID token of a token response: its signature with the
// provider's keys, issuer, audience (the client ID), expiry, and the
// access token hash when it has one; with subject, that it is that
// person's. It returns the token and its claims.
func (s *Service) verify(ctx context.Context, p *oidc.Provider, tok *oauth2.Token, subject string) (*oidc.IDToken, map[string]any, error) {
	raw := rawIDToken(tok)
	if raw == "" {
		return nil, nil, fmt.Errorf("%w: no ID token in the provider's answer", ErrToken)
	}
	id, err := s.verifier(p).Verify(ctx, raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrToken, err)
	}
	if id.AccessTokenHash != "" {
		if err := id.VerifyAccessToken(tok.AccessToken); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrToken, err)
		}
	}
	if subject != "" && id.Subject != subject {
		return nil, nil, fmt.Errorf("%w: the ID token names another subject", ErrToken)
	}
	var claims map[string]any
	if err := id.Claims(&claims); err != nil {
		return nil, nil, fmt.Errorf("%w: claims: %w", ErrToken, err)
	}
	return id, claims, nil
}

// fillFromUserinfo adds the user and groups claims to claims from the
// provider's userinfo endpoint when the ID token lacks them (a provider
// may return profile claims only there once it issues an access token).
// The userinfo answer must be about subject.
func (s *Service) fillFromUserinfo(ctx context.Context, p *oidc.Provider, tok *oauth2.Token, subject string, claims map[string]any) error {
	_, hasUser := claims[s.cfg.UserClaim]
	_, hasGroups := claims[s.cfg.GroupsClaim]
	if (hasUser && hasGroups) || p.UserInfoEndpoint() == "" {
		return nil
	}
	info, err := p.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		return fmt.Errorf("%w: userinfo: %s", ErrProvider, oauthCause(err))
	}
	if info.Subject != subject {
		return fmt.Errorf("%w: userinfo names another subject", ErrToken)
	}
	var more map[string]any
	if err := info.Claims(&more); err != nil {
		return fmt.Errorf("%w: userinfo: %w", ErrToken, err)
	}
	for _, k := range []string{s.cfg.UserClaim, s.cfg.GroupsClaim} {
		if _, ok := claims[k]; !ok {
			if v, ok := more[k]; ok {
				claims[k] = v
			}
		}
	}
	return nil
}

func rawIDToken(tok *oauth2.Token) string {
	raw, _ := tok.Extra("id_token").(string)
	return raw
}

// identity reads the user name and the groups from claims.
func (s *Service) identity(claims map[string]any) (string, []string, error) {
	name, _ := claims[s.cfg.UserClaim].(string)
	if name == "" {
		return "", nil, fmt.Errorf("%w: no %q claim", ErrUser, s.cfg.UserClaim)
	}
	return strings.ToLower(name), groupsOf(claims[s.cfg.GroupsClaim]), nil
}

func groupsOf(v any) []string {
	switch g := v.(type) {
	case string:
		return []string{g}
	case []any:
		out := make([]string, 0, len(g))
		for _, e := range g {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// recheck asks the provider again about an operator signed in through it
// once RecheckEvery has passed since it (or another replica: the state is
// read again from the store first) last did, and applies the answer
// before the request goes on: no group mapping to a role any more
// disables the account and ends its sessions; another role replaces the
// account's. A failed re-check (the provider refuses the refresh token or
// cannot be reached) ends the operator's sessions: deny by default. So
// does a session the fleet holds no provider state for. It returns an
// error only when the store fails.
func (s *Service) recheck(ctx context.Context, p auth.Principal, r *http.Request) error {
	if p.External != s.cfg.Issuer {
		s.revoke(p.User, "the session's account belongs to another identity provider")
		return s.opts.Auth.EndSessions(ctx, p.User)
	}
	st := s.entry(p.User)
	st.mu.Lock()
	defer st.mu.Unlock()
	now := s.opts.Now()
	every := time.Duration(s.cfg.RecheckEvery)
	if st.loaded && st.subject != "" && now.Sub(st.checked) < every {
		return nil
	}
	if err := s.load(ctx, p.User, st); err != nil {
		s.log.Error("single sign-on: reading the stored state failed", "user", p.User, "err", err)
	}
	switch {
	case st.subject == "":
		s.revoke(p.User, "no single sign-on state for this account")
		return s.opts.Auth.Logout(r)
	case now.Sub(st.checked) < every:
		return nil // another replica asked the provider meanwhile
	}
	groups, fresh, err := s.ask(ctx, st)
	if err != nil {
		// Another replica may have used the refresh token just now.
		if lerr := s.load(ctx, p.User, st); lerr == nil && st.subject != "" && now.Sub(st.checked) < every {
			return nil
		}
		s.drop(ctx, p.User, st)
		s.log.Warn("single sign-on re-check failed; sessions ended", "user", p.User, "err", err)
		s.revoke(p.User, err.Error())
		return s.opts.Auth.EndSessions(ctx, p.User)
	}
	role, group := s.cfg.role(groups)
	if role == "" {
		s.drop(ctx, p.User, st)
		if _, err := s.opts.Auth.SyncExternal(ctx, p.User, s.cfg.Issuer, ""); err != nil {
			return err
		}
		s.log.Warn("single sign-on: no group maps to a role any more; account disabled", "user", p.User)
		s.revoke(p.User, fmt.Sprintf("%v: groups %s", ErrNoRole, clip(strings.Join(groups, ","))))
		return nil
	}
	if role != st.role {
		if _, err := s.opts.Auth.SyncExternal(ctx, p.User, s.cfg.Issuer, role); err != nil {
			return err
		}
		s.log.Info("single sign-on: role changed at the provider", "user", p.User, "role", role, "group", group)
		s.record(audit.New(audit.System("sso"), "auth.sso.role", p.User).With("role", string(role)).With("group", group).With("was", string(st.role)))
	}
	st.token, st.checked, st.role = fresh, now, role
	if raw := rawIDToken(fresh); raw != "" {
		st.idToken = raw
	}
	if err := s.save(ctx, p.User, st); err != nil {
		// The next re-check here still has the new token; other
		// replicas fail closed with the old one.
		s.log.Error("single sign-on: storing the state failed", "user", p.User, "err", err)
	}
	return nil
}

// ask refreshes the operator's tokens and returns their groups, from the
// new ID token (verified, and of the same subject) when the provider sends
// one, else from its userinfo endpoint, and the new tokens.
func (s *Service) ask(ctx context.Context, st *userState) ([]string, *oauth2.Token, error) {
	p, err := s.discover(ctx)
	if err != nil {
		return nil, nil, err
	}
	ctx = oidc.ClientContext(ctx, s.opts.HTTPClient)
	tok := st.token
	if tok.RefreshToken != "" {
		old := *tok
		old.Expiry = s.opts.Now().Add(-time.Second) // force the refresh grant
		old.AccessToken = ""
		fresh, err := s.oauth.TokenSource(ctx, &old).Token()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: refresh: %s", ErrProvider, oauthCause(err))
		}
		tok = fresh
	} else if !tok.Expiry.IsZero() && !s.opts.Now().Before(tok.Expiry) {
		return nil, nil, fmt.Errorf("%w: the access token expired and there is no refresh token", ErrProvider)
	}
	if rawIDToken(tok) != "" {
		_, claims, err := s.verify(ctx, p, tok, st.subject)
		if err != nil {
			return nil, nil, err
		}
		if v, ok := claims[s.cfg.GroupsClaim]; ok {
			return groupsOf(v), tok, nil
		}
	}
	info, err := p.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: userinfo: %s", ErrProvider, oauthCause(err))
	}
	if info.Subject != st.subject {
		return nil, nil, fmt.Errorf("%w: userinfo names another subject", ErrToken)
	}
	var claims map[string]any
	if err := info.Claims(&claims); err != nil {
		return nil, nil, fmt.Errorf("%w: userinfo: %w", ErrToken, err)
	}
	return groupsOf(claims[s.cfg.GroupsClaim]), tok, nil
}

// revoke audits the end of an operator's access at a re-check.
func (s *Service) revoke(user, reason string) {
	s.record(audit.New(audit.System("sso"), "auth.sso.revoke", user).Deny(reason))
}

// logout lets the console end the operator's session (its logout checks
// the form's CSRF token and origin) and, once the session is gone and the
// provider advertises an end_session_endpoint, sends the browser there
// (RP-initiated logout with id_token_hint) to come back to the login page.
// A refused logout is answered as the console answered it.
func (s *Service) logout(w http.ResponseWriter, r *http.Request, p auth.Principal, console http.Handler) {
	rec := &recorder{header: http.Header{}, status: http.StatusOK}
	console.ServeHTTP(rec, r)
	if _, still := s.principal(r); still {
		rec.copyTo(w)
		return
	}
	for _, c := range rec.header.Values("Set-Cookie") {
		w.Header().Add("Set-Cookie", c)
	}
	s.mu.Lock()
	end := s.endSess
	s.mu.Unlock()
	st := s.entry(p.User)
	s.log.Info("logout", "user", p.User, "method", "sso")
	s.record(audit.New(audit.User(p.User), "auth.logout", p.User).With("method", "sso"))
	cb, _ := url.Parse(s.cfg.RedirectURL)
	back := "/login?bye=1"
	u, err := url.Parse(end)
	if end == "" || err != nil {
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	v := u.Query()
	v.Set("client_id", s.cfg.ClientID)
	v.Set("post_logout_redirect_uri", cb.Scheme+"://"+cb.Host+back)
	st.mu.Lock()
	if !st.loaded {
		if err := s.load(r.Context(), p.User, st); err != nil {
			s.log.Warn("single sign-on: reading the stored state failed", "user", p.User, "err", err)
		}
	}
	if st.idToken != "" {
		v.Set("id_token_hint", st.idToken)
	}
	st.mu.Unlock()
	u.RawQuery = v.Encode()
	// A page, not a redirect: the console's form-action CSP would block a
	// redirect of its logout form to the provider.
	s.continueTo(w, u.String(), "Logged out", "Continue to the identity provider")
}

// recorder keeps the console's answer to a logout.
type recorder struct {
	header http.Header
	status int
	body   []byte
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(status int) {
	r.status = status
}
func (r *recorder) Write(b []byte) (int, error) {
	r.body = append(r.body, b...)
	return len(b), nil
}

func (r *recorder) copyTo(w http.ResponseWriter) {
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

func (s *Service) record(e audit.Entry) {
	if err := s.opts.Audit.Record(context.Background(), e); err != nil {
		s.log.Error("audit: recording a single sign-on event failed", "action", e.Action, "err", err)
	}
}

// oauthCause describes an oauth2 error without the response body (which
// a provider may fill with anything).
func oauthCause(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		code := re.ErrorCode
		if code == "" && re.Response != nil {
			code = re.Response.Status
		}
		return "the provider answered " + clip(code)
	}
	return clip(err.Error())
}

// clip bounds a string from the provider before it is logged.
func clip(s string) string {
	if len(s) > maxClaimShown {
		return s[:maxClaimShown] + "..."
	}
	return s
}

// safeNext accepts a local path to return to after login.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	return next
}

var (
	continuePage = template.Must(template.New("continue").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={{.Target}}"><title>{{.Title}}</title></head>
<body><p>{{.Title}}. <a href="{{.Target}}">{{.Link}}</a>.</p></body></html>
`))
	messagePage = template.Must(template.New("message").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title></head>
<body><h1>{{.Title}}</h1><p role="alert">{{.Detail}}</p><p><a href="/login">Back to the login page</a></p></body></html>
`))
)

// page answers with a small HTML page carrying the public message.
func (s *Service) page(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = messagePage.Execute(w, struct{ Title, Detail string }{title, detail})
}
