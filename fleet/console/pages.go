package console

import (
	"context"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
)

// source returns an embedded template's text.
func source(name string) string {
	b, err := templateFS.ReadFile("templates/" + name)
	if err != nil {
		return "" // addPage reports the page as malformed
	}
	return string(b)
}

// builtinPages are the console's own pages, made like any other Page.
func (c *Console) builtinPages() []Page {
	return []Page{
		{Name: "overview", Path: "/{$}", Nav: "Overview", Perm: auth.PermDevicesRead, Template: source("overview.html"), Load: c.loadOverview},
		{Name: "devices", Path: "/devices", Nav: "Devices", Perm: auth.PermDevicesRead, Template: source("devices.html"),
			Load: func(r *http.Request, _ auth.Principal) (any, error) { return c.loadDevices(r) }, Actions: bulkActions()},
		{Name: "device", Path: "/devices/{id}", Perm: auth.PermDevicesRead, Template: source("device.html"), Load: c.loadDevice,
			Actions: deviceActions()},
		{Name: "enrollment", Path: "/enrollment", Nav: "Enrollment", Perm: auth.PermDevicesRead, Template: source("enrollment.html"),
			Load: c.loadEnrollment, Actions: enrollmentActions()},
		{Name: "policies", Path: "/policies", Nav: "Policies", Perm: auth.PermPoliciesRead, Template: source("policies.html"),
			Load: c.loadPolicies, Enabled: func() bool { return c.cfg.Policies != nil }},
		{Name: "policy", Path: "/policies/{id}", Perm: auth.PermPoliciesRead, Template: source("policy.html"),
			Load: c.loadPolicy, Enabled: func() bool { return c.cfg.Policies != nil }},
		{Name: "ca", Path: "/ca", Nav: "CA", Title: "Certificate authority", Perm: auth.PermDevicesRead, Template: source("ca.html"),
			Load: c.loadCA, Actions: caActions(), Enabled: func() bool { return c.cfg.CA != nil }},
		{Name: "settings", Path: "/settings", Nav: "Settings", Title: "Users and API tokens", Perm: auth.PermDevicesRead,
			Template: source("settings.html"), Load: c.loadSettings, Actions: settingsActions()},
	}
}

// builtinSections are the device page's own extra sections (none yet: its
// built-in parts are in its template).
func (c *Console) builtinSections() []Section { return nil }

func (c *Console) errorTemplate() *template.Template  { return c.fixed.error }
func (c *Console) loginTemplate() *template.Template  { return c.fixed.login }
func (c *Console) revealTemplate() *template.Template { return c.fixed.reveal }

// Overview is the overview page's data.
type Overview struct {
	Summary *Summary
	Chart   Chart
	Cards   []Card
	// States and TrustPaths are the summary's counts in display order.
	States     []Count
	TrustPaths []Count
}

// Count is a labelled number with a link to the devices it counts.
type Count struct {
	Label string
	N     int
	Tone  string
	Link  string
}

func (c *Console) loadOverview(r *http.Request, p auth.Principal) (any, error) {
	s, err := c.fleetSummary()
	if err != nil {
		return nil, err
	}
	out := Overview{Summary: s, Chart: verdictChart(c.lastHours(c.cfg.Now()))}
	for _, st := range []inventory.State{inventory.StateActive, inventory.StatePending, inventory.StateQuarantined, inventory.StateDecommissioned} {
		out.States = append(out.States, Count{Label: string(st), N: s.States[st], Tone: tone(string(st)), Link: "/devices?state=" + string(st)})
	}
	paths := make([]string, 0, len(s.TrustPaths))
	for k := range s.TrustPaths {
		paths = append(paths, k)
	}
	slices.Sort(paths)
	for _, k := range paths {
		out.TrustPaths = append(out.TrustPaths, Count{Label: k, N: s.TrustPaths[k]})
	}
	for _, f := range c.cfg.Cards {
		cards, err := f(r, p)
		if err != nil {
			c.log.Error("console: an overview card failed", "err", err)
			out.Cards = append(out.Cards, Card{Title: "Unavailable", Value: "—", Detail: "a tile could not be read; the server log says why", Tone: "warn"})
			continue
		}
		out.Cards = append(out.Cards, cards...)
	}
	return out, nil
}

