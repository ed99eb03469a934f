package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// EnrollOptions configures Enroll.
type EnrollOptions struct {
	// Devices is the number of simulated devices. Default 20.
	Devices int
	// Dir holds the TPM states, the fleet and the device state. Required.
	Dir string
	// Timeout bounds the wait, once the clock starts, for every device to
	// connect. Default 60s.
	Timeout time.Duration
	// Logger receives the fleet's and devices' logs; nil discards them.
	Logger *slog.Logger
}

// EnrollResult is the outcome of Enroll.
type EnrollResult struct {
	Devices int
	// Setup is the time spent before the clock started: manufacturing one
	// swtpm per device (EK certificates included), in parallel, and
	// starting the fleet.
	Setup time.Duration
	// Wall is from the start of the first agent to the last device
	// connected over mTLS.
	Wall time.Duration
	// PerSecond is Devices / Wall.
	PerSecond float64
	// ToActive is each device's time from its agent's start to status
	// "enrolled" and connected.
	ToActive           []time.Duration
	Min, P50, P99, Max time.Duration
	// Enrolled is the fleet inventory's count of active devices afterwards.
	Enrolled int
}

// Enroll starts one swtpm per device with EK certificates from a private
// manufacturer CA the fleet trusts, and an in-process fleet (embedded
// broker, bbolt inventory, file CA). Then the clock starts: every sigild
// agent is started at once, and each is timed until it is enrolled and
// connected with TPM-backed mTLS. In the loop: agent start, AK and transport
// key creation in the swtpm, bootstrap TLS and MQTT, the fleet's EK chain,
// challenge, TPM activation, certify and quote, verification, certificate
// issue, inventory write, and the mTLS reconnect. The swtpm processes, the
// fleet and the agents share the machine's CPUs.
func Enroll(ctx context.Context, o EnrollOptions) (*EnrollResult, error) {
	if o.Devices == 0 {
		o.Devices = 20
	}
	if o.Devices < 1 {
		return nil, errors.New("bench: enroll: devices must be at least 1")
	}
	if o.Dir == "" {
		return nil, errors.New("bench: enroll: no working directory")
	}
	if o.Timeout == 0 {
		o.Timeout = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	setupStart := time.Now()
	tpms, ekCADir, stop, err := startTPMs(ctx, o.Dir, o.Devices, o.Logger)
	if err != nil {
		return nil, err
	}
	defer stop()
	fleet, err := harness.StartFleet(ctx, server.Config{DataDir: filepath.Join(o.Dir, "fleet"), EKCADir: ekCADir}, o.Logger.With("side", "fleet"))
	if err != nil {
		return nil, err
	}
	defer fleet.Stop()
	res := &EnrollResult{Devices: o.Devices, Setup: time.Since(setupStart)}

	devices := make([]*harness.Device, o.Devices)
	started := make([]time.Time, o.Devices)
	defer func() {
		for _, d := range devices {
			if d != nil {
				d.Stop()
			}
		}
	}()
	t0 := time.Now()
	for i, inst := range tpms {
		started[i] = time.Now()
		devices[i], err = fleet.StartDevice(ctx, harness.DeviceConfig{
			TPM: inst.URI(), Dir: filepath.Join(o.Dir, fmt.Sprintf("device-%d", i+1)),
			Model: "bench-gw", Firmware: "1.0.0", Serial: fmt.Sprintf("BENCH-%04d", i+1),
		}, o.Logger.With("side", "device", "n", i+1))
		if err != nil {
			return nil, err
		}
	}
	// Poll every agent's in-memory status; a device's time is taken the
	// first time it is seen connected.
	res.ToActive = make([]time.Duration, o.Devices)
	left := o.Devices
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	var last time.Time
	for left > 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			return nil, fmt.Errorf("bench: enroll: %d of %d devices not connected after %v", left, o.Devices, o.Timeout)
		case now := <-tick.C:
			for i, d := range devices {
				if res.ToActive[i] == 0 && harness.Connected(d.Status()) {
					res.ToActive[i] = now.Sub(started[i])
					last = now
					left--
				}
			}
		}
	}
	res.Wall = last.Sub(t0)
	res.PerSecond = float64(o.Devices) / res.Wall.Seconds()
	res.Min, res.Max = slices.Min(res.ToActive), slices.Max(res.ToActive)
	res.P50, res.P99 = percentile(res.ToActive, 50), percentile(res.ToActive, 99)
	n, err := fleet.Inv.Counts(ctx)
	if err != nil {
		return nil, err
	}
	res.Enrolled = n[inventory.StateActive]
	if res.Enrolled != o.Devices {
		return nil, fmt.Errorf("bench: enroll: the inventory holds %d active devices, want %d", res.Enrolled, o.Devices)
	}
	return res, nil
}

// Print writes the result as a small table.
func (r *EnrollResult) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "devices\tenrollments/s\tmin\tp50 to active\tp99 to active\tmax\twall\tsetup (not timed)\n")
	fmt.Fprintf(tw, "%d\t%.1f\t%s\t%s\t%s\t%s\t%s\t%.1f s\n", r.Devices, r.PerSecond, ms(r.Min), ms(r.P50), ms(r.P99), ms(r.Max), ms(r.Wall), r.Setup.Seconds())
	tw.Flush()
	fmt.Fprintf(w, "(to active = agent start until enrolled and connected over TPM-backed mTLS; %d/%d active in the inventory)\n", r.Enrolled, r.Devices)
}

// startTPMs manufactures and starts n swtpm instances in parallel, with EK
// certificates from one private CA, and writes that CA's root and
// intermediate into a directory for the fleet's EKCADir.
func startTPMs(ctx context.Context, dir string, n int, log *slog.Logger) ([]*swtpm.Instance, string, func(), error) {
	if err := swtpm.Available(); err != nil {
		return nil, "", nil, err
	}
	ca, err := swtpm.NewCA(filepath.Join(dir, "tpm-vendor-ca"))
	if err != nil {
		return nil, "", nil, err
	}
	insts := make([]*swtpm.Instance, n)
	errs := make([]error, n)
	// swtpm_setup is CPU-bound (RSA key generation): more in flight than
	// twice the CPUs only queues.
	sem := make(chan struct{}, 2*runtime.NumCPU())
	var wg sync.WaitGroup
	for i := range insts {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			insts[i], errs[i] = swtpm.Start(ctx, swtpm.Options{StateDir: filepath.Join(dir, fmt.Sprintf("tpm-%d", i+1)), CA: ca, Logger: log})
		})
	}
	wg.Wait()
	stop := func() {
		for _, in := range insts {
			if in != nil {
				in.Stop()
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		stop()
		return nil, "", nil, err
	}
	trustDir := filepath.Join(dir, "ek-ca")
	if err := os.MkdirAll(trustDir, 0o755); err != nil {
		stop()
		return nil, "", nil, fmt.Errorf("bench: %w", err)
	}
	for name, read := range map[string]func() ([]byte, error){"root.pem": ca.RootCertPEM, "intermediate.pem": ca.IntermediateCertPEM} {
		b, err := read()
		if err == nil {
			err = os.WriteFile(filepath.Join(trustDir, name), b, 0o644)
		}
		if err != nil {
			stop()
			return nil, "", nil, fmt.Errorf("bench: %w", err)
		}
	}
	return insts, trustDir, stop, nil
}
