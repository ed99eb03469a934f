package fleetbench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrUsage marks a command line Command cannot run.
var ErrUsage = errors.New("fleetbench: usage")

// Usage is the command line Command understands.
const Usage = `usage: sigil-sim bench fleet [flags]

Runs --devices simulated devices (software TPMs, the real device agent) in
shard processes of at most --shard-size devices against a fleet: sigil serve
started as a child process (embedded broker, bbolt), or a running one
(--fleet). The devices come up at --rate per second (enrollment storm), then
the phases run: a soak (fleet memory and CPU per device, messages sent and
counted; the API's and console's latency during it), a forced re-key of every
device, a firmware campaign in staged waves, tampered devices quarantined
under load, sigil serve restarted under its devices. It writes
fleet-bench.json and fleet-bench.svg to --out.

With --brokers N the fleet runs in its scale-out mode (docs/BROKERS.md):
N Mosquitto device brokers and a bootstrap broker configured by sigil
broker-config, --replicas M sigil serve processes sharing them and, with
--postgres, a PostgreSQL (fsync on) holding their stores; the devices are
spread evenly over the device brokers. Mosquitto and PostgreSQL must be
installed. --postgres alone keeps the embedded broker (the stores' cost
against bbolt). The brokers' and the database's CPU and memory are read
from /proc beside the replicas' own.

With --sizes the fleet grows through the given counts and soaks at each (the
cost-growth figure); the other phases, if --phases names them, run at the
last size.
`

// Env is what the command needs from the program that runs it.
type Env struct {
	// Shard returns the command that runs one shard (the program's hidden
	// subcommand that calls Shard).
	Shard func() (*exec.Cmd, error)
	// Sigil returns the path of the sigil binary to start the fleet with
	// ("" when there is none).
	Sigil func() string
}

