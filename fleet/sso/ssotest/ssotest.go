// Package ssotest runs a real OpenID Provider for tests of single
// sign-on: zitadel/oidc's op package over an in-memory storage of users
// with groups, one confidential client, and a plain HTML login page. It
// serves on a loopback port over http (the op package's insecure mode).
//
// Tests change a user's groups (SetGroups) or disable them (Disable) while
// the fleet holds their session, and can make the provider misbehave
// (WrongNonce) to check that the fleet refuses its answers.
package ssotest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// Provider is a running OpenID Provider.
type Provider struct {
	// Issuer is the provider's issuer URL (http://127.0.0.1:port).
	Issuer string

	clientID, secret string
	redirects        []string
	postLogout       []string
	key              *ecdsa.PrivateKey
	keyID            string

	mu            sync.Mutex
	users         map[string]*user // by name
	requests      map[string]*authRequest
	codes         map[string]string // code -> request ID
	access        map[string]*grant // access token ID -> grant
	refresh       map[string]*grant // refresh token -> grant
	ended         int
	wrongNonce    bool
	lastChallenge oidc.CodeChallengeMethod
}

type user struct {
	subject, name, password string
	groups                  []string
	disabled                bool
}

// grant is an issued access or refresh token.
type grant struct {
	id, subject, clientID string
	scopes                []string
	authTime              time.Time
	expires               time.Time
}

// Client is the one client the provider knows.
type Client struct {
	ID, Secret string
	// RedirectURIs are the accepted redirect URIs (https, or loopback http).
	RedirectURIs []string
	// PostLogoutRedirectURIs are where end_session may send the browser.
	PostLogoutRedirectURIs []string
}

// Start runs a provider until the test ends.
func Start(t testing.TB, c Client) *Provider {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Provider{
		Issuer:   "http://" + ln.Addr().String(),
		clientID: c.ID, secret: c.Secret, redirects: c.RedirectURIs, postLogout: c.PostLogoutRedirectURIs,
		key: key, keyID: "ssotest-" + randomID(),
		users: map[string]*user{}, requests: map[string]*authRequest{}, codes: map[string]string{},
		access: map[string]*grant{}, refresh: map[string]*grant{},
	}
	cfg := &op.Config{CodeMethodS256: true, GrantTypeRefreshToken: true, SupportedScopes: []string{"openid", "profile", "offline_access", "groups"}}
	if _, err := rand.Read(cfg.CryptoKey[:]); err != nil {
		t.Fatal(err)
	}
	prov, err := op.NewProvider(cfg, p, op.StaticIssuer(p.Issuer), op.WithAllowInsecure())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/login", p.login)
	mux.HandleFunc("/favicon.ico", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.Handle("/", prov)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return p
}

// Client returns an HTTP client for the fleet's calls to the provider.
func (p *Provider) Client() *http.Client { return &http.Client{Timeout: 30 * time.Second} }

// AddUser adds a user with a password and groups; the subject is random.
func (p *Provider) AddUser(name, password string, groups ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.users[name] = &user{subject: "sub-" + randomID(), name: name, password: password, groups: groups}
}

// SetGroups replaces a user's groups: tokens issued from now on carry them.
func (p *Provider) SetGroups(name string, groups ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.users[name].groups = groups
}

// Disable disables a user: their refresh tokens and userinfo are refused.
func (p *Provider) Disable(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.users[name].disabled = true
}

// WrongNonce makes ID tokens issued for logins carry a nonce other than
// the one the client sent.
func (p *Provider) WrongNonce(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.wrongNonce = on
}

// EndedSessions counts the RP-initiated logouts (end_session) served.
func (p *Provider) EndedSessions() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ended
}

// LastChallengeMethod is the PKCE method of the last authorization
// request ("" when it had no code challenge).
func (p *Provider) LastChallengeMethod() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return string(p.lastChallenge)
}

