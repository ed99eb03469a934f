package main

import (
	"context"
	"flag"
	"io"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/ca"
)

// caCommand is `sigil ca status|prepare|activate|retire`: the fleet CA's
// generations and their rotation.
func caCommand() *command {
	printGens := func(x *call, gens []ca.Generation, verb string) {
		for _, g := range gens {
			x.printf("%s G%d %s\n", verb, g.N, g.Subject)
		}
	}
	return &command{name: "ca", summary: "the fleet CA's generations and their rotation", def: "status", subs: []*command{
		{name: "status", args: "[--bundle] [-o json]", summary: "list the CA generations", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				bundle := fs.Bool("bundle", false, "print the trust bundle PEM")
				return func(ctx context.Context, x *call) error {
					v, err := x.client.CA(ctx)
					if err != nil {
						return err
					}
					if *bundle {
						_, err := io.WriteString(x.stdout, v.BundlePEM)
						return err
					}
					return x.either(v, func() {
						for _, g := range v.Generations {
							x.printf("G%d  %-10s  %s  not after %s  sha256 %s\n", g.N, g.State, g.Subject, g.NotAfter.Format("2006-01-02"), g.Fingerprint[:16])
						}
					})
				}
			}},
		{name: "prepare", args: "[-o json]", summary: "create the next generation and send its root to the devices", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				g, err := x.client.PrepareCA(ctx)
				if err != nil {
					return err
				}
				return x.either(g, func() {
					x.printf("prepared G%d %s; connected devices received the new trust bundle\n", g.N, g.Subject)
				})
			}},
		{name: "activate", args: "[--rate N|-1] [-o json]", summary: "issue from the prepared generation and re-issue every device's certificate", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				rate := fs.Float64("rate", 10, "re-issue rate in devices per second after activation; -1 for no re-issue")
				return func(ctx context.Context, x *call) error {
					if *rate == 0 || *rate < -1 {
						return usageError{"--rate must be positive, or -1 for no re-issue"}
					}
					v, err := x.client.ActivateCA(ctx, *rate)
					if err != nil {
						return err
					}
					return x.either(v, func() { activated(x, v) })
				}
			}},
		{name: "retire", args: "[-o json]", summary: "drop the generations older than the active one from the trust bundle", conn: connClient,
			note: "With a broker pool, refused (409) while a broker presents a certificate of a generation to retire, or cannot be checked: " +
				"re-issue the brokers' certificates (sigil broker-config) and reload them first.",
			run: func(ctx context.Context, x *call) error {
				gens, err := x.client.RetireCA(ctx)
				if err != nil {
					return err
				}
				return x.either(gens, func() { printGens(x, gens, "retired") })
			}},
	}}
}

func activated(x *call, v *api.CAActivateResponse) {
	x.printf("activated G%d %s\n", v.Generation.N, v.Generation.Subject)
	if v.Rotation != nil {
		x.printf("re-issuing %d devices: job %s (sigil rotations show %s)\n", v.Rotation.Progress.Total, v.Rotation.ID, v.Rotation.ID)
	}
}
