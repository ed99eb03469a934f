// Command sigil is Sigil's fleet manager and operator CLI.
//
//	sigil serve [--config FILE]         run the fleet manager
//	sigil devices [list|show ID|approve ID]
//	sigil tokens create [--model M] [--owner O] [--ttl 24h]
//	sigil secrets [list|put NAME|schedule NAME|rotate NAME|delete NAME|device ID]
//	sigil alerts [list|show|ack|resolve|rules|deadletters|redrive|sinks]
//	sigil telemetry DEVICE [--metric M]
//	sigil version
//
// The demo, the benchmarks and the device simulator are another command,
// sigil-sim (cmd/sigil-sim): this one links no simulator and builds
// without cgo (fence_test.go).
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Version is set at build time.
var Version = "dev"

const usage = `usage:
  sigil serve [--config FILE] [--data-dir DIR] [--mqtt-addr ADDR] [--api-addr ADDR]
  sigil devices list [--state S] [-o json]
  sigil devices show ID [-o json]
  sigil devices approve ID
  sigil devices attest ID | attestations ID [-o json]
  sigil devices release ID --justification TEXT
  sigil devices revoke ID [--reason R] [--comment C] | decommission ID [--comment C] | rotate ID
  sigil devices cert ID [--pem] [-o json]
  sigil rotations list | show ID | cancel ID
  sigil rotations start (--all | --group G | --model M | --devices ID,ID) [--rate N] [--reason R]
  sigil ca status [--bundle] | prepare | activate [--rate N|-1] | retire
  sigil users list | create NAME [--role R] | role NAME --role R | disable NAME | enable NAME | delete NAME
  sigil users passwd [--stdin]   (your own password: asked without echo, or two lines on stdin)
  sigil api-tokens list | create NAME [--role R] [--ttl D] [--secret-file F] | revoke ID
  sigil approvals list [--all] | show ID | approve ID [--comment C] | reject ID --reason R
  (with two_person_rule, dangerous changes exit 7 "pending approval"; pass --justification)
  sigil audit list [--actor kind:id] [--action A] [--target T] | export [--out F] | checkpoint
  sigil audit verify FILE|- [--key audit.pub]   (offline; exit 6 when the log does not verify)
  sigil policies list | show ID | learn --device ID --name NAME [--pcrs 0,1,7] | put FILE | delete ID
  sigil tokens create [--model M] [--owner O] [--ttl 24h] [-o json]
  sigil firmware keygen [--key F] [--pub F] [--alg A] | trust [--threshold M] [--sequence N] [--out F] PUB...
  sigil firmware sign --key F (--image IMG --name N --version V --security-version S --models M,M [--expires D] [--pcr sha256:14=HEX] | --manifest F | --statement F) [--bundle F]
  sigil firmware upload --manifest F --bundle F [--bundle F] [--image IMG] | approve ID | withdraw ID [--reason R] | list [-o json] | show ID
  sigil campaigns create --release ID (--group G | --model M | --tags T,T | --devices ID,ID) [--canary N --growth F | --sizes 1,10] [--failure F] [--timeout D] [--definition FILE] [--justification T]
  sigil campaigns start ID [--at TIME] | pause ID | resume ID | abort ID   (--justification T)
  sigil campaigns rollback ID --release ID --justification T | list [-o json] | show ID | devices ID [--step S] [--wave N] [--after ID]
  sigil secrets list [-o json] | device ID [-o json] | delete NAME
  sigil secrets put NAME (--device ID | --group G | --model M) [--pcr-bound] [--file F]   (value from F or stdin)
  sigil secrets schedule NAME --every D [--grace D] [--length N] [--encoding base64url|hex|raw]   (--every 0 clears)
  sigil secrets rotate NAME
  sigil alerts list [--device ID] [--rule R] [--state firing|acknowledged|resolved|open] [--limit N] [--before ID] [-o json]
  sigil alerts show ID | ack ID [--note T] | resolve ID [--note T] | sinks
  sigil alerts rules [put FILE | delete ID]
  sigil alerts deadletters [--limit N] [--before ID] | redrive (ID | --all [--route SINK])
  sigil telemetry DEVICE [--metric M [--since 1h]] [-o json]
  sigil owners list | show ID | put ID [--name N] [--kind person|team] [--contact C] [--status S] | status ID active|inactive|departed
  sigil owners assign DEVICE OWNER [--purpose P] | orphans
  sigil triage list [--all] [--kind K] | show KEY | enroll KEY | block KEY | dismiss KEY [--note T]
  sigil blocks list | add client-id|address|ek VALUE [--reason R] | remove KIND VALUE
  sigil clones [list [--all]] | resolve DEVICE --kind ek|certificate [--note T]
  sigil risk [DEVICE] [--limit N] [-o json] | sweep
  sigil governance sweep | dormant
  sigil completion bash|zsh   (e.g. source <(sigil completion bash))
  sigil version

API commands find the server, token and CA from --server/--token/--ca, the
SIGIL_SERVER/SIGIL_TOKEN/SIGIL_CA environment, or --data-dir (default
/var/lib/sigil, where sigil serve writes admin.token and ca/ca.crt).

The demo, the benchmarks and simulated devices are sigil-sim's
(sigil-sim demo, sigil-sim bench).
`

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitNotFound = 4
	exitDenied   = 5
	// exitTampered (6): audit verify found the log altered (audit.go).
	exitPending = 7 // filed for a second person's approval
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], stderr)
	case "devices":
		err = cmdDevices(ctx, args[1:], stdout)
	case "tokens":
		err = cmdTokens(ctx, args[1:], stdout)
	case "rotations":
		err = cmdRotations(ctx, args[1:], stdout)
	case "ca":
		err = cmdCA(ctx, args[1:], stdout)
	case "audit":
		err = cmdAudit(ctx, args[1:], stdout, stderr)
	case "approvals":
		err = cmdApprovals(ctx, args[1:], stdout)
	case "users":
		err = cmdUsers(ctx, args[1:], os.Stdin, stdout, stderr)
	case "api-tokens":
		err = cmdAPITokens(ctx, args[1:], stdout)
	case "policies":
		err = cmdPolicies(ctx, args[1:], stdout)
	case "firmware":
		err = cmdFirmware(ctx, args[1:], stdout)
	case "campaigns":
		err = cmdCampaigns(ctx, args[1:], stdout)
	case "secrets":
		err = cmdSecrets(ctx, args[1:], os.Stdin, stdout)
	case "alerts":
		err = cmdAlerts(ctx, args[1:], stdout)
	case "telemetry":
		err = cmdTelemetry(ctx, args[1:], stdout)
	case "owners":
		err = cmdOwners(ctx, args[1:], stdout)
	case "triage":
		err = cmdTriage(ctx, args[1:], stdout)
	case "blocks":
		err = cmdBlocks(ctx, args[1:], stdout)
	case "clones":
		err = cmdClones(ctx, args[1:], stdout)
	case "risk":
		err = cmdRisk(ctx, args[1:], stdout)
	case "governance":
		err = cmdGovernance(ctx, args[1:], stdout)
	case "completion":
		err = cmdCompletion(args[1:], stdout)
	case "version":
		if err = parseFlags(flag.NewFlagSet("version", flag.ContinueOnError), args[1:]); err == nil {
			fmt.Fprintln(stdout, "sigil", Version)
		}
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "sigil: unknown command %q\n%s", args[0], usage)
		return exitUsage
	}
	var he helpError
	if errors.As(err, &he) {
		printHelp(stdout, he.fs)
		return exitOK
	}
	return exitCode(err, stderr)
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	var ee exitErr
	if errors.As(err, &ee) {
		return ee.code
	}
	var pe *api.PendingError
	if errors.As(err, &pe) {
		fmt.Fprintf(stderr, "sigil: %s needs a second person's approval: request %s filed; approve it with: sigil approvals approve %s\n",
			pe.Pending.Approval.Kind, pe.Pending.Approval.ID, pe.Pending.Approval.ID)
		return exitPending
	}
	fmt.Fprintln(stderr, "sigil:", err)
	var ue usageError
	var se *api.StatusError
	switch {
	case errors.As(err, &ue), errors.Is(err, flag.ErrHelp):
		return exitUsage
	case errors.As(err, &se) && se.Status == 404:
		return exitNotFound
	case errors.As(err, &se) && (se.Status == 401 || se.Status == 403):
		return exitDenied
	}
	return exitError
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil || level == "" {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", "", "configuration file (JSON)")
	dataDir := fs.String("data-dir", "", "data directory (overrides the file)")
	mqttAddr := fs.String("mqtt-addr", "", "MQTT TLS listen address (overrides the file)")
	apiAddr := fs.String("api-addr", "", "HTTPS API listen address (overrides the file)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var cfg server.Config
	if *path != "" {
		if err := config.Load(*path, &cfg); err != nil {
			return err
		}
	}
	for dst, v := range map[*string]string{&cfg.DataDir: *dataDir, &cfg.MQTTAddr: *mqttAddr, &cfg.APIAddr: *apiAddr} {
		if v != "" {
			*dst = v
		}
	}
	log := newLogger(stderr, cfg.LogLevel)
	srv, err := server.New(cfg, log)
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-srv.Ready():
			fmt.Fprintf(stderr, "sigil serve: API %s  MQTT %s\n  fleet CA certificate: %s\n  admin API token file: %s\n",
				srv.APIURL(), srv.MQTTAddr(), srv.CACertPath(), srv.AdminTokenPath())
		case <-ctx.Done():
		}
	}()
	return srv.Run(ctx)
}

