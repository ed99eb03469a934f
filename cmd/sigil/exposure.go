package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/exposure"
)

// firmwareSBOMCommands are `sigil firmware sbom` and `sigil firmware
// components`: a release's software bill of materials.
func firmwareSBOMCommands() []*command {
	const id = "a release ID"
	printComponents := func(x *call, l *api.ComponentList) error {
		return x.table(l, "PURL\tNAME\tVERSION", func(tw io.Writer) {
			for _, c := range l.Components {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", c.PURL, c.Name, c.Version)
			}
		})
	}
	return []*command{
		{name: "sbom", args: "ID FILE [-o json]", summary: "attach a release's SBOM, CycloneDX or SPDX JSON (the one its signed manifest binds)", conn: connClient,
			pos: []string{id, "an SBOM file"},
			run: func(ctx context.Context, x *call) error {
				b, err := os.ReadFile(x.arg(1))
				if err != nil {
					return err
				}
				l, err := x.client.PutSBOM(ctx, x.arg(0), b)
				if err != nil {
					return err
				}
				return printComponents(x, l)
			}},
		{name: "components", args: "ID [-o json]", summary: "list a release's components (from its SBOM)", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				l, err := x.client.Components(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return printComponents(x, l)
			}},
	}
}

// exposureCommand is `sigil exposure query | import | advisories | report`.
func exposureCommand() *command {
	printFindings := func(x *call, fs []exposure.Finding) {
		x.plainTable("DEVICE\tGROUP\tMODEL\tOWNER\tRELEASE\tVERSION\tCOMPONENT\tFIXED\tFIX RELEASE\tFIRST SEEN\tCAMPAIGN", func(tw io.Writer) {
			for _, f := range fs {
				camp := f.Campaign
				if camp != "" {
					camp += " (" + f.CampaignStep + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.DeviceID, f.Group, f.Model, f.Owner, f.Release, f.Version,
					f.Component.PURL, f.Fixed, f.FixRelease, rfc3339(f.FirstSeen), camp)
			}
		})
	}
	printReport := func(x *call, r *exposure.Report) error {
		return x.either(r, func() {
			x.printf("advisory %s%s: %d exposed device(s), %d of unknown release\n", r.Advisory.ID, aliases(r.Advisory.Aliases), len(r.Devices), r.Unknown)
			if len(r.Devices) > 0 {
				printFindings(x, r.Devices)
			}
		})
	}
	return &command{name: "exposure", summary: "software inventory and vulnerability exposure: which devices run a component, as attested", def: "advisories",
		note: "A device's release is the one its TPM attested (the image measured into the firmware PCR), never the version it claims.",
		subs: []*command{
			{name: "query", args: "--purl P [--range R] [-o json]", summary: "list the devices running a component (package URL) in a version range", conn: connClient,
				setup: func(fs *flag.FlagSet) action {
					purl := fs.String("purl", "", "package URL of the component (its version is ignored), e.g. pkg:deb/debian/openssl")
					rng := fs.String("range", "", `version range, e.g. ">= 3.0.0, < 3.0.8" (default: any version)`)
					return func(ctx context.Context, x *call) error {
						if *purl == "" {
							return usageError{"exposure query needs --purl"}
						}
						l, err := x.client.Exposure(ctx, *purl, *rng)
						if err != nil {
							return err
						}
						return x.either(l, func() { printFindings(x, l.Devices) })
					}
				}},
			{name: "import", args: "FILE [-o json]", summary: "import an OSV JSON advisory and print the devices it exposes", conn: connClient, pos: []string{"an OSV JSON file"},
				run: func(ctx context.Context, x *call) error {
					b, err := os.ReadFile(x.arg(0))
					if err != nil {
						return err
					}
					r, err := x.client.ImportAdvisory(ctx, b)
					if err != nil {
						return err
					}
					return printReport(x, r)
				}},
			{name: "advisories", args: "[-o json]", summary: "list the imported advisories", conn: connClient,
				run: listing((*api.Client).Advisories, "ADVISORY", func(tw io.Writer, l *api.AdvisoryList) {
					for _, id := range l.Advisories {
						fmt.Fprintln(tw, id)
					}
				})},
			{name: "report", args: "ID [--format text|json|csv] [--out F]", summary: "the exposure report of an advisory now (JSON and CSV for a vulnerability report)",
				conn: connClient, pos: []string{"an advisory ID"},
				setup: func(fs *flag.FlagSet) action {
					format := fs.String("format", "text", "text, json or csv")
					out := fs.String("out", "", "file to write (default: standard output)")
					return func(ctx context.Context, x *call) (err error) {
						w := x.stdout
						if *out != "" {
							f, cerr := os.Create(*out)
							if cerr != nil {
								return cerr
							}
							// The report is buffered: a write that fails is
							// reported by Flush or Close, whichever format.
							bw := bufio.NewWriter(f)
							defer func() {
								if ferr := errors.Join(bw.Flush(), f.Close()); err == nil {
									err = ferr
								}
							}()
							w = bw
						}
						switch *format {
						case "csv":
							b, err := x.client.AdvisoryReportCSV(ctx, x.arg(0))
							if err != nil {
								return err
							}
							_, err = w.Write(b)
							return err
						case "json", "text":
							r, err := x.client.AdvisoryReport(ctx, x.arg(0))
							if err != nil {
								return err
							}
							if *format == "json" || x.jsonOut() {
								return r.WriteJSON(w)
							}
							y := *x
							y.stdout = w
							return printReport(&y, r)
						default:
							return usageError{"--format: text, json or csv"}
						}
					}
				}},
		}}
}

func aliases(a []string) string {
	if len(a) == 0 {
		return ""
	}
	return " (" + strings.Join(a, ", ") + ")"
}
