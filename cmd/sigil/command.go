package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/sigil-iot/sigil/fleet/api"
)

// The command table. Every command sigil accepts is one *command in the
// tree that commandTable returns; that tree alone drives dispatch (run),
// the usage and help text (help.go), shell completion (completion.go) and
// the command reference docs/CLI.md (reference_test.go writes it and
// fails when it is stale). Adding a command is adding an entry.
//
// Flags are the standard library's: -flag and --flag are the same, a
// command's positional arguments come before its flags (positionals are
// taken first, then flag.Parse), and -h or --help anywhere among the
// flags prints the command's help and exits 0.

// command is one entry of the table: a group of subcommands, a leaf that
// runs, or both (a command that runs unless its next word names one of its
// subcommands, such as `sigil risk [DEVICE]` beside `sigil risk sweep`).
type command struct {
	name    string // the word that selects it
	args    string // synopsis of what follows the command words, e.g. "ID [--pem] [-o json]"
	summary string // what it does, one line, lower case and no final period
	note    string // more for its help and the reference, optional

	subs []*command
	// def is the subcommand a group runs when its next word is a flag or
	// there is none ("" : a subcommand is required).
	def string

	// conn says whether it takes the shared API flags and needs a client.
	conn conn
	// pos names the positional arguments it requires, taken before its
	// flags, as its error says them: "a device ID" ("devices show needs a
	// device ID").
	pos []string
	// opt, when set, is one optional positional argument taken before
	// the flags (after pos), e.g. `sigil risk [DEVICE]`.
	opt bool
	// setup defines the command's own flags on fs and returns what it
	// does. Help, completion and the reference call it only to see the
	// flags.
	setup func(fs *flag.FlagSet) action
	// run is what a command without flags of its own does (instead of
	// setup). A pure group has neither.
	run action
}

// action runs a command once its arguments and flags are parsed.
type action func(ctx context.Context, x *call) error

// conn is what a command needs of the API.
type conn int

const (
	connNone   conn = iota // no API flags (offline commands, serve)
	connFlags              // the API flags, no client (audit verify reads --data-dir)
	connClient             // the API flags and a client built from them
)

// call is what an action works with.
type call struct {
	args   []string // positional: pos (and opt when given), then what follows the flags
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	api    apiFlags    // with connFlags, connClient
	client *api.Client // with connClient
	root   *command    // the table, for completion and help
}

// arg returns positional argument i, "" when absent.
func (x *call) arg(i int) string {
	if i < len(x.args) {
		return x.args[i]
	}
	return ""
}

// sub returns the subcommand named name.
func (c *command) sub(name string) *command {
	for _, s := range c.subs {
		if s.name == name {
			return s
		}
	}
	return nil
}

// flagSet returns the command's flag set, named by its path ("devices
// list"), with the API flags when it takes them, and its action.
func (c *command) flagSet(path []string) (*flag.FlagSet, apiFlags, action) {
	fs := flag.NewFlagSet(strings.Join(path, " "), flag.ContinueOnError)
	fs.SetOutput(io.Discard) // help goes to stdout, errors through run
	fs.Usage = func() {}
	var af apiFlags
	if c.conn != connNone {
		af = addAPIFlags(fs)
	}
	act := c.run
	if c.setup != nil {
		act = c.setup(fs)
	}
	return fs, af, act
}

// runs reports whether the command runs (it is not a pure group).
func (c *command) runs() bool { return c.setup != nil || c.run != nil }

// walk calls fn for c and each command below it, depth first, with its
// path from the root (the root's path is empty).
func (c *command) walk(path []string, fn func(c *command, path []string)) {
	fn(c, path)
	for _, s := range c.subs {
		s.walk(append(slices.Clip(path), s.name), fn)
	}
}

// usageError is a mistake in the command line: exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// exitErr ends the command with a specific exit code; its message was
// printed already.
type exitErr struct{ code int }

func (e exitErr) Error() string { return "exit " + strconv.Itoa(e.code) }

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitNotFound = 4
	exitDenied   = 5
	exitTampered = 6 // audit verify found the log altered
	exitPending  = 7 // filed for a second person's approval
)

// exitCodes describes the exit codes, for the help and the reference.
func exitCodes() []struct {
	code int
	what string
} {
	return []struct {
		code int
		what string
	}{
		{exitOK, "done"},
		{exitError, "failed (the API's reason on stderr)"},
		{exitUsage, "a mistake in the command line"},
		{exitNotFound, "the API answered 404: no such device, release, …"},
		{exitDenied, "the API answered 401 or 403: not signed in, or not allowed"},
		{exitTampered, "sigil audit verify, sigil restore: the audit log (or the backup archive) does not verify"},
		{exitPending, "filed for a second person's approval (two_person_rule); sigil approvals"},
	}
}

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