// apiFlags are the connection flags of API commands.
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

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdDevices(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("devices "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	state := fs.String("state", "", "filter by state (list)")
	var id string
	reason := fs.String("reason", "", "RFC 5280 reason name (revoke), e.g. keyCompromise")
	comment := fs.String("comment", "", "note recorded with the action (revoke, decommission)")
	pemOut := fs.Bool("pem", false, "print the certificate chain as PEM (cert)")
	if sub != "list" {
		var err error
		if id, args, err = positional(args, "devices "+sub+" needs a device ID"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		list, err := c.Devices(ctx, *state)
		if err != nil {
			return err
		}
		return af.table(stdout, list, "ID\tSTATE\tMODEL\tOWNER\tTRUST\tCERT EXPIRY\tCONNECTED", func(tw io.Writer) {
			for _, d := range list.Devices {
				exp := ""
				if !d.CertExpiry.IsZero() {
					exp = d.CertExpiry.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", d.ID, d.State, d.Model, d.Owner, d.TrustPath, exp, d.Connected)
			}
		})
	case "show":
		d, err := c.Device(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	case "approve":
		d, err := c.Approve(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "approved %s (state %s); it enrolls at its next request\n", d.ID, d.State)
		return nil
	case "attest":
		if err := c.Attest(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "challenge sent to %s; see: sigil devices attestations %s\n", id, id)
		return nil
	case "attestations":
		l, err := c.Attestations(ctx, id)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "TIME\tRESULT\tREASON\tPOLICY\tACTION\tEXPLANATION", func(tw io.Writer) {
			for _, r := range l.Attestations {
				pol := r.PolicyID
				if pol != "" {
					pol += fmt.Sprintf(" v%d", r.PolicyVersion)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Format(time.RFC3339), r.Result, r.Reason, pol, r.Action, r.Message)
			}
		})
	case "release":
		d, err := c.Release(ctx, id, *af.justification)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "released %s (state %s)\n", d.ID, d.State)
		return nil
	case "revoke":
		d, err := c.Revoke(ctx, id, *reason, *comment)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked every unexpired certificate of %s; it may prove itself again from its EK (decommission to shut it out)\n", d.ID)
		return nil
	case "decommission":
		d, err := c.Decommission(ctx, id, *comment)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "decommissioned %s (state %s)\n", d.ID, d.State)
		return nil
	case "cert":
		return deviceCert(ctx, c, af, id, *pemOut, stdout)
	case "rotate":
		var job api.RotationView
		if err := c.Do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(id)+"/rotate", nil, &job); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rotation %s started for %s; see: sigil rotations show %s\n", job.ID, id, job.ID)
		return nil
	}
	return usageError{"unknown devices subcommand " + sub}
}

