package fleetbench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/swarm"
)

// Phases a run may select; the devices' coming up (enrollment) always
// runs, at each size.
const (
	PhaseSoak       = "soak"       // hold the devices for Options.Soak
	PhaseAPI        = "api"        // API and console latency during the soak
	PhaseRotate     = "rotate"     // a forced re-key of every connected device
	PhaseCampaign   = "campaign"   // a firmware campaign in staged waves
	PhaseQuarantine = "quarantine" // tampered devices quarantined under load
	PhaseReconnect  = "reconnect"  // sigil serve restarted under its devices
)

// AllPhases are the phases in the order a run takes them.
var AllPhases = []string{PhaseSoak, PhaseAPI, PhaseRotate, PhaseCampaign, PhaseQuarantine, PhaseReconnect}

// MaxShardDevices is the most devices one shard process may hold: each
// device's session is one open file, and every process here is capped at
// 20,000 of them (which it cannot raise).
const MaxShardDevices = 19900

// Options configures Run. Zero values take the defaults Command gives.
type Options struct {
	// Devices is how many devices to run; Sizes, if set, runs the soak
	// at each of these counts in turn (growing the fleet), and the other
	// phases at the last.
	Devices int
	Sizes   []int

	// Fleet is the API URL of a fleet that is already running, with
	// Broker (its MQTT address), ServerName, CAFile (its CA certificate),
	// Token (an admin API token) and DebugURL (its debug listener, for
	// profiles; optional). It must trust EKCADir as an ek_ca_dir. Empty
	// Fleet starts `sigil serve` (the Sigil binary) as a child process,
	// with FleetConfig merged into its configuration.
	Fleet, Broker, ServerName, CAFile, Token, DebugURL string
	Sigil                                              string
	FleetConfig                                        map[string]any
	// FleetEnv is added to the child fleet's environment (KEY=VALUE).
	FleetEnv []string
	// EKCADir is the simulated manufacturer's CA directory (created if
	// missing; default in Dir).
	EKCADir string
	// The scale-out mode (pool.go): Postgres starts a PostgreSQL the
	// child fleet keeps its stores in; Brokers > 0 starts that many
	// Mosquitto device brokers and a bootstrap broker (BrokerMaxQueued
	// their max_queued_messages) in place of the embedded broker, and
	// Replicas `sigil serve` processes share them.
	Postgres        bool
	Brokers         int
	Replicas        int
	BrokerMaxQueued int

	// Rate is how many devices start per second; ShardSize the most
	// devices per shard process; PerSource the devices per loopback
	// source address.
	Rate      float64
	ShardSize int
	PerSource int
	// AttestInterval and TelemetryInterval are the devices' schedules;
	// RetryMin and RetryMax their backoff (0: the agent's default).
	AttestInterval, TelemetryInterval time.Duration
	RetryMin, RetryMax                time.Duration

	// Phases selects the phases (AllPhases).
	Phases []string
	// Soak is how long each soak lasts; APIRate the API requests per
	// second the latency probe makes during it.
	Soak    time.Duration
	APIRate float64
	// RotateRate is the forced rotation job's requests per second;
	// RotateFor, if set, time-boxes the wait for the job: the figures
	// are then those of the renewals done by then.
	RotateRate  float64
	RotateFor   time.Duration
	RotateUntil time.Time
	// CampaignDevices is how many devices the campaign targets (at most
	// the devices); ImageSize its image's size.
	CampaignDevices int
	ImageSize       int
	// QuarantineSamples is how many devices are tampered with, one after
	// the other.
	QuarantineSamples int
	// Profile, with a debug listener, writes CPU profiles of the fleet
	// during each phase and a heap profile after each soak to Out.
	Profile bool

	// Dir is the working directory; Out where the JSON result, the plot
	// and the profiles go. Timeout bounds each wait for devices.
	Dir, Out string
	Timeout  time.Duration
	// Seed makes the devices (their EKs and serials).
	Seed []byte
	// Command is the command line, for the report.
	Command string
	// Shard returns the command that runs a shard (sigil-sim's hidden
	// fleet-shard subcommand).
	Shard func() (*exec.Cmd, error)
	// Progress receives a line per step; nil discards them.
	Progress io.Writer
}

// run is one benchmark run's state.
type run struct {
	o      Options
	res    *Result
	fleet  *fleet
	sink   *alertSink
	shards []*shardProc
	ids    []string // device IDs by index
	empty  FleetSnapshot
	signer *sign.Signer
	trust  string
	// viewer reads through the API and the console for the latency
	// probe; approver is the second person who approves the release.
	// Both are made before anything is measured: a login hashes a
	// password with argon2id (46 MiB), which would show in the RSS.
	viewer, approver *person
	// quarantined are the device indexes tampered with.
	quarantined map[int]bool
}

// Run runs the benchmark and returns its result, as far as it got: a
// failed phase ends the run with an error, and the result holds the
// phases before it (and a note).
func Run(ctx context.Context, o Options) (*Result, error) {
	r := &run{o: o, quarantined: map[int]bool{}, res: &Result{Command: o.Command, Started: time.Now().UTC(),
		Settings: Settings{Devices: o.Devices, Sizes: o.Sizes, Rate: o.Rate, ShardSize: o.ShardSize, PerSource: o.PerSource,
			AttestInterval: Duration(o.AttestInterval), TelemetryInterval: Duration(o.TelemetryInterval), Soak: Duration(o.Soak), Phases: o.Phases,
			Replicas: o.Replicas, Brokers: o.Brokers, Postgres: o.Postgres}}}
	r.res.Machine = machine()
	err := r.run(ctx)
	if err != nil {
		r.note("stopped early: %v", err)
	}
	r.finish()
	r.res.Machine.LoadAfter = loadAvg()
	r.res.Finished = time.Now().UTC()
	return r.res, err
}

func (r *run) phase(p string) bool { return slices.Contains(r.o.Phases, p) }

func (r *run) progress(format string, args ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, "%s  %s\n", time.Now().Format(time.TimeOnly), fmt.Sprintf(format, args...))
	}
}

func (r *run) note(format string, args ...any) {
	r.res.Notes = append(r.res.Notes, fmt.Sprintf(format, args...))
}

