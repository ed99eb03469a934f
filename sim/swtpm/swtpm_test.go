package swtpm_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

func resetCount(t *testing.T, inst *swtpm.Instance) int {
	t.Helper()
	out := swtpmtest.Run(t, "tpm2_readclock", "-T", inst.TCTI())
	m := regexp.MustCompile(`reset_count:\s*(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no reset_count in %s", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

func pcr16(t *testing.T, inst *swtpm.Instance) string {
	t.Helper()
	out := swtpmtest.Run(t, "tpm2_pcrread", "-T", inst.TCTI(), "sha256:16")
	m := regexp.MustCompile(`16\s*:\s*0x([0-9A-Fa-f]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no PCR 16 in %s", out)
	}
	return strings.ToLower(string(m[1]))
}

func TestLifecycle(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_readclock", "tpm2_pcrread", "tpm2_pcrextend", "tpm2_readpublic")
	ca := swtpmtest.NewCA(t)
	if _, err := ca.RootCertPEM(); !errors.Is(err, swtpm.ErrCANotCreated) {
		t.Fatalf("root before first setup: err = %v, want ErrCANotCreated", err)
	}
	inst := swtpmtest.New(t, ca)

	if !strings.HasPrefix(inst.URI(), "swtpm://127.0.0.1:") || inst.Port() == 0 ||
		inst.TCTI() != "swtpm:host=127.0.0.1,port="+strconv.Itoa(inst.Port()) {
		t.Fatalf("addresses: %s %s", inst.URI(), inst.TCTI())
	}

	// The CA now exists and its root signs the intermediate.
	roots, err := ca.Roots()
	if err != nil {
		t.Fatal(err)
	}
	ipem, err := ca.IntermediateCertPEM()
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(ipem)
	inter, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inter.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("intermediate does not chain to root: %v", err)
	}

	// Manufactured EKs are there.
	swtpmtest.Run(t, "tpm2_readpublic", "-T", inst.TCTI(), "-c", "0x81010001")

	// Orderly reboot: PCRs reset, reset counter increments.
	zero := strings.Repeat("0", 64)
	swtpmtest.Run(t, "tpm2_pcrextend", "-T", inst.TCTI(), "16:sha256="+strings.Repeat("ab", 32))
	if pcr16(t, inst) == zero {
		t.Fatal("PCR 16 did not change after extend")
	}
	before := resetCount(t, inst)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := inst.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pcr16(t, inst); got != zero {
		t.Fatalf("PCR 16 after reboot = %s, want zero", got)
	}
	if after := resetCount(t, inst); after != before+1 {
		t.Fatalf("reset count %d -> %d, want +1", before, after)
	}

	// Stop and restart keep the state (the persistent EK is still there).
	if err := inst.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	swtpmtest.Run(t, "tpm2_readpublic", "-T", inst.TCTI(), "-c", "0x81010001")

	// Kill (power loss) and restart also keep the permanent state.
	if err := inst.Kill(); err != nil {
		t.Fatal(err)
	}
	if inst.Running() {
		t.Fatal("running after Kill")
	}
	if err := inst.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	swtpmtest.Run(t, "tpm2_readpublic", "-T", inst.TCTI(), "-c", "0x81010001")
}

func TestTemplate(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_readpublic")
	tmpl := swtpmtest.New(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	inst, err := swtpm.Start(ctx, swtpm.Options{StateDir: t.TempDir(), Template: tmpl.StateDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("start from template took %s", d)
	}
	a := swtpmtest.Run(t, "tpm2_readpublic", "-T", tmpl.TCTI(), "-c", "0x81010001")
	b := swtpmtest.Run(t, "tpm2_readpublic", "-T", inst.TCTI(), "-c", "0x81010001")
	if string(a) != string(b) {
		t.Fatal("template copy has a different EK")
	}
}

func TestStartErrors(t *testing.T) {
	swtpmtest.Require(t)
	ctx := context.Background()
	if _, err := swtpm.Start(ctx, swtpm.Options{}); err == nil {
		t.Fatal("no state dir accepted")
	}
	if _, err := swtpm.Start(ctx, swtpm.Options{StateDir: t.TempDir()}); err == nil {
		t.Fatal("empty state without CA accepted")
	}
	if _, err := swtpm.Start(ctx, swtpm.Options{StateDir: t.TempDir(), Template: filepath.Join(t.TempDir(), "none")}); err == nil {
		t.Fatal("missing template accepted")
	}
}
