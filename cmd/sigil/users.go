package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/pkg/config"
)

// cmdUsers is `sigil users list | create | role | disable | enable |
// delete`: operators and their roles (needs users.admin).
func cmdUsers(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("users "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	role := fs.String("role", "viewer", "create, role: viewer, operator, release-approver, security-admin or admin")
	var name string
	if sub != "list" {
		var err error
		if name, args, err = positional(args, "users "+sub+" needs a user name"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	path := "/api/v1/users/" + url.PathEscape(name)
	switch sub {
	case "list":
		var out struct {
			Users []auth.User `json:"users"`
		}
		if err := c.Do(ctx, http.MethodGet, "/api/v1/users", nil, &out); err != nil {
			return err
		}
		return af.table(stdout, out, "NAME\tROLE\tDISABLED\tLAST LOGIN", func(tw io.Writer) {
			for _, u := range out.Users {
				last := "-"
				if !u.LastLogin.IsZero() {
					last = u.LastLogin.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", u.Name, u.Role, u.Disabled, last)
			}
		})
	case "create":
		u, err := c.CreateUser(ctx, api.UserRequest{Name: name, Role: auth.Role(*role)})
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, u)
		}
		if u.Password != "" {
			fmt.Fprintf(stdout, "created %s (%s); password (shown once): %s\n", u.Name, u.Role, u.Password)
		} else {
			fmt.Fprintf(stdout, "created %s (%s)\n", u.Name, u.Role)
		}
		if u.Approval != nil {
			fmt.Fprintf(stdout, "the account stays disabled until a second person approves request %s (two-person rule)\n", u.Approval.ID)
		}
		return nil
	case "role", "disable", "enable":
		var p api.UserPatch
		switch sub {
		case "role":
			r := auth.Role(*role)
			p.Role = &r
		default:
			d := sub == "disable"
			p.Disabled = &d
		}
		var u auth.User
		if err := c.Do(ctx, http.MethodPatch, path, p, &u); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: role %s, disabled %v\n", u.Name, u.Role, u.Disabled)
		return nil
	case "delete":
		if err := c.Do(ctx, http.MethodDelete, path, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted %s\n", name)
		return nil
	}
	return usageError{"unknown users subcommand " + sub}
}

// cmdAPITokens is `sigil api-tokens list | create NAME | revoke ID`: the
// caller's API tokens (a secret is shown once).
func cmdAPITokens(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("api-tokens "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	role := fs.String("role", "viewer", "create: the token's role, at most your own")
	ttl := fs.Duration("ttl", 90*24*time.Hour, "create: lifetime")
	var arg string
	if sub != "list" {
		var err error
		if arg, args, err = positional(args, "api-tokens "+sub+" needs an argument"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		var out struct {
			Tokens []auth.Token `json:"tokens"`
		}
		if err := c.Do(ctx, http.MethodGet, "/api/v1/tokens", nil, &out); err != nil {
			return err
		}
		return af.table(stdout, out, "ID\tNAME\tROLE\tEXPIRES\tREVOKED", func(tw io.Writer) {
			for _, t := range out.Tokens {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", t.ID, t.Name, t.Role, t.Expires.Format(time.RFC3339), !t.Revoked.IsZero())
			}
		})
	case "create":
		t, err := c.CreateAPIToken(ctx, api.TokenRequest{Name: arg, Role: auth.Role(*role), TTL: config.Duration(*ttl)})
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, t)
		}
		fmt.Fprintf(stdout, "token %s (%s, until %s); secret (shown once): %s\n", t.ID, t.Role, t.Expires.Format(time.RFC3339), t.Secret)
		if t.Approval != nil {
			fmt.Fprintf(stdout, "it works once a second person approves request %s (two-person rule: it may approve)\n", t.Approval.ID)
		}
		return nil
	case "revoke":
		if err := c.RevokeAPIToken(ctx, arg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %s\n", arg)
		return nil
	}
	return usageError{"unknown api-tokens subcommand " + sub}
}
