package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/pkg/config"
)

// usersCommand is `sigil users list | create | role | disable | enable |
// delete`: operators and their roles (needs users.admin); and `sigil
// users passwd`: the caller's own password.
func usersCommand() *command {
	const name = "a user name"
	patch := func(verb string) func(fs *flag.FlagSet) action {
		return func(fs *flag.FlagSet) action {
			var role *string
			if verb == "role" {
				role = fs.String("role", "viewer", "viewer, operator, release-approver, security-admin or admin")
			}
			return func(ctx context.Context, x *call) error {
				var p api.UserPatch
				if role != nil {
					r := auth.Role(*role)
					p.Role = &r
				} else {
					d := verb == "disable"
					p.Disabled = &d
				}
				var u auth.User
				if err := x.client.Do(ctx, http.MethodPatch, "/api/v1/users/"+url.PathEscape(x.arg(0)), p, &u); err != nil {
					return err
				}
				x.printf("%s: role %s, disabled %v\n", u.Name, u.Role, u.Disabled)
				return nil
			}
		}
	}
	return &command{name: "users", summary: "operators and their roles; your own password", def: "list", subs: []*command{
		{name: "list", args: "[-o json]", summary: "list the operators", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				var out struct {
					Users []auth.User `json:"users"`
				}
				if err := x.client.Do(ctx, http.MethodGet, "/api/v1/users", nil, &out); err != nil {
					return err
				}
				return x.table(out, "NAME\tROLE\tDISABLED\tLAST LOGIN", func(tw io.Writer) {
					for _, u := range out.Users {
						last := "-"
						if !u.LastLogin.IsZero() {
							last = rfc3339(u.LastLogin)
						}
						fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", u.Name, u.Role, u.Disabled, last)
					}
				})
			}},
		{name: "create", args: "NAME [--role R] [-o json]", summary: "create an operator (a generated password is shown once)", conn: connClient, pos: []string{name},
			setup: func(fs *flag.FlagSet) action {
				role := fs.String("role", "viewer", "viewer, operator, release-approver, security-admin or admin")
				return func(ctx context.Context, x *call) error {
					u, err := x.client.CreateUser(ctx, api.UserRequest{Name: x.arg(0), Role: auth.Role(*role)})
					if err != nil {
						return err
					}
					return x.either(u, func() {
						if u.Password != "" {
							x.printf("created %s (%s); password (shown once): %s\n", u.Name, u.Role, u.Password)
						} else {
							x.printf("created %s (%s)\n", u.Name, u.Role)
						}
						if u.Approval != nil {
							x.printf("the account stays disabled until a second person approves request %s (two-person rule)\n", u.Approval.ID)
						}
					})
				}
			}},
		{name: "role", args: "NAME --role R", summary: "change an operator's role", conn: connClient, pos: []string{name}, setup: patch("role")},
		{name: "disable", args: "NAME", summary: "disable an operator", conn: connClient, pos: []string{name}, setup: patch("disable")},
		{name: "enable", args: "NAME", summary: "enable an operator again", conn: connClient, pos: []string{name}, setup: patch("enable")},
		{name: "delete", args: "NAME", summary: "delete an operator", conn: connClient, pos: []string{name},
			run: func(ctx context.Context, x *call) error {
				if err := x.client.Do(ctx, http.MethodDelete, "/api/v1/users/"+url.PathEscape(x.arg(0)), nil, nil); err != nil {
					return err
				}
				x.printf("deleted %s\n", x.arg(0))
				return nil
			}},
		{name: "passwd", args: "[--stdin] [-o json]", summary: "change your own password: asked without echo, or two lines on stdin", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				fromStdin := fs.Bool("stdin", false, "read the current password and the new one from stdin, one per line, instead of the terminal")
				return func(ctx context.Context, x *call) error {
					if len(x.args) > 0 {
						return usageError{"users passwd takes no arguments: passwords are never read from the command line (the terminal, or --stdin)"}
					}
					cur, pw, err := readPasswords(x.stdin, x.stderr, *fromStdin)
					if err != nil {
						return err
					}
					res, err := x.client.ChangePassword(ctx, cur, pw)
					if err != nil {
						return err
					}
					return x.either(res, func() {
						x.printf("password of %s changed; %s ended; API tokens are not affected (sigil api-tokens list, revoke)\n",
							res.User, plural(res.SessionsEnded, "console session"))
					})
				}
			}},
	}}
}

