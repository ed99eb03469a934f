package attest

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// withPolicies rebuilds the fixture's service with a policy store holding ps.
func (f *fixture) withPolicies(ps ...policy.Policy) {
	f.t.Helper()
	store, err := policy.Open(filepath.Join(f.t.TempDir(), "policies.db"), policy.WithNoSync())
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { store.Close() })
	for _, p := range ps {
		if _, err := store.Put(context.Background(), p); err != nil {
			f.t.Fatal(err)
		}
	}
	cfg := f.svc.cfg
	cfg.Policies = store
	if f.svc, err = New(cfg); err != nil {
		f.t.Fatal(err)
	}
}

// pinPCR0 is a policy that pins sha256 PCR 0 to a value the simulator
// never has: every evidence fails it.
func pinPCR0(id, model, firmware, action string) policy.Policy {
	return policy.Policy{ID: id, Name: id, Model: model, Firmware: firmware, Action: action,
		PCRs: map[string]map[int]string{"sha256": {0: strings.Repeat("ff", 32)}}}
}

// TestFirmwareClaimCannotPickMilderAction: the device's model has a
// quarantining policy and an alert-only one for firmware 9.9. Failing
// evidence that claims 9.9 is judged by the 9.9 policy, but the claim is
// not proof: the failure quarantines, as the model's policy would.
func TestFirmwareClaimCannotPickMilderAction(t *testing.T) {
	f := newFixture(t)
	f.withPolicies(pinPCR0("gw", "gw-1", "", policy.ActionQuarantine), pinPCR0("gw-9", "gw-1", "9.9", policy.ActionAlert))
	rec := f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, func(ev *wire.AttestEvidence) { ev.Firmware = "9.9" }))
	if rec.Result == wire.VerdictPass || rec.PolicyID != "gw-9" || rec.Code != wire.ReasonPolicyViolation {
		t.Fatalf("record %+v", rec)
	}
	if rec.Action != "quarantined" || f.state(f.dev) != inventory.StateQuarantined {
		t.Fatalf("failing device claiming the alert-only firmware: action %q, state %s", rec.Action, f.state(f.dev))
	}
}

// TestAlertOnlyPolicyStands: where every policy the device could be judged
// by is alert-only, a failure only alerts.
func TestAlertOnlyPolicyStands(t *testing.T) {
	f := newFixture(t)
	f.withPolicies(pinPCR0("gw", "gw-1", "", policy.ActionAlert), pinPCR0("gw-9", "gw-1", "9.9", policy.ActionAlert))
	rec := f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, func(ev *wire.AttestEvidence) { ev.Firmware = "9.9" }))
	if rec.Result == wire.VerdictPass || rec.Action != "alert" || f.state(f.dev) != inventory.StateActive {
		t.Fatalf("record %+v, state %s", rec, f.state(f.dev))
	}
}

// TestUnexpectedFirmwareFailsClosed: a policy for firmware 7.0 (any model)
// applies to this device had it claimed 7.0; claiming another firmware
// does not leave it unjudged.
func TestUnexpectedFirmwareFailsClosed(t *testing.T) {
	f := newFixture(t)
	f.withPolicies(pinPCR0("fw-7", "", "7.0", ""))
	rec := f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil)) // claims 1.0.0
	if rec.Result == wire.VerdictPass || rec.Code != wire.ReasonNoPolicy {
		t.Fatalf("record %+v", rec)
	}
	if rec.Action != "quarantined" || f.state(f.dev) != inventory.StateQuarantined {
		t.Fatalf("action %q, state %s", rec.Action, f.state(f.dev))
	}
}