// run runs the command line args and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := commandTable()
	if len(args) == 0 {
		printUsage(stderr, root)
		return exitUsage
	}
	if isHelpFlag(args[0]) {
		printUsage(stdout, root)
		return exitOK
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	x := &call{stdin: stdin, stdout: stdout, stderr: stderr, root: root}
	err := dispatch(ctx, root, args, x)
	if err == nil {
		return exitOK
	}
	var he helpRequest
	if errors.As(err, &he) {
		printHelp(stdout, he.cmd, he.path)
		return exitOK
	}
	if errors.As(err, new(unknownCommand)) {
		fmt.Fprintln(stderr, "sigil:", err)
		printUsage(stderr, root)
		return exitUsage
	}
	return exitCode(err, stderr)
}

// helpRequest is -h or --help met while parsing the command at path.
type helpRequest struct {
	cmd  *command
	path []string
}

func (helpRequest) Error() string { return "help requested" }

// unknownCommand is a first word that names no command.
type unknownCommand struct{ name string }

func (e unknownCommand) Error() string { return "unknown command " + strconv.Quote(e.name) }

// invocation is a command line resolved to the command it names, with
// its arguments and flags parsed.
type invocation struct {
	cmd  *command
	path []string
	args []string // positional
	api  apiFlags
	act  action
}

// parse resolves args to the command they name below c (at path) and
// parses its arguments and flags: the part of run that does nothing yet.
func parse(c *command, path, args []string) (invocation, error) {
	if len(c.subs) > 0 {
		next := ""
		if len(args) > 0 {
			next = args[0]
		}
		switch s := c.sub(next); {
		case s != nil:
			return parse(s, append(path, s.name), args[1:])
		case len(args) > 0 && isHelpFlag(next):
			return invocation{}, helpRequest{c, path}
		case c.def != "" && (next == "" || strings.HasPrefix(next, "-")):
			s := c.sub(c.def)
			return parse(s, append(path, s.name), args)
		case len(path) == 0:
			return invocation{}, unknownCommand{next}
		case c.runs():
			// A command that runs itself unless a subcommand is named.
		case next == "" || strings.HasPrefix(next, "-"):
			return invocation{}, usageError{fmt.Sprintf("%s needs a subcommand: %s", strings.Join(path, " "), orList(c.subNames()))}
		default:
			return invocation{}, usageError{fmt.Sprintf("unknown %s subcommand %q", strings.Join(path, " "), next)}
		}
	}
	fs, af, act := c.flagSet(path)
	var pos []string
	for _, missing := range c.pos {
		if len(args) > 0 && isHelpFlag(args[0]) {
			break // the flag parse answers it
		}
		if len(args) == 0 || isFlag(args[0]) {
			return invocation{}, usageError{strings.Join(path, " ") + " needs " + missing}
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	if c.opt && len(args) > 0 && !isFlag(args[0]) {
		pos, args = append(pos, args[0]), args[1:]
	}
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		return invocation{}, helpRequest{c, path}
	case err != nil:
		return invocation{}, usageError{fmt.Sprintf("%v (sigil %s --help lists the flags)", err, fs.Name())}
	}
	return invocation{cmd: c, path: path, args: append(pos, fs.Args()...), api: af, act: act}, nil
}

// dispatch runs the command line args.
func dispatch(ctx context.Context, root *command, args []string, x *call) error {
	inv, err := parse(root, nil, args)
	if err != nil {
		return err
	}
	x.args, x.api = inv.args, inv.api
	if inv.cmd.conn == connClient {
		if x.client, err = inv.api.client(); err != nil {
			return err
		}
	}
	return inv.act(ctx, x)
}

// subNames lists the names of c's subcommands.
func (c *command) subNames() []string {
	var names []string
	for _, s := range c.subs {
		names = append(names, s.name)
	}
	return names
}

// orList writes "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// isFlag reports whether arg is a flag rather than a positional argument
// ("-" alone is an argument: standard input).
func isFlag(arg string) bool { return strings.HasPrefix(arg, "-") && arg != "-" }

// isHelpFlag reports whether arg asks for help, as the flag package
// understands it.
func isHelpFlag(arg string) bool {
	switch arg {
	case "-h", "--h", "-help", "--help":
		return true
	}
	return false
}

// exitCode reports err on stderr and returns the exit code it means.
func exitCode(err error, stderr io.Writer) int {
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
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &se) && se.Status == 404:
		return exitNotFound
	case errors.As(err, &se) && (se.Status == 401 || se.Status == 403):
		return exitDenied
	}
	return exitError
}
