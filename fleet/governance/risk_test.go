package governance_test

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Inputs that other subsystems provide (campaign targets, the alert
// engine, telemetry), kept here as plain maps.
type targets map[string]string // device ID -> target firmware

func (t targets) Target(d *inventory.Device) (string, error) { return t[d.ID], nil }

type openAlerts map[string][]governance.OpenAlert

func (o openAlerts) OpenAlerts(id string) ([]governance.OpenAlert, error) { return o[id], nil }

type listening map[string]governance.Ports

func (p listening) Ports(id string) (governance.Ports, error) { return p[id], nil }

// riskFleet is a fleet whose every risk input is set, with one healthy
// device that scores 0.
type riskFleet struct {
	*fleet
	dev     *inventory.Device
	history *attest.History
	targets targets
	alerts  openAlerts
	ports   listening
}

func newRiskFleet(t testing.TB, configure func(*governance.Config)) *riskFleet {
	t.Helper()
	h, err := attest.OpenHistory(filepath.Join(t.TempDir(), "history.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	rf := &riskFleet{history: h, targets: targets{}, alerts: openAlerts{}, ports: listening{}}
	rf.fleet = newFleet(t, func(c *governance.Config) {
		c.Attestations, c.Firmware, c.Anomalies, c.Exposure = h, rf.targets, rf.alerts, rf.ports
		if configure != nil {
			configure(c)
		}
	})
	rf.owner("plant-a", governance.OwnerActive)
	rf.dev = rf.device(1, nil)
	rf.targets[rf.dev.ID] = rf.dev.Firmware
	rf.ports[rf.dev.ID] = governance.Ports{}
	for i := range 5 {
		rf.attest("pass", time.Duration(5-i)*time.Hour)
	}
	if err := rf.svc.Assign(governance.Assignment{DeviceID: rf.dev.ID, Owner: "plant-a", Purpose: "cold-store sensor hub"}); err != nil {
		t.Fatal(err)
	}
	return rf
}

// attest adds a verdict from ago before now to the device's history.
func (rf *riskFleet) attest(result string, ago time.Duration) {
	rf.t.Helper()
	err := rf.history.Add(context.Background(), &attest.Record{DeviceID: rf.dev.ID, Time: rf.clock.Now().Add(-ago), Result: result, Reason: "pcr-mismatch"})
	if err != nil {
		rf.t.Fatal(err)
	}
}

func (rf *riskFleet) score() *governance.Risk {
	rf.t.Helper()
	r, err := rf.svc.Score(rf.dev.ID)
	if err != nil {
		rf.t.Fatal(err)
	}
	return r
}

// Each factor, changed on its own from a healthy device, raises the score
// by exactly the points of the factors it names, and those factors appear
// with evidence.
func TestRiskMovesWithEachFactor(t *testing.T) {
	hour, day := time.Hour, 24*time.Hour
	cases := []struct {
		name    string
		factors []string // that must appear
		change  func(rf *riskFleet)
	}{
		{"quarantined", []string{governance.FactorQuarantined}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.State = inventory.StateQuarantined })
		}},
		{"clone flag from enrollment", []string{governance.FactorClone}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.Flags = []string{governance.FlagCloneSuspect} })
		}},
		{"last attestation failed", []string{governance.FactorAttestationFailing}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.Attestation = "fail" })
		}},
		{"never attested", []string{governance.FactorAttestationNever}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.Attestation = "" })
		}},
		{"attestation stale", []string{governance.FactorAttestationStale}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.LastAttested = rf.clock.Now().Add(-3 * hour) })
		}},
		{"failures in recent history", []string{governance.FactorAttestationFailures}, func(rf *riskFleet) {
			rf.attest("fail", 30*time.Minute)
			rf.attest("fail", 20*time.Minute)
		}},
		{"certificate expired", []string{governance.FactorCredentialExpired}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.CertExpiry = rf.clock.Now().Add(-time.Minute) })
		}},
		{"renewal overdue", []string{governance.FactorRenewalOverdue}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.CertExpiry = rf.clock.Now().Add(4 * hour) })
		}},
		{"near expiry (and so overdue)", []string{governance.FactorCredentialNear, governance.FactorRenewalOverdue}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.CertExpiry = rf.clock.Now().Add(time.Hour) })
		}},
		{"never rotated", []string{governance.FactorNeverRotated}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.Revoked, d.Superseded = nil, nil })
		}},
		{"firmware behind its target", []string{governance.FactorFirmware}, func(rf *riskFleet) {
			rf.targets[rf.dev.ID] = "1.1.0"
		}},
		{"firmware never reported, no target", []string{governance.FactorFirmwareUnknown}, func(rf *riskFleet) {
			delete(rf.targets, rf.dev.ID)
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.Firmware = "" })
		}},
		{"open critical alert", []string{governance.FactorAlerts}, func(rf *riskFleet) {
			rf.alerts[rf.dev.ID] = []governance.OpenAlert{{Kind: "baseline-cpu", Severity: governance.SeverityCritical}}
		}},
		{"silent", []string{governance.FactorSilent}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.Connected, d.LastSeen = false, rf.clock.Now().Add(-2*hour) })
		}},
		{"dormant", []string{governance.FactorDormant}, func(rf *riskFleet) {
			rf.update(rf.dev.ID, func(d *inventory.Device) { d.Connected, d.LastSeen = false, rf.clock.Now().Add(-31*day) })
		}},
		{"listening ports", []string{governance.FactorListening}, func(rf *riskFleet) {
			rf.ports[rf.dev.ID] = governance.Ports{Listening: []string{"tcp/22", "tcp/443"}}
		}},
		{"a new listening port", []string{governance.FactorNewPorts}, func(rf *riskFleet) {
			rf.ports[rf.dev.ID] = governance.Ports{New: []string{"tcp/4444"}}
		}},
		{"owner departed", []string{governance.FactorOrphaned}, func(rf *riskFleet) {
			if err := rf.svc.SetOwnerStatus("plant-a", governance.OwnerDeparted); err != nil {
				rf.t.Fatal(err)
			}
		}},
		{"purpose missing", []string{governance.FactorPurposeMissing}, func(rf *riskFleet) {
			if err := rf.svc.Assign(governance.Assignment{DeviceID: rf.dev.ID, Owner: "plant-a"}); err != nil {
				rf.t.Fatal(err)
			}
		}},
	}
	seen := map[string]bool{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rf := newRiskFleet(t, nil)
			base := rf.score()
			if base.Score != 0 || len(base.Factors) != 0 {
				t.Fatalf("healthy device scores %d: %+v", base.Score, base.Factors)
			}
			tc.change(rf)
			r := rf.score()
			if r.Score <= base.Score {
				t.Fatalf("score %d did not rise from %d: %+v", r.Score, base.Score, r.Factors)
			}
			sum := 0
			for _, name := range tc.factors {
				fa, ok := r.Factor(name)
				if !ok || fa.Points <= 0 || fa.Evidence == "" {
					t.Fatalf("factor %s missing or empty in %+v", name, r.Factors)
				}
				sum += fa.Points
				seen[name] = true
			}
			if len(r.Factors) != len(tc.factors) || r.Score != sum {
				t.Fatalf("score %d from factors %+v, want only %v", r.Score, r.Factors, tc.factors)
			}
		})
	}
	// Every factor the package names is exercised above.
	for _, name := range []string{
		governance.FactorQuarantined, governance.FactorClone, governance.FactorAttestationFailing,
		governance.FactorAttestationNever, governance.FactorAttestationStale, governance.FactorAttestationFailures,
		governance.FactorCredentialExpired, governance.FactorCredentialNear, governance.FactorRenewalOverdue,
		governance.FactorNeverRotated, governance.FactorFirmware, governance.FactorFirmwareUnknown,
		governance.FactorAlerts, governance.FactorSilent, governance.FactorDormant, governance.FactorListening,
		governance.FactorNewPorts, governance.FactorOrphaned, governance.FactorPurposeMissing,
	} {
		if !seen[name] && !t.Failed() {
			t.Errorf("factor %s not exercised", name)
		}
	}
}

