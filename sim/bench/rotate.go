package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/sim/harness"
)

// RenewBenchmarks is the -bench pattern Rotate runs in fleet/rotation: the
// fleet side of a renewal next to its crypto floor, the job bookkeeping a
// renewal triggers, and one fsync'd bbolt write.
const RenewBenchmarks = `^(BenchmarkRenew|BenchmarkRenewFloor|BenchmarkRenewFloorShare|BenchmarkJobStep|BenchmarkBoltWrite)$`

// RotateOptions configures Rotate.
type RotateOptions struct {
	// Devices is the number of simulated devices. Default 20.
	Devices int
	// Rounds is how many forced rotations of the whole fleet are timed,
	// one after the other. Default 1.
	Rounds int
	// Rate is the rotation job's rate (rotation requests per second).
	// Default 10000, the most a job accepts: every device is asked at the
	// job's first step.
	Rate float64
	// Dir holds the TPM states, the fleet and the device state. Required.
	Dir string
	// Timeout bounds each wait: all devices connected, one rotation, the
	// bookkeeping after it. Default 60s.
	Timeout time.Duration
	// Logger receives the fleet's and devices' logs; nil discards them.
	Logger *slog.Logger
}

// RotateRound is one forced rotation of every device.
type RotateRound struct {
	Job string
	// Wall is from rotation.Service.Start returning to the last device
	// connected with its new certificate; PerSecond is devices / Wall.
	Wall      time.Duration
	PerSecond float64
	// FirstSent is from the job's start to its first rotate message (the
	// job sends on the rotation service's once-a-second tick).
	FirstSent time.Duration
	// Active is from the first rotate message sent to the last device
	// connected with its new certificate (Wall without the wait for the
	// tick); ActivePerSecond is devices / Active.
	Active          time.Duration
	ActivePerSecond float64
	// ToConnected is each device's time from the job's start to it being
	// connected with its new certificate: the inventory holds a new serial
	// and the agent reports that serial, connected.
	ToConnected []time.Duration
	// FromSent is each device's time from its rotate message being sent
	// (the job record's Sent) to connected with the new certificate.
	FromSent []time.Duration
	// SentToIssued is each device's time from its rotate message being
	// sent to the fleet recording the renewal (its "renewed" event): new
	// TPM key, renewal challenge, quote, certify, CSR, the fleet's checks
	// and certificate issue. IssuedToConnected is the rest: the device
	// checks and stores the certificate and reconnects with it.
	SentToIssued, IssuedToConnected []time.Duration
	// CPUSelf is the CPU time of this process (the fleet, its broker and
	// every agent) and CPUSwtpm that of the swtpm processes, from the first
	// rotate message seen sent (the job record polled every 2 ms) to the
	// last device connected; Linux only, clock-tick resolution.
	CPUSelf, CPUSwtpm time.Duration
	// Renewed is the job's own count once done; Revoked counts the
	// devices whose previous certificate is revoked as superseded.
	Renewed, Revoked int
}

// RotateResult is the outcome of Rotate.
type RotateResult struct {
	Devices int
	Rate    float64
	// Setup is the time before any clock: swtpm manufacture, the fleet,
	// every device enrolled, connected and its on-connect attestation
	// recorded.
	Setup  time.Duration
	Rounds []RotateRound
	// Totals over every round.
	Renewals                 int
	Wall, Active             time.Duration
	PerSecond, ActivePerSec  float64
	ToConnected, FromSent    Dist
	SentToIssued, IssuedToOn Dist
}

