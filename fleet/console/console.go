package console

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
)

// Inventory is what the console reads from the device inventory.
// *inventory.Store implements it.
type Inventory interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	DeviceByEK(ctx context.Context, fingerprint string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
	Events(ctx context.Context, deviceID string, limit int) ([]inventory.Event, error)
	// Query and Count serve the device list from the inventory's indexes.
	Query(ctx context.Context, q inventory.Query) (inventory.Page, error)
	Count(ctx context.Context, where map[inventory.Field]string) (int, error)
}

// Attestations reads a device's verdicts, newest first, a page at a time
// (older than a sequence number; 0 for the newest). *attest.Service
// implements it.
type Attestations interface {
	HistoryBefore(ctx context.Context, deviceID string, before uint64, limit int) ([]attest.Record, error)
}

// Policies reads the reference policies. *policy.Store implements it.
type Policies interface {
	List(ctx context.Context) ([]policy.Policy, error)
	Get(ctx context.Context, id string) (policy.Policy, error)
	History(ctx context.Context, id string) ([]policy.Policy, error)
}

// DeviceSecrets reads which secrets a device received (names and versions,
// never values). api.Secrets implementations provide it.
type DeviceSecrets interface {
	DeviceSecrets(deviceID string) ([]api.DeviceSecret, error)
}

// CA describes the fleet CA's generations. *ca.CA implements it.
type CA interface {
	Generations() []ca.Generation
}

// Config configures New.
type Config struct {
	// Auth authenticates operators. Required.
	Auth *auth.Service
	// API is the JSON API's handler (api.New). Required: every Action runs
	// through it, buttons are shown by its routes' permissions
	// (api.Routes), and requests for paths the console does not serve are
	// handed to it.
	API http.Handler
	// Inventory is the device inventory. Required.
	Inventory Inventory
	// Attestations shows attestation histories; nil hides them.
	Attestations Attestations
	// Policies serves the policies pages; nil hides them.
	Policies Policies
	// Secrets shows the secrets delivered to a device; nil hides them.
	Secrets DeviceSecrets
	// CA serves the CA page; nil hides it.
	CA CA
	// Connected reports live broker sessions; nil trusts the inventory's
	// Connected flag.
	Connected func(deviceID string) bool
	// Pages are further pages (campaigns, alerts, approvals, audit, ...),
	// listed in the menu after the built-in ones.
	Pages []Page
	// Cards add tiles to the overview (open alerts, campaign progress).
	Cards []CardFunc
	// DeviceSections add sections to the device page (telemetry, firmware
	// history, risk, audit trail).
	DeviceSections []Section
	// SummaryMaxAge is how old the overview's fleet summary (one pass over
	// the inventory) may be before a page view computes it again. Zero
	// means 30 seconds.
	SummaryMaxAge time.Duration
	// ScanBudget bounds how many inventory records one device search may
	// examine for filters the inventory cannot apply itself (owner, group,
	// free text); past it the page offers to continue. Zero means 10000
	// (about 0.1 s of decoding on a small server).
	ScanBudget int
	// Logger receives refused and failed requests (user names, never
	// passwords, cookies or CSRF tokens). Nil discards them.
	Logger *slog.Logger
	// Now is the clock for relative times and the summary. Nil means
	// time.Now.
	Now func() time.Time
}

// Errors.
var (
	// ErrConfig: a required Config field is missing or a page is malformed.
	ErrConfig = errors.New("console: invalid configuration")
	// ErrNotFound: a Load or Section function's way of saying that what the
	// URL names does not exist; the console answers 404.
	ErrNotFound = errors.New("console: not found")
)

//go:embed templates
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console serves the operators' web console. Create it with New.
type Console struct {
	cfg      Config
	log      *slog.Logger
	mux      *http.ServeMux
	layout   *template.Template
	pages    []*page
	actions  map[string]*action
	sections []*section
	perms    map[string]auth.Permission // API route pattern -> permission
	static   http.Handler
	fixed    struct{ error, login, reveal, notFound *template.Template }

	summaryMu sync.Mutex
	summary   *Summary

	verdicts verdictCounter
}

