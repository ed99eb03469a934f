package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Help, generated from the command table: `sigil`, `sigil help` and
// `sigil --help` list the commands; `sigil CMD --help` a command's
// subcommands with their synopses; `sigil CMD SUB --help` (-h, or `sigil
// help CMD SUB`) one command's synopsis and flags. Help goes to stdout
// and exits 0.

// apiNote is what the help of every API command ends with.
const apiNote = `API commands find the server, token and CA from --server/--token/--ca, the
SIGIL_SERVER/SIGIL_TOKEN/SIGIL_CA environment, or --data-dir (default
/var/lib/sigil, where sigil serve writes admin.token and ca/ca.crt).
`

// printUsage writes the list of commands.
func printUsage(w io.Writer, root *command) {
	fmt.Fprintln(w, "usage: sigil COMMAND [SUBCOMMAND] [ARGUMENTS] [FLAGS]")
	fmt.Fprintln(w, "\ncommands:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range root.subs {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nsigil COMMAND --help lists a command's subcommands; sigil COMMAND SUBCOMMAND --help")
	fmt.Fprintln(w, "shows one with its flags. Exit status:")
	for _, e := range exitCodes() {
		fmt.Fprintf(w, "  %d  %s\n", e.code, e.what)
	}
	fmt.Fprintln(w)
	fmt.Fprint(w, apiNote)
	fmt.Fprintln(w, "\nThe demo, the benchmarks and simulated devices are sigil-sim's")
	fmt.Fprintln(w, "(sigil-sim demo, sigil-sim bench).")
}

// synopses returns the usage lines of c (at path) and of every command
// below it that runs, each with its summary.
func synopses(c *command, path []string) (lines, summaries []string) {
	c.walk(path, func(d *command, p []string) {
		if !d.runs() {
			return
		}
		lines = append(lines, synopsis(d, p))
		summaries = append(summaries, d.summary)
	})
	return lines, summaries
}

// synopsis is a command's usage line: "sigil devices show ID [-o json]".
func synopsis(c *command, path []string) string {
	s := "sigil " + strings.Join(path, " ")
	if c.args != "" {
		s += " " + c.args
	}
	return s
}

// printHelp writes the help of the command at path.
func printHelp(w io.Writer, c *command, path []string) {
	lines, summaries := synopses(c, path)
	fmt.Fprintln(w, "usage:")
	for i, line := range lines {
		fmt.Fprintf(w, "  %s\n", line)
		if len(lines) > 1 {
			fmt.Fprintf(w, "      %s\n", summaries[i])
		}
	}
	if len(lines) == 1 || !c.runs() {
		fmt.Fprintf(w, "\n%s\n", capitalize(c.summary))
	}
	if c.note != "" {
		fmt.Fprintf(w, "\n%s\n", c.note)
	}
	if c.def != "" {
		fmt.Fprintf(w, "\nWith no subcommand (or only flags): sigil %s %s.\n", strings.Join(path, " "), c.def)
	}
	if !c.runs() {
		fmt.Fprintf(w, "\nsigil %s SUBCOMMAND --help shows a subcommand's flags.\n", strings.Join(path, " "))
		return
	}
	fs, _, _ := c.flagSet(path)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	if c.conn != connNone {
		fmt.Fprintf(w, "\n%s", apiNote)
	}
}

// capitalize upper-cases the first letter of a summary and ends it with a
// period, for a sentence of its own.
func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:] + "."
}

// helpCommand is `sigil help [COMMAND [SUBCOMMAND]]`.
func helpCommand() *command {
	return &command{name: "help", args: "[COMMAND [SUBCOMMAND]]", summary: "show the usage of sigil or of one of its commands",
		run: func(_ context.Context, x *call) error {
			c, path := x.root, []string(nil)
			for _, w := range x.args {
				s := c.sub(w)
				if s == nil {
					return usageError{fmt.Sprintf("sigil help: no command %q", strings.Join(append(path, w), " "))}
				}
				c, path = s, append(path, w)
			}
			if len(path) == 0 {
				printUsage(x.stdout, x.root)
				return nil
			}
			printHelp(x.stdout, c, path)
			return nil
		}}
}
