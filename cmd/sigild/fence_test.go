package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDeviceBinaryFence fails when sigild starts linking what a small device
// must not carry: the fleet, the simulators, the broker, database drivers,
// the cgo TPM simulator, or heavyweight fleet-only libraries.
func TestDeviceBinaryFence(t *testing.T) {
	for _, env := range [][]string{nil, {"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64"}} {
		cmd := exec.Command("go", "list", "-deps", ".")
		cmd.Env = append(cmd.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list: %v", err)
		}
		forbidden := []string{
			"github.com/sigil-iot/sigil/fleet", "github.com/sigil-iot/sigil/sim",
			"github.com/sigil-iot/sigil/sim/softtpm", // the software TPM is for simulation only (sim covers it; named so the fence says so)
			"github.com/mochi-mqtt/server", "github.com/jackc/pgx", "github.com/lib/pq", "database/sql",
			"github.com/google/go-tpm-tools/simulator", "github.com/google/go-tpm-tools", "github.com/sigil-iot/sigil/device/tpm/tpmsim",
			"google.golang.org/protobuf", "html/template",
			"github.com/eclipse/paho.mqtt.golang", // device/link speaks MQTT itself
			"golang.org/x/crypto/ssh",             // SSH host certificates: the device only moves text lines
			"net/http",                            // device/fetch downloads firmware (about 1.1 MiB on arm64)
			"os/exec",                             // 64 KiB: update hooks start with os.StartProcess
			"github.com/prometheus",               // the fleet's /metrics (client_golang, expfmt); the device reports telemetry over MQTT
			"github.com/getkin/kin-openapi",       // the e2e OpenAPI check
		}
		var deps []string
		for _, dep := range strings.Fields(string(out)) {
			deps = append(deps, dep)
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("sigild (%v) links %s", env, dep)
				}
			}
		}
		if len(deps) < 10 {
			t.Fatalf("go list returned too little to be real: %v", deps)
		}
	}
}

// TestDeviceTreeFence fails when a package under device/ (not only what
// sigild links today) depends on the simulators or the fleet: simulated
// devices plug their stand-ins in from sim/ (agent options, state
// engines), never the other way round.
func TestDeviceTreeFence(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "github.com/sigil-iot/sigil/device/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list returned too little to be real: %v", deps)
	}
	for _, dep := range deps {
		for _, f := range []string{"github.com/sigil-iot/sigil/sim", "github.com/sigil-iot/sigil/fleet"} {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("a device package links %s", dep)
			}
		}
	}
}

// TestMemdebugOnlyByTag fails when the memory-debugging hooks
// (memdebug.go: heap profiles and paging on signals) reach a default
// build of sigild, or when the memdebug build no longer carries them.
func TestMemdebugOnlyByTag(t *testing.T) {
	for _, c := range []struct {
		tags  []string
		pprof bool
	}{{nil, false}, {[]string{"-tags", "memdebug"}, true}} {
		deps, args := armDeps(t, c.tags...)
		if got := slices.Contains(deps, "runtime/pprof"); got != c.pprof {
			t.Errorf("go %v: runtime/pprof linked: %v, want %v", args, got, c.pprof)
		}
	}
}

// TestWorkloadAPIOnlyByTag fails when the SPIFFE Workload API (gRPC,
// protobuf, device/workload) reaches a default build of sigild, which must
// stay under 7 MiB on arm64, or when the workloadapi build no longer
// carries it.
func TestWorkloadAPIOnlyByTag(t *testing.T) {
	for _, c := range []struct {
		tags []string
		api  bool
	}{{nil, false}, {[]string{"-tags", "workloadapi"}, true}} {
		deps, args := armDeps(t, c.tags...)
		for _, pkg := range []string{"google.golang.org/grpc", "github.com/sigil-iot/sigil/device/workload", "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"} {
			if got := slices.Contains(deps, pkg); got != c.api {
				t.Errorf("go %v: %s linked: %v, want %v", args, pkg, got, c.api)
			}
		}
	}
}

// armDeps lists the packages sigild links for linux/arm64 without cgo, built
// with the extra go flags (such as -tags); args is the go command line, for
// messages.
func armDeps(t *testing.T, extra ...string) (deps, args []string) {
	t.Helper()
	args = append(append([]string{"list", "-deps"}, extra...), ".")
	cmd := exec.Command("go", args...)
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %v: %v", args, err)
	}
	return strings.Fields(string(out)), args
}