// Rotate measures forced certificate rotation end to end. Set-up,
// untimed: one swtpm per device, an in-process fleet, every sigild agent
// enrolled and connected over TPM-backed mTLS with its on-connect
// attestation recorded. Then, per round, the clock starts and the fleet
// starts a forced rotation of all devices (rotation.Service.Start, Rate per
// second). On its next tick the fleet sends each device a rotate message;
// each agent creates a new transport key in its swtpm, stores it, asks for
// a renewal challenge, quotes, certifies the new key with its AK and signs
// a CSR with it; the fleet judges the evidence (attestation, written to
// the history and inventory), checks certify and CSR, issues the
// certificate and records it; the agent checks and stores it and
// reconnects with it (mTLS, signed in the swtpm). A device counts when the
// inventory holds its new serial and its agent reports that serial,
// connected. Afterwards the job must be done with every device renewed,
// and every previous certificate revoked as superseded.
func Rotate(ctx context.Context, o RotateOptions) (*RotateResult, error) {
	if o.Devices == 0 {
		o.Devices = 20
	}
	if o.Rounds == 0 {
		o.Rounds = 1
	}
	if o.Rate == 0 {
		o.Rate = 10000
	}
	if o.Devices < 1 || o.Rounds < 1 {
		return nil, errors.New("bench: rotate: devices and rounds must be at least 1")
	}
	if o.Dir == "" {
		return nil, errors.New("bench: rotate: no working directory")
	}
	if o.Timeout == 0 {
		o.Timeout = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	setupStart := time.Now()
	st, err := connectedFleet(ctx, o.Dir, o.Devices, o.Timeout, o.Logger, nil)
	if err != nil {
		return nil, err
	}
	defer st.close()
	fleet, devices, ids := st.fleet, st.devices, st.ids
	res := &RotateResult{Devices: o.Devices, Rate: o.Rate, Setup: time.Since(setupStart)}
	for range o.Rounds {
		r, err := rotateRound(ctx, fleet, devices, ids, o)
		if err != nil {
			return nil, err
		}
		res.Rounds = append(res.Rounds, *r)
		res.Renewals += r.Renewed
		res.Wall += r.Wall
		res.Active += r.Active
	}
	res.PerSecond = float64(res.Renewals) / res.Wall.Seconds()
	res.ActivePerSec = float64(res.Renewals) / res.Active.Seconds()
	var to, from, issued, on []time.Duration
	for _, r := range res.Rounds {
		to, from = append(to, r.ToConnected...), append(from, r.FromSent...)
		issued, on = append(issued, r.SentToIssued...), append(on, r.IssuedToConnected...)
	}
	res.ToConnected, res.FromSent, res.SentToIssued, res.IssuedToOn = dist(to), dist(from), dist(issued), dist(on)
	return res, nil
}

// rotateRound runs and times one forced rotation of every device.
func rotateRound(ctx context.Context, fleet *harness.Fleet, devices []*harness.Device, ids []string, o RotateOptions) (*RotateRound, error) {
	from := make([]string, len(ids))
	for i, id := range ids {
		d, err := fleet.Inv.Device(ctx, id)
		if err != nil {
			return nil, err
		}
		from[i] = d.CertSerial
	}
	t0 := time.Now()
	job, err := fleet.Rotation.Start(rotation.Selector{All: true}, o.Rate, "sigil-sim bench rotate", "bench")
	if err != nil {
		return nil, fmt.Errorf("bench: rotate: %w", err)
	}
	started := time.Now()
	if len(job.Devices) != len(ids) {
		return nil, fmt.Errorf("bench: rotate: the job holds %d devices, want %d", len(job.Devices), len(ids))
	}
	// Poll the agents' in-memory status every 2 ms; a device counts the
	// first time it reports a new serial, connected, that the inventory
	// also holds.
	r := &RotateRound{Job: job.ID, ToConnected: make([]time.Duration, len(ids))}
	doneAt := make([]time.Time, len(ids))
	left := len(ids)
	var last time.Time
	var self0, tpm0 time.Duration
	sending := false
	err = poll(ctx, o.Timeout, 2*time.Millisecond, func() (bool, error) {
		if !sending {
			j, err := fleet.Rotation.Job(job.ID)
			if err != nil {
				return false, err
			}
			if j.Progress().Waiting == len(j.Devices) {
				return false, nil
			}
			sending = true
			self0, tpm0 = cpuTimes()
		}
		now := time.Now()
		for i, d := range devices {
			if !doneAt[i].IsZero() {
				continue
			}
			st := d.Status()
			if !st.Connected || st.CertSerial == from[i] || st.CertSerial == "" {
				continue
			}
			dev, err := fleet.Inv.Device(ctx, ids[i])
			if err != nil {
				return false, err
			}
			if dev.CertSerial != st.CertSerial {
				continue
			}
			doneAt[i], last = now, now
			r.ToConnected[i] = now.Sub(t0)
			left--
		}
		return left == 0, nil
	}, func() error {
		return fmt.Errorf("bench: rotate: %d of %d devices not connected with a new certificate after %v", left, len(ids), o.Timeout)
	})
	if err != nil {
		return nil, err
	}
	self1, tpm1 := cpuTimes()
	r.CPUSelf, r.CPUSwtpm = self1-self0, tpm1-tpm0
	r.Wall = last.Sub(t0)
	r.PerSecond = float64(len(ids)) / r.Wall.Seconds()

	// The job's record: when each device was asked, and done.
	var final *rotation.Job
	err = poll(ctx, o.Timeout, 10*time.Millisecond, func() (bool, error) {
		j, err := fleet.Rotation.Job(job.ID)
		if err != nil {
			return false, err
		}
		final = j
		return j.State == rotation.JobDone, nil
	}, func() error {
		return fmt.Errorf("bench: rotate: job %s still %s after %v (%+v)", job.ID, final.State, o.Timeout, final.Progress())
	})
	if err != nil {
		return nil, err
	}
	r.Renewed = final.Progress().Renewed
	if r.Renewed != len(ids) {
		return nil, fmt.Errorf("bench: rotate: job %s done with %d of %d devices renewed", job.ID, r.Renewed, len(ids))
	}
	sent := map[string]time.Time{}
	first := time.Time{}
	for _, jd := range final.Devices {
		if jd.Sent.IsZero() {
			return nil, fmt.Errorf("bench: rotate: device %s renewed without a rotate message", jd.ID)
		}
		sent[jd.ID] = jd.Sent
		if first.IsZero() || jd.Sent.Before(first) {
			first = jd.Sent
		}
	}
	r.FirstSent = max(first.Sub(started), 0)
	r.Active = last.Sub(first)
	r.ActivePerSecond = float64(len(ids)) / r.Active.Seconds()
	for i, id := range ids {
		s := sent[id]
		r.FromSent = append(r.FromSent, doneAt[i].Sub(s))
		issued, err := renewedAt(fleet, id, s)
		if err != nil {
			return nil, err
		}
		r.SentToIssued = append(r.SentToIssued, issued.Sub(s))
		r.IssuedToConnected = append(r.IssuedToConnected, doneAt[i].Sub(issued))
	}

	// The previous certificates are revoked once each device uses its new
	// one (on the broker's connection event), and every device attests on
	// connect: wait for both so the next round starts quiet.
	err = poll(ctx, o.Timeout, 10*time.Millisecond, func() (bool, error) {
		r.Revoked = 0
		for i, id := range ids {
			d, err := fleet.Inv.Device(ctx, id)
			if err != nil {
				return false, err
			}
			if d.IsRevoked(from[i]) {
				r.Revoked++
			}
		}
		return r.Revoked == len(ids), nil
	}, func() error {
		return fmt.Errorf("bench: rotate: %d of %d previous certificates revoked after %v", r.Revoked, len(ids), o.Timeout)
	})
	if err != nil {
		return nil, err
	}
	err = poll(ctx, o.Timeout, 10*time.Millisecond, func() (bool, error) {
		for i, id := range ids {
			recs, err := fleet.Attest.History(ctx, id, 1)
			if err != nil {
				return false, err
			}
			if len(recs) == 0 || recs[0].Time.Before(doneAt[i].Add(-time.Second)) {
				return false, nil
			}
		}
		return true, nil
	}, func() error {
		return fmt.Errorf("bench: rotate: on-connect attestations after the rotation not all recorded after %v", o.Timeout)
	})
	return r, err
}

// renewedAt is the time of the device's "renewed" event after t.
func renewedAt(fleet *harness.Fleet, id string, after time.Time) (time.Time, error) {
	evs, err := fleet.Inv.Events(context.TODO(), id, 20)
	if err != nil {
		return time.Time{}, err
	}
	for _, e := range evs { // newest first
		if e.Kind == "renewed" && !e.Time.Before(after) {
			return e.Time, nil
		}
	}
	return time.Time{}, fmt.Errorf("bench: rotate: no renewed event for device %s", id)
}

// cpuTimes returns the user+system CPU time so far of this process and the
// sum over its swtpm child processes, from /proc (zero where unreadable).
func cpuTimes() (self, swtpm time.Duration) {
	self, _, _ = procCPU(fmt.Sprintf("/proc/%d/stat", os.Getpid()))
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range paths {
		cpu, ppid, comm := procCPU(p)
		if ppid == os.Getpid() && comm == "swtpm" {
			swtpm += cpu
		}
	}
	return self, swtpm
}

// procCPU reads utime+stime, the parent and the command name from a
// /proc/PID/stat file (at the usual 100 clock ticks per second).
func procCPU(path string) (cpu time.Duration, ppid int, comm string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, ""
	}
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return 0, 0, ""
	}
	comm = string(b[open+1 : end])
	f := strings.Fields(string(b[end+1:])) // from field 3, state
	if len(f) < 13 {
		return 0, 0, ""
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, ppid, comm
}

// parseSizes reads a comma-separated list of device counts.
func parseSizes(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bench: --sizes: %q is not a device count", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// Print writes the result as small tables.
func (r *RotateResult) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "devices\trounds\trenewals\trenewals/s\tfrom first sent\tp50 to new cert\tp99\tmax\tfirst rotate sent\tsetup (not timed)\n")
	t := r.ToConnected
	var first time.Duration
	for _, rd := range r.Rounds {
		first = max(first, rd.FirstSent)
	}
	fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%.1f/s\t%s\t%s\t%s\t<= %s\t%.1f s\n", r.Devices, len(r.Rounds), r.Renewals, r.PerSecond, r.ActivePerSec, ms(t.P50), ms(t.P99), ms(t.Max), ms(first), r.Setup.Seconds())
	tw.Flush()
	fmt.Fprintf(w, "(renewals/s and to new cert: from the job's start until connected with the new certificate, including the wait for the\n job's 1 s tick; from first sent: the same rate counted from the first rotate message sent)\n\n")
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "per device\tn\tmin\tp50\tp99\tmax\n")
	for _, row := range []struct {
		name string
		d    Dist
	}{
		{"rotate sent -> connected with the new certificate", r.FromSent},
		{"rotate sent -> certificate issued (new key, attest, certify, CSR, fleet checks)", r.SentToIssued},
		{"certificate issued -> connected with it", r.IssuedToOn},
	} {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", row.name, row.d.N, ms(row.d.Min), ms(row.d.P50), ms(row.d.P99), ms(row.d.Max))
	}
	tw.Flush()
	var self, tpm time.Duration
	for _, rd := range r.Rounds {
		self, tpm = self+rd.CPUSelf, tpm+rd.CPUSwtpm
	}
	if n := float64(r.Renewals); n > 0 && self+tpm > 0 {
		perSelf, perTPM := self.Seconds()/n, tpm.Seconds()/n
		fmt.Fprintf(w, "CPU from first sent to last connected: %.1f ms per renewal in the fleet+agents process, %.1f ms in swtpm;\n"+
			" %d CPUs %.0f%% busy; if CPU were the only limit they would allow %.0f renewals/s (measured: %.1f/s)\n",
			1e3*perSelf, 1e3*perTPM, numCPU(), 100*(self+tpm).Seconds()/(r.Active.Seconds()*float64(numCPU())),
			float64(numCPU())/(perSelf+perTPM), r.ActivePerSec)
	}
	revoked := 0
	for _, rd := range r.Rounds {
		revoked += rd.Revoked
	}
	fmt.Fprintf(w, "(%d/%d renewed by the job record; %d/%d previous certificates revoked as superseded)\n", r.Renewals, r.Devices*len(r.Rounds), revoked, r.Devices*len(r.Rounds))
}

// RenewResult is the outcome of Renew: fleet/rotation's go test benchmarks.
type RenewResult struct{ ServerResult }

// Renew runs fleet/rotation's renewal benchmarks (RenewBenchmarks) with
// `go test`: genuine renewal evidence recorded once with the in-process
// TPM simulator, then the fleet-side renewal and its crypto floor timed
// with no TPM in the loop (see docs/BENCHMARKS.md). It needs the Go
// toolchain and the source tree.
func Renew(ctx context.Context, o ServerOptions) (*RenewResult, error) {
	r, err := goBench(ctx, o, "./fleet/rotation", RenewBenchmarks)
	if err != nil {
		return nil, err
	}
	return &RenewResult{*r}, nil
}

// Print writes the rates, the floor's share of a renewal and what the
// fleet side alone would allow.
func (r *RenewResult) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "benchmark\tµs/op\tops/s")
	for _, l := range r.Lines {
		if ns, ok := l.Metrics["ns/op"]; ok && l.Name != "RenewFloorShare" {
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\n", l.Name, ns/1e3, 1e9/ns)
		}
	}
	tw.Flush()
	if l := r.Line("RenewFloorShare"); l != nil {
		fmt.Fprintf(w, "interleaved in one loop: renewal %.0f/s, crypto floor %.0f/s: the floor is %.0f%% of the fleet-side renewal\n",
			l.Metrics["renew/s"], l.Metrics["floor/s"], l.Metrics["floor-%"])
	}
	fmt.Fprintf(w, "(one goroutine, as the rotation service handles renewals; command: %s)\n", r.Command)
}