func TestRiskEvidenceNamesTheInputs(t *testing.T) {
	rf := newRiskFleet(t, nil)
	rf.targets[rf.dev.ID] = "2.0.0"
	rf.attest("fail", time.Minute)
	rf.ports[rf.dev.ID] = governance.Ports{Listening: []string{"tcp/22", "tcp/4444"}, New: []string{"tcp/4444"}}
	rf.alerts[rf.dev.ID] = []governance.OpenAlert{
		{Kind: "baseline-cpu", Severity: governance.SeverityWarning},
		{Kind: governance.KindDormant, Severity: governance.SeverityWarning}, // counted by its own factor
	}
	r := rf.score()
	want := map[string]string{
		governance.FactorFirmware:            "runs firmware 1.0.0; target 2.0.0",
		governance.FactorAttestationFailures: "1 of the last 6 verdicts failed (latest: pcr-mismatch at 2030-03-01T11:59:00Z)",
		governance.FactorNewPorts:            "1 listening ports never seen before: tcp/4444",
		governance.FactorListening:           "listens on 2 ports: tcp/22, tcp/4444",
		governance.FactorAlerts:              "0 critical, 1 warning, 0 other open alerts (baseline-cpu)",
	}
	for name, ev := range want {
		if fa, ok := r.Factor(name); !ok || fa.Evidence != ev {
			t.Errorf("factor %s: %+v, want evidence %q", name, fa, ev)
		}
	}
	// Factors come riskiest first.
	for i := 1; i < len(r.Factors); i++ {
		if r.Factors[i].Points > r.Factors[i-1].Points {
			t.Fatalf("factors not sorted: %+v", r.Factors)
		}
	}
}