func (r *run) run(ctx context.Context) error {
	if err := r.setup(ctx); err != nil {
		return err
	}
	sizes := r.o.Sizes
	if len(sizes) == 0 {
		sizes = []int{r.o.Devices}
	}
	for i, n := range sizes {
		sr, err := r.grow(ctx, n)
		if err != nil {
			return err
		}
		if i == 0 {
			if err := r.learnPolicy(ctx); err != nil {
				return err
			}
		}
		if r.phase(PhaseSoak) {
			if sr.Soak, sr.API, err = r.soak(ctx, n); err != nil {
				return err
			}
		}
		m, err := r.fleet.scrape(ctx)
		if err != nil {
			return err
		}
		sr.Fleet = snapshotOf(m)
		r.res.Sizes = append(r.res.Sizes, *sr)
	}
	var err error
	if r.phase(PhaseRotate) {
		if r.res.Rotation, err = r.rotate(ctx); err != nil {
			return err
		}
	}
	if r.phase(PhaseCampaign) {
		if r.res.Campaign, err = r.campaign(ctx); err != nil {
			return err
		}
	}
	if r.phase(PhaseQuarantine) {
		if r.res.Quarantine, err = r.quarantine(ctx); err != nil {
			return err
		}
	}
	// The fleet's counters start again with a restarted fleet: count the
	// messages before.
	if r.res.Messages, err = r.account(ctx); err != nil {
		return err
	}
	if r.phase(PhaseReconnect) {
		if r.fleet.proc == nil {
			r.note("reconnect storm not run: it restarts the fleet, and this run did not start it")
		} else if r.o.Brokers > 0 {
			r.note("reconnect storm not run: with a broker pool, restarting a replica ends no device's session (the brokers hold them)")
		} else if r.res.Reconnect, err = r.reconnect(ctx); err != nil {
			return err
		}
	}
	return nil
}

// setup makes the manufacturer CA, the release key and trust set, the
// alert sink and the fleet.
func (r *run) setup(ctx context.Context) error {
	o := r.o
	r.res.Floor = measureFloor() // before anything else runs in this process
	for _, d := range []string{o.Dir, o.Out} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("fleetbench: %w", err)
		}
	}
	if _, err := softtpm.OpenCA(o.EKCADir); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if r.signer, err = sign.New(sign.Config{Key: key}); err != nil {
		return err
	}
	ts, err := verify.NewTrustSet(1, 1, key.Public())
	if err != nil {
		return err
	}
	b, err := ts.Marshal()
	if err != nil {
		return err
	}
	r.trust = filepath.Join(o.Dir, "release-trust.json")
	if err := os.WriteFile(r.trust, b, 0o644); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	if o.Fleet != "" {
		r.res.Settings.Fleet = o.Fleet
		if r.fleet, err = externalFleet(o.Fleet, o.Broker, o.ServerName, o.CAFile, o.Token, o.DebugURL); err != nil {
			return err
		}
		r.note("external fleet: its alert sinks are its own, so the quarantine figure has no alert-at-sink step unless it posts to this run's sink")
	} else {
		r.res.Settings.Fleet, r.res.Settings.FleetEnv = "child", o.FleetEnv
		if r.sink, err = newAlertSink(); err != nil {
			return err
		}
		if o.Postgres || o.Brokers > 0 {
			if r.fleet, err = r.scaleOut(ctx); err != nil {
				return err
			}
		} else {
			r.progress("starting sigil serve (%s)", o.Sigil)
			if r.fleet, err = childFleet(ctx, o.Sigil, o.Dir, o.EKCADir, r.trust, o.AttestInterval, r.sink, o.FleetConfig, o.FleetEnv); err != nil {
				return err
			}
		}
		r.progress("fleet: API %s, MQTT %s, log %s", r.fleet.apiURL, r.fleet.broker, r.fleet.logPath)
	}
	m, err := r.fleet.scrape(ctx)
	if err != nil {
		return err
	}
	r.empty = snapshotOf(m)
	if r.empty.RSSBytes == 0 || r.empty.CPUSeconds == 0 {
		r.note("the fleet's /metrics has no process_resident_memory_bytes or process_cpu_seconds_total: memory and CPU per device are not measured")
	}
	if r.phase(PhaseAPI) || r.phase(PhaseReconnect) {
		if r.viewer, err = r.fleet.newPerson(ctx, "fleetbench-viewer", auth.RoleViewer); err != nil {
			return err
		}
	}
	if r.phase(PhaseCampaign) {
		if r.approver, err = r.fleet.newPerson(ctx, "fleetbench-approver", auth.RoleReleaseApprover); err != nil {
			return err
		}
	}
	return nil
}

// disconnects is the sessions the devices lost so far, in all.
func (r *run) disconnects(ctx context.Context) (uint64, error) {
	sums, err := r.summaries(ctx, r.shards, shardRequest{Op: opSummary})
	if err != nil {
		return 0, err
	}
	return addSummaries(sums).Disconnects, nil
}

// finish stops the shards (their final account) and the fleet, and
// closes the sink.
func (r *run) finish() {
	if len(r.shards) > 0 {
		if sums, err := r.summaries(context.Background(), r.shards, shardRequest{Op: opSummary, Outbox: true}); err == nil {
			total := addSummaries(sums)
			r.res.Devices = &total
			r.res.Telemetry = total.Outbox
		} else {
			r.note("the devices' final account: %v", err)
		}
	}
	for _, p := range r.shards {
		if _, err := p.stop(time.Minute); err != nil {
			r.note("shard %d: %v", p.cfg.FirstIndex, err)
		}
	}
	if r.fleet != nil {
		r.fleet.stop()
	}
	if r.sink != nil {
		r.sink.close()
	}
}

// grow starts shards for the devices from the current count to n and
// waits until every one is active: enrolled, connected over mTLS,
// attested on connect.
func (r *run) grow(ctx context.Context, n int) (*SizeResult, error) {
	have := len(r.ids)
	if n <= have {
		return nil, fmt.Errorf("%w: sizes must grow (%d after %d)", ErrUsage, n, have)
	}
	r.progress("starting devices %d to %d at %.0f/s", have, n-1, r.o.Rate)
	m0, err := r.fleet.scrape(ctx)
	if err != nil {
		return nil, err
	}
	// The new devices are spread evenly over the device brokers, each
	// broker's share in shards of at most ShardSize.
	var fresh []*shardProc
	brokers := r.fleet.brokers
	for b, broker := range brokers {
		lo, hi := have+(n-have)*b/len(brokers), have+(n-have)*(b+1)/len(brokers)
		if err := r.startShards(lo, hi, n-have, broker, &fresh); err != nil {
			return nil, err
		}
	}
	sr := &SizeResult{Devices: n, Shards: len(r.shards), Enroll: EnrollResult{Devices: n - have}}
	return r.grown(ctx, n, have, m0, fresh, sr)
}

