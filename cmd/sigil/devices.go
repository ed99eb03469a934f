package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/policy"
)

// Devices, enrollment tokens, reference policies and certificate
// rotations.

func devicesCommand() *command {
	const id = "a device ID"
	return &command{name: "devices", summary: "the fleet's devices: list, inspect, approve, attest, release, revoke, decommission", def: "list", subs: []*command{
		{name: "list", args: "[--state S] [-o json]", summary: "list the devices", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				state := fs.String("state", "", "only devices in this state")
				return func(ctx context.Context, x *call) error {
					list, err := x.client.Devices(ctx, *state)
					if err != nil {
						return err
					}
					return x.table(list, "ID\tSTATE\tMODEL\tOWNER\tTRUST\tCERT EXPIRY\tCONNECTED", func(tw io.Writer) {
						for _, d := range list.Devices {
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", d.ID, d.State, d.Model, d.Owner, d.TrustPath, orEmpty(d.CertExpiry), d.Connected)
						}
					})
				}
			}},
		{name: "show", args: "ID", summary: "print a device and its events (JSON)", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				d, err := x.client.Device(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return x.json(d)
			}},
		{name: "approve", args: "ID", summary: "let a device waiting for approval enroll", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				d, err := x.client.Approve(ctx, x.arg(0))
				if err != nil {
					return err
				}
				x.printf("approved %s (state %s); it enrolls at its next request\n", d.ID, d.State)
				return nil
			}},
		{name: "attest", args: "ID", summary: "challenge a device to attest now", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				if err := x.client.Attest(ctx, x.arg(0)); err != nil {
					return err
				}
				x.printf("challenge sent to %s; see: sigil devices attestations %s\n", x.arg(0), x.arg(0))
				return nil
			}},
		{name: "attestations", args: "ID [-o json]", summary: "list a device's attestation verdicts, newest first", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				l, err := x.client.Attestations(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return x.table(l, "TIME\tRESULT\tREASON\tPOLICY\tACTION\tEXPLANATION", func(tw io.Writer) {
					for _, r := range l.Attestations {
						pol := r.PolicyID
						if pol != "" {
							pol += fmt.Sprintf(" v%d", r.PolicyVersion)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", rfc3339(r.Time), r.Result, r.Reason, pol, r.Action, r.Message)
					}
				})
			}},
		{name: "release", args: "ID --justification TEXT", summary: "release a quarantined device", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				d, err := x.client.Release(ctx, x.arg(0), x.justification())
				if err != nil {
					return err
				}
				x.printf("released %s (state %s)\n", d.ID, d.State)
				return nil
			}},
		{name: "revoke", args: "ID [--reason R] [--comment C]", summary: "revoke every unexpired certificate of a device", conn: connClient, pos: []string{id},
			setup: func(fs *flag.FlagSet) action {
				reason := fs.String("reason", "", "RFC 5280 reason name, e.g. keyCompromise")
				comment := fs.String("comment", "", "note recorded with the revocation")
				return func(ctx context.Context, x *call) error {
					d, err := x.client.Revoke(ctx, x.arg(0), *reason, *comment)
					if err != nil {
						return err
					}
					x.printf("revoked every unexpired certificate of %s; it may prove itself again from its EK (decommission to shut it out)\n", d.ID)
					return nil
				}
			}},
		{name: "decommission", args: "ID [--comment C]", summary: "shut a device out for good", conn: connClient, pos: []string{id},
			setup: func(fs *flag.FlagSet) action {
				comment := fs.String("comment", "", "note recorded with the decommissioning")
				return func(ctx context.Context, x *call) error {
					d, err := x.client.Decommission(ctx, x.arg(0), *comment)
					if err != nil {
						return err
					}
					x.printf("decommissioned %s (state %s)\n", d.ID, d.State)
					return nil
				}
			}},
		{name: "rotate", args: "ID", summary: "renew a device's certificate now", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				var job api.RotationView
				if err := x.client.Do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(x.arg(0))+"/rotate", nil, &job); err != nil {
					return err
				}
				x.printf("rotation %s started for %s; see: sigil rotations show %s\n", job.ID, x.arg(0), job.ID)
				return nil
			}},
		{name: "cert", args: "ID [--pem] [-o json]", summary: "show a device's current certificate (an X509-SVID) with its SPIFFE ID",
			note: "With --pem: its chain as PEM (the certificate, then its issuing CA root), for openssl and other tools.",
			conn: connClient, pos: []string{id},
			setup: func(fs *flag.FlagSet) action {
				asPEM := fs.Bool("pem", false, "print the certificate chain as PEM")
				return func(ctx context.Context, x *call) error {
					v, err := x.client.DeviceCertificate(ctx, x.arg(0))
					if err != nil {
						return err
					}
					if *asPEM {
						_, err := io.WriteString(x.stdout, v.ChainPEM)
						return err
					}
					return x.table(v, "SPIFFE ID\tSERIAL\tNOT BEFORE\tNOT AFTER\tISSUER\tREVOKED", func(tw io.Writer) {
						issuer := fmt.Sprintf("%s (%s)", v.Issuer.Subject, v.Issuer.State)
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", v.SPIFFEID, v.Serial, rfc3339(v.NotBefore), rfc3339(v.NotAfter), issuer, v.Revoked)
					})
				}
			}},
	}}
}

