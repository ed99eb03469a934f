package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/server"
)

// apiFlags are the connection flags every API command takes.
type apiFlags struct {
	server, token, ca, dataDir, output, justification *string
}

// addAPIFlags defines the connection flags. Their environment variables
// are read by client, not shown as defaults: help must not print a token.
func addAPIFlags(fs *flag.FlagSet) apiFlags {
	return apiFlags{
		server:  fs.String("server", "", "API base URL (default $SIGIL_SERVER, else https://localhost:8443)"),
		token:   fs.String("token", "", "API bearer token (default $SIGIL_TOKEN, else <data-dir>/admin.token)"),
		ca:      fs.String("ca", "", "CA certificate file for the API's TLS (default $SIGIL_CA, else <data-dir>/ca/ca.crt)"),
		dataDir: fs.String("data-dir", "/var/lib/sigil", "fleet data directory to read the token and CA from"),
		output:  fs.String("o", "table", "output: table or json"),
		justification: fs.String("justification", "",
			"why: sent with every request; changes held for a second person's approval need it (default $SIGIL_JUSTIFICATION)"),
	}
}

// client returns the API client the flags (or their environment
// variables) name.
func (f apiFlags) client() (*api.Client, error) {
	for p, env := range map[*string]string{f.server: "SIGIL_SERVER", f.token: "SIGIL_TOKEN", f.ca: "SIGIL_CA", f.justification: "SIGIL_JUSTIFICATION"} {
		if *p == "" {
			*p = os.Getenv(env)
		}
	}
	base, token, caFile := *f.server, *f.token, *f.ca
	if base == "" {
		base = "https://localhost:8443"
	}
	if token == "" {
		b, err := os.ReadFile(filepath.Join(*f.dataDir, server.AdminTokenFile))
		if err != nil {
			return nil, usageError{"no API token: set --token or SIGIL_TOKEN, or --data-dir (" + err.Error() + ")"}
		}
		token = strings.TrimSpace(string(b))
	}
	if caFile == "" {
		caFile = filepath.Join(*f.dataDir, server.CACertFile)
	}
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, usageError{"no CA certificate for the API: set --ca or SIGIL_CA (" + err.Error() + ")"}
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, usageError{"CA file " + caFile + " holds no PEM certificate"}
	}
	c := api.NewClient(strings.TrimRight(base, "/"), token, roots)
	c.Justification = *f.justification
	return c, nil
}

// jsonOut reports whether -o json asks for JSON.
func (x *call) jsonOut() bool { return x.api.output != nil && *x.api.output == "json" }

// justification is --justification (or $SIGIL_JUSTIFICATION).
func (x *call) justification() string { return *x.api.justification }

// json prints v as indented JSON.
func (x *call) json(v any) error { return printJSON(x.stdout, v) }

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printf prints to stdout.
func (x *call) printf(format string, a ...any) { fmt.Fprintf(x.stdout, format, a...) }

// table prints v as JSON with -o json, else as a table: the header line,
// then the rows rows writes (tab-separated).
func (x *call) table(v any, header string, rows func(tw io.Writer)) error {
	if x.jsonOut() {
		return x.json(v)
	}
	return x.plainTable(header, rows)
}

// listing is the action of a command that fetches a list with fetch (a
// method of api.Client, such as (*api.Client).Secrets) and prints it: as
// JSON with -o json, else as a table of header and the lines rows writes.
func listing[T any](fetch func(*api.Client, context.Context) (T, error), header string, rows func(tw io.Writer, v T)) action {
	return func(ctx context.Context, x *call) error {
		v, err := fetch(x.client, ctx)
		if err != nil {
			return err
		}
		return x.table(v, header, func(tw io.Writer) { rows(tw, v) })
	}
}

// plainTable prints a table whatever -o says.
func (x *call) plainTable(header string, rows func(tw io.Writer)) error {
	tw := tabwriter.NewWriter(x.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	return tw.Flush()
}

// either prints v as JSON with -o json, else calls text.
func (x *call) either(v any, text func()) error {
	if x.jsonOut() {
		return x.json(v)
	}
	text()
	return nil
}

// rfc3339 formats a time for a table.
func rfc3339(t time.Time) string { return t.Format(time.RFC3339) }

// orEmpty formats a time that may be unset, as it is.
func orEmpty(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339)
}

// stamp formats a time that may be unset, in UTC.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }
