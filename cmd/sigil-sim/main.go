// Command sigil-sim runs Sigil's simulations and benchmarks: the demo (a
// fleet and simulated devices in one process), the benchmark suite behind
// docs/BENCHMARKS.md, and simulated device fleets at scale. It links the
// simulators (the software TPM, the swarm, the cgo TPM simulator) that the
// production sigil and sigild never carry.
//
//	sigil-sim demo [--once] [--tamper]         a fleet and three simulated devices
//	sigil-sim bench [FIGURE]                   the benchmarks of docs/BENCHMARKS.md
//	sigil-sim bench fleet --devices N ...      N simulated devices against a sigil serve
//	sigil-sim version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sigil-iot/sigil/device/agent"
	_ "github.com/sigil-iot/sigil/device/tpm/tpmsim" // the in-process TPM simulator for sim:// devices
	"github.com/sigil-iot/sigil/sim/bench"
	"github.com/sigil-iot/sigil/sim/fleetbench"
	"github.com/sigil-iot/sigil/sim/harness"
)

// Version is set at build time.
var Version = "dev"

const usage = `usage:
  sigil-sim demo [--dir DIR] [--devices N] [--once] [--tamper] [--verbose]
  sigil-sim bench [server|enroll|attest|rotate|campaign|sigild] [--devices N] [--sigild PATH]
  sigil-sim bench fleet [--devices N | --sizes N1,N2,...] [--fleet URL --broker ADDR] [--soak D] [--phases P,P]
  sigil-sim version

sigil-sim is for simulation and benchmarks; the fleet manager is sigil,
the device daemon sigild. sigil-sim demo prints sigil commands to try:
it runs the sigil beside it, or the one on PATH.
`

// Hidden subcommands: the processes sigil-sim starts itself.
const (
	// cmdSimDevice runs one device agent with the in-process TPM
	// simulator (the demo's fallback when swtpm is not installed).
	cmdSimDevice = "sim-device"
	// cmdFleetShard runs a shard of simulated devices for bench fleet,
	// commanded over its standard input and output.
	cmdFleetShard = "fleet-shard"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "demo":
		err = cmdDemo(ctx, args[1:], stdout, stderr)
	case "bench":
		if len(args) > 1 && args[1] == "fleet" {
			err = fleetbench.Command(ctx, args[2:], stdout, stderr, fleetbench.Env{Shard: shardCommand, Sigil: sigilBinary})
		} else {
			err = bench.Command(ctx, args[1:], stdout, stderr)
		}
	case cmdSimDevice:
		err = simDevice(ctx, args[1:], stderr)
	case cmdFleetShard:
		err = fleetbench.Shard(ctx, stdin, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "sigil-sim", Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "sigil-sim: unknown command %q\n%s", args[0], usage)
		return exitUsage
	}
	var ue usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue), errors.Is(err, fleetbench.ErrUsage):
		fmt.Fprintln(stderr, "sigil-sim:", err)
		return exitUsage
	}
	fmt.Fprintln(stderr, "sigil-sim:", err)
	return exitError
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// errHelp is returned once a command printed its help.
var errHelp = errors.New("help printed")

// parseFlags parses a command's flags: -h or --help prints its usage
// line and flags on stdout.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(stdout, "usage:")
		for _, line := range strings.Split(usage, "\n") {
			if strings.HasPrefix(line, "  sigil-sim "+fs.Name()+" ") {
				fmt.Fprintln(stdout, line)
			}
		}
		fmt.Fprintln(stdout, "\nflags:")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return errHelp
	case err != nil:
		return usageError{fmt.Sprintf("%v (sigil-sim %s --help lists the flags)", err, fs.Name())}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	return nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil || level == "" {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// sigilBinary is the sigil beside this sigil-sim, else the one on PATH
// ("" when there is none).
func sigilBinary() string { return sibling("sigil") }

// sibling is the program name beside this executable, else on PATH.
func sibling(name string) string {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	p, _ := exec.LookPath(name)
	return p
}

// shardCommand is this program's fleet-shard subcommand.
func shardCommand() (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return exec.Command(self, cmdFleetShard), nil
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	dir := fs.String("dir", "", "working directory (default: a new temporary directory)")
	n := fs.Int("devices", 3, "number of simulated devices")
	once := fs.Bool("once", false, "exit once the devices are active")
	tamper := fs.Bool("tamper", false, "extend a PCR on the last device (tpm2_pcrextend) and show its quarantine")
	verbose := fs.Bool("verbose", false, "log the fleet and devices to stderr")
	apiAddr := fs.String("api-addr", "127.0.0.1:8443", "HTTPS API listen address")
	mqttAddr := fs.String("mqtt-addr", "127.0.0.1:8883", "MQTT listen address")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if *n < 1 || *n > 50 {
		return usageError{"--devices must be from 1 to 50"}
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = newLogger(stderr, "info")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The commands the demo prints run the sigil and sigild beside this
	// sigil-sim (or on PATH).
	return harness.Demo(ctx, harness.DemoOptions{Dir: *dir, Devices: *n, Once: *once, Tamper: *tamper, APIAddr: *apiAddr, MQTTAddr: *mqttAddr, Out: stdout, Logger: log,
		Sigil: sibling("sigil"), Sigild: sibling("sigild"),
		SimulatorDevice: func(path string) *exec.Cmd {
			c := exec.Command(self, cmdSimDevice, "--config", path)
			if *verbose {
				c.Stderr = stderr
			}
			return c
		}})
}

// simDevice runs one device agent with the in-process TPM simulator (the
// demo's fallback when swtpm is not installed; not for production).
func simDevice(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(cmdSimDevice, flag.ContinueOnError)
	path := fs.String("config", "", "sigild configuration file")
	if err := parseFlags(fs, args, io.Discard); err != nil {
		return err
	}
	cfg, err := agent.LoadConfig(*path)
	if err != nil {
		return err
	}
	a, err := agent.New(cfg, newLogger(stderr, cfg.LogLevel))
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