func cmdTokens(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || (args[0] != "create" && !isHelpFlag(args[0])) {
		return usageError{"usage: sigil tokens create [--model M] [--group G] [--owner O] [--ttl 24h]"}
	}
	if args[0] == "create" {
		args = args[1:]
	}
	fs := flag.NewFlagSet("tokens create", flag.ContinueOnError)
	af := addAPIFlags(fs)
	model := fs.String("model", "", "model assigned to the enrolled device (needs secrets.write; a second person's approval under two_person_rule)")
	group := fs.String("group", "", "group assigned to the enrolled device (needs secrets.write; a second person's approval under two_person_rule)")
	owner := fs.String("owner", "", "owner assigned to the enrolled device")
	ttl := fs.Duration("ttl", 24*time.Hour, "token lifetime")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	tok, err := c.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{Model: *model, Group: *group, Owner: *owner, TTL: ttl.String()})
	if err != nil {
		return err
	}
	if *af.output == "json" {
		return printJSON(stdout, tok)
	}
	fmt.Fprintf(stdout, "token:   %s\nid:      %s\nexpires: %s\n(shown once; single use)\n", tok.Token, tok.ID, tok.Expires.Format(time.RFC3339))
	if tok.Pending && tok.Approval != nil {
		fmt.Fprintf(stdout, "pending: no device enrolls with it until a second person approves request %s (sigil approvals)\n", tok.Approval.ID)
	}
	return nil
}