// readPasswords reads the current password and the new one: from stdin,
// one per line, with --stdin; otherwise from the terminal with its echo
// turned off, the new one twice. Passwords never come from the command line, where
// other users and the shell history would see them.
func readPasswords(stdin io.Reader, stderr io.Writer, fromStdin bool) (current, password string, err error) {
	if fromStdin {
		sc := bufio.NewScanner(io.LimitReader(stdin, 4<<10))
		var lines []string
		for len(lines) < 2 && sc.Scan() {
			lines = append(lines, strings.TrimSuffix(sc.Text(), "\r"))
		}
		if err := sc.Err(); err != nil {
			return "", "", err
		}
		if len(lines) < 2 || lines[0] == "" || lines[1] == "" {
			return "", "", usageError{"--stdin needs two lines: the current password, then the new one"}
		}
		return lines[0], lines[1], nil
	}
	f, ok := stdin.(*os.File)
	if !ok {
		return "", "", usageError{"stdin is not a terminal: pass --stdin (current password, then the new one, one per line)"}
	}
	restore, err := noEcho(int(f.Fd()))
	if err != nil {
		return "", "", usageError{"stdin is not a terminal (" + err.Error() + "): type the passwords in one, or pass --stdin (current password, then the new one, one per line)"}
	}
	defer func() {
		if rerr := restore(); rerr != nil && err == nil {
			err = fmt.Errorf("restoring the terminal's echo: %w", rerr)
		}
	}()
	in := bufio.NewReader(io.LimitReader(f, 16<<10))
	ask := func(prompt string) (string, error) {
		fmt.Fprint(stderr, prompt)
		line, err := in.ReadString('\n')
		fmt.Fprintln(stderr) // the Enter typed was not echoed
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	if current, err = ask("Current password: "); err != nil {
		return "", "", err
	}
	if password, err = ask("New password: "); err != nil {
		return "", "", err
	}
	again, err := ask("New password again: ")
	if err != nil {
		return "", "", err
	}
	if again != password {
		return "", "", usageError{"the new passwords differ; nothing changed"}
	}
	if current == "" || password == "" {
		return "", "", usageError{"a password is empty; nothing changed"}
	}
	return current, password, nil
}

// plural writes n and the noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// apiTokensCommand is `sigil api-tokens list | create NAME | revoke ID`:
// the caller's API tokens (a secret is shown once).
func apiTokensCommand() *command {
	return &command{name: "api-tokens", summary: "your API tokens, for scripts and scrapers", def: "list", subs: []*command{
		{name: "list", args: "[-o json]", summary: "list your API tokens", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				var out struct {
					Tokens []auth.Token `json:"tokens"`
				}
				if err := x.client.Do(ctx, http.MethodGet, "/api/v1/tokens", nil, &out); err != nil {
					return err
				}
				return x.table(out, "ID\tNAME\tROLE\tEXPIRES\tREVOKED", func(tw io.Writer) {
					for _, t := range out.Tokens {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", t.ID, t.Name, t.Role, rfc3339(t.Expires), !t.Revoked.IsZero())
					}
				})
			}},
		{name: "create", args: "NAME [--role R] [--ttl D] [--secret-file F] [-o json]", summary: "create an API token (its secret is shown once)",
			conn: connClient, pos: []string{"a token name"},
			setup: func(fs *flag.FlagSet) action {
				role := fs.String("role", "viewer", "the token's role, at most your own")
				ttl := fs.Duration("ttl", 90*24*time.Hour, "lifetime")
				secretFile := fs.String("secret-file", "", "write the secret to this new file (mode 0600) instead of printing it, e.g. a scraper's credentials file")
				return func(ctx context.Context, x *call) error {
					return createAPIToken(ctx, x, api.TokenRequest{Name: x.arg(0), Role: auth.Role(*role), TTL: config.Duration(*ttl)}, *secretFile)
				}
			}},
		{name: "revoke", args: "ID", summary: "revoke an API token", conn: connClient, pos: []string{"a token ID"},
			run: func(ctx context.Context, x *call) error {
				if err := x.client.RevokeAPIToken(ctx, x.arg(0)); err != nil {
					return err
				}
				x.printf("revoked %s\n", x.arg(0))
				return nil
			}},
	}}
}

// createAPIToken creates a token and shows its secret once: printed, or
// written to secretFile (created before the token, never overwritten, so
// that a bad path leaves no token behind).
func createAPIToken(ctx context.Context, x *call, req api.TokenRequest, secretFile string) error {
	var sf *os.File
	if secretFile != "" {
		var err error
		if sf, err = os.OpenFile(secretFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return err
		}
		defer sf.Close()
	}
	t, err := x.client.CreateAPIToken(ctx, req)
	if err != nil {
		if sf != nil {
			os.Remove(secretFile)
		}
		return err
	}
	if sf != nil {
		if _, err := io.WriteString(sf, t.Secret+"\n"); err != nil {
			return fmt.Errorf("token %s created, but its secret could not be written (revoke it: sigil api-tokens revoke %s): %w", t.ID, t.ID, err)
		}
		if err := sf.Close(); err != nil {
			return fmt.Errorf("token %s created, but its secret could not be written (revoke it: sigil api-tokens revoke %s): %w", t.ID, t.ID, err)
		}
		t.Secret = ""
		if x.jsonOut() {
			return x.json(t)
		}
		x.printf("token %s (%s, until %s); secret written to %s\n", t.ID, t.Role, rfc3339(t.Expires), secretFile)
	} else if x.jsonOut() {
		return x.json(t)
	} else {
		x.printf("token %s (%s, until %s); secret (shown once): %s\n", t.ID, t.Role, rfc3339(t.Expires), t.Secret)
	}
	if t.Approval != nil {
		x.printf("it works once a second person approves request %s (two-person rule: it may approve)\n", t.Approval.ID)
	}
	return nil
}
