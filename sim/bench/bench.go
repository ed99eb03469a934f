// Package bench is `sigil-sim bench`, the benchmark suite behind
// docs/BENCHMARKS.md. It measures five figures:
//
//   - server: the fleet's server-side enrollment cost next to its crypto
//     floor. These are `go test` benchmarks in fleet/enroll (no TPM in the
//     loop); Server runs them with the Go toolchain and collects the rates.
//   - enroll: many simulated devices (real swtpm processes and sigild
//     agents) enrolling at once against one in-process fleet: enrollments
//     per second and the time from agent start to connected (Enroll).
//   - sigild: the device binary as a real process: stripped size for
//     linux/arm64 and the host, idle RSS once enrolled and connected, and
//     restart-to-connected time (Sigild).
//   - attest: remote attestation end to end over MQTT with many simulated
//     devices: attestations per second and verdict latency, then the
//     quarantine latency after tampering with a PCR (Attest).
//   - rotate: certificate renewal. The fleet side of one renewal next to
//     its crypto floor (`go test` benchmarks in fleet/rotation, Renew),
//     then a forced rotation of every simulated device end to end:
//     renewals per second and the time until each device is connected with
//     its new certificate (Rotate).
//
// Every figure bounds its own run time. Work that is set-up rather than the
// subject of a figure (manufacturing swtpm state with EK certificates,
// building binaries) happens before the clock starts, and each result says
// what its clock covered.
package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Usage is the command line Command understands.
const Usage = `usage:
  sigil-sim bench [--devices N] [--sigild PATH]   all five figures, quickly (N default 5)
  sigil-sim bench server [--benchtime 1s]         server-side enrollment vs crypto floor (go test)
  sigil-sim bench enroll [--devices N]            N swtpm devices enrolling at once (default 20)
  sigil-sim bench sigild [--sigild PATH] [--idle 5s] [--restarts 5]
                                                  sigild size, idle RSS, restart-to-connected
  sigil-sim bench attest [--devices N] [--rounds R]
                                                  attestation over MQTT: rate, verdict and quarantine
                                                  latency (N default 20, R default 10)
  sigil-sim bench rotate [--devices N] [--sizes N1,N2,...] [--rounds R] [--benchtime 1s]
                                                  fleet-side renewal vs crypto floor (go test), then a
                                                  forced rotation of N swtpm devices end to end, R times
                                                  (N default 20, R default 1); --sizes repeats it per size
  sigil-sim bench campaign [--devices N] [--sizes N1,N2,...]
                                                  firmware campaign of a 1 MiB image to N swtpm devices,
                                                  staged and in one wave (N default 20)
  sigil-sim bench fleet --devices N ...           N software-TPM devices against a sigil serve at
                                                  scale (sigil-sim bench fleet --help)
Common flags: --dir DIR (keep the working files there), --verbose (log to stderr).
`

// Command runs `sigil-sim bench` with its arguments (without "bench") and
// prints the results to stdout.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub := "all"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("bench "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	dir := fs.String("dir", "", "working directory (default: a temporary directory, removed afterwards)")
	verbose := fs.Bool("verbose", false, "log the fleet and devices to stderr")
	devices := fs.Int("devices", 0, "simulated devices for the enroll and attest figures")
	rounds := fs.Int("rounds", 10, "attestation rounds (every device challenged once each) for the attest figure")
	sigild := fs.String("sigild", "", "sigild binary to measure (default: build ./cmd/sigild with go build)")
	idle := fs.Duration("idle", 5*time.Second, "idle time before reading sigild's RSS")
	restarts := fs.Int("restarts", 5, "sigild restarts to time")
	benchtime := fs.String("benchtime", "1s", "go test -benchtime for the server and rotate figures")
	sizes := fs.String("sizes", "", "device counts for the rotate figure, comma-separated (default: --devices)")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		// -h, --help: the usage and the flags, on stdout (exit 0).
		fmt.Fprint(stdout, Usage+"\nflags:\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return nil
	} else if err != nil {
		return fmt.Errorf("bench: %w\n%s", err, Usage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench: unexpected arguments %q\n%s", fs.Args(), Usage)
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	work, cleanup, err := workDir(*dir)
	if err != nil {
		return err
	}
	defer cleanup()
	env := fmt.Sprintf("%d CPUs, %s", numCPU(), time.Now().UTC().Format("2006-01-02"))
	switch sub {
	case "server":
		r, err := Server(ctx, ServerOptions{Benchtime: *benchtime, Logger: log})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "sigil-sim bench server (%s)\n\n", env)
		r.Print(stdout)
	case "enroll":
		if *devices == 0 {
			*devices = 20
		}
		r, err := Enroll(ctx, EnrollOptions{Devices: *devices, Dir: work, Logger: log})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "sigil-sim bench enroll (%s)\n\n", env)
		r.Print(stdout)
	case "sigild":
		r, err := Sigild(ctx, SigildOptions{Sigild: *sigild, Dir: work, Idle: *idle, Restarts: *restarts, Logger: log})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "sigil-sim bench sigild (%s)\n\n", env)
		r.Print(stdout)
	case "attest":
		if *devices == 0 {
			*devices = 20
		}
		r, err := Attest(ctx, AttestOptions{Devices: *devices, Rounds: *rounds, Dir: work, Logger: log})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "sigil-sim bench attest (%s)\n\n", env)
		r.Print(stdout)
	case "rotate":
		if *devices == 0 {
			*devices = 20
		}
		n := []int{*devices}
		if *sizes != "" {
			if n, err = parseSizes(*sizes); err != nil {
				return err
			}
		}
		r := 1
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "rounds" {
				r = *rounds
			}
		})
		fmt.Fprintf(stdout, "sigil-sim bench rotate (%s)\n", env)
		return rotate(ctx, stdout, *benchtime, n, r, work, log)
	case "campaign":
		return campaigns(ctx, stdout, env, *devices, *sizes, work, log)
	case "all":
		if *devices == 0 {
			*devices = 5
		}
		return all(ctx, stdout, env, *benchtime, *devices, *rounds, *sigild, *idle, *restarts, work, log)
	default:
		return fmt.Errorf("bench: unknown figure %q\n%s", sub, Usage)
	}
	return nil
}