func cmdPolicies(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("policies "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	device := fs.String("device", "", "golden device to learn from (learn)")
	name := fs.String("name", "", "policy name (learn)")
	pcrs := fs.String("pcrs", "", "comma-separated PCRs to learn (default: all quoted)")
	action := fs.String("action", "", "quarantine or alert (learn)")
	autoRelease := fs.Bool("auto-release", false, "a passing attestation releases a quarantined device (learn)")
	var arg string
	if sub == "show" || sub == "put" || sub == "delete" {
		var err error
		if arg, args, err = positional(args, "policies "+sub+" needs an argument"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		var out struct{ Policies []policy.Policy }
		if err := c.Do(ctx, "GET", "/api/v1/policies", nil, &out); err != nil {
			return err
		}
		return af.table(stdout, out, "ID\tVERSION\tNAME\tMODEL\tFIRMWARE\tGROUP\tACTION", func(tw io.Writer) {
			for _, p := range out.Policies {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Version, p.Name, p.Model, p.Firmware, p.Group, p.EffectiveAction())
			}
		})
	case "show":
		var p policy.Policy
		if err := c.Do(ctx, "GET", "/api/v1/policies/"+url.PathEscape(arg), nil, &p); err != nil {
			return err
		}
		return printJSON(stdout, p)
	case "put":
		f, err := os.Open(arg)
		if err != nil {
			return err
		}
		defer f.Close()
		p, err := policy.Decode(f)
		if err != nil {
			return usageError{err.Error()}
		}
		stored, err := c.PutPolicy(ctx, p)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "stored policy %s version %d\n", stored.ID, stored.Version)
		return nil
	case "delete":
		if err := c.Do(ctx, "DELETE", "/api/v1/policies/"+url.PathEscape(arg), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted policy %s\n", arg)
		return nil
	case "learn":
		req := api.LearnRequest{DeviceID: *device, Name: *name, Action: *action, AutoRelease: *autoRelease}
		for _, f := range strings.FieldsFunc(*pcrs, func(r rune) bool { return r == ',' }) {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return usageError{"--pcrs: " + err.Error()}
			}
			req.PCRs = append(req.PCRs, n)
		}
		p, err := c.LearnPolicy(ctx, req)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "learned policy %s version %d from device %s (%d PCRs)\n", p.ID, p.Version, *device, len(p.PCRs["sha256"]))
		return nil
	}
	return usageError{"unknown policies subcommand " + sub}
}