func tokensCommand() *command {
	return &command{name: "tokens", summary: "enrollment tokens for devices without a trusted EK certificate", subs: []*command{
		{name: "create", args: "[--model M] [--group G] [--owner O] [--ttl 24h] [-o json]", summary: "create a single-use enrollment token (shown once)", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				model := fs.String("model", "", "model assigned to the enrolled device (needs secrets.write; a second person's approval under two_person_rule)")
				group := fs.String("group", "", "group assigned to the enrolled device (needs secrets.write; a second person's approval under two_person_rule)")
				owner := fs.String("owner", "", "owner assigned to the enrolled device")
				ttl := fs.Duration("ttl", 24*time.Hour, "token lifetime")
				return func(ctx context.Context, x *call) error {
					tok, err := x.client.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{Model: *model, Group: *group, Owner: *owner, TTL: ttl.String()})
					if err != nil {
						return err
					}
					return x.either(tok, func() {
						x.printf("token:   %s\nid:      %s\nexpires: %s\n(shown once; single use)\n", tok.Token, tok.ID, rfc3339(tok.Expires))
						if tok.Pending && tok.Approval != nil {
							x.printf("pending: no device enrolls with it until a second person approves request %s (sigil approvals)\n", tok.Approval.ID)
						}
					})
				}
			}},
	}}
}

func policiesCommand() *command {
	return &command{name: "policies", summary: "reference policies: the expected PCR values and event-log rules attestation checks", def: "list", subs: []*command{
		{name: "list", args: "[-o json]", summary: "list the policies", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				var out struct{ Policies []policy.Policy }
				if err := x.client.Do(ctx, "GET", "/api/v1/policies", nil, &out); err != nil {
					return err
				}
				return x.table(out, "ID\tVERSION\tNAME\tMODEL\tFIRMWARE\tGROUP\tACTION", func(tw io.Writer) {
					for _, p := range out.Policies {
						fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Version, p.Name, p.Model, p.Firmware, p.Group, p.EffectiveAction())
					}
				})
			}},
		{name: "show", args: "ID", summary: "print a policy (JSON)", conn: connClient, pos: []string{"a policy ID"},
			run: func(ctx context.Context, x *call) error {
				var p policy.Policy
				if err := x.client.Do(ctx, "GET", "/api/v1/policies/"+url.PathEscape(x.arg(0)), nil, &p); err != nil {
					return err
				}
				return x.json(p)
			}},
		{name: "learn", args: "--device ID --name NAME [--pcrs 0,1,7] [--action quarantine|alert] [--auto-release]",
			summary: "store a policy learned from a golden device's last attestation", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				device := fs.String("device", "", "golden device to learn from")
				name := fs.String("name", "", "policy name")
				pcrs := fs.String("pcrs", "", "comma-separated PCRs to learn (default: all quoted)")
				act := fs.String("action", "", "quarantine or alert")
				autoRelease := fs.Bool("auto-release", false, "a passing attestation releases a quarantined device")
				return func(ctx context.Context, x *call) error {
					req := api.LearnRequest{DeviceID: *device, Name: *name, Action: *act, AutoRelease: *autoRelease}
					for _, f := range strings.FieldsFunc(*pcrs, func(r rune) bool { return r == ',' }) {
						n, err := strconv.Atoi(strings.TrimSpace(f))
						if err != nil {
							return usageError{"--pcrs: " + err.Error()}
						}
						req.PCRs = append(req.PCRs, n)
					}
					p, err := x.client.LearnPolicy(ctx, req)
					if err != nil {
						return err
					}
					x.printf("learned policy %s version %d from device %s (%d PCRs)\n", p.ID, p.Version, *device, len(p.PCRs["sha256"]))
					return nil
				}
			}},
		{name: "put", args: "FILE", summary: "store a policy from a JSON file (a new version of its ID)", conn: connClient, pos: []string{"a policy file (JSON)"},
			run: func(ctx context.Context, x *call) error {
				f, err := os.Open(x.arg(0))
				if err != nil {
					return err
				}
				defer f.Close()
				p, err := policy.Decode(f)
				if err != nil {
					return usageError{err.Error()}
				}
				stored, err := x.client.PutPolicy(ctx, p)
				if err != nil {
					return err
				}
				x.printf("stored policy %s version %d\n", stored.ID, stored.Version)
				return nil
			}},
		{name: "delete", args: "ID", summary: "delete a policy", conn: connClient, pos: []string{"a policy ID"},
			run: func(ctx context.Context, x *call) error {
				if err := x.client.Do(ctx, "DELETE", "/api/v1/policies/"+url.PathEscape(x.arg(0)), nil, nil); err != nil {
					return err
				}
				x.printf("deleted policy %s\n", x.arg(0))
				return nil
			}},
	}}
}

