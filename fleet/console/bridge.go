package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
)

// maxForm bounds a posted form.
const maxForm = 64 << 10

// recorder keeps what an in-process handler answered.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

// detail returns the problem+json detail of a refusal (or the "error" of
// an answer that reports one, such as a failed audit verification), or a
// generic text.
func (r *recorder) detail() string {
	var p struct {
		Detail string `json:"detail"`
		Title  string `json:"title"`
		Error  string `json:"error"`
	}
	if json.Unmarshal(r.body.Bytes(), &p) == nil {
		if p.Detail != "" {
			return p.Detail
		}
		if p.Error != "" {
			return p.Error
		}
		if p.Title != "" {
			return p.Title
		}
	}
	return http.StatusText(r.status)
}

// fill replaces a pattern's {name} wildcards with r's path values,
// escaped.
func fill(pattern string, r *http.Request) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(pattern, '{')
		j := strings.IndexByte(pattern, '}')
		if i < 0 || j < i {
			b.WriteString(pattern)
			return b.String()
		}
		b.WriteString(pattern[:i])
		name := strings.TrimSuffix(pattern[i+1:j], "...")
		b.WriteString(url.PathEscape(r.PathValue(name)))
		pattern = pattern[j+1:]
	}
}

// forward makes the in-process API request for a console request: same
// context, host, client address and TLS state, the browser's cookies and
// fetch metadata, and the form's CSRF token as the header the API wants.
func forward(r *http.Request, method, path string, body []byte) *http.Request {
	req, _ := http.NewRequestWithContext(r.Context(), method, path, bytes.NewReader(body))
	req.Host, req.RemoteAddr, req.TLS = r.Host, r.RemoteAddr, r.TLS
	for _, k := range []string{"Cookie", "Origin", "Sec-Fetch-Site", "User-Agent"} {
		for _, v := range r.Header.Values(k) {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Content-Type", "application/json")
	if tok := r.PostForm.Get(auth.CSRFField); tok != "" {
		req.Header.Set(auth.CSRFHeader, tok)
	}
	return req
}

// actionHandler serves POST for an action: see Action.
func (c *Console) actionHandler(a *action) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			c.fail(w, r, nil, http.StatusBadRequest, "Bad request", "The form could not be read.")
			return
		}
		p, ok := c.authenticate(w, r) // checks the CSRF token and origin
		if !ok {
			return
		}
		back := parentPath(r.URL.Path) // the page the form is on
		if a.Then != "" {
			back = fill(a.Then, r)
		}
		if !a.enabled {
			c.failBack(w, r, &p, http.StatusNotFound, "Not available", "This server does not offer that action.", back)
			return
		}
		var body any = struct{}{}
		if a.Body != nil {
			b, err := a.Body(r.PostForm)
			if err != nil {
				c.failBack(w, r, &p, http.StatusBadRequest, "Check the form", strings.TrimPrefix(err.Error(), "console: "), back)
				return
			}
			body = b
		}
		js, err := json.Marshal(body)
		if err != nil {
			c.log.Error("console: encoding an API request failed", "action", a.Name, "err", err)
			c.failBack(w, r, &p, http.StatusInternalServerError, "Server error", "The request could not be encoded.", back)
			return
		}
		if a.Wildcards != nil {
			vals, err := a.Wildcards(r.PostForm)
			if err != nil {
				c.failBack(w, r, &p, http.StatusBadRequest, "Check the form", strings.TrimPrefix(err.Error(), "console: "), back)
				return
			}
			for k, v := range vals {
				r.SetPathValue(k, v)
			}
		}
		target := fill(a.apiPath, r)
		if a.Query != nil {
			q, err := a.Query(r.PostForm)
			if err != nil {
				c.failBack(w, r, &p, http.StatusBadRequest, "Check the form", strings.TrimPrefix(err.Error(), "console: "), back)
				return
			}
			target += "?" + q.Encode()
		}
		req := forward(r, a.method, target, js)
		if j := strings.Join(strings.Fields(r.PostForm.Get("justification")), " "); j != "" {
			req.Header.Set(api.JustificationHeader, j) // dangerous routes file it with their approval request
		}
		rec := newRecorder()
		c.cfg.API.ServeHTTP(rec, req)
		if rec.status/100 != 2 {
			c.log.Info("console: action refused by the API", "action", a.Name, "user", p.User, "status", rec.status)
			c.failBack(w, r, &p, rec.status, failHeading(rec.status), rec.detail(), back)
			return
		}
		if rec.status == http.StatusAccepted {
			var pending struct {
				Approval *struct {
					ID string `json:"id"`
				} `json:"approval"`
				Message string `json:"message"`
			}
			if json.Unmarshal(rec.body.Bytes(), &pending) == nil && pending.Approval != nil {
				c.log.Info("console: action filed for approval", "action", a.Name, "user", p.User, "approval", pending.Approval.ID)
				v := c.view(r, p, "Waiting for approval")
				v.Data = Reveal{Heading: "Waiting for a second person's approval", Back: back,
					Note:  "This change needs another operator's approval before it takes effect: " + pending.Message,
					Facts: [][2]string{{"Approval request", pending.Approval.ID}}}
				c.render(w, http.StatusAccepted, c.revealTemplate(), v)
				return
			}
		}
		c.log.Info("console: action done", "action", a.Name, "user", p.User, "path", r.URL.Path)
		for _, ck := range rec.header.Values("Set-Cookie") {
			w.Header().Add("Set-Cookie", ck) // a session the API rotated (a password change)
		}
		if a.Reveal != nil || a.Result != nil {
			var rv Reveal
			var err error
			if a.Result != nil {
				rv, err = a.Result(rec.body.Bytes(), r.PostForm)
			} else {
				rv, err = a.Reveal(rec.body.Bytes())
			}
			if err != nil {
				c.log.Error("console: reading the API's answer failed", "action", a.Name, "err", err)
				c.failBack(w, r, &p, http.StatusInternalServerError, "Server error", "The change was made, but its answer could not be shown.", back)
				return
			}
			if rv.Back == "" {
				rv.Back = back
			}
			v := c.view(r, p, rv.Heading)
			v.Data = rv
			c.render(w, http.StatusOK, c.revealTemplate(), v)
			return
		}
		http.Redirect(w, r, back+"?ok="+url.QueryEscape(a.Name), http.StatusSeeOther)
	})
}

