package update_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/leaktest"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// tpmTemplate is a TPM state manufactured once by TestMain; the tests start
// copies of it (swtpm.Options.Template) instead of paying for swtpm_setup
// each time. The copies share endorsement keys, which these tests do not
// look at. Empty when swtpm is not installed.
var tpmTemplate string

// TestMain manufactures the template, and fails the tests when a goroutine
// outlives them (the engine's Run must leave nothing running once its
// context is done).
func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "1" {
		os.Exit(m.Run()) // a child killed at a phase: nothing to check
	}
	if swtpm.Available() != nil {
		leaktest.Main(m)
	}
	dir, err := os.MkdirTemp("", "sigil-update-tpm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		ca, err := swtpm.NewCA(filepath.Join(dir, "ca"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		inst, err := swtpm.Start(ctx, swtpm.Options{StateDir: filepath.Join(dir, "tpm"), CA: ca})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := inst.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		tpmTemplate = inst.StateDir()
		return leaktest.Run(m)
	}()
	os.Exit(code)
}

// newTPM starts a swtpm for t, a copy of the template when there is one.
func newTPM(t *testing.T) *swtpm.Instance {
	t.Helper()
	if tpmTemplate == "" {
		return swtpmtest.New(t, nil) // skips, or fails under CI=true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst, err := swtpm.Start(ctx, swtpm.Options{StateDir: filepath.Join(t.TempDir(), "tpm"), Template: tpmTemplate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := inst.Stop(); err != nil {
			t.Errorf("stop swtpm: %v", err)
		}
	})
	return inst
}
