package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/mqttpool/mosquittotest"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/internal/testenv"
	"github.com/sigil-iot/sigil/sim/fleetbench"
)

// TestBenchFleetPool runs `sigil-sim bench fleet` in its scale-out mode,
// small: a real PostgreSQL, two Mosquitto device brokers and a bootstrap
// broker written by `sigil broker-config`, two `sigil serve` replicas,
// 300 software-TPM devices spread over the brokers, a soak and a forced
// re-key. It checks the outcomes and that every figure the mode adds is
// there and sane, so that the mode the issue 14 figures are measured
// with cannot rot.
func TestBenchFleetPool(t *testing.T) {
	requireTools(t)
	pgtest.RequireBinaries(t)
	testenv.RequireBinaries(t, "mosquitto")
	mosquittotest.DynsecPlugin(t)
	// sigil-sim starts the sigil beside it.
	bin := t.TempDir()
	for _, c := range []string{"sigil", "sigil-sim"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, c), "github.com/sigil-iot/sigil/cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", c, err, out)
		}
	}
	sim := filepath.Join(bin, "sigil-sim")
	const devices, brokers, replicas = 300, 2, 2
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sim, "bench", "fleet", "--devices", "300", "--brokers", "2", "--replicas", "2", "--postgres",
		"--shard-size", "100", "--rate", "100", "--soak", "20s", "--attest-interval", "10s", "--telemetry-interval", "10s",
		"--phases", "soak,rotate", "--dir", filepath.Join(dir, "work"), "--out", out, "--quiet")
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = time.Minute
	report, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sigil-sim bench fleet: %v\n%s", err, report)
	}
	b, err := os.ReadFile(filepath.Join(out, fleetbench.ResultFile))
	if err != nil {
		t.Fatal(err)
	}
	var res fleetbench.Result
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf(format, args...)
	}
	if s := res.Settings; s.Brokers != brokers || s.Replicas != replicas || !s.Postgres {
		fail("settings %+v: want %d brokers, %d replicas, PostgreSQL", s, brokers, replicas)
	}
	if len(res.Sizes) != 1 || res.Sizes[0].Soak == nil {
		t.Fatalf("sizes %+v: want one size with a soak\n%s", res.Sizes, report)
	}
	sz := res.Sizes[0]
	// Each broker's 150 devices in shards of at most 100.
	if sz.Enroll.Active != devices || sz.Shards != 2*brokers {
		fail("enrollment %+v in %d shards: want %d active in %d shards", sz.Enroll, sz.Shards, devices, 2*brokers)
	}
	so := sz.Soak
	if so.Connected != devices || so.Disconnects != 0 {
		fail("soak: %d connected, %d sessions lost; want %d, 0", so.Connected, so.Disconnects, devices)
	}
	if so.Verdicts <= 0 || so.CPUPerAttestationMS <= 0 || so.AttestFloorRatio <= 1 {
		fail("soak: %.0f verdicts, %.3f ms fleet CPU per attestation, %.1f× the floor: want verdicts judged at more than the floor", so.Verdicts, so.CPUPerAttestationMS, so.AttestFloorRatio)
	}
	// Each replica's memory per device and the brokers': there, and
	// within reason for a device (Mosquitto needs tens of KB per
	// connection, not MB).
	if so.ReplicaRSSPerDeviceKB <= 0 || so.ReplicaHeapPerDeviceKB <= 0 || so.BrokerRSSPerDeviceKB <= 0 || so.BrokerRSSPerDeviceKB > 1000 {
		fail("soak memory: replica RSS %.1f KB, heap %.1f KB, brokers %.1f KB per device", so.ReplicaRSSPerDeviceKB, so.ReplicaHeapPerDeviceKB, so.BrokerRSSPerDeviceKB)
	}
	if so.DatabaseCPUPerAttestationMS <= 0 || so.BrokerCPUPerMessageMS <= 0 {
		fail("soak: PostgreSQL %.3f ms per attestation, Mosquitto %.4f ms per message: want both measured", so.DatabaseCPUPerAttestationMS, so.BrokerCPUPerMessageMS)
	}
	f := sz.Fleet
	if f.Replicas != replicas || f.Brokers != brokers || f.BrokerRSSBytes <= 0 || f.DatabaseRSS <= 0 || f.DatabaseCPU <= 0 || f.DeviceConnection != 0 {
		fail("fleet snapshot %+v: want %d replicas, %d brokers with memory, the database's CPU and memory, no embedded broker", f, replicas, brokers)
	}
	// Every device broker holds its share of the devices: the files it
	// has open (one a connection) less those it opened for itself.
	for i, n := range f.BrokerOpenFiles {
		if n < devices/brokers || n > devices/brokers+50 {
			fail("device broker %d has %.0f files open: want its %d devices and a few of its own", i+1, n, devices/brokers)
		}
	}
	if len(f.BrokerOpenFiles) != brokers {
		fail("open files of %d brokers, want %d", len(f.BrokerOpenFiles), brokers)
	}
	rot := res.Rotation
	if rot == nil || rot.Renewed != devices || rot.OnNewCert != devices || rot.TimeBoxed || rot.CPUPerRenewalMS <= 0 || rot.FloorRatio <= 1 || rot.DatabaseCPUPerRenewalMS <= 0 {
		fail("forced re-key %+v: want all %d renewed and on new certificates, fleet and database CPU per renewal measured", rot, devices)
	}
	if len(res.Messages) == 0 {
		fail("no message accounting")
	}
	for _, k := range res.Messages {
		counted := k.Ingested + k.Dropped + k.Refused
		// QoS 1 is at least once: a publish whose PUBACK was lost with
		// its session may have reached the fleet.
		if k.Lost != 0 || float64(k.Sent) > counted || counted > float64(k.SentAfter+k.UnackedAfter) || (k.Kind != fleetbench.KindWithheld && k.Sent == 0) {
			fail("%s: sent %d (then %d, and %d unacknowledged), the fleet counted %v ingested, %v dropped, %v refused: lost %v",
				k.Kind, k.Sent, k.SentAfter, k.UnackedAfter, k.Ingested, k.Dropped, k.Refused, k.Lost)
		}
	}
	if d := res.Devices; d == nil || d.Connected != devices || d.Exited != 0 {
		fail("devices at the end %+v: want %d connected, none gave up", d, devices)
	}
	if t.Failed() {
		t.Logf("report:\n%s", report)
	}
}