// Enrollment is the enrollment page's data.
type Enrollment struct {
	Pending []inventory.Device
	// More says there are more pending devices than listed.
	More bool
	// Tokens are the issued enrollment tokens, newest first, without
	// their secrets; nil when the inventory cannot list them.
	Tokens []api.EnrollmentToken
	// TokenStatus is the list's filter ("" for all), TokenStatuses the
	// choices, TokensNext the link to the next page and TokensPaged says
	// the list is not on its first page.
	TokenStatus   string
	TokenStatuses []string
	TokensNext    string
	TokensPaged   bool
	Listed        bool // the inventory lists tokens
}

// TokenLister lists issued enrollment tokens. *inventory.Store
// implements it; an Inventory that does not leaves the list off the
// enrollment page.
type TokenLister interface {
	Tokens(ctx context.Context, f inventory.TokenFilter) ([]inventory.Token, string, error)
}

var _ TokenLister = (*inventory.Store)(nil)

const (
	pendingShown = 100
	tokensShown  = 50
)

func (c *Console) loadEnrollment(r *http.Request, _ auth.Principal) (any, error) {
	devs, next, err := c.cfg.Inventory.ListDevices(r.Context(), inventory.Filter{State: inventory.StatePending, Limit: pendingShown})
	if err != nil {
		return nil, err
	}
	out := Enrollment{Pending: devs, More: next != "",
		TokenStatuses: []string{string(inventory.TokenUnused), string(inventory.TokenUsed), string(inventory.TokenExpired)}}
	tl, ok := c.cfg.Inventory.(TokenLister)
	if !ok {
		return out, nil
	}
	q := r.URL.Query()
	out.Listed, out.TokenStatus = true, q.Get("tokens")
	if out.TokenStatus != "" && !slices.Contains(out.TokenStatuses, out.TokenStatus) {
		return nil, badRequestf("tokens must be unused, used or expired")
	}
	after := q.Get("after")
	if !isCursor(after) {
		return nil, badRequestf("after must be a cursor from this page's links")
	}
	now := c.cfg.Now()
	toks, next, err := tl.Tokens(r.Context(), inventory.TokenFilter{Status: inventory.TokenStatus(out.TokenStatus), After: after, Limit: tokensShown, Now: now})
	if err != nil {
		return nil, err
	}
	for i := range toks {
		out.Tokens = append(out.Tokens, api.TokenView(&toks[i], now))
	}
	out.TokensPaged = after != ""
	if next != "" {
		out.TokensNext = pageLink("/enrollment", "tokens", out.TokenStatus, "after", next)
	}
	return out, nil
}

func enrollmentActions() []Action {
	return []Action{
		{Name: "enrollment.token", Path: "/enrollment/tokens", API: "POST /api/v1/enrollment-tokens",
			Body: func(form url.Values) (any, error) {
				ttl := form.Get("ttl")
				if ttl == "" {
					ttl = "24h"
				}
				return map[string]string{"model": strings.TrimSpace(form.Get("model")), "group": strings.TrimSpace(form.Get("group")),
					"owner": strings.TrimSpace(form.Get("owner")), "ttl": ttl}, nil
			},
			Reveal: func(answer []byte) (Reveal, error) {
				var t api.TokenResponse
				if err := json.Unmarshal(answer, &t); err != nil {
					return Reveal{}, err
				}
				facts := [][2]string{{"Token ID", t.ID}, {"Expires", when(t.Expires)}}
				if t.Model != "" {
					facts = append(facts, [2]string{"Model the device gets", t.Model})
				}
				if t.Group != "" {
					facts = append(facts, [2]string{"Group the device gets", t.Group})
				}
				if t.Owner != "" {
					facts = append(facts, [2]string{"Owner of devices", t.Owner})
				}
				return Reveal{Heading: "Enrollment token created", Label: "Token", Secret: t.Token, Facts: facts, Back: "/enrollment",
					Note: "Copy it now: it is shown only once. Give it to one device (sigild's token setting); it is used up by that device's enrollment."}, nil
			}},
		{Name: "enrollment.approve", Path: "/enrollment/approve/{id}", API: "POST /api/v1/devices/{id}/approve",
			Then: "/enrollment", OK: "Approved: the device receives its certificate when it asks again."},
	}
}

