package sso

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Config is the "sso" section of the fleet's configuration
// (docs/CONFIG.md). Single sign-on is on when Issuer is set.
type Config struct {
	// Issuer is the OpenID Provider's issuer URL, e.g.
	// "https://login.example.com/realms/acme": its discovery document is
	// read from Issuer + "/.well-known/openid-configuration", and every ID
	// token must name it exactly. https is required except on a loopback
	// address.
	Issuer string `json:"issuer"`
	// ClientID is the fleet's client ID at the provider; every ID token's
	// audience must hold it. Required with Issuer.
	ClientID string `json:"client_id"`
	// ClientSecretFile holds the client secret (surrounding white space is
	// ignored). Required with Issuer; the secret is never logged.
	ClientSecretFile string `json:"client_secret_file"`
	// RedirectURL is the console's callback registered at the provider, an
	// https URL on the console's host, e.g.
	// "https://fleet.example.com:8443/auth/sso/callback". Required with
	// Issuer; its path is where the fleet answers the callback.
	RedirectURL string `json:"redirect_url"`
	// Scopes are requested besides "openid" (always requested). Default
	// ["profile", "offline_access"]: offline_access asks for the refresh
	// token the fleet re-checks group membership with. Add the scope your
	// provider needs to put the groups claim in its tokens (often
	// "groups").
	Scopes []string `json:"scopes"`
	// UserClaim is the claim whose value becomes the operator's user name
	// in the fleet (lower-cased; a-z, 0-9 and . _ @ -, up to 64
	// characters). Default "preferred_username".
	UserClaim string `json:"user_claim"`
	// GroupsClaim is the claim listing the person's groups (an array of
	// strings, or one string). Default "groups".
	GroupsClaim string `json:"groups_claim"`
	// Roles map provider groups to Sigil roles, in order: a person gets the
	// role of the first entry whose group they are in. A person in none of
	// the groups is refused (deny by default). At least one is required
	// with Issuer.
	Roles []GroupRole `json:"roles"`
	// RecheckEvery is how long the fleet trusts what the provider last
	// said about a signed-in operator: the first request of an operator's
	// session after this long asks the provider again (refresh token grant,
	// or userinfo) and applies the groups it answers, refusing that very
	// request when no group maps to a role any more. Default 1m.
	RecheckEvery config.Duration `json:"recheck_every"`
	// PasswordLogin false turns password logins off (auth.ErrPasswordLoginOff):
	// operators then log in only through the provider. API tokens keep
	// working. Default true: local accounts stay as the break-glass way in
	// when the provider is down.
	PasswordLogin *bool `json:"password_login"`
}

// GroupRole maps one provider group to a Sigil role.
type GroupRole struct {
	Group string    `json:"group"`
	Role  auth.Role `json:"role"`
}

// LoginPath is where a browser starts single sign-on.
const LoginPath = "/auth/sso/login"

// Enabled reports whether single sign-on is configured.
func (c Config) Enabled() bool { return c.Issuer != "" }

// NoPasswordLogin reports whether password logins are turned off
// (auth.Config.NoPasswordLogin).
func (c Config) NoPasswordLogin() bool { return c.PasswordLogin != nil && !*c.PasswordLogin }

// LoginPath returns where the console's login page links for single
// sign-on (auth.Config.SSOLoginPath): LoginPath, or empty when single
// sign-on is off.
func (c Config) LoginPath() string {
	if !c.Enabled() {
		return ""
	}
	return LoginPath
}

// Validate checks c; every problem is reported (errors.Join).
func (c Config) Validate() error {
	if !c.Enabled() {
		if c.NoPasswordLogin() {
			return errors.New("sso: password_login false needs single sign-on (sso.issuer): nobody could log in to the console")
		}
		return nil
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("sso: "+format, args...)) }
	if err := checkURL(c.Issuer); err != nil {
		bad("issuer: %v", err)
	}
	if c.ClientID == "" {
		bad("client_id is required")
	}
	if c.ClientSecretFile == "" {
		bad("client_secret_file is required")
	} else if _, err := readSecret(c.ClientSecretFile); err != nil {
		errs = append(errs, err)
	}
	if err := checkURL(c.RedirectURL); err != nil {
		bad("redirect_url: %v", err)
	}
	if len(c.Roles) == 0 {
		bad("roles: map at least one provider group to a role")
	}
	for i, gr := range c.Roles {
		if gr.Group == "" || !gr.Role.Valid() || gr.Role == auth.RoleBrokerSync {
			bad("roles[%d]: group %q, role %q: need a group and one of the operators' roles", i, gr.Group, gr.Role)
		}
	}
	if c.RecheckEvery < 0 {
		bad("recheck_every must not be negative")
	}
	return errors.Join(errs...)
}

// checkURL accepts an absolute https URL, or http on a loopback host.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme == "https" && u.Host != "":
		return nil
	case u.Scheme == "http" && (u.Hostname() == "localhost" || strings.HasPrefix(u.Hostname(), "127.") || u.Hostname() == "::1"):
		return nil
	}
	return fmt.Errorf("%q is not an https URL", s)
}

func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("sso: client_secret_file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("sso: client_secret_file %s is empty", path)
	}
	return s, nil
}

func (c Config) withDefaults() Config {
	if c.Scopes == nil {
		c.Scopes = []string{"profile", "offline_access"}
	}
	if !slices.Contains(c.Scopes, "openid") {
		c.Scopes = append([]string{"openid"}, c.Scopes...)
	}
	if c.UserClaim == "" {
		c.UserClaim = "preferred_username"
	}
	if c.GroupsClaim == "" {
		c.GroupsClaim = "groups"
	}
	if c.RecheckEvery == 0 {
		c.RecheckEvery = config.Duration(time.Minute)
	}
	return c
}

// role returns the role of the first mapping whose group is in groups,
// and that group; empty when none matches.
func (c Config) role(groups []string) (auth.Role, string) {
	for _, gr := range c.Roles {
		if slices.Contains(groups, gr.Group) {
			return gr.Role, gr.Group
		}
	}
	return "", ""
}
