package console

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Page is one console page: GET Path renders Template with what Load
// returns, for operators whose role holds Perm.
//
// Template is html/template source that defines "content" (the page body)
// and may use the layout's helpers: {{template "csrf" $}} writes the CSRF
// field every form needs, $.Allowed "action-name" says whether to show an
// action's form, $.Can "permission" tests a permission, and the functions
// in funcs.go format times, IDs and states. Its data is a View whose Data
// field holds what Load returned.
type Page struct {
	// Name identifies the page (unique).
	Name string
	// Path is the URL path, e.g. "/campaigns" or "/campaigns/{id}" (a
	// net/http pattern without the method).
	Path string
	// Nav is the menu label; empty keeps the page out of the menu (detail
	// pages).
	Nav string
	// Title is the page's heading and window title; empty uses Nav.
	Title string
	// Perm is the permission needed to see the page; empty means any
	// operator.
	Perm auth.Permission
	// Template is the page body's html/template source (see above).
	Template string
	// Load returns the page's data. ErrNotFound answers 404; other errors
	// 500 (logged, not shown). Nil renders the template without data.
	Load func(r *http.Request, p auth.Principal) (any, error)
	// Actions are the page's forms.
	Actions []Action
	// Enabled, when set, hides the page (menu and URL) while it returns
	// false, e.g. when an optional subsystem is not configured.
	Enabled func() bool
}

// Action is a form that changes something through the JSON API.
//
// POST Path (a net/http pattern path; its wildcards are filled into API's)
// checks the session and its CSRF token, builds the JSON body with Body,
// and runs the API route API in-process with the browser's cookie and CSRF
// token. On success it redirects to Then with OK as the message, or, with
// Reveal set, shows what the API returned once (a new token's secret). On
// failure it shows the API's public problem detail with its status.
type Action struct {
	// Name identifies the action (unique); templates ask $.Allowed Name.
	Name string
	// Path is the console's form target, e.g. "/devices/{id}/revoke".
	Path string
	// API is the API route as registered, e.g.
	// "POST /api/v1/devices/{id}/revoke". The operator needs its
	// permission.
	API string
	// Body builds the API request's JSON body from the posted form; nil
	// sends {}. An error is shown to the operator (400).
	Body func(form url.Values) (any, error)
	// Query, when set, builds the API request's query string from the
	// posted form, for routes that take their arguments there (DELETE
	// /api/v1/blocks). An error is shown to the operator (400).
	Query func(form url.Values) (url.Values, error)
	// Wildcards, when set, names the API path's wildcards that come from
	// the posted form rather than the console's path (a registration
	// named in its form: "PUT /api/v1/workloads/{name}"). An error is
	// shown to the operator (400).
	Wildcards func(form url.Values) (map[string]string, error)
	// Then is where to go after success, with the path's wildcards filled
	// in ("/devices/{id}"); empty means the page the form was on.
	Then string
	// OK is the message shown after success.
	OK string
	// Reveal, when set, turns the API's answer into a page shown once
	// instead of redirecting.
	Reveal func(answer []byte) (Reveal, error)
	// Result is Reveal for answers read with the posted form (a bulk
	// action's report, which offers to continue where it stopped).
	Result func(answer []byte, form url.Values) (Reveal, error)
}

// Reveal is a page shown once after an action: a secret the API will
// never show again.
type Reveal struct {
	Heading string
	// Label and Secret: what the secret is and its value.
	Label  string
	Secret string
	// Facts are further name/value lines (ID, expiry, ...).
	Facts [][2]string
	// Note tells the operator what to do with it.
	Note string
	// Back is the link to continue with.
	Back string
	// Continue, when set, is a form that carries on where the action
	// stopped (the next batch of a bulk action).
	Continue *Continue
}

// Continue is a form on a Reveal page: posted to Action with Fields as
// hidden inputs (and the CSRF token), its button saying Label.
type Continue struct {
	Action string
	Fields [][2]string
	Label  string
	Note   string
}

// Card is a tile on the overview.
type Card struct {
	Title  string
	Value  string
	Detail string
	// Link makes the tile point to a page; empty for none.
	Link string
	// Tone colours it: "ok", "warn", "bad" or "" (neutral).
	Tone string
	// Done and Total, when Total > 0, draw a progress bar (a campaign).
	Done, Total int
}

// CardFunc supplies overview tiles for the operator; it returns none when
// the operator may not see them.
type CardFunc func(r *http.Request, p auth.Principal) ([]Card, error)

// Section is a part of the device page, shown after the built-in ones to
// operators whose role holds Perm.
type Section struct {
	// Name identifies the section (unique).
	Name string
	// Title is the section's heading.
	Title string
	// Perm is the permission needed to see it; empty means any operator.
	Perm auth.Permission
	// Template is html/template source defining "section"; its data is a
	// SectionView.
	Template string
	// Load returns the section's data for a device; ErrNotFound hides the
	// section.
	Load func(r *http.Request, p auth.Principal, d *inventory.Device) (any, error)
	// Actions are the section's forms.
	Actions []Action
}

// SectionView is what a section template receives.
type SectionView struct {
	View
	Device *inventory.Device
	Data   any
}

type page struct {
	Page
	tmpl    *template.Template
	navPath string
	enabled func() bool
}

type section struct {
	Section
	tmpl *template.Template
}

type action struct {
	Action
	method, apiPath string
	perm            auth.Permission
	enabled         bool // the API registered the route
}