// PolicyList is the policies page's data.
type PolicyList struct{ Policies []policy.Policy }

func (c *Console) loadPolicies(r *http.Request, _ auth.Principal) (any, error) {
	ps, err := c.cfg.Policies.List(r.Context())
	if err != nil {
		return nil, err
	}
	return PolicyList{Policies: ps}, nil
}

// PolicyPage is a policy's page: its current version and its history.
type PolicyPage struct {
	Policy   policy.Policy
	Versions []policy.Policy
	// PCRs are the expected values in display order.
	PCRs []PCRValue
}

// PCRValue is one expected PCR value.
type PCRValue struct {
	Bank  string
	Index int
	Value string
}

// PageTitle names the page after the policy.
func (p PolicyPage) PageTitle() string { return "Policy " + p.Policy.ID }

func (c *Console) loadPolicy(r *http.Request, _ auth.Principal) (any, error) {
	p, err := c.cfg.Policies.Get(r.Context(), r.PathValue("id"))
	if errors.Is(err, policy.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	vs, err := c.cfg.Policies.History(r.Context(), p.ID)
	if err != nil {
		return nil, err
	}
	slices.Reverse(vs) // newest first
	out := PolicyPage{Policy: p, Versions: vs}
	for bank, m := range p.PCRs {
		for i, v := range m {
			out.PCRs = append(out.PCRs, PCRValue{Bank: bank, Index: i, Value: v})
		}
	}
	slices.SortFunc(out.PCRs, func(a, b PCRValue) int {
		if a.Bank != b.Bank {
			return strings.Compare(a.Bank, b.Bank)
		}
		return a.Index - b.Index
	})
	return out, nil
}

// CAPage is the CA page's data.
type CAPage struct {
	Generations []ca.Generation
	// Prepared, Superseded say which buttons apply.
	Prepared, Superseded bool
}

func (c *Console) loadCA(_ *http.Request, _ auth.Principal) (any, error) {
	gens := c.cfg.CA.Generations()
	out := CAPage{Generations: gens}
	for _, g := range gens {
		switch g.State {
		case ca.GenPrepared:
			out.Prepared = true
		case ca.GenSuperseded:
			out.Superseded = true
		}
	}
	slices.Reverse(out.Generations) // newest first
	return out, nil
}

func caActions() []Action {
	return []Action{
		{Name: "ca.prepare", Path: "/ca/prepare", API: "POST /api/v1/ca/prepare", Then: "/ca",
			OK: "Next generation prepared: devices receive it in their trust bundle before it signs anything."},
		{Name: "ca.activate", Path: "/ca/activate", API: "POST /api/v1/ca/activate", Then: "/ca",
			Body: func(form url.Values) (any, error) {
				rate := 0.0
				if s := strings.TrimSpace(form.Get("rate")); s != "" {
					v, err := strconv.ParseFloat(s, 64)
					if err != nil {
						return nil, errUser("the re-issue rate is a number of devices per second")
					}
					rate = v
				}
				return api.CAActivateRequest{Rate: rate}, nil
			},
			OK: "Generation activated: it signs from now on, and active devices are re-issued at the chosen rate."},
		{Name: "ca.retire", Path: "/ca/retire", API: "POST /api/v1/ca/retire", Then: "/ca",
			OK: "Superseded generations retired: certificates they signed are no longer accepted."},
	}
}

// Settings is the settings page's data.
type Settings struct {
	Tokens []auth.Token
	// Roles are the scopes the operator may give a token (their role
	// covers them); UserRoles every role, for admins.
	Roles, UserRoles []auth.Role
	// Users is nil unless the operator manages users.
	Users []auth.User
	Now   time.Time
	// MinPassword is the shortest password accepted.
	MinPassword int
}

func (c *Console) loadSettings(_ *http.Request, p auth.Principal) (any, error) {
	out := Settings{Now: c.cfg.Now(), UserRoles: auth.Roles(), MinPassword: auth.MinPasswordLen}
	toks, err := c.cfg.Auth.Tokens(context.Background(), p.User)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(toks, func(a, b auth.Token) int { return b.Created.Compare(a.Created) })
	out.Tokens = toks
	for _, r := range auth.Roles() {
		if p.Role.Covers(r) {
			out.Roles = append(out.Roles, r)
		}
	}
	if p.Can(auth.PermUsersAdmin) {
		if out.Users, err = c.cfg.Auth.Users(context.Background()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func settingsActions() []Action {
	return []Action{
		{Name: "token.create", Path: "/settings/tokens", API: "POST /api/v1/tokens",
			Body: func(form url.Values) (any, error) {
				name := strings.TrimSpace(form.Get("name"))
				if name == "" {
					return nil, errUser("name the token after what will use it")
				}
				ttl := form.Get("ttl")
				if ttl == "" {
					ttl = "2160h"
				}
				return map[string]string{"name": name, "role": form.Get("role"), "ttl": ttl}, nil
			},
			Reveal: func(answer []byte) (Reveal, error) {
				var t api.TokenCreated
				if err := json.Unmarshal(answer, &t); err != nil {
					return Reveal{}, err
				}
				return Reveal{Heading: "API token created", Label: "Token", Secret: t.Secret, Back: "/settings",
					Facts: [][2]string{{"ID", t.ID}, {"Name", t.Name}, {"Scope", string(t.Role)}, {"Expires", when(t.Expires)}},
					Note:  "Copy it now: it is shown only once. Scripts send it as \"Authorization: Bearer <token>\"."}, nil
			}},
		{Name: "user.password", Path: "/settings/password", API: "POST /api/v1/users/me/password", Then: "/settings",
			Body: func(form url.Values) (any, error) {
				if form.Get("new_password") != form.Get("confirm_password") {
					return nil, errUser("the new password and its confirmation differ")
				}
				return api.PasswordRequest{Current: form.Get("current_password"), New: form.Get("new_password")}, nil
			},
			OK: "Password changed. Your other sessions ended; this one continues. Your API tokens still work: revoke them here if they may be exposed."},
		{Name: "token.revoke", Path: "/settings/tokens/{id}/revoke", API: "DELETE /api/v1/tokens/{id}", Then: "/settings",
			OK: "Token revoked: it no longer authenticates."},
		{Name: "user.create", Path: "/settings/users", API: "POST /api/v1/users",
			Body: func(form url.Values) (any, error) {
				return api.UserRequest{Name: strings.TrimSpace(form.Get("name")), Role: auth.Role(form.Get("role")), Password: form.Get("password")}, nil
			},
			Reveal: func(answer []byte) (Reveal, error) {
				var u api.UserCreated
				if err := json.Unmarshal(answer, &u); err != nil {
					return Reveal{}, err
				}
				rv := Reveal{Heading: "User created", Back: "/settings", Facts: [][2]string{{"User", u.Name}, {"Role", string(u.Role)}}}
				if u.Password != "" {
					rv.Label, rv.Secret = "Generated password", u.Password
					rv.Note = "Copy it now: it is shown only once. Hand it to the user over a channel you trust."
				} else {
					rv.Note = "The user logs in with the password you chose."
				}
				return rv, nil
			}},
		{Name: "user.role", Path: "/settings/users/{name}/role", API: "PATCH /api/v1/users/{name}", Then: "/settings",
			Body: func(form url.Values) (any, error) {
				role := auth.Role(form.Get("role"))
				return api.UserPatch{Role: &role}, nil
			},
			OK: "Role changed."},
		{Name: "user.disable", Path: "/settings/users/{name}/disable", API: "PATCH /api/v1/users/{name}", Then: "/settings",
			Body: func(url.Values) (any, error) { t := true; return api.UserPatch{Disabled: &t}, nil },
			OK:   "User disabled: their sessions ended."},
		{Name: "user.enable", Path: "/settings/users/{name}/enable", API: "PATCH /api/v1/users/{name}", Then: "/settings",
			Body: func(url.Values) (any, error) { f := false; return api.UserPatch{Disabled: &f}, nil },
			OK:   "User enabled."},
		{Name: "user.delete", Path: "/settings/users/{name}/delete", API: "DELETE /api/v1/users/{name}", Then: "/settings",
			OK: "User deleted, with their sessions and API tokens."},
	}
}