// startShards starts shards for devices lo to hi-1 of the total just
// added, on broker.
func (r *run) startShards(lo, hi, added int, broker string, fresh *[]*shardProc) error {
	for first := lo; first < hi; first += r.o.ShardSize {
		count := min(r.o.ShardSize, hi-first)
		rate := r.o.Rate * float64(count) / float64(added)
		cfg := ShardConfig{FirstIndex: first, Devices: count, Seed: r.o.Seed, Broker: broker, BootstrapBroker: r.fleet.bootstrap, ServerName: r.fleet.serverName,
			FleetCA: r.fleet.caFile, UpdateServer: r.fleet.updateServer, EKCADir: r.o.EKCADir, Dir: shardDir(r.o.Dir, first),
			Rate: rate, PerSource: r.o.PerSource, AttestInterval: Duration(r.o.AttestInterval), TelemetryInterval: Duration(r.o.TelemetryInterval),
			RetryMin: Duration(r.o.RetryMin), RetryMax: Duration(r.o.RetryMax)}
		cmd, err := r.o.Shard()
		if err != nil {
			return err
		}
		p, err := startShard(cmd, cfg, filepath.Join(r.o.Dir, fmt.Sprintf("shard-%06d.log", first)))
		if err != nil {
			return err
		}
		r.shards = append(r.shards, p)
		*fresh = append(*fresh, p)
	}
	return nil
}

// grown finishes grow once the shards started.
func (r *run) grown(ctx context.Context, n, have int, m0 sample, fresh []*shardProc, sr *SizeResult) (*SizeResult, error) {
	err := r.waitShards(ctx, fresh, "devices active", func(s ShardSummary) (int, int) { return min(s.Active, s.Connected), s.Devices })
	sums, serr := r.summaries(ctx, fresh, shardRequest{Op: opSummary, Times: true})
	if serr != nil {
		return nil, serr
	}
	m1, merr := r.fleet.scrape(ctx)
	if merr != nil {
		return nil, merr
	}
	total := addSummaries(sums)
	e := &sr.Enroll
	e.Active = total.Active
	if !total.FirstStart.IsZero() && total.LastActive.After(total.FirstStart) {
		e.WallSeconds = total.LastActive.Sub(total.FirstStart).Seconds()
		e.PerSecond = float64(total.Active) / e.WallSeconds
	}
	e.TimeToActive = dist(total.TimesToActive)
	e.FleetCPUSeconds = m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"]
	e.CPUPerDeviceMS = e.FleetCPUSeconds * 1000 / float64(e.Devices)
	e.Enrolled = m1["sigil_enroll_enrolled_total"] - m0["sigil_enroll_enrolled_total"]
	e.FloorRatio = ratio(e.CPUPerDeviceMS*1000, r.res.Floor.Enrollment)
	e.DatabaseCPUPerDeviceMS = (m1[keyDBCPU] - m0[keyDBCPU]) * 1000 / float64(e.Devices)
	e.BrokerCPUPerDeviceMS = (m1[keyBrokerCPU] - m0[keyBrokerCPU]) * 1000 / float64(e.Devices)
	if err != nil {
		sr.Fleet = snapshotOf(m1)
		r.res.Sizes = append(r.res.Sizes, *sr)
		return nil, fmt.Errorf("%w (last warnings: %s)", err, strings.Join(total.LastWarnings, "; "))
	}
	r.progress("%d devices active in %.1f s (%.1f/s), time to active %s", total.Active, e.WallSeconds, e.PerSecond, e.TimeToActive)
	for _, p := range fresh {
		rep, err := p.call(shardRequest{Op: opIDs})
		if err != nil {
			return nil, err
		}
		r.ids = append(r.ids, rep.IDs...)
	}
	return sr, nil
}

// waitShards polls the shards until count(summary) reaches the shard's
// target for every one, or the timeout.
func (r *run) waitShards(ctx context.Context, shards []*shardProc, what string, count func(ShardSummary) (have, want int)) error {
	deadline := time.Now().Add(r.o.Timeout)
	lastLog := time.Time{}
	for {
		sums, err := r.summaries(ctx, shards, shardRequest{Op: opSummary})
		if err != nil {
			return err
		}
		have, want := 0, 0
		for _, s := range sums {
			h, w := count(*s)
			have, want = have+h, want+w
		}
		if have >= want {
			return nil
		}
		if time.Since(lastLog) > 10*time.Second {
			t := addSummaries(sums)
			r.progress("%s: %d of %d (started %d, connected %d, sessions lost %d, warnings %d)", what, have, want, t.Started, t.Connected, t.Disconnects, t.Warnings)
			lastLog = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fleetbench: %s: %d of %d after %v", what, have, want, r.o.Timeout)
		}
		if err := sleep(ctx, 2*time.Second); err != nil {
			return err
		}
	}
}

