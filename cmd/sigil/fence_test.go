package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFleetBinaryFence fails when sigil starts linking what a production
// fleet manager must not carry: the simulators (sim/…: the software TPM,
// the swarm, the demo harness, the benchmarks), the cgo TPM simulator
// (device/tpm/tpmsim, go-tpm-tools' simulator) or any package built with
// cgo. Simulation and benchmarks are sigil-sim's (cmd/sigil-sim).
func TestFleetBinaryFence(t *testing.T) {
	forbidden := []string{
		"github.com/sigil-iot/sigil/sim",
		"github.com/sigil-iot/sigil/device/tpm/tpmsim",
		"github.com/google/go-tpm-tools/simulator",
	}
	for _, env := range [][]string{nil, {"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}, {"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64"}} {
		// Each dependency with the files it compiles with cgo.
		cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}} {{len .CgoFiles}}", ".")
		cmd.Env = append(cmd.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list (%v): %v", env, err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < 50 {
			t.Fatalf("go list returned too little to be real: %q", lines)
		}
		for _, line := range lines {
			f := strings.Fields(line)
			if len(f) != 3 {
				t.Fatalf("go list line %q", line)
			}
			dep, std, cgo := f[0], f[1] == "true", f[2] != "0"
			for _, p := range forbidden {
				if dep == p || strings.HasPrefix(dep, p+"/") {
					t.Errorf("sigil (%v) links %s", env, dep)
				}
			}
			// The standard library's net and os/user use cgo when it is on
			// (and not with CGO_ENABLED=0, checked by the build below);
			// nothing else may.
			if cgo && !std {
				t.Errorf("sigil (%v) links %s, which needs cgo", env, dep)
			}
		}
	}
}

// TestFleetBinaryBuildsWithoutCgo builds sigil as a static binary for the
// fleet's platforms.
func TestFleetBinaryBuildsWithoutCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the fleet manager twice")
	}
	dir := t.TempDir()
	for _, arch := range []string{"amd64", "arm64"} {
		out := filepath.Join(dir, "sigil-linux-"+arch)
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("CGO_ENABLED=0 GOARCH=%s go build: %v\n%s", arch, err, b)
		}
		if fi, err := os.Stat(out); err != nil || fi.Size() < 1<<20 {
			t.Fatalf("linux/%s binary: %v", arch, err)
		}
	}
}