func rotationsCommand() *command {
	printJob := func(x *call, j *api.RotationView) error {
		return x.either(j, func() {
			p := j.Progress
			x.printf("%s  %s  renewed %d/%d (asked %d, waiting %d)  reason %q\n", j.ID, j.State, p.Renewed, p.Total, p.Sent, p.Waiting, j.Reason)
		})
	}
	return &command{name: "rotations", summary: "certificate rotation jobs: renew many devices' certificates at a bounded rate", def: "list", subs: []*command{
		{name: "list", summary: "list the rotation jobs (JSON)", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				var out struct {
					Rotations []map[string]any `json:"rotations"`
				}
				if err := x.client.Do(ctx, "GET", "/api/v1/rotations", nil, &out); err != nil {
					return err
				}
				return x.json(out)
			}},
		{name: "show", args: "ID [-o json]", summary: "show a job's progress", conn: connClient, pos: []string{"a job ID"},
			run: func(ctx context.Context, x *call) error {
				j, err := x.client.Rotation(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return printJob(x, j)
			}},
		{name: "cancel", args: "ID [-o json]", summary: "cancel a job", conn: connClient, pos: []string{"a job ID"},
			run: func(ctx context.Context, x *call) error {
				var j api.RotationView
				if err := x.client.Do(ctx, "POST", "/api/v1/rotations/"+url.PathEscape(x.arg(0))+"/cancel", nil, &j); err != nil {
					return err
				}
				return printJob(x, &j)
			}},
		{name: "start", args: "(--all | --group G | --model M | --devices ID,ID) [--rate N] [--reason R]", summary: "start a rotation job", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				all := fs.Bool("all", false, "every active device")
				group := fs.String("group", "", "devices of a group")
				model := fs.String("model", "", "devices of a model")
				devices := fs.String("devices", "", "comma-separated device IDs")
				rate := fs.Float64("rate", 10, "rotation requests per second")
				reason := fs.String("reason", "", "why, e.g. an incident number")
				return func(ctx context.Context, x *call) error {
					req := api.RotationRequest{Rate: *rate, Reason: *reason}
					req.All, req.Group, req.Model = *all, *group, *model
					if *devices != "" {
						req.DeviceIDs = strings.Split(*devices, ",")
					}
					if err := req.Selector.Validate(); err != nil {
						return usageError{err.Error()}
					}
					j, err := x.client.StartRotation(ctx, req)
					if err != nil {
						return err
					}
					return printJob(x, j)
				}
			}},
	}}
}
