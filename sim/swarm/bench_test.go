package swarm_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/swarm"
)

// heapProfileEnv, when set, names the file BenchmarkDevices writes a heap
// profile of the steady state to (run with -memprofilerate 512 or so to
// see small allocations).
const heapProfileEnv = "SIGIL_SWARM_HEAP_PROFILE"

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

// fleetDirEnv names the directory of the fleet TestFleetProcess runs.
const fleetDirEnv = "SIGIL_SWARM_FLEET_DIR"

// TestFleetProcess is the helper process of BenchmarkDevices: a fleet
// (its ek_ca_dir in the directory fleetDirEnv names) that prints where it
// listens and runs until its standard input closes.
func TestFleetProcess(t *testing.T) {
	dir := os.Getenv(fleetDirEnv)
	if dir == "" {
		t.Skip("helper process for BenchmarkDevices")
	}
	f, err := harness.StartFleet(context.Background(), server.Config{DataDir: filepath.Join(dir, "fleet"), EKCADir: filepath.Join(dir, "ekca")},
		slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	fmt.Println("fleet", f.MQTTAddr(), f.CACertPath(), f.UpdateServer())
	_, _ = io.Copy(io.Discard, os.Stdin)
	f.Stop()
}

// fleetProcess starts TestFleetProcess in a child process (so that this
// process holds the devices alone) and returns its broker, CA file and
// update server.
func fleetProcess(b *testing.B, dir string) (broker, caFile, updates string) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFleetProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), fleetDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && f[0] == "fleet" {
			go func() { _, _ = io.Copy(io.Discard, out) }()
			return f[1], f[2], f[3]
		}
		if len(f) > 0 && f[0] == "error" {
			b.Fatal(sc.Text())
		}
	}
	b.Fatalf("the fleet process said nothing: %v", sc.Err())
	return
}

// BenchmarkDevices measures what a simulated device costs the process
// that runs it, at b.N devices (run it with -benchtime 1000x): goroutines
// and Go heap per connected device in steady state (enrolled, connected
// over mTLS, its on-connect attestation judged, a telemetry point
// acknowledged), and the bytes its state store holds. The fleet runs in a
// child process, so none of its cost is counted.
func BenchmarkDevices(b *testing.B) {
	dir := b.TempDir()
	ca, err := softtpm.OpenCA(filepath.Join(dir, "ekca"))
	if err != nil {
		b.Fatal(err)
	}
	broker, caFile, updates := fleetProcess(b, dir)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()

	start := time.Now()
	s, err := swarm.New(swarm.Config{Devices: b.N, Broker: broker, ServerName: "localhost", FleetCA: caFile, UpdateServer: updates,
		CA: ca, Dir: filepath.Join(dir, "devices"), Rate: 200, RetryMin: time.Second, RetryMax: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	deadline := time.Now().Add(10*time.Minute + time.Duration(b.N)*20*time.Millisecond)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for steady := 0; steady < b.N; {
		steady = 0
		var missing swarm.Outcome
		for _, d := range s.Devices() {
			o := d.Outcome()
			if o.Connected && o.Received[wire.TypeAttestVerdict] > 0 && o.Received[wire.TypeTelemetryAck] > 0 {
				steady++
			} else {
				missing = o
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d devices in steady state; device %d: %+v", steady, b.N, missing.Index, missing)
		}
		<-tick.C
	}
	ready := time.Since(start)
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	goroutines := runtime.NumGoroutine() - g0
	if path := os.Getenv(heapProfileEnv); path != "" {
		writeHeapProfile(b, path)
	}
	stateBytes := 0
	for _, d := range s.Devices() {
		stateBytes += d.State().Size()
	}
	n := float64(b.N)
	b.ReportMetric(float64(goroutines)/n, "goroutines/device")
	b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/n, "heap-B/device")
	b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/n, "stack-B/device")
	b.ReportMetric(float64(stateBytes)/n, "state-B/device")
	b.ReportMetric(ready.Seconds(), "s-to-steady")
}
