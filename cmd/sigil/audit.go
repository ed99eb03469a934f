package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/server"
)

// exitTampered is the exit code of `sigil audit verify` when the log does
// not verify.
const exitTampered = 6

// cmdAudit is `sigil audit list | export | verify | checkpoint`.
// verify works offline on an export; the others ask the API.
func cmdAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("audit "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	actor := fs.String("actor", "", "list: entries by actor kind:id, e.g. user:alice")
	action := fs.String("action", "", "list: entries whose action is or is under this, e.g. api.devices")
	target := fs.String("target", "", "list: entries about this target")
	limit := fs.Int("limit", 50, "list: at most this many entries")
	out := fs.String("out", "", "export: write to this file instead of stdout")
	key := fs.String("key", "", "verify: the audit public key (PEM); default <data-dir>/audit.pub")
	var file string
	if sub == "verify" {
		var err error
		if file, args, err = positional(args, "audit verify needs an export file (or - for stdin)"); err != nil {
			return err
		}
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if sub == "verify" {
		return auditVerify(file, *key, *af.dataDir, stdout, stderr)
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		q := url.Values{}
		for k, v := range map[string]string{"actor": *actor, "action": *action, "target": *target} {
			if v != "" {
				q.Set(k, v)
			}
		}
		q.Set("limit", fmt.Sprint(*limit))
		var l api.AuditList
		if err := c.Do(ctx, http.MethodGet, "/api/v1/audit?"+q.Encode(), nil, &l); err != nil {
			return err
		}
		return af.table(stdout, l, "SEQ\tTIME\tACTOR\tACTION\tTARGET\tOUTCOME", func(tw io.Writer) {
			for _, e := range l.Entries {
				outcome := string(e.Outcome)
				if e.Reason != "" {
					outcome += ": " + e.Reason
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.RFC3339), e.Actor, e.Action, e.Target, outcome)
			}
		})
	case "export":
		w := stdout
		if *out != "" {
			f, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			defer f.Close()
			w = f
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/api/v1/audit/export", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &api.StatusError{Status: resp.StatusCode}
		}
		_, err = io.Copy(w, resp.Body)
		return err
	case "checkpoint":
		var cp audit.Checkpoint
		if err := c.Do(ctx, http.MethodPost, "/api/v1/audit/checkpoint", struct{}{}, &cp); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "checkpoint at entry %d, head %s, key %s\n", cp.Seq, cp.Head, cp.KeyID)
		return nil
	}
	return usageError{"unknown audit subcommand " + sub}
}

// auditVerify checks an export offline against the audit public key.
func auditVerify(file, keyFile, dataDir string, stdout, stderr io.Writer) error {
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
	var r io.Reader = os.Stdin
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

// exitErr ends the command with a specific exit code; its message was
// printed already.
type exitErr struct{ code int }

func (e exitErr) Error() string { return "exit " + strings.TrimSpace(fmt.Sprint(e.code)) }