func randomID() string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test provider: sign in</title></head>
<body><h1>Test provider</h1>{{if .Error}}<p role="alert">{{.Error}}</p>{{end}}
<form method="post" action="/login">
<input type="hidden" name="id" value="{{.ID}}">
<label for="username">Username</label><input id="username" name="username">
<label for="password">Password</label><input id="password" name="password" type="password">
<button type="submit">Sign in</button>
</form></body></html>
`))

// login is the provider's login page: it authenticates a user for an
// authorization request and sends the browser to the op's callback.
func (p *Provider) login(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	id := r.Form.Get("authRequestID")
	if r.Method == http.MethodPost {
		id = r.PostForm.Get("id")
		p.mu.Lock()
		u, req := p.users[r.PostForm.Get("username")], p.requests[id]
		ok := u != nil && !u.disabled && req != nil &&
			subtle.ConstantTimeCompare([]byte(u.password), []byte(r.PostForm.Get("password"))) == 1
		if ok {
			req.subject, req.done, req.authTime = u.subject, true, time.Now()
		}
		p.mu.Unlock()
		if ok {
			http.Redirect(w, r, p.Issuer+"/authorize/callback?id="+id, http.StatusFound)
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
		_ = loginPage.Execute(w, struct{ ID, Error string }{id, "Wrong username or password."})
		return
	}
	_ = loginPage.Execute(w, struct{ ID, Error string }{id, ""})
}

// authRequest is an authorization request (op.AuthRequest).
type authRequest struct {
	id, clientID, redirectURI, state, nonce string
	scopes                                  []string
	responseType                            oidc.ResponseType
	responseMode                            oidc.ResponseMode
	challenge                               *oidc.CodeChallenge
	subject                                 string
	done                                    bool
	authTime                                time.Time
}

func (a *authRequest) GetID() string                         { return a.id }
func (a *authRequest) GetACR() string                        { return "" }
func (a *authRequest) GetAMR() []string                      { return []string{"pwd"} }
func (a *authRequest) GetAudience() []string                 { return []string{a.clientID} }
func (a *authRequest) GetAuthTime() time.Time                { return a.authTime }
func (a *authRequest) GetClientID() string                   { return a.clientID }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge { return a.challenge }
func (a *authRequest) GetNonce() string                      { return a.nonce }
func (a *authRequest) GetRedirectURI() string                { return a.redirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType    { return a.responseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode    { return a.responseMode }
func (a *authRequest) GetScopes() []string                   { return a.scopes }
func (a *authRequest) GetState() string                      { return a.state }
func (a *authRequest) GetSubject() string                    { return a.subject }
func (a *authRequest) Done() bool                            { return a.done }

// refreshRequest is a refresh token presented again (op.RefreshTokenRequest).
type refreshRequest struct{ g *grant }

func (r *refreshRequest) GetAMR() []string                 { return []string{"pwd"} }
func (r *refreshRequest) GetAudience() []string            { return []string{r.g.clientID} }
func (r *refreshRequest) GetAuthTime() time.Time           { return r.g.authTime }
func (r *refreshRequest) GetClientID() string              { return r.g.clientID }
func (r *refreshRequest) GetScopes() []string              { return r.g.scopes }
func (r *refreshRequest) GetSubject() string               { return r.g.subject }
func (r *refreshRequest) SetCurrentScopes(scopes []string) { r.g.scopes = scopes }

var errNotFound = errors.New("ssotest: not found")

// CreateAuthRequest implements op.Storage.
func (p *Provider) CreateAuthRequest(_ context.Context, req *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := &authRequest{
		id: randomID(), clientID: req.ClientID, redirectURI: req.RedirectURI, state: req.State, nonce: req.Nonce,
		scopes: req.Scopes, responseType: req.ResponseType, responseMode: req.ResponseMode,
	}
	if req.CodeChallenge != "" {
		a.challenge = &oidc.CodeChallenge{Challenge: req.CodeChallenge, Method: req.CodeChallengeMethod}
	}
	p.lastChallenge = req.CodeChallengeMethod
	p.requests[a.id] = a
	return a, nil
}

func (p *Provider) request(id string) (op.AuthRequest, error) {
	a, ok := p.requests[id]
	if !ok {
		return nil, errNotFound
	}
	if p.wrongNonce {
		c := *a
		c.nonce = "not-the-clients-nonce"
		return &c, nil
	}
	return a, nil
}

// AuthRequestByID implements op.Storage.
func (p *Provider) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.request(id)
}

// AuthRequestByCode implements op.Storage.
func (p *Provider) AuthRequestByCode(_ context.Context, code string) (op.AuthRequest, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.request(p.codes[code])
}

// SaveAuthCode implements op.Storage.
func (p *Provider) SaveAuthCode(_ context.Context, id, code string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.codes[code] = id
	return nil
}

// DeleteAuthRequest implements op.Storage.
func (p *Provider) DeleteAuthRequest(_ context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.requests, id)
	for c, rid := range p.codes {
		if rid == id {
			delete(p.codes, c)
		}
	}
	return nil
}

func (p *Provider) newAccess(req op.TokenRequest) *grant {
	g := &grant{id: randomID(), subject: req.GetSubject(), scopes: req.GetScopes(), expires: time.Now().Add(5 * time.Minute)}
	if a, ok := req.(interface{ GetClientID() string }); ok {
		g.clientID = a.GetClientID()
	}
	if a, ok := req.(interface{ GetAuthTime() time.Time }); ok {
		g.authTime = a.GetAuthTime()
	}
	p.access[g.id] = g
	return g
}

// CreateAccessToken implements op.Storage.
func (p *Provider) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.newAccess(req)
	return g.id, g.expires, nil
}

// CreateAccessAndRefreshTokens implements op.Storage; a refresh token is
// used once (rotated).
func (p *Provider) CreateAccessAndRefreshTokens(_ context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if current != "" {
		if _, ok := p.refresh[current]; !ok {
			return "", "", time.Time{}, op.ErrInvalidRefreshToken
		}
		delete(p.refresh, current)
	}
	g := p.newAccess(req)
	rt := randomID() + randomID()
	r := *g
	r.expires = time.Now().Add(time.Hour)
	p.refresh[rt] = &r
	return g.id, rt, g.expires, nil
}

func (p *Provider) userBySubject(subject string) *user {
	for _, u := range p.users {
		if u.subject == subject {
			return u
		}
	}
	return nil
}

// TokenRequestByRefreshToken implements op.Storage: a disabled user's
// refresh tokens are refused.
func (p *Provider) TokenRequestByRefreshToken(_ context.Context, rt string) (op.RefreshTokenRequest, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.refresh[rt]
	if !ok || time.Now().After(g.expires) {
		return nil, op.ErrInvalidRefreshToken
	}
	if u := p.userBySubject(g.subject); u == nil || u.disabled {
		return nil, op.ErrInvalidRefreshToken
	}
	c := *g
	return &refreshRequest{g: &c}, nil
}

// TerminateSession implements op.Storage: it counts the logout and
// revokes the user's refresh tokens.
func (p *Provider) TerminateSession(_ context.Context, userID, _ string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ended++
	for rt, g := range p.refresh {
		if g.subject == userID {
			delete(p.refresh, rt)
		}
	}
	return nil
}

// RevokeToken implements op.Storage.
func (p *Provider) RevokeToken(_ context.Context, token, _, _ string) *oidc.Error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.refresh, token)
	delete(p.access, token)
	return nil
}

// GetRefreshTokenInfo implements op.Storage.
func (p *Provider) GetRefreshTokenInfo(_ context.Context, _ string, token string) (string, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.refresh[token]
	if !ok {
		return "", "", op.ErrInvalidRefreshToken
	}
	return g.subject, g.id, nil
}

type signingKey struct {
	id  string
	key *ecdsa.PrivateKey
}

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.ES256 }
func (k signingKey) Key() any                                    { return k.key }
func (k signingKey) ID() string                                  { return k.id }

type publicKey struct {
	id  string
	key *ecdsa.PublicKey
}

func (k publicKey) ID() string                         { return k.id }
func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.ES256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return k.key }

// SigningKey implements op.Storage.
func (p *Provider) SigningKey(context.Context) (op.SigningKey, error) {
	return signingKey{id: p.keyID, key: p.key}, nil
}

// SignatureAlgorithms implements op.Storage.
func (p *Provider) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.ES256}, nil
}

// KeySet implements op.Storage.
func (p *Provider) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{id: p.keyID, key: &p.key.PublicKey}}, nil
}

// GetClientByClientID implements op.Storage.
func (p *Provider) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	if id != p.clientID {
		return nil, errNotFound
	}
	return &client{p: p}, nil
}

// AuthorizeClientIDSecret implements op.Storage.
func (p *Provider) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	if id != p.clientID || subtle.ConstantTimeCompare([]byte(secret), []byte(p.secret)) != 1 {
		return errors.New("ssotest: wrong client credentials")
	}
	return nil
}

// setUserinfo fills in the claims of a user for scopes: the user name
// with "profile", the groups with "groups".
func (p *Provider) setUserinfo(info *oidc.UserInfo, subject string, scopes []string) error {
	u := p.userBySubject(subject)
	if u == nil || u.disabled {
		return errors.New("ssotest: no such user, or disabled")
	}
	info.Subject = subject
	if slices.Contains(scopes, oidc.ScopeProfile) {
		info.PreferredUsername = u.name
	}
	if slices.Contains(scopes, "groups") {
		info.AppendClaims("groups", slices.Clone(u.groups))
	}
	return nil
}

// SetUserinfoFromScopes implements op.Storage (the ID token's claims).
func (p *Provider) SetUserinfoFromScopes(_ context.Context, info *oidc.UserInfo, userID, _ string, scopes []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.setUserinfo(info, userID, scopes)
}

// SetUserinfoFromToken implements op.Storage (the userinfo endpoint).
func (p *Provider) SetUserinfoFromToken(_ context.Context, info *oidc.UserInfo, tokenID, subject, _ string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.access[tokenID]
	if !ok || g.subject != subject || time.Now().After(g.expires) {
		return fmt.Errorf("ssotest: access token unknown or expired")
	}
	return p.setUserinfo(info, subject, g.scopes)
}

// SetIntrospectionFromToken implements op.Storage (unused).
func (p *Provider) SetIntrospectionFromToken(context.Context, *oidc.IntrospectionResponse, string, string, string) error {
	return errors.New("ssotest: introspection is not supported")
}

// GetPrivateClaimsFromScopes implements op.Storage.
func (p *Provider) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

// GetKeyByIDAndClientID implements op.Storage (unused: no JWT profile).
func (p *Provider) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("ssotest: JWT profile is not supported")
}

// ValidateJWTProfileScopes implements op.Storage.
func (p *Provider) ValidateJWTProfileScopes(_ context.Context, _ string, scopes []string) ([]string, error) {
	return scopes, nil
}

// Health implements op.Storage.
func (p *Provider) Health(context.Context) error { return nil }

var _ op.Storage = (*Provider)(nil)

// client is the provider's one confidential web client (op.Client).
type client struct{ p *Provider }

func (c *client) GetID() string                       { return c.p.clientID }
func (c *client) RedirectURIs() []string              { return c.p.redirects }
func (c *client) PostLogoutRedirectURIs() []string    { return c.p.postLogout }
func (c *client) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c *client) AuthMethod() oidc.AuthMethod         { return oidc.AuthMethodBasic }
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *client) LoginURL(id string) string            { return c.p.Issuer + "/login?authRequestID=" + id }
func (c *client) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeBearer }
func (c *client) IDTokenLifetime() time.Duration       { return 5 * time.Minute }
func (c *client) DevMode() bool                        { return false }
func (c *client) IsScopeAllowed(scope string) bool     { return scope == "groups" }
func (c *client) IDTokenUserinfoClaimsAssertion() bool { return false }
func (c *client) ClockSkew() time.Duration             { return 0 }
func (c *client) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken}
}
func (c *client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
