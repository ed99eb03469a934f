package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/server"
)

// auditCommand is `sigil audit list | export | verify | checkpoint`.
// verify works offline on an export; the others ask the API.
func auditCommand() *command {
	return &command{name: "audit", summary: "the tamper-evident audit log: query, export, verify offline, checkpoint", def: "list", subs: []*command{
		{name: "list", args: "[--actor kind:id] [--action A] [--target T] [--limit N] [-o json]", summary: "list audit entries, newest first", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				actor := fs.String("actor", "", "entries by actor kind:id, e.g. user:alice")
				act := fs.String("action", "", "entries whose action is or is under this, e.g. api.devices")
				target := fs.String("target", "", "entries about this target")
				limit := fs.Int("limit", 50, "at most this many entries")
				return func(ctx context.Context, x *call) error {
					q := url.Values{}
					for k, v := range map[string]string{"actor": *actor, "action": *act, "target": *target} {
						if v != "" {
							q.Set(k, v)
						}
					}
					q.Set("limit", fmt.Sprint(*limit))
					var l api.AuditList
					if err := x.client.Do(ctx, http.MethodGet, "/api/v1/audit?"+q.Encode(), nil, &l); err != nil {
						return err
					}
					return x.table(l, "SEQ\tTIME\tACTOR\tACTION\tTARGET\tOUTCOME", func(tw io.Writer) {
						for _, e := range l.Entries {
							outcome := string(e.Outcome)
							if e.Reason != "" {
								outcome += ": " + e.Reason
							}
							fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, rfc3339(e.Time), e.Actor, e.Action, e.Target, outcome)
						}
					})
				}
			}},
		{name: "export", args: "[--out F]", summary: "write the whole log with its checkpoints (JSON lines), for sigil audit verify", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				out := fs.String("out", "", "write to this file instead of stdout")
				return func(ctx context.Context, x *call) error { return auditExport(ctx, x.client, *out, x.stdout) }
			}},
		{name: "verify", args: "FILE|- [--key audit.pub]", summary: "verify an export offline against the audit public key",
			note: "Offline: it needs no server. Exit 6 when the log does not verify.",
			conn: connFlags, pos: []string{"an export file (or - for stdin)"},
			setup: func(fs *flag.FlagSet) action {
				key := fs.String("key", "", "the audit public key (PEM); default <data-dir>/audit.pub")
				return func(_ context.Context, x *call) error {
					return auditVerify(x.arg(0), *key, *x.api.dataDir, x.stdin, x.stdout, x.stderr)
				}
			}},
		{name: "checkpoint", summary: "sign a checkpoint of the log now", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				var cp audit.Checkpoint
				if err := x.client.Do(ctx, http.MethodPost, "/api/v1/audit/checkpoint", struct{}{}, &cp); err != nil {
					return err
				}
				x.printf("checkpoint at entry %d, head %s, key %s\n", cp.Seq, cp.Head, cp.KeyID)
				return nil
			}},
	}}
}

// auditExport streams GET /api/v1/audit/export to the file out (stdout
// when ""), created only once the API answered.
func auditExport(ctx context.Context, c *api.Client, out string, stdout io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/api/v1/audit/export", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		se := &api.StatusError{Status: resp.StatusCode}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&se.Problem)
		return se
	}
	w := stdout
	if out != "" {
		f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// auditVerify checks an export offline against the audit public key.
func auditVerify(file, keyFile, dataDir string, stdin io.Reader, stdout, stderr io.Writer) error {
	if keyFile == "" {
		keyFile = filepath.Join(dataDir, server.AuditPubFile)
	}
	pemBytes, err := os.ReadFile(keyFile)
	if err != nil {
		return usageError{"audit public key: " + err.Error()}
	}
	pub, err := audit.ParsePublicKey(pemBytes)
	if err != nil {
		return usageError{"audit public key " + keyFile + ": " + err.Error()}
	}
	r := stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	rep, err := audit.Verify(r, pub)
	var ve *audit.VerifyError
	if errors.As(err, &ve) {
		fmt.Fprintf(stderr, "sigil: audit log does NOT verify: %v\n", ve)
		return exitErr{code: exitTampered}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "audit log verifies: entries %d..%d (%d), %d checkpoints, last checkpoint at entry %d, head %s\n",
		rep.First, rep.Last, rep.Entries, rep.Checkpoints, rep.Checkpoint.Seq, rep.Head)
	if rep.Unsigned > 0 {
		fmt.Fprintf(stdout, "warning: the last %d entries follow the last checkpoint; their removal could not be detected\n", rep.Unsigned)
	}
	return nil
}