// summaries asks each shard for its summary, concurrently.
func (r *run) summaries(ctx context.Context, shards []*shardProc, req shardRequest) ([]*ShardSummary, error) {
	out := make([]*ShardSummary, len(shards))
	errs := make([]error, len(shards))
	var wg sync.WaitGroup
	for i, p := range shards {
		wg.Go(func() {
			rep, err := p.call(req)
			if err != nil {
				errs[i] = err
				return
			}
			out[i] = rep.Summary
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, ctx.Err()
}

// since asks each shard for its counts against the last mark.
func (r *run) since() (*SinceCounts, error) {
	total := &SinceCounts{Firmware: map[string]int{}}
	for _, p := range r.shards {
		rep, err := p.call(shardRequest{Op: opSince})
		if err != nil {
			return nil, err
		}
		c := rep.Since
		total.Connected += c.Connected
		total.NewCert += c.NewCert
		total.Reconnected += c.Reconnected
		total.Verdict += c.Verdict
		total.Reattested += c.Reattested
		total.Exited += c.Exited
		for k, v := range c.Firmware {
			total.Firmware[k] += v
		}
	}
	return total, nil
}

func (r *run) markAll() error {
	for _, p := range r.shards {
		if _, err := p.call(shardRequest{Op: opMark}); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) shardOf(i int) *shardProc {
	for _, p := range r.shards {
		if p.holds(i) {
			return p
		}
	}
	return nil
}

// addSummaries adds shard summaries up.
func addSummaries(sums []*ShardSummary) ShardSummary {
	t := ShardSummary{Sent: map[string]uint64{}, Received: map[string]uint64{}, Unacknowledged: map[string]uint64{}}
	for _, s := range sums {
		if s == nil {
			continue
		}
		t.Devices += s.Devices
		t.Started += s.Started
		t.Active += s.Active
		t.Connected += s.Connected
		t.Exited += s.Exited
		if !s.FirstStart.IsZero() && (t.FirstStart.IsZero() || s.FirstStart.Before(t.FirstStart)) {
			t.FirstStart = s.FirstStart
		}
		if s.LastActive.After(t.LastActive) {
			t.LastActive = s.LastActive
		}
		for k, v := range s.Sent {
			t.Sent[k] += v
		}
		for k, v := range s.Unacknowledged {
			t.Unacknowledged[k] += v
		}
		for k, v := range s.Received {
			t.Received[k] += v
		}
		t.TelemetryPoints += s.TelemetryPoints
		t.Unjudged += s.Unjudged
		t.Dials += s.Dials
		t.Disconnects += s.Disconnects
		t.Warnings += s.Warnings
		if len(t.LastWarnings) < maxWarnings {
			t.LastWarnings = append(t.LastWarnings, s.LastWarnings[:min(len(s.LastWarnings), maxWarnings-len(t.LastWarnings))]...)
		}
		t.TimesToActive = append(t.TimesToActive, s.TimesToActive...)
		if s.Outbox != nil {
			if t.Outbox == nil {
				t.Outbox = &OutboxTotals{}
			}
			t.Outbox.Appended += s.Outbox.Appended
			t.Outbox.Acked += s.Outbox.Acked
			t.Outbox.Dropped += s.Outbox.Dropped
			t.Outbox.Pending += s.Outbox.Pending
		}
	}
	return t
}

// learnPolicy learns the fleet's reference policy from device 0 (the
// devices all run one image), pinning PCRs 0-9 so that a firmware update
// (PCR 14) keeps passing and a tampered PCR 9 fails.
func (r *run) learnPolicy(ctx context.Context) error {
	deadline := time.Now().Add(r.o.Timeout)
	for {
		_, err := r.fleet.admin.LearnPolicy(ctx, api.LearnRequest{DeviceID: r.ids[0], Name: "fleetbench golden",
			PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, AnyFirmware: true})
		var se *api.StatusError
		switch {
		case err == nil:
			r.progress("policy learned from device %s", r.ids[0])
			return nil
		case errors.As(err, &se) && se.Status == http.StatusConflict && time.Now().Before(deadline):
			if err := sleep(ctx, time.Second); err != nil {
				return err
			}
		default:
			return fmt.Errorf("fleetbench: learn the policy: %w", err)
		}
	}
}

// soak holds n devices for Options.Soak, measuring the fleet's memory and
// CPU, and the API's latency if selected.
func (r *run) soak(ctx context.Context, n int) (*SoakResult, *APIResult, error) {
	r.progress("soak: %d devices for %v", n, r.o.Soak)
	sum0, err := r.summaries(ctx, r.shards, shardRequest{Op: opSummary})
	if err != nil {
		return nil, nil, err
	}
	m0, err := r.fleet.scrape(ctx)
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, r.o.Soak)
	defer cancel()
	var probe *apiProbe
	var wg sync.WaitGroup
	if r.phase(PhaseAPI) {
		probe = r.newProbe()
		wg.Go(func() { probe.run(sctx, r.o.APIRate) })
	}
	if r.o.Profile && r.fleet.debugURL != "" {
		wg.Go(func() {
			d := min(r.o.Soak/2, 60*time.Second)
			if err := r.fleet.profile(sctx, "profile?seconds="+fmt.Sprint(int(d.Seconds())), filepath.Join(r.o.Out, fmt.Sprintf("fleet-cpu-soak-%d.pprof", n))); err != nil {
				r.progress("CPU profile: %v", err)
			}
		})
	}
	for sctx.Err() == nil {
		if err := sleep(sctx, 30*time.Second); err == nil {
			if m, err := r.fleet.scrape(ctx); err == nil {
				s := snapshotOf(m)
				r.progress("soak: %.0f s, fleet RSS %.0f MB, heap %.0f MB, %.0f goroutines, %.0f device connections, CPU %.1f s",
					time.Since(start).Seconds(), s.RSSBytes/1e6, s.HeapInuseBytes/1e6, s.Goroutines, s.DeviceConnection, s.CPUSeconds-m0["process_cpu_seconds_total"])
			}
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	elapsed := time.Since(start)
	m1, err := r.fleet.scrape(ctx)
	if err != nil {
		return nil, nil, err
	}
	sum1, err := r.summaries(ctx, r.shards, shardRequest{Op: opSummary})
	if err != nil {
		return nil, nil, err
	}
	if r.o.Profile && r.fleet.debugURL != "" {
		if err := r.fleet.profile(ctx, "heap?gc=1", filepath.Join(r.o.Out, fmt.Sprintf("fleet-heap-soak-%d.pprof", n))); err != nil {
			r.progress("heap profile: %v", err)
		}
	}
	a, b := addSummaries(sum0), addSummaries(sum1)
	s := &SoakResult{Seconds: elapsed.Seconds(), Connected: b.Connected, Disconnects: b.Disconnects - a.Disconnects, Sent: map[string]uint64{},
		Start: snapshotOf(m0), End: snapshotOf(m1)}
	for k, v := range b.Sent {
		if d := v - a.Sent[k]; d > 0 {
			s.Sent[k] = d
		}
	}
	c := float64(max(b.Connected, 1))
	s.RSSPerDeviceKB = s.End.RSSBytes / c / 1e3
	if k := len(r.res.Sizes); k > 0 {
		if prev := r.res.Sizes[k-1]; prev.Soak != nil && b.Connected > prev.Soak.Connected {
			s.MarginalRSSPerDeviceKB = (s.End.RSSBytes - prev.Soak.End.RSSBytes) / float64(b.Connected-prev.Soak.Connected) / 1e3
		}
	}
	s.HeapPerDeviceKB = s.End.HeapInuseBytes / c / 1e3
	s.StackPerDeviceKB = s.End.StackInuseBytes / c / 1e3
	s.GoroutinesPerDevice = (s.End.Goroutines - r.empty.Goroutines) / c
	s.FleetCPUSeconds = s.End.CPUSeconds - s.Start.CPUSeconds
	s.CPUPerDevicePerMinMS = s.FleetCPUSeconds * 1000 / c / elapsed.Minutes()
	s.Verdicts = deltaPrefix(m0, m1, "sigil_attestation_verdicts_total")
	s.TelemetryBatches = deltaPrefix(m0, m1, "sigil_telemetry_batches_total")
	var msgs uint64
	for _, v := range s.Sent {
		msgs += v
	}
	if msgs > 0 {
		s.CPUPerMessageMS = s.FleetCPUSeconds * 1000 / float64(msgs)
	}
	if s.Verdicts > 0 {
		s.CPUPerAttestationMS = s.FleetCPUSeconds * 1000 / s.Verdicts
		s.AttestFloorRatio = ratio(s.CPUPerAttestationMS*1000, r.res.Floor.Attestation)
		s.DatabaseCPUPerAttestationMS = (s.End.DatabaseCPU - s.Start.DatabaseCPU) * 1000 / s.Verdicts
	}
	if msgs > 0 {
		s.BrokerCPUPerMessageMS = (s.End.BrokerCPU - s.Start.BrokerCPU) * 1000 / float64(msgs)
	}
	if s.End.Replicas > 0 {
		s.ReplicaRSSPerDeviceKB = s.RSSPerDeviceKB / s.End.Replicas
		s.ReplicaHeapPerDeviceKB = s.HeapPerDeviceKB / s.End.Replicas
	}
	if s.End.Brokers > 0 {
		s.BrokerRSSPerDeviceKB = (s.End.BrokerRSSBytes - r.empty.BrokerRSSBytes) / c / 1e3
	}
	r.progress("soak done: RSS %.1f KB/device, heap %.1f KB/device, CPU %.2f ms/device/min, %d sessions lost", s.RSSPerDeviceKB, s.HeapPerDeviceKB, s.CPUPerDevicePerMinMS, s.Disconnects)
	var ar *APIResult
	if probe != nil {
		ar = probe.result()
	}
	return s, ar, nil
}

// deltaPrefix is the change of every sample whose key starts with name
// (a family's labelled samples together).
func deltaPrefix(m0, m1 sample, name string) float64 {
	var d float64
	for k, v := range m1 {
		if k == name || strings.HasPrefix(k, name+"{") {
			d += v - m0[k]
		}
	}
	return d
}

// rotate force-renews every connected device through a rotation job of
// the API and waits until each is connected on its new certificate.
func (r *run) rotate(ctx context.Context) (*RotationResult, error) {
	if err := r.markAll(); err != nil {
		return nil, err
	}
	lost0, err := r.disconnects(ctx)
	if err != nil {
		return nil, err
	}
	m0, err := r.fleet.scrape(ctx)
	if err != nil {
		return nil, err
	}
	var profile sync.WaitGroup
	pctx, stopProfile := context.WithCancel(ctx)
	defer func() { stopProfile(); profile.Wait() }()
	r.startProfile(pctx, &profile, "rotate")
	start := time.Now()
	job, err := r.fleet.admin.StartRotation(ctx, api.RotationRequest{Selector: rotation.Selector{All: true}, Rate: r.o.RotateRate, Reason: "fleetbench forced re-key"})
	if err != nil {
		return nil, fmt.Errorf("fleetbench: start the rotation: %w", err)
	}
	res := &RotationResult{Job: job.ID, Devices: job.Progress.Total}
	r.progress("rotation %s: %d devices at %.0f/s", job.ID, res.Devices, r.o.RotateRate)
	deadline := time.Now().Add(r.o.Timeout)
	lastLog := time.Now()
	for {
		j, err := r.fleet.admin.Rotation(ctx, job.ID)
		if err == nil {
			res.Renewed = j.Progress.Renewed
			if j.State != rotation.JobRunning {
				res.JobSeconds = time.Since(start).Seconds()
				if j.State != rotation.JobDone {
					return res, fmt.Errorf("fleetbench: rotation %s ended %s", job.ID, j.State)
				}
				break
			}
			if time.Since(lastLog) > 10*time.Second {
				r.progress("rotation: renewed %d of %d (asked %d, waiting %d)", j.Progress.Renewed, j.Progress.Total, j.Progress.Sent, j.Progress.Waiting)
				lastLog = time.Now()
			}
		}
		if (r.o.RotateFor > 0 && time.Since(start) >= r.o.RotateFor) || (!r.o.RotateUntil.IsZero() && time.Now().After(r.o.RotateUntil)) {
			res.JobSeconds, res.TimeBoxed = time.Since(start).Seconds(), true
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("fleetbench: rotation %s not done after %v (renewed %d of %d)", job.ID, r.o.Timeout, res.Renewed, res.Devices)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
	m1, err := r.fleet.scrape(ctx)
	if err != nil {
		return nil, err
	}
	stopProfile()
	res.FleetCPUSeconds = m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"]
	if res.Renewed > 0 {
		res.CPUPerRenewalMS = res.FleetCPUSeconds * 1000 / float64(res.Renewed)
		res.FloorRatio = ratio(res.CPUPerRenewalMS*1000, r.res.Floor.Renewal)
		res.PerSecond = float64(res.Renewed) / res.JobSeconds
		res.DatabaseCPUPerRenewalMS = (m1[keyDBCPU] - m0[keyDBCPU]) * 1000 / float64(res.Renewed)
		res.BrokerCPUPerRenewalMS = (m1[keyBrokerCPU] - m0[keyBrokerCPU]) * 1000 / float64(res.Renewed)
		if k := len(r.res.Sizes); k > 0 && r.res.Sizes[k-1].Soak != nil && r.res.Sizes[k-1].Soak.Seconds > 0 {
			so := r.res.Sizes[k-1].Soak
			span := res.JobSeconds / so.Seconds
			res.NetCPUPerRenewalMS = max(0, res.FleetCPUSeconds-so.FleetCPUSeconds*span) * 1000 / float64(res.Renewed)
			res.NetFloorRatio = ratio(res.NetCPUPerRenewalMS*1000, r.res.Floor.Renewal)
			res.NetDatabaseCPUPerRenewalMS = max(0, (m1[keyDBCPU]-m0[keyDBCPU])-(so.End.DatabaseCPU-so.Start.DatabaseCPU)*span) * 1000 / float64(res.Renewed)
		}
	}
	if res.TimeBoxed {
		r.note("forced re-key time-boxed after %.0f s: %d of %d renewed by then; the rate and CPU per renewal are over those", res.JobSeconds, res.Renewed, res.Devices)
		r.progress("rotation time-boxed: %d renewed in %.1f s (%.0f/s), %.2f ms fleet CPU per renewal", res.Renewed, res.JobSeconds, res.PerSecond, res.CPUPerRenewalMS)
		return res, nil
	}
	for {
		c, err := r.since()
		if err != nil {
			return nil, err
		}
		res.OnNewCert = c.NewCert
		if c.NewCert >= res.Devices {
			res.AllNewSeconds = time.Since(start).Seconds()
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("fleetbench: %d of %d devices connected on a new certificate after %v", c.NewCert, res.Devices, r.o.Timeout)
		}
		if err := sleep(ctx, time.Second); err != nil {
			return nil, err
		}
	}
	if lost, err := r.disconnects(ctx); err == nil {
		res.Disconnects = lost - lost0
	}
	r.progress("rotation done: %d renewed in %.1f s, all on new certificates after %.1f s, %.2f ms fleet CPU per renewal", res.Renewed, res.JobSeconds, res.AllNewSeconds, res.CPUPerRenewalMS)
	return res, nil
}

// startProfile records a CPU profile of the fleet while ctx lasts (at
// most a minute), if profiles were asked for.
func (r *run) startProfile(ctx context.Context, wg *sync.WaitGroup, name string) {
	if !r.o.Profile || r.fleet.debugURL == "" {
		return
	}
	wg.Go(func() {
		if err := r.fleet.profile(ctx, "profile?seconds=60", filepath.Join(r.o.Out, "fleet-cpu-"+name+".pprof")); err != nil && ctx.Err() == nil {
			r.progress("CPU profile %s: %v", name, err)
		}
	})
}

// campaign rolls a 1 MiB release out to CampaignDevices devices in staged
// waves and waits until it completed.
func (r *run) campaign(ctx context.Context) (*CampaignResult, error) {
	n := min(r.o.CampaignDevices, len(r.ids))
	lost0, err := r.disconnects(ctx)
	if err != nil {
		return nil, err
	}
	image := bytes.Repeat([]byte("sim-gw firmware 2.0.0\n"), r.o.ImageSize/22+1)[:r.o.ImageSize]
	m := &manifest.Manifest{Name: "sim-os", Version: "2.0.0", SecurityVersion: 2, Models: []string{swarm.DefaultModel},
		Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)}
	m.Measurements = &manifest.Measurements{PCRs: map[string]map[int]string{"sha256": {14: harness.ExpectedPCR14(m.SHA256)}}}
	raw, bundles, err := harness.SignRelease(m, r.signer)
	if err != nil {
		return nil, err
	}
	rel, err := r.fleet.admin.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
	if err != nil {
		return nil, fmt.Errorf("fleetbench: upload the release: %w", err)
	}
	if _, err := r.approver.client.ApproveRelease(ctx, rel.ID); err != nil {
		return nil, fmt.Errorf("fleetbench: approve the release: %w", err)
	}
	// Devices enrolled by their EK certificate have no model until the
	// fleet assigns one; a campaign targets only devices of its release's
	// models.
	if err := r.assignModel(ctx, r.ids[:n], swarm.DefaultModel); err != nil {
		return nil, err
	}
	// The campaign's devices carry a tag (a request body holds at most a
	// few hundred device IDs).
	tag := fmt.Sprintf("fleetbench-%d", time.Now().UnixNano()%1e9)
	for i := 0; i < n; i += api.BulkLimit {
		req := api.BulkRequest{DeviceIDs: r.ids[i:min(i+api.BulkLimit, n)], Add: []string{tag}}
		var out api.BulkResult
		if err := r.fleet.admin.Do(ctx, http.MethodPost, "/api/v1/devices/bulk/tag", req, &out); err != nil {
			return nil, fmt.Errorf("fleetbench: tag the campaign's devices: %w", err)
		}
		if len(out.Skipped) > 0 {
			return nil, fmt.Errorf("fleetbench: tag the campaign's devices: %d skipped (%s)", len(out.Skipped), out.Skipped[0].Reason)
		}
	}
	def := campaign.Definition{Name: "fleetbench 2.0.0", Release: rel.ID, Targets: campaign.Selector{Tags: []string{tag}},
		Waves: campaign.Waves{Canary: max(1, n/100), Growth: 2}, DeviceTimeout: config.Duration(10 * time.Minute)}
	c, err := r.fleet.admin.CreateCampaign(ctx, def, "fleetbench")
	if err != nil {
		return nil, fmt.Errorf("fleetbench: create the campaign: %w", err)
	}
	m0, err := r.fleet.scrape(ctx)
	if err != nil {
		return nil, err
	}
	var profile sync.WaitGroup
	pctx, stopProfile := context.WithCancel(ctx)
	defer func() { stopProfile(); profile.Wait() }()
	r.startProfile(pctx, &profile, "campaign")
	start := time.Now()
	if c, err = r.fleet.admin.CampaignAction(ctx, c.ID, "start", "fleetbench", time.Time{}); err != nil {
		return nil, fmt.Errorf("fleetbench: start the campaign: %w", err)
	}
	res := &CampaignResult{ID: c.ID, Devices: c.Total, ImageBytes: len(image)}
	r.progress("campaign %s: %d devices", c.ID, c.Total)
	deadline := time.Now().Add(r.o.Timeout)
	lastLog := time.Now()
	for {
		cur, err := r.fleet.admin.Campaign(ctx, c.ID)
		if err == nil {
			res.State, res.Waves, res.Committed, res.Failed = string(cur.State), len(cur.Waves), cur.Counts.Committed, cur.Counts.Failures()
			if cur.State == campaign.StateCompleted || cur.State == campaign.StatePaused || cur.State == campaign.StateAborted {
				res.Seconds = time.Since(start).Seconds()
				break
			}
			if time.Since(lastLog) > 10*time.Second {
				r.progress("campaign: wave %d of %d, %d committed, %d failed", cur.Wave, len(cur.Waves), cur.Counts.Committed, cur.Counts.Failures())
				lastLog = time.Now()
			}
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("fleetbench: campaign %s not finished after %v (%d committed)", c.ID, r.o.Timeout, res.Committed)
		}
		if err := sleep(ctx, time.Second); err != nil {
			return nil, err
		}
	}
	m1, err := r.fleet.scrape(ctx)
	if err != nil {
		return nil, err
	}
	res.FleetCPUSeconds = m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"]
	if cnt, err := r.since(); err == nil {
		res.OnNew = cnt.Firmware[m.Version]
	}
	if lost, err := r.disconnects(ctx); err == nil {
		res.Disconnects = lost - lost0
	}
	r.progress("campaign %s %s after %.1f s: %d committed, %d failed", c.ID, res.State, res.Seconds, res.Committed, res.Failed)
	if res.State != string(campaign.StateCompleted) {
		return res, fmt.Errorf("fleetbench: campaign %s ended %s", c.ID, res.State)
	}
	return res, nil
}

// quarantine tampers with QuarantineSamples devices, one after the other,
// challenges each and times its session closed, its certificates revoked
// and an alert at the sink.
func (r *run) quarantine(ctx context.Context) (*QuarantineResult, error) {
	k := min(r.o.QuarantineSamples, len(r.ids)-1)
	res := &QuarantineResult{}
	var closed, revoked, alerted, total []float64
	rules := map[string]bool{}
	for s := range k {
		i := 1 + s*(len(r.ids)-1)/k // spread over the shards; never device 0, the golden one
		p := r.shardOf(i)
		id := r.ids[i]
		if r.sink != nil {
			r.sink.watchDevice(id)
		}
		if _, err := p.call(shardRequest{Op: opTamper, Index: i}); err != nil {
			return nil, err
		}
		r.quarantined[i] = true
		t0 := time.Now()
		if err := r.fleet.admin.Attest(ctx, id); err != nil {
			return nil, fmt.Errorf("fleetbench: challenge device %s: %w", id, err)
		}
		res.Samples++
		var tClosed, tRevoked, tAlert time.Time
		deadline := t0.Add(30 * time.Second)
		for time.Now().Before(deadline) && (tClosed.IsZero() || tRevoked.IsZero() || (r.sink != nil && tAlert.IsZero())) {
			if tClosed.IsZero() {
				if rep, err := p.call(shardRequest{Op: opDevice, Index: i}); err == nil && rep.Device.LastDisconnect.After(t0) {
					tClosed = rep.Device.LastDisconnect
				}
			}
			if tRevoked.IsZero() {
				if d, err := r.fleet.admin.Device(ctx, id); err == nil && d.State == "quarantined" {
					tRevoked = time.Now()
					for _, e := range d.Events {
						if e.Kind == "quarantined" && e.Time.After(t0) {
							tRevoked = e.Time // recorded once the revocation committed
						}
					}
				}
			}
			if r.sink != nil && tAlert.IsZero() {
				if a, ok := r.sink.arrival(id); ok {
					tAlert = a.At
					rules[a.Rule] = true
				}
			}
			if err := sleep(ctx, 20*time.Millisecond); err != nil {
				return nil, err
			}
		}
		ms := func(t time.Time) float64 { return float64(t.Sub(t0)) / float64(time.Millisecond) }
		last := slices.MaxFunc([]time.Time{tClosed, tRevoked, tAlert}, func(a, b time.Time) int { return a.Compare(b) })
		if tClosed.IsZero() || tRevoked.IsZero() || (r.sink != nil && tAlert.IsZero()) {
			res.Missing++
			r.progress("quarantine %d (%s): closed %v, revoked %v, alert %v within 30 s", s, id, !tClosed.IsZero(), !tRevoked.IsZero(), !tAlert.IsZero())
			continue
		}
		closed, revoked = append(closed, ms(tClosed)), append(revoked, ms(tRevoked))
		if !tAlert.IsZero() {
			alerted = append(alerted, ms(tAlert))
		}
		total = append(total, ms(last))
	}
	res.Closed, res.Revoked, res.Alerted, res.Total = dist(closed), dist(revoked), dist(alerted), dist(total)
	res.Rules = slices.Sorted(maps.Keys(rules))
	r.progress("quarantine: %d samples, all three %s", res.Samples, res.Total)
	return res, nil
}

// account compares what the devices sent with what the fleet counted,
// per kind of message: the devices' counts first, then the fleet's once
// they caught up (or 30 s), then the devices' again.
func (r *run) account(ctx context.Context) ([]KindCount, error) {
	s1, err := r.summaries(ctx, r.shards, shardRequest{Op: opSummary})
	if err != nil {
		return nil, err
	}
	before := addSummaries(s1)
	var m sample
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m, err = r.fleet.scrape(ctx); err != nil {
			return nil, err
		}
		ks := kindCounts(before, m)
		if !slices.ContainsFunc(ks, func(k KindCount) bool { return k.Lost > 0 }) || time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, time.Second); err != nil {
			return nil, err
		}
	}
	s2, err := r.summaries(ctx, r.shards, shardRequest{Op: opSummary})
	if err != nil {
		return nil, err
	}
	after := addSummaries(s2)
	ks := kindCounts(before, m)
	for i := range ks {
		ks[i].SentAfter = sentOf(after, ks[i].Kind)
		ks[i].UnackedAfter = countOf(after.Unacknowledged, ks[i].Kind)
	}
	return ks, nil
}

// sentOf is what the devices sent of a kind ("a+b": both).
func sentOf(s ShardSummary, kind string) uint64 { return countOf(s.Sent, kind) }

// countOf is counts' total of a kind ("a+b": both).
func countOf(counts map[string]uint64, kind string) uint64 {
	var n uint64
	for _, k := range strings.Split(kind, "+") {
		n += counts[k]
	}
	return n
}

// kindCounts sets the devices' counts beside the fleet's, for the kinds
// the fleet counts, and the messages of any kind the broker acknowledged
// but withheld from the fleet (counted, but not by kind).
func kindCounts(dev ShardSummary, m sample) []KindCount {
	batch := func(res string) float64 { return m[`sigil_telemetry_batches_total{result="`+res+`"}`] }
	verdicts := m[`sigil_attestation_verdicts_total{result="pass"}`] + m[`sigil_attestation_verdicts_total{result="fail"}`]
	ks := []KindCount{
		{Kind: wire.TypeTelemetryBatch, Ingested: batch("accepted") + batch("duplicate") + batch("stale"),
			Dropped: m["sigil_telemetry_queue_full_total"], Refused: batch("rejected") + batch("malformed"),
			Fleet: "sigil_telemetry_batches_total (accepted, duplicate, stale; rejected, malformed), sigil_telemetry_queue_full_total"},
		{Kind: wire.TypeAttestEvidence + "+" + wire.TypeRenewRequest, Ingested: verdicts + float64(dev.Unjudged),
			Dropped: m["sigil_attestation_evidence_dropped_total"],
			Fleet:   "sigil_attestation_verdicts_total, the answers that refused evidence unjudged (counted at the devices: stale nonces, renewals refused while the fleet was busy), sigil_attestation_evidence_dropped_total"},
		{Kind: wire.TypeEnrollRequest, Ingested: m["sigil_enroll_requests_total"], Dropped: m["sigil_enroll_busy_total"], Refused: m["sigil_enroll_malformed_total"],
			Fleet: "sigil_enroll_requests_total, sigil_enroll_busy_total, sigil_enroll_malformed_total"},
	}
	for i := range ks {
		k := &ks[i]
		k.Sent = sentOf(dev, k.Kind)
		k.Lost = math.Max(0, float64(k.Sent)-k.Ingested-k.Dropped-k.Refused)
	}
	if w, ok := m["sigil_broker_messages_withheld_total"]; ok {
		ks = append(ks, KindCount{Kind: KindWithheld, Dropped: w, Fleet: "sigil_broker_messages_withheld_total"})
	}
	return ks
}

// KindWithheld is the Kind of the account of the messages the broker
// acknowledged but withheld from the fleet.
const KindWithheld = "(any kind, withheld by the broker)"

// reconnect restarts the fleet under its devices and times their return:
// connected again, and attested again.
func (r *run) reconnect(ctx context.Context) (*ReconnectResult, error) {
	if err := r.markAll(); err != nil {
		return nil, err
	}
	expected := len(r.ids) - len(r.quarantined)
	res := &ReconnectResult{Devices: expected}
	r.progress("reconnect storm: restarting sigil serve under %d devices", len(r.ids))
	start := time.Now()
	if _, err := r.fleet.restart(ctx); err != nil {
		return nil, err
	}
	res.DownSeconds = time.Since(start).Seconds()
	r.progress("fleet answers again after %.1f s", res.DownSeconds)
	probe := r.newProbe()
	pctx, stopProbe := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { probe.run(pctx, r.o.APIRate) })
	defer func() { stopProbe(); wg.Wait() }()
	deadline := time.Now().Add(r.o.Timeout)
	lastLog := time.Now()
	for {
		c, err := r.since()
		if err != nil {
			return nil, err
		}
		res.Reconnected, res.Reattested, res.GaveUp = c.Reconnected, c.Reattested, c.Exited
		if res.ReconnectedSeconds == 0 && c.Reconnected >= expected {
			res.ReconnectedSeconds = time.Since(start).Seconds()
		}
		if c.Reattested >= expected {
			res.ReattestedSeconds = time.Since(start).Seconds()
			break
		}
		if time.Since(lastLog) > 10*time.Second {
			r.progress("reconnect storm: %d reconnected, %d re-attested of %d", c.Reconnected, c.Reattested, expected)
			lastLog = time.Now()
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("fleetbench: %d of %d devices re-attested after %v", c.Reattested, expected, r.o.Timeout)
		}
		if err := sleep(ctx, time.Second); err != nil {
			return nil, err
		}
	}
	stopProbe()
	wg.Wait()
	res.API, res.APIErrors = dist(probe.all()), probe.result().Errors
	r.progress("reconnect storm: all reconnected after %.1f s, re-attested after %.1f s", res.ReconnectedSeconds, res.ReattestedSeconds)
	return res, nil
}

// apiProbe measures the API's and the console's latency with a steady
// stream of reads: the device list and a random device's page, through
// the API (admin token) and the console (a viewer's session).
type apiProbe struct {
	r       *run
	viewer  *person
	mu      sync.Mutex
	lat     [4][]float64
	errors  int
	lastErr string
}

func (r *run) newProbe() *apiProbe { return &apiProbe{r: r, viewer: r.viewer} }

func (p *apiProbe) run(ctx context.Context, rate float64) {
	if rate <= 0 {
		return
	}
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		id := p.r.ids[mrand.IntN(len(p.r.ids))]
		var path string
		hc := p.r.fleet.admin.HTTP
		switch k % 4 {
		case 0:
			path = "/api/v1/devices?limit=50"
		case 1:
			path = "/api/v1/devices/" + url.PathEscape(id)
		case 2:
			path, hc = "/devices", p.viewer.console
		case 3:
			path, hc = "/devices/"+url.PathEscape(id), p.viewer.console
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.r.fleet.apiURL+path, nil)
		if k%4 < 2 {
			req.Header.Set("Authorization", "Bearer "+p.r.fleet.admin.Token)
		}
		t0 := time.Now()
		resp, err := hc.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("GET %s: %s", path, resp.Status)
			}
		}
		ms := float64(time.Since(t0)) / float64(time.Millisecond)
		p.mu.Lock()
		if err != nil {
			if ctx.Err() == nil {
				p.errors++
				p.lastErr = err.Error()
			}
		} else {
			p.lat[k%4] = append(p.lat[k%4], ms)
		}
		p.mu.Unlock()
	}
}

