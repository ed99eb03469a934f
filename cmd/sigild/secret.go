package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/state"
)

// exitNoSecret: `secret get` for a secret the device does not hold.
const exitNoSecret = 4

// cmdSecret runs `sigild secret get NAME` and `sigild secret list`. get
// writes the unsealed value to stdout exactly, without a newline; the
// value is unsealed through the TPM in this process, never by the daemon.
func cmdSecret(args []string, stdout, stderr io.Writer) int {
	sub := ""
	if len(args) > 0 {
		sub = args[0]
	}
	switch {
	case sub == "get" || sub == "list":
		args = args[1:]
	case isHelpFlag(sub):
		sub = "get|list" // the flags of both
	default:
		fmt.Fprint(stderr, "usage: sigild secret get NAME [--version N] [--config FILE] | sigild secret list [--config FILE] [--json]\n")
		return exitUsage
	}
	var name string
	if sub == "get" && (len(args) == 0 || !isHelpFlag(args[0])) {
		if len(args) == 0 || args[0] == "" || args[0][0] == '-' {
			fmt.Fprintln(stderr, "sigild: secret get needs a secret name")
			return exitUsage
		}
		name, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("secret "+sub, flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON (list)")
	version := fs.Int("version", 0, "version to open (get): 0 the current one, or the replaced one during its grace period")
	cfg, code, done := loadConfig(fs, args, stdout, stderr)
	if done {
		return code
	}
	if sub == "list" {
		l, err := agent.Secrets(cfg)
		if err != nil {
			fmt.Fprintln(stderr, "sigild:", err)
			return exitError
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(l)
			return exitOK
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tVERSION\tPCR BOUND\tRECEIVED\tPREVIOUS")
		for _, s := range l {
			prev := "-"
			if s.Previous > 0 {
				prev = fmt.Sprintf("v%d until %s", s.Previous, s.PreviousUntil.Format(time.RFC3339))
			}
			fmt.Fprintf(tw, "%s\t%d\t%v\t%s\t%s\n", s.Name, s.Version, s.PCRBound, s.Received.Format(time.RFC3339), prev)
		}
		_ = tw.Flush()
		return exitOK
	}
	v, err := agent.Unseal(cfg, name, *version)
	if err != nil {
		fmt.Fprintln(stderr, "sigild:", err)
		if errors.Is(err, state.ErrNoSecret) {
			return exitNoSecret
		}
		return exitError
	}
	_, err = stdout.Write(v)
	clear(v)
	if err != nil {
		fmt.Fprintln(stderr, "sigild:", err)
		return exitError
	}
	return exitOK
}

// isHelpFlag reports whether arg asks for help, as the flag package
// understands it.
func isHelpFlag(arg string) bool {
	switch arg {
	case "-h", "--h", "-help", "--help":
		return true
	}
	return false
}