// New builds the console: it parses every template and checks that each
// Action names an API route.
func New(cfg Config) (*Console, error) {
	if cfg.Auth == nil || cfg.API == nil || cfg.Inventory == nil {
		return nil, fmt.Errorf("%w: Auth, API and Inventory are required", ErrConfig)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SummaryMaxAge <= 0 {
		cfg.SummaryMaxAge = 30 * time.Second
	}
	if cfg.ScanBudget <= 0 {
		cfg.ScanBudget = 10000
	}
	c := &Console{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), actions: map[string]*action{}, perms: map[string]auth.Permission{}}
	for _, r := range api.Routes(cfg.API) {
		c.perms[r.Pattern] = r.Perm
	}
	base, err := template.New("layout").Funcs(c.funcs()).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("console: layout: %w", err)
	}
	c.layout = base
	for name, dst := range map[string]**template.Template{"error": &c.fixed.error, "login": &c.fixed.login, "reveal": &c.fixed.reveal, "notfound": &c.fixed.notFound} {
		t, err := base.Clone()
		if err == nil {
			_, err = t.New(name).Parse(source(name + ".html"))
		}
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		*dst = t
	}
	sub, _ := fs.Sub(staticFS, "static")
	c.static = http.StripPrefix("/static/", http.FileServerFS(sub))

	var errs []error
	for _, p := range append(c.builtinPages(), cfg.Pages...) {
		if err := c.addPage(p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range append(c.builtinSections(), cfg.DeviceSections...) {
		if err := c.addSection(s); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c.mux.HandleFunc("GET /login", c.loginPage)
	c.mux.HandleFunc("POST /login", c.login)
	c.mux.HandleFunc("POST /logout", c.logout)
	c.mux.Handle("GET /static/", c.static)
	c.mux.Handle("/", cfg.API)
	return c, nil
}

// ServeHTTP serves the console's paths and hands the API's (everything
// under /api/, and the paths the API serves itself, such as /healthz) to
// Config.API; any other path gets the console's 404 page.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := c.mux.Handler(r); pattern == "/" {
		if strings.HasPrefix(r.URL.Path, "/api/") || api.Handles(c.cfg.API, r) {
			c.cfg.API.ServeHTTP(w, r)
			return
		}
		setSecurityHeaders(w.Header())
		c.notFound(w, r)
		return
	}
	setSecurityHeaders(w.Header())
	r = sameOriginForm(r)
	c.mux.ServeHTTP(w, r) // sets the path values
}

// notFoundData is the 404 page's data.
type notFoundData struct {
	Path  string
	Links []navItem // the operator's menu; none without a session
	Login string    // the login link, back to this path
}

// notFound answers a path the console does not serve with its 404 page:
// with the menu for an operator with a session, with a login link for
// anyone else (nothing else is revealed to them).
func (c *Console) notFound(w http.ResponseWriter, r *http.Request) {
	d := notFoundData{Path: r.URL.Path}
	v := View{Title: "Page not found", c: c}
	if p, err := c.cfg.Auth.Authenticate(r); err == nil {
		v = c.view(r, p, "Page not found")
		d.Links = v.Nav
	} else {
		d.Login = "/login?next=" + url.QueryEscape(safeNext(r.URL.RequestURI()))
	}
	v.Data = d
	c.render(w, http.StatusNotFound, c.fixed.notFound, v)
}

// sameOriginForm drops "Origin: null" from a request the browser itself
// marks same-origin.
//
// Under "Referrer-Policy: no-referrer" browsers send "Origin: null" with
// every form post, even to the page's own origin, and the auth service
// refuses an Origin that is not the console's. Sec-Fetch-Site is set by
// the browser alone (pages cannot forge it), so "same-origin" there is the
// browser vouching for what the Origin would have said; without it, or
// with any other value, the request is passed on unchanged and refused.
// The session's CSRF token is checked either way.
func sameOriginForm(r *http.Request) *http.Request {
	if r.Header.Get("Origin") != "null" || r.Header.Get("Sec-Fetch-Site") != "same-origin" {
		return r
	}
	r2 := *r
	r2.Header = r.Header.Clone()
	r2.Header.Del("Origin")
	return &r2
}

// ContentSecurityPolicy is the policy every console response carries.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("Strict-Transport-Security", "max-age=31536000")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// navItem is a menu entry.
type navItem struct {
	Label  string
	Path   string
	Active bool
}

// View is what every page template receives: the page's Data plus the
// operator, the CSRF token for forms, the menu and a message from the last
// action.
type View struct {
	Title string
	User  string
	Role  auth.Role
	// CSRF is the session's CSRF token: every form carries it as
	// csrf_token (the "csrf" template writes the field).
	CSRF  string
	Nav   []navItem
	Flash string
	Data  any

	p auth.Principal
	c *Console
}

// Can reports whether the operator holds a permission, by name
// ("devices.write").
func (v View) Can(perm string) bool { return v.p.Can(auth.Permission(perm)) }

// External reports whether the operator's account is managed by an
// identity provider (single sign-on): it has no password here.
func (v View) External() bool { return v.p.External != "" }

// Allowed reports whether the operator may run the named Action: its API
// route exists and the role holds the route's permission.
func (v View) Allowed(name string) bool {
	a, ok := v.c.actions[name]
	return ok && a.enabled && v.p.Can(a.perm)
}