func (c *Console) addPage(p Page) error {
	if p.Name == "" || !strings.HasPrefix(p.Path, "/") || p.Template == "" {
		return fmt.Errorf("%w: page %q needs a name, a path and a template", ErrConfig, p.Name)
	}
	t, err := c.layout.Clone()
	if err == nil {
		_, err = t.New(p.Name).Parse(p.Template)
	}
	if err != nil {
		return fmt.Errorf("console: page %s: %w", p.Name, err)
	}
	if t.Lookup("content") == nil {
		return fmt.Errorf("%w: page %s: its template defines no \"content\"", ErrConfig, p.Name)
	}
	for _, a := range p.Actions {
		if err := c.addAction(a); err != nil {
			return err
		}
	}
	pg := &page{Page: p, tmpl: t, enabled: p.Enabled}
	if p.Title == "" {
		pg.Title = p.Nav
	}
	pg.navPath = p.Path
	if p.Path == "/{$}" {
		pg.navPath = "/"
	}
	c.pages = append(c.pages, pg)
	c.mux.Handle("GET "+p.Path, c.pageHandler(pg))
	return nil
}

func (c *Console) addSection(s Section) error {
	if s.Name == "" || s.Template == "" || s.Load == nil {
		return fmt.Errorf("%w: section %q needs a name, a template and Load", ErrConfig, s.Name)
	}
	t, err := template.New(s.Name).Funcs(c.funcs()).Parse(s.Template)
	if err != nil {
		return fmt.Errorf("console: section %s: %w", s.Name, err)
	}
	if _, err := t.New("csrf").Parse(csrfField); err != nil {
		return fmt.Errorf("console: section %s: %w", s.Name, err)
	}
	if t.Lookup("section") == nil {
		return fmt.Errorf("%w: section %s: its template defines no \"section\"", ErrConfig, s.Name)
	}
	for _, a := range s.Actions {
		if err := c.addAction(a); err != nil {
			return err
		}
	}
	c.sections = append(c.sections, &section{Section: s, tmpl: t})
	return nil
}

// csrfField is the "csrf" template for sections (the layout has its own).
const csrfField = `<input type="hidden" name="csrf_token" value="{{.CSRF}}">`

func (c *Console) addAction(a Action) error {
	method, path, ok := strings.Cut(a.API, " ")
	if a.Name == "" || !strings.HasPrefix(a.Path, "/") || !ok || !strings.HasPrefix(path, "/") {
		return fmt.Errorf("%w: action %q needs a name, a path and an API route \"METHOD /path\"", ErrConfig, a.Name)
	}
	if _, dup := c.actions[a.Name]; dup {
		return fmt.Errorf("%w: two actions named %q", ErrConfig, a.Name)
	}
	perm, enabled := c.perms[a.API]
	if !enabled {
		c.log.Info("console: action hidden: the API has no such route", "action", a.Name, "route", a.API)
	}
	act := &action{Action: a, method: method, apiPath: path, perm: perm, enabled: enabled}
	c.actions[a.Name] = act
	c.mux.Handle("POST "+a.Path, c.actionHandler(act))
	return nil
}

// pageHandler serves GET for a page.
func (c *Console) pageHandler(pg *page) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if pg.enabled != nil && !pg.enabled() {
			c.notFound(w, r) // as if the console had no such page
			return
		}
		p, ok := c.authenticate(w, r)
		if !ok {
			return
		}
		if pg.Perm != "" && !p.Can(pg.Perm) {
			c.fail(w, r, &p, http.StatusForbidden, "Not allowed",
				fmt.Sprintf("This page needs the permission %s, which role %s does not grant.", pg.Perm, p.Role))
			return
		}
		v := c.view(r, p, pg.Title)
		if pg.Load != nil {
			data, err := pg.Load(r, p)
			if errors.Is(err, ErrNotFound) {
				c.fail(w, r, &p, http.StatusNotFound, "Not found", "Nothing here by that name.")
				return
			}
			var bad badRequest
			if errors.As(err, &bad) {
				c.fail(w, r, &p, http.StatusBadRequest, "Bad request", bad.msg)
				return
			}
			if err != nil {
				c.log.Error("console: loading a page failed", "page", pg.Name, "err", err)
				c.fail(w, r, &p, http.StatusInternalServerError, "Server error", "The page's data could not be read; the server log says why.")
				return
			}
			v.Data = data
			if t, ok := data.(titled); ok && t.PageTitle() != "" {
				v.Title = t.PageTitle()
			}
		}
		c.render(w, http.StatusOK, pg.tmpl, v)
	})
}

// titled is page data that names its page (a device page: the device).
type titled interface{ PageTitle() string }

// badRequest is a Load error shown to the operator as a 400.
type badRequest struct{ msg string }

func (b badRequest) Error() string { return "console: bad request: " + b.msg }

// renderSections renders the device page's sections the operator may see.
func (c *Console) renderSections(r *http.Request, v View, d *inventory.Device) []renderedSection {
	var out []renderedSection
	for _, s := range c.sections {
		if s.Perm != "" && !v.p.Can(s.Perm) {
			continue
		}
		data, err := s.Load(r, v.p, d)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		rs := renderedSection{Name: s.Name, Title: s.Title}
		if err != nil {
			c.log.Error("console: loading a device section failed", "section", s.Name, "device_id", d.ID, "err", err)
			rs.Error = "This section could not be read; the server log says why."
			out = append(out, rs)
			continue
		}
		var buf bytes.Buffer
		if err := s.tmpl.ExecuteTemplate(&buf, "section", SectionView{View: v, Device: d, Data: data}); err != nil {
			c.log.Error("console: rendering a device section failed", "section", s.Name, "err", err)
			rs.Error = "This section could not be shown; the server log says why."
		} else {
			rs.HTML = template.HTML(buf.String()) // produced by html/template: escaped in context
		}
		out = append(out, rs)
	}
	return out
}

type renderedSection struct {
	Name, Title string
	HTML        template.HTML
	Error       string
}