// all runs the four figures one after the other and prints each; a figure
// that cannot run (no Go toolchain, no swtpm) is reported and the others
// still run.
func all(ctx context.Context, out io.Writer, env, benchtime string, devices, rounds int, sigild string, idle time.Duration, restarts int, work string, log *slog.Logger) error {
	fmt.Fprintf(out, "sigil-sim bench (%s)\n", env)
	var errs []error
	fmt.Fprintf(out, "\n== server-side enrollment (go test -bench, benchtime %s)\n\n", benchtime)
	if r, err := Server(ctx, ServerOptions{Benchtime: benchtime, Logger: log}); err != nil {
		fmt.Fprintf(out, "not measured: %v\n", err)
		errs = append(errs, err)
	} else {
		r.Print(out)
	}
	fmt.Fprintf(out, "\n== %d devices enrolling at once\n\n", devices)
	if r, err := Enroll(ctx, EnrollOptions{Devices: devices, Dir: filepath.Join(work, "enroll"), Logger: log}); err != nil {
		fmt.Fprintf(out, "not measured: %v\n", err)
		errs = append(errs, err)
	} else {
		r.Print(out)
	}
	fmt.Fprintf(out, "\n== sigild\n\n")
	if r, err := Sigild(ctx, SigildOptions{Sigild: sigild, Dir: filepath.Join(work, "sigild"), Idle: idle, Restarts: restarts, Logger: log}); err != nil {
		fmt.Fprintf(out, "not measured: %v\n", err)
		errs = append(errs, err)
	} else {
		r.Print(out)
	}
	fmt.Fprintf(out, "\n== attestation, %d devices, %d rounds\n\n", devices, rounds)
	if r, err := Attest(ctx, AttestOptions{Devices: devices, Rounds: rounds, Dir: filepath.Join(work, "attest"), Logger: log}); err != nil {
		fmt.Fprintf(out, "not measured: %v\n", err)
		errs = append(errs, err)
	} else {
		r.Print(out)
	}
	if err := rotate(ctx, out, benchtime, []int{devices}, 1, filepath.Join(work, "rotate"), log); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// rotate runs the renewal benchmarks, then a forced rotation at each size
// (each with its own swtpms and fleet), and prints each; a part that
// cannot run is reported and the others still run.
func rotate(ctx context.Context, out io.Writer, benchtime string, sizes []int, rounds int, work string, log *slog.Logger) error {
	var errs []error
	fmt.Fprintf(out, "\n== fleet-side renewal (go test -bench, benchtime %s)\n\n", benchtime)
	if r, err := Renew(ctx, ServerOptions{Benchtime: benchtime, Logger: log}); err != nil {
		fmt.Fprintf(out, "not measured: %v\n", err)
		errs = append(errs, err)
	} else {
		r.Print(out)
	}
	for _, n := range sizes {
		fmt.Fprintf(out, "\n== forced rotation of %d devices, %d round(s)\n\n", n, rounds)
		r, err := Rotate(ctx, RotateOptions{Devices: n, Rounds: rounds, Dir: filepath.Join(work, fmt.Sprintf("rotate-%d", n)), Logger: log})
		if err != nil {
			fmt.Fprintf(out, "not measured: %v\n", err)
			errs = append(errs, err)
			continue
		}
		r.Print(out)
	}
	return errors.Join(errs...)
}

// workDir returns dir (created) or a new temporary directory that cleanup
// removes.
func workDir(dir string) (string, func(), error) {
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", nil, fmt.Errorf("bench: %w", err)
		}
		return dir, func() {}, nil
	}
	d, err := os.MkdirTemp("", "sigil-bench-")
	if err != nil {
		return "", nil, fmt.Errorf("bench: %w", err)
	}
	return d, func() { os.RemoveAll(d) }, nil
}

// percentile returns the p-th percentile (0 < p <= 100) of d by the
// nearest-rank method: the smallest value with at least p% of the values at
// or below it. d need not be sorted; it is not modified.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := int(float64(len(s))*p/100 + 0.999999999)
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// goTool finds the go command, or says why a figure needs it.
func goTool() (string, error) {
	p, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("bench: the go command is not on PATH (this figure builds or tests from the source tree)")
	}
	return p, nil
}

// moduleDir is the root of the Sigil source tree the current directory is in.
func moduleDir(ctx context.Context) (string, error) {
	gobin, err := goTool()
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, gobin, "list", "-m", "-f", "{{.Dir}}").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		return "", fmt.Errorf("bench: not inside the Sigil source tree (go list -m: %v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cmd", "sigild")); err != nil {
		return "", fmt.Errorf("bench: %s is not the Sigil source tree", dir)
	}
	return dir, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