// view starts a View for the principal.
func (c *Console) view(r *http.Request, p auth.Principal, title string) View {
	v := View{Title: title, User: p.User, Role: p.Role, CSRF: p.CSRFToken, p: p, c: c}
	for _, pg := range c.pages {
		if pg.Nav == "" || (pg.Perm != "" && !p.Can(pg.Perm)) || (pg.enabled != nil && !pg.enabled()) {
			continue
		}
		active := r.URL.Path == pg.navPath || (pg.navPath != "/" && strings.HasPrefix(r.URL.Path, pg.navPath+"/"))
		v.Nav = append(v.Nav, navItem{Label: pg.Nav, Path: pg.navPath, Active: active})
	}
	if name := r.URL.Query().Get("ok"); name != "" {
		if a, ok := c.actions[name]; ok {
			v.Flash = a.OK
		}
	}
	return v
}

// render executes t into a buffer first, so that a template error becomes
// a clean 500 rather than half a page.
func (c *Console) render(w http.ResponseWriter, status int, t *template.Template, v View) {
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		c.log.Error("console: rendering a page failed", "page", v.Title, "err", err)
		c.plainError(w, http.StatusInternalServerError, "The page could not be shown; the server log says why.")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// plainError answers without the layout (used when rendering itself
// failed).
func (c *Console) plainError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, msg)
}

// errorData is the error page's data.
type errorData struct {
	Status  int
	Heading string
	Detail  string
	Back    string
}

// fail renders the error page, linking back to the overview (or, for a
// post, the page the form was probably on). p may be nil when nobody is
// logged in.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, p *auth.Principal, status int, heading, detail string) {
	back := "/"
	if r.Method != http.MethodGet {
		back = parentPath(r.URL.Path)
	}
	c.failBack(w, r, p, status, heading, detail, back)
}

// failBack renders the error page with a link back to back.
func (c *Console) failBack(w http.ResponseWriter, r *http.Request, p *auth.Principal, status int, heading, detail, back string) {
	var v View
	if p != nil {
		v = c.view(r, *p, heading)
	} else {
		v = View{Title: heading, c: c}
	}
	v.Data = errorData{Status: status, Heading: heading, Detail: detail, Back: back}
	c.render(w, status, c.errorTemplate(), v)
}

// parentPath is where an action's error page links back to: the page the
// form was on (the action path without its last segment, and for
// /devices/{id}/revoke that is the device).
func parentPath(p string) string {
	p = strings.TrimSuffix(p, "/")
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "/"
}

// authenticate resolves the request's session. When there is none (or it
// ended) it sends the browser to the login page and reports false; other
// failures are answered with an error page.
func (c *Console) authenticate(w http.ResponseWriter, r *http.Request) (auth.Principal, bool) {
	p, err := c.cfg.Auth.Authenticate(r)
	switch {
	case err == nil:
		return p, true
	case errors.Is(err, auth.ErrNoCredentials), errors.Is(err, auth.ErrSessionExpired), errors.Is(err, auth.ErrSessionInvalid):
		if !errors.Is(err, auth.ErrNoCredentials) {
			http.SetCookie(w, c.cfg.Auth.ClearCookie())
		}
		next := "/"
		if r.Method == http.MethodGet {
			next = r.URL.RequestURI()
		}
		http.Redirect(w, r, "/login?next="+url.QueryEscape(next), http.StatusSeeOther)
	case errors.Is(err, auth.ErrCSRF):
		c.log.Warn("console: cross-site request refused", "method", r.Method, "path", r.URL.Path, "err", err)
		c.fail(w, r, nil, http.StatusForbidden, "Request refused",
			"The form did not carry this session's CSRF token or came from another site. Reload the page and try again.")
	case errors.Is(err, auth.ErrTokenInvalid), errors.Is(err, auth.ErrTokenExpired):
		c.fail(w, r, nil, http.StatusUnauthorized, "Log in to use the console",
			"API tokens are for the JSON API; the console needs a login.")
	default:
		c.log.Error("console: authentication failed", "err", err)
		c.fail(w, r, nil, http.StatusInternalServerError, "Server error", "The server could not check the session; the server log says why.")
	}
	return auth.Principal{}, false
}

// safeNext keeps a post-login redirect on this site: an absolute path, not
// "//host" or "/\host".
func safeNext(s string) string {
	if s == "" || s[0] != '/' || strings.HasPrefix(s, "//") || strings.HasPrefix(s, "/\\") || strings.ContainsAny(s, "\r\n") {
		return "/"
	}
	if u, err := url.Parse(s); err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return s
}
