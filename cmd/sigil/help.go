package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Help: every command and subcommand answers -h and --help with its usage
// on stdout and exit status 0, before doing anything else. A command's
// flag parse (parseFlags) meets the help flag and returns a helpError with
// the command's flag set; run prints the command's lines of the usage text
// (the one list of what sigil accepts) and its flags.

// helpError is a request for a command's help, met by its flag parse.
type helpError struct{ fs *flag.FlagSet }

func (helpError) Error() string { return "help requested" }

// parseFlags parses a command's flags: -h or --help yields a helpError,
// other mistakes a usage error that points to the help.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard) // run prints the help, on stdout
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return helpError{fs}
	case err != nil:
		return usageError{fmt.Sprintf("%v (sigil %s --help lists the flags)", err, fs.Name())}
	}
	return nil
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

// printHelp writes the help of the command whose flag set is fs (named
// "cmd" or "cmd sub"): its lines of the usage text, and its flags.
func printHelp(w io.Writer, fs *flag.FlagSet) {
	cmd, sub, _ := strings.Cut(fs.Name(), " ")
	var all, matched []string
	for _, line := range strings.Split(usage, "\n") {
		c, subs, ok := usageLine(line)
		if !ok || c != cmd {
			continue
		}
		all = append(all, line)
		if sub != "" && slices.Contains(subs, sub) {
			matched = append(matched, line)
		}
	}
	if len(matched) == 0 {
		matched = all
	}
	fmt.Fprintln(w, "usage:")
	for _, line := range matched {
		fmt.Fprintln(w, line)
	}
	if len(matched) == 0 {
		fmt.Fprintf(w, "  sigil %s\n", fs.Name())
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	if fs.Lookup("token") != nil {
		_, note, _ := strings.Cut(usage, "\n\nAPI commands")
		fmt.Fprint(w, "\nAPI commands"+note)
	}
}

// usageLine reads a "sigil CMD SUB ... | SUB ..." line of the usage text:
// the command and its subcommands (lower-case words that are not flags or
// placeholders, first and after each '|' outside brackets).
func usageLine(line string) (cmd string, subs []string, ok bool) {
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "sigil" {
		return "", nil, false
	}
	add := func(w string) {
		if w == "" || strings.HasPrefix(w, "-") || strings.ToLower(w) != w || strings.ContainsAny(w, ".=/") || slices.Contains(subs, w) {
			return
		}
		subs = append(subs, w)
	}
	depth := 0 // of brackets and parentheses: a '|' inside them separates a subcommand's own alternatives
	for i := 2; i < len(f); i++ {
		if i == 2 || (f[i-1] == "|" && depth == 0) {
			for _, alt := range strings.Split(strings.Trim(f[i], "[]()"), "|") {
				add(alt)
			}
		}
		depth += strings.Count(f[i], "[") + strings.Count(f[i], "(") - strings.Count(f[i], "]") - strings.Count(f[i], ")")
	}
	return f[1], subs, true
}