func TestRiskIsDeterministicCappedAndWeighted(t *testing.T) {
	rf := newRiskFleet(t, nil)
	rf.update(rf.dev.ID, func(d *inventory.Device) {
		d.State, d.Attestation, d.Flags = inventory.StateQuarantined, "fail", []string{governance.FlagCloneSuspect}
		d.Connected, d.LastSeen = false, rf.clock.Now().Add(-40*24*time.Hour)
	})
	a, b := rf.score(), rf.score()
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same inputs, different risks:\n%+v\n%+v", a, b)
	}
	if a.Score != 100 {
		t.Fatalf("score %d, want the cap 100", a.Score)
	}

	// Weights come from the config: a zero weight turns its factor off,
	// others scale.
	w := governance.DefaultWeights()
	w.Clone, w.Dormant = 0, 3
	rf2 := newRiskFleet(t, func(c *governance.Config) { c.Weights = &w })
	rf2.update(rf2.dev.ID, func(d *inventory.Device) {
		d.Flags = []string{governance.FlagCloneSuspect}
		d.Connected, d.LastSeen = false, rf2.clock.Now().Add(-40*24*time.Hour)
	})
	r := rf2.score()
	if _, ok := r.Factor(governance.FactorClone); ok || r.Score != 3 {
		t.Fatalf("custom weights: %+v", r)
	}
	bad := governance.DefaultWeights()
	bad.Silent = -1
	if _, err := governance.Open(governance.Config{Path: filepath.Join(t.TempDir(), "g.db"), Devices: rf.inv, Weights: &bad}); err == nil || !strings.Contains(err.Error(), "Silent") {
		t.Fatalf("negative weight: %v", err)
	}
}

func TestRankingSortsTheFleetByRisk(t *testing.T) {
	rf := newRiskFleet(t, nil)
	// Device 1 (from newRiskFleet) is healthy. The others carry one or
	// more factors each.
	mk := func(n int, change func(d *inventory.Device)) string {
		d := rf.device(n, change)
		rf.targets[d.ID] = d.Firmware
		if err := rf.svc.Assign(governance.Assignment{DeviceID: d.ID, Owner: "plant-a", Purpose: "p"}); err != nil {
			t.Fatal(err)
		}
		return d.ID
	}
	failing := mk(2, func(d *inventory.Device) { d.Attestation = "fail" })
	clone := mk(3, func(d *inventory.Device) { d.Attestation = "fail"; d.Flags = []string{governance.FlagCloneSuspect} })
	staleA := mk(4, func(d *inventory.Device) { d.LastAttested = rf.clock.Now().Add(-2 * time.Hour) })
	staleB := mk(5, func(d *inventory.Device) { d.LastAttested = rf.clock.Now().Add(-2 * time.Hour) })
	retired := mk(6, func(d *inventory.Device) { d.Attestation = "fail"; d.Connected = false })

	rep := rf.sweep()
	if rep.Scored != 6 || rep.Failed != 0 {
		t.Fatalf("report %+v", rep)
	}
	var ids []string
	var scores []int
	after := ""
	for {
		page, next, err := rf.svc.Ranking(after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			ids = append(ids, r.DeviceID)
			scores = append(scores, r.Score)
		}
		if next == "" {
			break
		}
		after = next
	}
	// The clone is quarantined by the sweep, which adds to its score.
	if ids[0] != clone || ids[len(ids)-1] != rf.dev.ID || scores[len(scores)-1] != 0 {
		t.Fatalf("ranking %v %v", ids, scores)
	}
	for i := 1; i < len(scores); i++ {
		if scores[i] > scores[i-1] || (scores[i] == scores[i-1] && ids[i] < ids[i-1]) {
			t.Fatalf("not ordered by score then ID: %v %v", ids, scores)
		}
	}
	if !contains(ids, failing) || !contains(ids, staleA) || !contains(ids, staleB) || !contains(ids, retired) {
		t.Fatalf("ranking misses devices: %v", ids)
	}

	// A decommissioned device leaves the ranking; a device whose risk
	// changed moves.
	rf.update(retired, func(d *inventory.Device) { d.State = inventory.StateDecommissioned })
	rf.update(staleB, func(d *inventory.Device) { d.Attestation = "fail"; d.Flags = []string{governance.FlagCloneSuspect} })
	rf.sweep()
	all, _, err := rf.svc.Ranking("", 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(all))
	for i, r := range all {
		got[i] = r.DeviceID
	}
	if len(all) != 5 || contains(got, retired) || all[0].Score < all[1].Score {
		t.Fatalf("ranking after changes: %v", fmt.Sprint(all))
	}
	if all[0].DeviceID != clone && all[0].DeviceID != staleB {
		t.Fatalf("the clones are not on top: %v", got)
	}
	if _, err := rf.svc.Status(retired); err == nil {
		t.Fatal("decommissioned device keeps a status")
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
