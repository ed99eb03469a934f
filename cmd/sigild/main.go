// Command sigild is Sigil's device daemon: it enrolls the device with the
// fleet from its TPM's endorsement key and keeps an MQTT session over mutual
// TLS whose private key never leaves the TPM.
//
//	sigild run [--config /etc/sigild/config.json]
//	sigild status [--config FILE] [--json]
//	sigild secret get NAME [--version N] [--config FILE]
//	sigild secret list [--config FILE] [--json]
//	sigild version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/pkg/config"
)

const usage = `usage:
  sigild run [--config FILE]    run the daemon
  sigild status [--config FILE] [--json]
                                print identity, certificate expiry, connection and the installed
                                firmware (from the update record when the daemon is stopped)
  sigild secret get NAME [--version N] [--config FILE]
                                unseal a secret the fleet delivered (through the TPM) to stdout
  sigild secret list [--config FILE] [--json]
                                list the secrets held (names and versions, never values)
  sigild version                print the version
FILE defaults to /etc/sigild/config.json. Each command answers -h and --help.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitNotReady = 3 // status: not enrolled, not connected, or the fleet silent
)

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "secret":
		return cmdSecret(args[1:], stdout, stderr)
	case "version":
		if code, done := parseFlags(flag.NewFlagSet("version", flag.ContinueOnError), args[1:], stdout, stderr); done {
			return code
		}
		fmt.Fprintln(stdout, "sigild", agent.Version)
		return exitOK
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "sigild: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

// parseFlags parses a subcommand's flags. It reports done when the
// command should end with code: after -h or --help (its usage and flags
// on stdout, exit 0) or a bad flag (exit 2).
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, done bool) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printHelp(stdout, fs)
		return exitOK, true
	case err != nil:
		fmt.Fprintf(stderr, "sigild: %v (sigild %s --help lists the flags)\n", err, fs.Name())
		return exitUsage, true
	}
	return 0, false
}

// printHelp writes the usage lines of fs's command and its flags.
func printHelp(w io.Writer, fs *flag.FlagSet) {
	cmd, _, _ := strings.Cut(fs.Name(), " ")
	fmt.Fprintln(w, "usage:")
	in := false
	for _, line := range strings.Split(strings.TrimSuffix(usage, "\n"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "sigild" {
			in = f[1] == cmd
		} else if !strings.HasPrefix(line, "      ") {
			in = false // only a command's continuation lines follow it
		}
		if in {
			fmt.Fprintln(w, line)
		}
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// loadConfig adds --config to fs, parses the arguments and loads the
// configuration; done reports that the command should end with code
// (help, a bad flag, or a configuration that does not load: a file that
// does not exist is named as such).
func loadConfig(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (cfg agent.Config, code int, done bool) {
	path := fs.String("config", "/etc/sigild/config.json", "configuration file")
	if code, done := parseFlags(fs, args, stdout, stderr); done {
		return agent.Config{}, code, true
	}
	cfg, err := agent.LoadConfig(*path)
	var ne *config.NotExistError
	switch {
	case errors.As(err, &ne):
		fmt.Fprintf(stderr, "sigild: config file %s does not exist (name the device's configuration with --config FILE)\n", ne.Path)
		return agent.Config{}, exitUsage, true
	case err != nil:
		fmt.Fprintln(stderr, "sigild:", err)
		return agent.Config{}, exitUsage, true
	}
	return cfg, 0, false
}

func logger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil || level == "" {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	cfg, code, done := loadConfig(flag.NewFlagSet("run", flag.ContinueOnError), args, stdout, stderr)
	if done {
		return code
	}
	tuneGC(os.LookupEnv)
	tuneProcs(os.LookupEnv)
	log := logger(cfg.LogLevel)
	opts, serveWorkloads, err := workloadAPI(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "sigild:", err)
		return exitUsage
	}
	a, err := agent.New(cfg, log, opts...)
	if err != nil {
		fmt.Fprintln(stderr, "sigild:", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if serveWorkloads != nil {
		go func() {
			if err := serveWorkloads(ctx); err != nil {
				log.Error("the SPIFFE Workload API stopped", "err", err)
				stop()
			}
		}()
	}
	if err := a.Run(ctx); err != nil {
		log.Error("sigild stopped", "err", err)
		return exitError
	}
	return exitOK
}

// procs is the GOMAXPROCS sigild runs with unless the environment sets
// one. The daemon waits on the network and the TPM; one processor runs
// all its goroutines, and the runtime keeps per-processor caches (heap
// spans of each size class, stacks) for each: on 2 cores, the daemon that
// enrolled holds 0.3-0.5 MB less in its first minutes at 1 than at 2, and
// about the same 10 minutes later (docs/BENCHMARKS.md, section 3); a
// device with more cores keeps more caches at Go's default.
const procs = 1

// tuneProcs sets sigild's GOMAXPROCS, unless lookupEnv (os.LookupEnv)
// finds GOMAXPROCS set: the operator's choice, which the runtime already
// applied.
func tuneProcs(lookupEnv func(string) (string, bool)) {
	if _, set := lookupEnv("GOMAXPROCS"); !set {
		runtime.GOMAXPROCS(procs)
	}
}

// gcPercent is the GOGC sigild runs with unless the environment sets one.
// Its live heap is about 0.35 MB, while Go's default (100) lets the heap
// grow to 4 MB before the first collection: the garbage of each minute's
// work (a telemetry sample is about 0.1 MB) then piles up for some 18
// minutes, RSS climbing by 1.8 MB, until a collection returns it. At 50
// the heap goal is 2 MB and RSS stays within about 0.4 MB of where the
// first collection leaves it (docs/BENCHMARKS.md, section 3).
const gcPercent = 50

// tuneGC sets sigild's GOGC, unless lookupEnv (os.LookupEnv) finds GOGC
// set: the operator's choice, which the runtime already applied.
func tuneGC(lookupEnv func(string) (string, bool)) {
	if _, set := lookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
}

// cmdStatus prints the daemon's status to stdout.
func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, code, done := loadConfig(fs, args, stdout, stderr)
	if done {
		return code
	}
	st, err := agent.CurrentStatus(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "sigild:", err)
		return exitError
	}
	if *asJSON {
		b, err := st.JSON()
		if err != nil {
			fmt.Fprintln(stderr, "sigild:", err)
			return exitError
		}
		_, _ = stdout.Write(b)
	} else {
		fmt.Fprint(stdout, st.Text())
	}
	if st.Enrollment != "enrolled" || !st.Connected || st.Silence(time.Now()) > 0 {
		return exitNotReady
	}
	return exitOK
}
