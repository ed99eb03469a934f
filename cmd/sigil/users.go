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

// cmdUsers is `sigil users list | create | role | disable | enable |
// delete`: operators and their roles (needs users.admin); and `sigil
// users passwd`: the caller's own password.
func cmdUsers(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("users "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	role := fs.String("role", "viewer", "create, role: viewer, operator, release-approver, security-admin or admin")
	fromStdin := fs.Bool("stdin", false, "passwd: read the current password and the new one from stdin, one per line, instead of the terminal")
	var name string
	if sub != "list" && sub != "passwd" {
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
	case "passwd":
		if fs.NArg() > 0 {
			return usageError{"users passwd takes no arguments: passwords are never read from the command line (the terminal, or --stdin)"}
		}
		cur, pw, err := readPasswords(stdin, stderr, *fromStdin)
		if err != nil {
			return err
		}
		res, err := c.ChangePassword(ctx, cur, pw)
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, res)
		}
		fmt.Fprintf(stdout, "password of %s changed; %s ended; API tokens are not affected (sigil api-tokens list, revoke)\n",
			res.User, plural(res.SessionsEnded, "console session"))
		return nil
	}
	return usageError{"unknown users subcommand " + sub}
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

// cmdAPITokens is `sigil api-tokens list | create NAME | revoke ID`: the
// caller's API tokens (a secret is shown once).
func cmdAPITokens(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("api-tokens "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	role := fs.String("role", "viewer", "create: the token's role, at most your own")
	ttl := fs.Duration("ttl", 90*24*time.Hour, "create: lifetime")
	secretFile := fs.String("secret-file", "", "create: write the secret to this new file (mode 0600) instead of printing it, e.g. a scraper's credentials file")
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
		var sf *os.File
		if *secretFile != "" {
			// Created (never overwritten) before the token, so that a bad
			// path leaves no token behind.
			if sf, err = os.OpenFile(*secretFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
				return err
			}
			defer sf.Close()
		}
		t, err := c.CreateAPIToken(ctx, api.TokenRequest{Name: arg, Role: auth.Role(*role), TTL: config.Duration(*ttl)})
		if err != nil {
			if sf != nil {
				os.Remove(*secretFile)
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
			if *af.output == "json" {
				return printJSON(stdout, t)
			}
			fmt.Fprintf(stdout, "token %s (%s, until %s); secret written to %s\n", t.ID, t.Role, t.Expires.Format(time.RFC3339), *secretFile)
		} else if *af.output == "json" {
			return printJSON(stdout, t)
		} else {
			fmt.Fprintf(stdout, "token %s (%s, until %s); secret (shown once): %s\n", t.ID, t.Role, t.Expires.Format(time.RFC3339), t.Secret)
		}
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
