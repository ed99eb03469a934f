package attest

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestQuarantineByRequest: Quarantine restricts an active device as a
// failed attestation does (state, revoked certificate, closed session,
// lifecycle event with the reason, a "quarantined" alert), leaves a
// quarantined device alone, and refuses unknown and inactive devices.
func TestQuarantineByRequest(t *testing.T) {
	f := newFixture(t)
	before, _ := f.inv.Device(t.Context(), f.dev)
	if err := f.svc.Quarantine(f.dev, "alert rule new-listening-port: tcp/4444"); err != nil {
		t.Fatal(err)
	}
	dev, _ := f.inv.Device(t.Context(), f.dev)
	if dev.State != inventory.StateQuarantined || !dev.IsRevoked(before.CertSerial) {
		t.Fatalf("device %+v: want quarantined with %s revoked", dev, before.CertSerial)
	}
	if !slices.Contains(f.kicked, f.dev) {
		t.Fatal("the device's session was not closed")
	}
	evs, _ := f.inv.Events(t.Context(), f.dev, 10)
	found := false
	for _, e := range evs {
		found = found || e.Kind == "quarantined" && strings.Contains(e.Detail, "tcp/4444")
	}
	if !found {
		t.Fatalf("no quarantined event with the reason: %+v", evs)
	}
	if n := len(f.alerts); n != 1 || f.alerts[0].Kind != "quarantined" || !strings.Contains(f.alerts[0].Summary, "tcp/4444") {
		t.Fatalf("alerts %+v", f.alerts)
	}

	kicks := len(f.kicked)
	if err := f.svc.Quarantine(f.dev, "again"); err != nil || len(f.kicked) != kicks || len(f.alerts) != 1 {
		t.Fatalf("a second quarantine acted again: err %v, kicks %d -> %d, alerts %d", err, kicks, len(f.kicked), len(f.alerts))
	}
	if err := f.svc.Quarantine("00000000000000000000000000000000", "x"); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
	other := "fedcba9876543210fedcba9876543210"
	if err := f.inv.Update(t.Context(), other, func(d *inventory.Device) error { d.State = inventory.StateDecommissioned; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Quarantine(other, "x"); !errors.Is(err, ErrNotActive) {
		t.Fatalf("decommissioned device: %v", err)
	}
}

// TestVerdictObserver: Config.Verdict sees every recorded verdict, next to
// an OnVerdict callback (which benchmarks replace at will), and never
// evidence refused for its nonce.
func TestVerdictObserver(t *testing.T) {
	f := newFixture(t)
	var results, hooked []string
	f.svc.cfg.Verdict = func(id string, rec *Record) { results = append(results, id+":"+rec.Result) }
	f.svc.OnVerdict(func(id string, rec *Record, _ time.Duration) { hooked = append(hooked, rec.Result) })

	b := f.evidence(f.challenge(f.dev), f.ak, nil)
	f.submit(f.dev, b)
	f.submit(f.dev, b) // replayed: not recorded
	ak2, _ := f.tpm.CreateAK()
	f.submit(f.dev, f.evidence(f.challenge(f.dev), ak2, nil))
	want := []string{f.dev + ":pass", f.dev + ":fail"}
	if !slices.Equal(results, want) || len(hooked) != 2 {
		t.Fatalf("Verdict saw %v, want %v; OnVerdict saw %v", results, want, hooked)
	}
}
