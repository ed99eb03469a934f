package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/config"
)

// secretsCommand is `sigil secrets list | put NAME | schedule NAME |
// rotate NAME | delete NAME | device ID`. put reads the value from --file,
// or from stdin when no file is given (never from a flag, which would
// leave it in shell history and ps).
func secretsCommand() *command {
	const name = "a secret name"
	return &command{name: "secrets", summary: "secrets delivered to devices, sealed to their TPM", def: "list", subs: []*command{
		{name: "list", args: "[-o json]", summary: "list the secrets and their delivery", conn: connClient,
			run: listing((*api.Client).Secrets, "NAME\tVERSION\tTARGET\tPCR BOUND\tACKED\tPENDING\tFAILED\tCREATED", func(tw io.Writer, l *api.SecretList) {
				for _, s := range l.Secrets {
					fmt.Fprintf(tw, "%s\t%d\t%s\t%v\t%d\t%d\t%d\t%s\n", s.Name, s.Version, targetText(s.Target), s.PCRBound,
						s.Delivery.Acked, s.Delivery.Pending, s.Delivery.Failed, rfc3339(s.Created))
				}
			})},
		{name: "device", args: "ID [-o json]", summary: "list what a device was sent and imported", conn: connClient, pos: []string{"a device ID"},
			run: func(ctx context.Context, x *call) error {
				l, err := x.client.DeviceSecrets(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return x.table(l, "NAME\tLATEST\tSENT\tACKED\tPCR BOUND\tERROR", func(tw io.Writer) {
					for _, s := range l.Secrets {
						fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%v\t%s\n", s.Name, s.Latest, s.Sent, s.Acked, s.PCRBound, s.Error)
					}
				})
			}},
		{name: "put", args: "NAME (--device ID | --group G | --model M) [--pcr-bound] [--file F]", summary: "store a new version of a secret (value from F or stdin)",
			conn: connClient, pos: []string{name},
			setup: func(fs *flag.FlagSet) action {
				file := fs.String("file", "", "read the value from this file (default stdin)")
				device := fs.String("device", "", "target: one device ID")
				group := fs.String("group", "", "target: devices of this group")
				model := fs.String("model", "", "target: devices of this model")
				pcrBound := fs.Bool("pcr-bound", false, "seal to the device's attested PCR values")
				return func(ctx context.Context, x *call) error {
					var value []byte
					var err error
					if *file != "" {
						value, err = os.ReadFile(*file)
					} else {
						value, err = io.ReadAll(io.LimitReader(x.stdin, secrets.MaxValue+2))
						value = bytes.TrimSuffix(value, []byte("\n")) // `echo x | sigil secrets put` stores "x"
					}
					if err != nil {
						return err
					}
					defer clear(value)
					if len(value) == 0 || len(value) > secrets.MaxValue {
						return usageError{fmt.Sprintf("the value must be 1 to %d bytes", secrets.MaxValue)}
					}
					info, err := x.client.PutSecret(ctx, x.arg(0), value, secrets.Target{Device: *device, Group: *group, Model: *model}, *pcrBound)
					if err != nil {
						return err
					}
					x.printf("stored secret %s version %d for %s; delivery: sigil secrets list\n", info.Name, info.Version, targetText(info.Target))
					return nil
				}
			}},
		{name: "schedule", args: "NAME --every D [--grace D] [--length N] [--encoding base64url|hex|raw]", summary: "rotate a secret to a new random value on a schedule (--every 0 clears)",
			conn: connClient, pos: []string{name},
			setup: func(fs *flag.FlagSet) action {
				every := fs.Duration("every", 0, "generate a new random value this often; 0 clears the schedule")
				grace := fs.Duration("grace", 0, "keep the replaced version valid this long")
				length := fs.Int("length", 32, "random bytes per generated value")
				encoding := fs.String("encoding", "base64url", "generated value encoding: base64url, hex or raw")
				return func(ctx context.Context, x *call) error {
					name := x.arg(0)
					if *every == 0 {
						if err := x.client.SetSecretRotation(ctx, name, nil); err != nil {
							return err
						}
						x.printf("secret %s: rotation schedule cleared\n", name)
						return nil
					}
					r := &secrets.Rotation{Every: config.Duration(*every), Grace: config.Duration(*grace), Length: *length, Encoding: *encoding}
					if err := r.Validate(); err != nil {
						return usageError{err.Error()}
					}
					if err := x.client.SetSecretRotation(ctx, name, r); err != nil {
						return err
					}
					x.printf("secret %s: a new random value every %s, the replaced one valid %s more\n", name, *every, *grace)
					return nil
				}
			}},
		{name: "rotate", args: "NAME", summary: "rotate a scheduled secret to a new random value now", conn: connClient, pos: []string{name},
			run: func(ctx context.Context, x *call) error {
				info, err := x.client.RotateSecret(ctx, x.arg(0))
				if err != nil {
					return err
				}
				x.printf("secret %s rotated to version %d\n", info.Name, info.Version)
				return nil
			}},
		{name: "delete", args: "NAME", summary: "delete a secret (devices keep what they imported)", conn: connClient, pos: []string{name},
			run: func(ctx context.Context, x *call) error {
				if err := x.client.DeleteSecret(ctx, x.arg(0)); err != nil {
					return err
				}
				x.printf("deleted secret %s (devices keep what they imported)\n", x.arg(0))
				return nil
			}},
	}}
}

func targetText(t secrets.Target) string {
	var parts []string
	for _, kv := range [][2]string{{"device", t.Device}, {"group", t.Group}, {"model", t.Model}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	return strings.Join(parts, ",")
}