func failHeading(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return "Check the form"
	case http.StatusUnauthorized:
		return "Log in again"
	case http.StatusForbidden:
		return "Not allowed"
	case http.StatusNotFound:
		return "Not found"
	case http.StatusConflict:
		return "Not possible now"
	case http.StatusTooManyRequests:
		return "Too many requests"
	case http.StatusNotImplemented:
		return "Not available"
	}
	return "The action failed"
}

// loginData is the login page's data.
type loginData struct {
	Next    string
	User    string
	Error   string
	LoggedO bool
	// SSO is where single sign-on starts (empty: none); NoPassword hides
	// the password form when password logins are turned off.
	SSO        string
	NoPassword bool
}

// withLogin fills in how operators may log in.
func (c *Console) withLogin(d loginData) loginData {
	d.SSO, d.NoPassword = c.cfg.Auth.SSOLoginPath(), c.cfg.Auth.PasswordLoginOff()
	if d.SSO != "" {
		d.SSO += "?" + url.Values{"next": {d.Next}}.Encode()
	}
	return d
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, err := c.cfg.Auth.Authenticate(r); err == nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	v := View{Title: "Log in", c: c, Data: c.withLogin(loginData{Next: safeNext(r.URL.Query().Get("next")), LoggedO: r.URL.Query().Has("bye")})}
	c.render(w, http.StatusOK, c.loginTemplate(), v)
}

// login runs the auth service's login handler (throttling, lockout, login
// CSRF checks) on the posted form and turns its answer into a redirect or
// the login page with the reason.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, nil, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	if c.cfg.Auth.PasswordLoginOff() {
		d := c.withLogin(loginData{Next: next, Error: "Password login is turned off: log in with single sign-on."})
		c.render(w, http.StatusForbidden, c.loginTemplate(), View{Title: "Log in", c: c, Data: d})
		return
	}
	rec := newRecorder()
	c.cfg.Auth.LoginHandler().ServeHTTP(rec, r)
	if rec.status == http.StatusOK {
		for _, ck := range rec.header.Values("Set-Cookie") {
			w.Header().Add("Set-Cookie", ck)
		}
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	d := loginData{Next: next, User: r.PostForm.Get("user")}
	switch rec.status {
	case http.StatusUnauthorized:
		d.Error = "The user name or password is wrong."
	case http.StatusBadRequest:
		d.Error = "Enter a user name and a password."
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", rec.header.Get("Retry-After"))
		d.Error = throttledMessage(rec.header.Get("Retry-After"))
	case http.StatusForbidden:
		d.Error = "Login refused: the form came from another site."
	default:
		d.Error = "The server could not log you in; the server log says why."
	}
	c.render(w, rec.status, c.loginTemplate(), View{Title: "Log in", c: c, Data: c.withLogin(d)})
}

// throttledMessage is the login page's one sentence for a throttled
// login, from the auth service's Retry-After (whole seconds).
func throttledMessage(retryAfter string) string {
	secs, err := strconv.Atoi(retryAfter)
	switch {
	case err != nil || secs < 1:
		return "Too many failed logins: try again later."
	case secs == 1:
		return "Too many failed logins: try again in 1 second."
	case secs < 120:
		return fmt.Sprintf("Too many failed logins: try again in %d seconds.", secs)
	}
	return fmt.Sprintf("Too many failed logins: try again in %d minutes.", (secs+59)/60)
}

// logout ends the session (the form carries its CSRF token) and returns to
// the login page.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, nil, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return
	}
	rec := newRecorder()
	c.cfg.Auth.LogoutHandler().ServeHTTP(rec, r)
	switch {
	case rec.status == http.StatusNoContent || rec.status == http.StatusUnauthorized:
		http.SetCookie(w, c.cfg.Auth.ClearCookie())
		http.Redirect(w, r, "/login?bye=1", http.StatusSeeOther)
	case rec.status == http.StatusForbidden:
		c.fail(w, r, nil, http.StatusForbidden, "Request refused",
			"The form did not carry this session's CSRF token or came from another site. Reload the page and try again.")
	default:
		c.fail(w, r, nil, rec.status, "Logout failed", rec.detail())
	}
}

// errUser is an error in the form, shown to the operator.
func errUser(msg string) error { return errors.New(msg) }
