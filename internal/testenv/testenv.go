// Package testenv tells a test whether the programs it runs are installed.
// A missing program skips the test, or fails it when the environment
// variable CI is "true": CI runs every test, so a missing dependency there
// is a broken machine, not a reason to pass.
//
// It holds nothing else, so that a test can ask for a command-line tool
// without linking what starts a TPM simulator: the Makefile's test tiers
// tell a package that needs swtpm by what its tests link (see
// scripts/tiers).
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireBinaries skips t (or fails it under CI=true) unless every named
// binary is on PATH.
func RequireBinaries(t testing.TB, names ...string) {
	t.Helper()
	var miss []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			miss = append(miss, n)
		}
	}
	if len(miss) > 0 {
		Unavailable(t, fmt.Errorf("missing binaries: %s", strings.Join(miss, ", ")))
	}
}

// Unavailable skips t because of err, what the test needs and this machine
// lacks, or fails t when CI is "true".
func Unavailable(t testing.TB, err error) {
	t.Helper()
	if CI() {
		t.Fatalf("testenv: %v (CI=true: external tools are required)", err)
	}
	t.Skipf("testenv: %v", err)
}

// CI reports whether the tests run under CI (the environment variable CI is
// "true"), where nothing may be skipped for a missing dependency.
func CI() bool { return os.Getenv("CI") == "true" }