// Command runs `sigil-sim bench fleet` with its arguments (after "fleet").
func Command(ctx context.Context, args []string, stdout, stderr io.Writer, env Env) error {
	fs := flag.NewFlagSet("bench fleet", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	devices := fs.Int("devices", 1000, "simulated devices")
	sizes := fs.String("sizes", "", "grow the fleet through these device counts, comma-separated, soaking at each")
	fleetURL := fs.String("fleet", "", "API URL of a running fleet (default: start sigil serve as a child process)")
	broker := fs.String("broker", "", "the running fleet's MQTT address, host:port (with --fleet)")
	serverName := fs.String("server-name", "", "TLS name of the running fleet's broker (default: the broker's host)")
	caFile := fs.String("ca", "", "the running fleet's CA certificate (with --fleet)")
	tokenFile := fs.String("token-file", "", "file holding an admin API token of the running fleet (default $SIGIL_TOKEN)")
	debugURL := fs.String("debug", "", "the running fleet's debug listener, http://127.0.0.1:PORT (for --profile)")
	sigil := fs.String("sigil", "", "the sigil binary to start (default: beside sigil-sim, else on PATH)")
	fleetConfig := fs.String("fleet-config", "", "JSON object merged into the child fleet's configuration")
	fleetEnv := fs.String("fleet-env", "", "environment for the child fleet, comma-separated KEY=VALUE (e.g. GOGC=50,GOMEMLIMIT=3GiB)")
	pgFlag := fs.Bool("postgres", false, "start a PostgreSQL (its binaries required: initdb, pg_ctl, postgres) and keep the child fleet's stores in it")
	brokers := fs.Int("brokers", 0, fmt.Sprintf("start this many Mosquitto device brokers and a bootstrap broker (mosquitto required), configured by sigil broker-config, instead of the embedded broker, and spread the devices over them (at most %d each)", MaxBrokerDevices))
	replicas := fs.Int("replicas", 1, "sigil serve replicas sharing the brokers and the database (more than one needs --postgres and --brokers)")
	maxQueued := fs.Int("broker-max-queued", 1000, "the brokers' max_queued_messages (sigil broker-config --max-queued)")
	rotateFor := fs.Duration("rotate-for", 0, "time-box the forced re-key: stop waiting after this long and report the renewals done by then (0: wait for the job)")
	rotateUntil := fs.String("rotate-until", "", "time-box the forced re-key at this time (RFC 3339), as --rotate-for")
	ekCA := fs.String("ek-ca", "", "the simulated TPM manufacturer's CA directory, created if missing (default: in --dir); a running fleet must trust it as an ek_ca_dir")
	rate := fs.Float64("rate", 100, "devices started per second (0: all at once)")
	shardSize := fs.Int("shard-size", 5000, fmt.Sprintf("most devices per shard process (at most %d: 20,000 open files per process)", MaxShardDevices))
	perSource := fs.Int("per-source", 200, "devices per loopback source address (127.0.0.2, 127.0.0.3, …)")
	attest := fs.Duration("attest-interval", time.Minute, "the devices' attestation interval")
	telemetry := fs.Duration("telemetry-interval", time.Minute, "the devices' telemetry interval")
	retryMin := fs.Duration("retry-min", 0, "the devices' shortest backoff (default: the agent's, 1s)")
	retryMax := fs.Duration("retry-max", 0, "the devices' longest backoff (default: the agent's)")
	phases := fs.String("phases", "", "phases to run, comma-separated: "+strings.Join(AllPhases, ",")+" (default: all; with --sizes: soak,api)")
	soak := fs.Duration("soak", 2*time.Minute, "how long each soak lasts")
	apiRate := fs.Float64("api-rate", 4, "API and console requests per second during the soak")
	rotateRate := fs.Float64("rotate-rate", 500, "the forced rotation job's requests per second")
	campaignDevices := fs.Int("campaign-devices", 10000, "devices the firmware campaign targets (at most --devices)")
	imageSize := fs.Int("image-size", 1<<20, "the firmware image's size in bytes")
	samples := fs.Int("quarantine-samples", 20, "devices tampered with, one after the other")
	profile := fs.Bool("profile", false, "write CPU profiles of the fleet during each phase and a heap profile after each soak to --out")
	dir := fs.String("dir", "", "working directory (default: a temporary directory, removed afterwards)")
	out := fs.String("out", ".", "directory for fleet-bench.json, fleet-bench.svg and profiles")
	timeout := fs.Duration("timeout", 0, "bound on each wait (default: 10m plus three times the ramp)")
	seed := fs.String("seed", "", "hex seed of the devices (default: random)")
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	plot := fs.String("plot", "", "only draw the plot of this JSON result (a run's "+ResultFile+") into --out")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, Usage+"\nflags:\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return nil
	} else if err != nil {
		return fmt.Errorf("%w: %v (sigil-sim bench fleet --help lists the flags)", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", ErrUsage, fs.Args())
	}
	if *plot != "" {
		return replot(*plot, *out, stdout)
	}
	o := Options{Devices: *devices, Fleet: *fleetURL, Broker: *broker, ServerName: *serverName, CAFile: *caFile, DebugURL: *debugURL,
		Sigil: *sigil, EKCADir: *ekCA, Rate: *rate, ShardSize: *shardSize, PerSource: *perSource,
		AttestInterval: *attest, TelemetryInterval: *telemetry, RetryMin: *retryMin, RetryMax: *retryMax,
		Postgres: *pgFlag, Brokers: *brokers, Replicas: *replicas, BrokerMaxQueued: *maxQueued, RotateFor: *rotateFor,
		Soak: *soak, APIRate: *apiRate, RotateRate: *rotateRate, CampaignDevices: *campaignDevices, ImageSize: *imageSize,
		QuarantineSamples: *samples, Profile: *profile, Out: *out, Timeout: *timeout, Shard: env.Shard,
		Command: "sigil-sim bench fleet " + strings.Join(args, " ")}
	var errs []error
	if *sizes != "" {
		for _, f := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				errs = append(errs, fmt.Errorf("--sizes: %q is not a device count", f))
				continue
			}
			if len(o.Sizes) > 0 && n <= o.Sizes[len(o.Sizes)-1] {
				errs = append(errs, errors.New("--sizes must grow"))
			}
			o.Sizes = append(o.Sizes, n)
		}
		if len(o.Sizes) > 0 {
			o.Devices = o.Sizes[len(o.Sizes)-1]
		}
	}
	switch {
	case *phases != "":
		for _, p := range strings.Split(*phases, ",") {
			p = strings.TrimSpace(p)
			if !slices.Contains(AllPhases, p) {
				errs = append(errs, fmt.Errorf("--phases: unknown phase %q (%s)", p, strings.Join(AllPhases, ", ")))
			}
			o.Phases = append(o.Phases, p)
		}
	case len(o.Sizes) > 0:
		o.Phases = []string{PhaseSoak, PhaseAPI}
	default:
		o.Phases = slices.Clone(AllPhases)
	}
	if o.Devices < 1 {
		errs = append(errs, errors.New("--devices must be at least 1"))
	}
	if o.ShardSize < 1 || o.ShardSize > MaxShardDevices {
		errs = append(errs, fmt.Errorf("--shard-size must be from 1 to %d", MaxShardDevices))
	}
	if o.Rate < 0 || o.PerSource < 1 || o.APIRate < 0 || o.RotateRate <= 0 || o.ImageSize < 1 || o.QuarantineSamples < 0 || o.CampaignDevices < 1 {
		errs = append(errs, errors.New("--rate, --api-rate and --quarantine-samples may not be negative; --per-source, --rotate-rate, --image-size and --campaign-devices must be positive"))
	}
	if *rotateUntil != "" {
		t, err := time.Parse(time.RFC3339, *rotateUntil)
		if err != nil {
			errs = append(errs, fmt.Errorf("--rotate-until: %v", err))
		}
		o.RotateUntil = t
	}
	if o.Replicas < 1 || o.Brokers < 0 || o.BrokerMaxQueued < 1 || o.RotateFor < 0 {
		errs = append(errs, errors.New("--replicas and --broker-max-queued must be positive; --brokers and --rotate-for may not be negative"))
	}
	if o.Replicas > 1 && (!o.Postgres || o.Brokers == 0) {
		errs = append(errs, errors.New("--replicas above 1 needs --postgres (shared stores) and --brokers (a shared broker pool)"))
	}
	if o.Brokers > 0 && (o.Devices+o.Brokers-1)/o.Brokers > MaxBrokerDevices {
		errs = append(errs, fmt.Errorf("--brokers %d: %d devices would put more than %d on a broker (each process may open 20,000 files): give at least %d",
			o.Brokers, o.Devices, MaxBrokerDevices, (o.Devices+MaxBrokerDevices-1)/MaxBrokerDevices))
	}
	if *fleetURL != "" && (o.Postgres || o.Brokers > 0 || o.Replicas > 1) {
		errs = append(errs, errors.New("--postgres, --brokers and --replicas start the fleet: not with --fleet"))
	}
	if o.AttestInterval <= 0 || o.TelemetryInterval <= 0 || o.Soak <= 0 {
		errs = append(errs, errors.New("--attest-interval, --telemetry-interval and --soak must be positive"))
	}
	if *seed != "" {
		b, err := hex.DecodeString(*seed)
		if err != nil || len(b) == 0 {
			errs = append(errs, errors.New("--seed must be hex"))
		}
		o.Seed = b
	} else {
		o.Seed = make([]byte, 16)
		_, _ = rand.Read(o.Seed)
	}
	if *fleetConfig != "" {
		b, err := os.ReadFile(*fleetConfig)
		if err == nil {
			err = json.Unmarshal(b, &o.FleetConfig)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("--fleet-config: %v", err))
		}
	}
	if *fleetEnv != "" {
		for _, kv := range strings.Split(*fleetEnv, ",") {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				errs = append(errs, fmt.Errorf("--fleet-env: %q is not KEY=VALUE", kv))
			}
			o.FleetEnv = append(o.FleetEnv, kv)
		}
	}
	if o.Fleet != "" {
		o.Token = os.Getenv("SIGIL_TOKEN")
		if *tokenFile != "" {
			b, err := os.ReadFile(*tokenFile)
			if err != nil {
				errs = append(errs, fmt.Errorf("--token-file: %v", err))
			}
			o.Token = strings.TrimSpace(string(b))
		}
		if o.EKCADir == "" {
			errs = append(errs, errors.New("--fleet needs --ek-ca: the manufacturer CA directory the running fleet trusts"))
		}
	} else if o.Sigil == "" && env.Sigil != nil {
		o.Sigil = env.Sigil()
	}
	if o.Shard == nil {
		errs = append(errs, errors.New("no shard command"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	if o.Timeout == 0 {
		ramp := time.Duration(0)
		if o.Rate > 0 {
			ramp = time.Duration(float64(o.Devices) / o.Rate * float64(time.Second))
		}
		o.Timeout = 10*time.Minute + 3*ramp
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "sigil-bench-fleet-")
		if err != nil {
			return fmt.Errorf("fleetbench: %w", err)
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	o.Dir = *dir
	if o.EKCADir == "" {
		o.EKCADir = filepath.Join(o.Dir, "ek-ca")
	}
	if !*quiet {
		o.Progress = stderr
	}
	res, err := Run(ctx, o)
	if werr := res.Write(o.Out); werr != nil {
		err = errors.Join(err, werr)
	}
	res.Print(stdout)
	fmt.Fprintf(stdout, "\nwrote %s and %s\n", filepath.Join(o.Out, ResultFile), filepath.Join(o.Out, PlotFile))
	return err
}

// The files a run writes to its output directory.
const (
	ResultFile = "fleet-bench.json"
	PlotFile   = "fleet-bench.svg"
)

// Write writes the JSON result and the plot to dir.
func (r *Result) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	if err := r.writeJSON(filepath.Join(dir, ResultFile)); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, PlotFile))
	if err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	if err := r.writeSVG(f); err != nil {
		f.Close()
		return fmt.Errorf("fleetbench: %w", err)
	}
	return f.Close()
}

// replot draws the plot of a JSON result again.
func replot(path, dir string, stdout io.Writer) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: --plot: %v", ErrUsage, err)
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%w: --plot: %s is not a result: %v", ErrUsage, path, err)
	}
	out := filepath.Join(dir, PlotFile)
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	if err := r.writeSVG(f); err != nil {
		f.Close()
		return fmt.Errorf("fleetbench: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s\n", out)
	return nil
}