func cmdRotations(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("rotations "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	all := fs.Bool("all", false, "every active device (start)")
	group := fs.String("group", "", "devices of a group (start)")
	model := fs.String("model", "", "devices of a model (start)")
	devices := fs.String("devices", "", "comma-separated device IDs (start)")
	rate := fs.Float64("rate", 10, "rotation requests per second (start)")
	reason := fs.String("reason", "", "why (start), e.g. an incident number")
	var id string
	if sub == "show" || sub == "cancel" {
		var err error
		if id, args, err = positional(args, "rotations "+sub+" needs a job ID"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	printJob := func(j *api.RotationView) error {
		if *af.output == "json" {
			return printJSON(stdout, j)
		}
		p := j.Progress
		fmt.Fprintf(stdout, "%s  %s  renewed %d/%d (asked %d, waiting %d)  reason %q\n", j.ID, j.State, p.Renewed, p.Total, p.Sent, p.Waiting, j.Reason)
		return nil
	}
	switch sub {
	case "list":
		var out struct {
			Rotations []map[string]any `json:"rotations"`
		}
		if err := c.Do(ctx, "GET", "/api/v1/rotations", nil, &out); err != nil {
			return err
		}
		return printJSON(stdout, out)
	case "show":
		j, err := c.Rotation(ctx, id)
		if err != nil {
			return err
		}
		return printJob(j)
	case "cancel":
		var j api.RotationView
		if err := c.Do(ctx, "POST", "/api/v1/rotations/"+url.PathEscape(id)+"/cancel", nil, &j); err != nil {
			return err
		}
		return printJob(&j)
	case "start":
		req := api.RotationRequest{Rate: *rate, Reason: *reason}
		req.All, req.Group, req.Model = *all, *group, *model
		if *devices != "" {
			req.DeviceIDs = strings.Split(*devices, ",")
		}
		if err := req.Selector.Validate(); err != nil {
			return usageError{err.Error()}
		}
		j, err := c.StartRotation(ctx, req)
		if err != nil {
			return err
		}
		return printJob(j)
	}
	return usageError{"unknown rotations subcommand " + sub}
}

// subcommand splits off the subcommand (def when the next word is a flag or
// there is none).
func subcommand(args []string, def string) (string, []string) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return args[0], args[1:]
	}
	return def, args
}

// positional takes the next argument, which must not be a flag. A help
// flag is left for the command's flag parse (which answers it).
func positional(args []string, missing string) (string, []string, error) {
	if len(args) > 0 && isHelpFlag(args[0]) {
		return "", args, nil
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", args, usageError{missing}
	}
	return args[0], args[1:], nil
}

// table prints v as JSON with -o json, else as a table: the header line,
// then the rows rows writes (tab-separated).
func (f apiFlags) table(w io.Writer, v any, header string, rows func(tw io.Writer)) error {
	if *f.output == "json" {
		return printJSON(w, v)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	return tw.Flush()
}

// parse parses a command's flags (a usage error when they are bad) and
// returns the API client they name.
func (f apiFlags) parse(fs *flag.FlagSet, args []string) (*api.Client, error) {
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	return f.client()
}
