package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/config"
)

// cmdSecrets: sigil secrets list | put NAME | schedule NAME | rotate NAME |
// delete NAME | device ID.
// put reads the value from --file, or from stdin when no file is given
// (never from a flag, which would leave it in shell history and ps).
func cmdSecrets(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("secrets "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	file := fs.String("file", "", "read the value from this file (put; default stdin)")
	device := fs.String("device", "", "target: one device ID (put)")
	group := fs.String("group", "", "target: devices of this group (put)")
	model := fs.String("model", "", "target: devices of this model (put)")
	pcrBound := fs.Bool("pcr-bound", false, "seal to the device's attested PCR values (put)")
	every := fs.Duration("every", 0, "rotate: generate a new random value this often (schedule)")
	grace := fs.Duration("grace", 0, "keep the replaced version valid this long (schedule)")
	length := fs.Int("length", 32, "random bytes per generated value (schedule)")
	encoding := fs.String("encoding", "base64url", "generated value encoding: base64url, hex or raw (schedule)")
	var arg string
	if sub != "list" {
		var err error
		if arg, args, err = positional(args, "secrets "+sub+" needs an argument"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		l, err := c.Secrets(ctx)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "NAME\tVERSION\tTARGET\tPCR BOUND\tACKED\tPENDING\tFAILED\tCREATED", func(tw io.Writer) {
			for _, s := range l.Secrets {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%v\t%d\t%d\t%d\t%s\n", s.Name, s.Version, targetText(s.Target), s.PCRBound,
					s.Delivery.Acked, s.Delivery.Pending, s.Delivery.Failed, s.Created.Format(time.RFC3339))
			}
		})
	case "put":
		var value []byte
		if *file != "" {
			value, err = os.ReadFile(*file)
		} else {
			value, err = io.ReadAll(io.LimitReader(stdin, secrets.MaxValue+2))
			value = bytes.TrimSuffix(value, []byte("\n")) // `echo x | sigil secrets put` stores "x"
		}
		if err != nil {
			return err
		}
		defer clear(value)
		if len(value) == 0 || len(value) > secrets.MaxValue {
			return usageError{fmt.Sprintf("the value must be 1 to %d bytes", secrets.MaxValue)}
		}
		info, err := c.PutSecret(ctx, arg, value, secrets.Target{Device: *device, Group: *group, Model: *model}, *pcrBound)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "stored secret %s version %d for %s; delivery: sigil secrets list\n", info.Name, info.Version, targetText(info.Target))
		return nil
	case "schedule":
		if *every == 0 {
			if err := c.SetSecretRotation(ctx, arg, nil); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "secret %s: rotation schedule cleared\n", arg)
			return nil
		}
		r := &secrets.Rotation{Every: config.Duration(*every), Grace: config.Duration(*grace), Length: *length, Encoding: *encoding}
		if err := r.Validate(); err != nil {
			return usageError{err.Error()}
		}
		if err := c.SetSecretRotation(ctx, arg, r); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "secret %s: a new random value every %s, the replaced one valid %s more\n", arg, *every, *grace)
		return nil
	case "rotate":
		info, err := c.RotateSecret(ctx, arg)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "secret %s rotated to version %d\n", info.Name, info.Version)
		return nil
	case "delete":
		if err := c.DeleteSecret(ctx, arg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted secret %s (devices keep what they imported)\n", arg)
		return nil
	case "device":
		l, err := c.DeviceSecrets(ctx, arg)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "NAME\tLATEST\tSENT\tACKED\tPCR BOUND\tERROR", func(tw io.Writer) {
			for _, s := range l.Secrets {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%v\t%s\n", s.Name, s.Latest, s.Sent, s.Acked, s.PCRBound, s.Error)
			}
		})
	}
	return usageError{"unknown secrets subcommand " + sub}
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