func (p *apiProbe) result() *APIResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := &APIResult{Errors: p.errors, LastError: p.lastErr}
	a.DeviceList, a.DevicePage = dist(slices.Clone(p.lat[0])), dist(slices.Clone(p.lat[1]))
	a.ConsoleList, a.ConsolePage = dist(slices.Clone(p.lat[2])), dist(slices.Clone(p.lat[3]))
	return a
}

// all is every latency measured, of every kind of request.
func (p *apiProbe) all() []float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Concat(p.lat[0], p.lat[1], p.lat[2], p.lat[3])
}

// profile saves one of the fleet's debug profiles.
func (f *fleet) profile(ctx context.Context, which, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.debugURL+"/debug/pprof/"+which, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", which, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// ratio is a / b, 0 when b is.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// machine describes this machine.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadBefore: loadAvg()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb uint64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemoryBytes = kb << 10
		}
	}
	return m
}

// loadAvg is the load average (Linux; zero elsewhere).
func loadAvg() [3]float64 {
	var l [3]float64
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Sscanf(string(b), "%f %f %f", &l[0], &l[1], &l[2])
	}
	return l
}

// assignModel gives each of ids the fleet model model, as an operator
// does (PATCH /api/v1/devices/{id}), eight requests at a time.
func (r *run) assignModel(ctx context.Context, ids []string, model string) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, id := range ids {
		g.Go(func() error {
			if err := r.fleet.admin.Do(ctx, http.MethodPatch, "/api/v1/devices/"+id, map[string]string{"model": model}, nil); err != nil {
				return fmt.Errorf("fleetbench: assign device %s its model: %w", id, err)
			}
			return nil
		})
	}
	return g.Wait()
}
