package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

// storedRisk returns the device's score as the fleet view (GET
// /api/v1/risk, what the overview tile and the risk page show) holds it.
func storedRisk(t *testing.T, c *api.Client, id string) (governance.Risk, bool) {
	t.Helper()
	l, err := c.RiskRanking(context.Background(), "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range l.Risks {
		if r.DeviceID == id {
			return r, true
		}
	}
	return governance.Risk{}, false
}

// TestRiskScoredWithoutWaitingForTheSweep: with the hourly sweep (the
// default governance_interval), a device that enrolls after the fleet's
// start sweep is in the fleet's risk ranking once it connects, and a
// failing attestation (a PCR extended with tpm2_pcrextend on its swtpm)
// shows in its stored score right after the verdict — no sweep needed.
func TestRiskScoredWithoutWaitingForTheSweep(t *testing.T) {
	f, c := governedFleet(t, nil)
	ctx := context.Background()
	inst := newTPM(t)
	d := quietDevice(t, f, inst, t.TempDir(), "SN-RISK-NOW")
	id := waitConnected(t, d).DeviceID
	first := firstVerdict(t, c, id)
	waitFor(t, func() bool { _, ok := storedRisk(t, c, id); return ok }, "the enrolled device to be in the risk ranking")

	pol, err := c.LearnPolicy(ctx, api.LearnRequest{DeviceID: id, Name: "golden"})
	if err != nil {
		t.Fatal(err)
	}
	if v := attestAfter(t, c, id, first.Seq, "a verdict under the learned policy", judgedBy(pol.ID)); v.Result != "pass" {
		t.Fatalf("verdict under the learned policy: %+v", v)
	}
	seq := latestSeq(t, c, id)
	tampered := extendPCR(t, inst, "sha256", 9, strings.Repeat("cd", 32))
	if v := attestAfter(t, c, id, seq, "a verdict on evidence quoting the extended PCR 9", quotedPCR("sha256", 9, tampered)); v.Result != "fail" {
		t.Fatalf("verdict after tampering: %+v", v)
	}
	var r governance.Risk
	waitFor(t, func() bool {
		var ok bool
		r, ok = storedRisk(t, c, id)
		_, failing := r.Factor(governance.FactorAttestationFailing)
		return ok && failing
	}, "the failing attestation to be in the stored risk score")
	if r.Score == 0 {
		t.Fatalf("stored risk %+v", r)
	}
	t.Logf("stored risk %d right after the failing verdict: %+v", r.Score, r.Factors)
}

// TestRiskSweepCLI: `sigil risk sweep` (the real binary) judges and
// scores every device at once, as the console's "Sweep now" does.
func TestRiskSweepCLI(t *testing.T) {
	dir := t.TempDir()
	sigil := filepath.Join(dir, "sigil")
	if out, err := exec.Command("go", "build", "-o", sigil, "github.com/sigil-iot/sigil/cmd/sigil").CombinedOutput(); err != nil {
		t.Fatalf("go build sigil: %v\n%s", err, out)
	}
	f, c := governedFleet(t, nil)
	dev := inventorytest.NewDevice(1)
	dev.Attestation = "fail"
	if err := f.Inv.PutDevice(t.Context(), dev); err != nil {
		t.Fatal(err)
	}
	// The new device is also scored on its own 2–4 s after this (a
	// lifecycle event marks it): whether it already is says nothing, so
	// the sweep's own report says it judged it, and the score is stored.
	base := "https://localhost" + f.APIURL()[strings.LastIndexByte(f.APIURL(), ':'):]
	out, err := exec.Command(sigil, "risk", "sweep", "--data-dir", f.Config.DataDir, "--server", base).CombinedOutput()
	if err != nil || !regexp.MustCompile(`\b1 devices? judged`).Match(out) {
		t.Fatalf("sigil risk sweep: %v\n%s", err, out)
	}
	if r, ok := storedRisk(t, c, dev.ID); !ok || r.Score == 0 {
		t.Fatalf("after sigil risk sweep: %+v %v", r, ok)
	}
}
