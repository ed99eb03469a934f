package main

import (
	"context"
	"flag"
	"fmt"
	"io"
)

// cmdCA is `sigil ca status|prepare|activate|retire`: the fleet CA's
// generations and their rotation.
func cmdCA(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "status")
	fs := flag.NewFlagSet("ca "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	rate := fs.Float64("rate", 10, "re-issue rate in devices per second after activation (activate); -1 for no re-issue")
	bundle := fs.Bool("bundle", false, "print the trust bundle PEM (status)")
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "status":
		v, err := c.CA(ctx)
		if err != nil {
			return err
		}
		if *bundle {
			_, err := io.WriteString(stdout, v.BundlePEM)
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, v)
		}
		for _, g := range v.Generations {
			fmt.Fprintf(stdout, "G%d  %-10s  %s  not after %s  sha256 %s\n", g.N, g.State, g.Subject, g.NotAfter.Format("2006-01-02"), g.Fingerprint[:16])
		}
		return nil
	case "prepare":
		g, err := c.PrepareCA(ctx)
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, g)
		}
		fmt.Fprintf(stdout, "prepared G%d %s; connected devices received the new trust bundle\n", g.N, g.Subject)
		return nil
	case "activate":
		if *rate == 0 || *rate < -1 {
			return usageError{"--rate must be positive, or -1 for no re-issue"}
		}
		v, err := c.ActivateCA(ctx, *rate)
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, v)
		}
		fmt.Fprintf(stdout, "activated G%d %s\n", v.Generation.N, v.Generation.Subject)
		if v.Rotation != nil {
			fmt.Fprintf(stdout, "re-issuing %d devices: job %s (sigil rotations show %s)\n", v.Rotation.Progress.Total, v.Rotation.ID, v.Rotation.ID)
		}
		return nil
	case "retire":
		gens, err := c.RetireCA(ctx)
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, gens)
		}
		for _, g := range gens {
			fmt.Fprintf(stdout, "retired G%d %s\n", g.N, g.Subject)
		}
		return nil
	}
	return usageError{"unknown ca subcommand " + sub}
}
