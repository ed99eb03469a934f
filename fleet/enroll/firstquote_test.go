package enroll_test

import (
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// policyHarness is a service that trusts the recording's vendor CA and
// holds first quotes to the reference policies in the returned store.
func policyHarness(t *testing.T, rec *recording) (*harness, *policy.Store) {
	t.Helper()
	dir := t.TempDir()
	h, err := rec.newHarness(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.inv.Close() })
	pols, err := policy.Open(filepath.Join(dir, "policies.db"), policy.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pols.Close() })
	h.svc, err = enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: rec.trust(), Rand: h.rand, Policies: pols,
		Send: h.send,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h, pols
}

// enrollAs runs the recorded enrollment with req from clientID and
// returns the result.
func enrollAs(t *testing.T, h *harness, rec *recording, clientID string, req *wire.EnrollRequest) wire.EnrollResult {
	t.Helper()
	h.rand.rewind() // the recorded proof answers this session
	h.svc.Handle(clientID, encode(wire.TypeEnrollRequest, req))
	var ch wire.EnrollChallenge
	if err := h.last(wire.TypeEnrollChallenge, &ch); err != nil {
		return result(t, h)
	}
	h.svc.Handle(clientID, encode(wire.TypeEnrollProof, &rec.proof))
	return result(t, h)
}

// recordedPCR is the recorded quote's value of a SHA-256 PCR, in hex.
func recordedPCR(t *testing.T, rec *recording, pcr int) string {
	t.Helper()
	for i, p := range rec.proof.Quote.PCRs {
		if p == pcr {
			return hex.EncodeToString(rec.proof.Quote.Values[i])
		}
	}
	t.Fatalf("PCR %d not quoted", pcr)
	return ""
}

// knownDevice enrolls the recording's TPM once (no policy yet) and gives
// the inventory record the model an operator assigned: "gw-real".
func knownDevice(t *testing.T, h *harness, rec *recording) string {
	t.Helper()
	res := enrollAs(t, h, rec, "e-first", &rec.req)
	if res.Status != wire.StatusActive {
		t.Fatalf("first enrollment: %+v", res)
	}
	if err := h.inv.Update(t.Context(), res.DeviceID, func(d *inventory.Device) error { d.Model = "gw-real"; return nil }); err != nil {
		t.Fatal(err)
	}
	return res.DeviceID
}

func put(t *testing.T, pols *policy.Store, p policy.Policy) {
	t.Helper()
	if p.Name == "" {
		p.Name = p.ID
	}
	if _, err := pols.Put(t.Context(), p); err != nil {
		t.Fatal(err)
	}
}

func wantPolicyRefusal(t *testing.T, res wire.EnrollResult, what string) {
	t.Helper()
	if res.Status != wire.StatusRefused || res.Reason != wire.ReasonPolicyViolation {
		t.Fatalf("%s: %s %s (%q), want refused %s", what, res.Status, res.Reason, res.Message, wire.ReasonPolicyViolation)
	}
	if len(res.Certificate) != 0 {
		t.Fatalf("%s: a refusal carries a certificate", what)
	}
}

// TestFirstQuoteJudgedByInventoryModel: a known device is judged by the
// model the inventory holds, not by the one its request claims. Its model
// has a policy it fails; claiming a model without policies must not buy it
// a certificate.
func TestFirstQuoteJudgedByInventoryModel(t *testing.T) {
	rec := record(t)
	h, pols := policyHarness(t, rec)
	knownDevice(t, h, rec)
	put(t, pols, policy.Policy{ID: "gw-real", Model: "gw-real", PCRs: map[string]map[int]string{"sha256": {0: strings.Repeat("ff", 32)}}})

	claim := rec.req // claims model "bench-gw", which no policy names
	wantPolicyRefusal(t, enrollAs(t, h, rec, "e-again", &claim), "known device claiming another model")
	claim.Model = "gw-real"
	wantPolicyRefusal(t, enrollAs(t, h, rec, "e-again-2", &claim), "known device claiming its own model")
}

// TestFirstQuoteFailsClosedWithoutMatchingPolicy: the device's model has a
// policy, but only for another firmware than the one the device claims.
// An unexpected firmware claim is refused, not let through unjudged.
func TestFirstQuoteFailsClosedWithoutMatchingPolicy(t *testing.T) {
	rec := record(t)
	h, pols := policyHarness(t, rec)
	knownDevice(t, h, rec)
	put(t, pols, policy.Policy{ID: "gw-real-2", Model: "gw-real", Firmware: "2.0.0",
		PCRs: map[string]map[int]string{"sha256": {0: recordedPCR(t, rec, 0)}}})

	wantPolicyRefusal(t, enrollAs(t, h, rec, "e-again", &rec.req), "firmware 1.0.0 where only 2.0.0 has a policy")

	// The firmware it claims selects the policy, which its quote passes.
	claim := rec.req
	claim.Firmware = "2.0.0"
	if res := enrollAs(t, h, rec, "e-again-2", &claim); res.Status != wire.StatusActive {
		t.Fatalf("passing the policy its firmware selects: %+v", res)
	}
}

// TestFirstQuoteEventRulesNotSkipped: a policy with event-log rules is
// judged at enrollment too; a device that sends no event log fails it
// instead of skipping it.
func TestFirstQuoteEventRulesNotSkipped(t *testing.T) {
	rec := record(t)
	h, pols := policyHarness(t, rec)
	knownDevice(t, h, rec)
	put(t, pols, policy.Policy{ID: "gw-real", Model: "gw-real",
		PCRs:   map[string]map[int]string{"sha256": {0: recordedPCR(t, rec, 0)}},
		Events: &policy.EventRules{SecureBoot: policy.SecureBootEnabled}})

	wantPolicyRefusal(t, enrollAs(t, h, rec, "e-again", &rec.req), "no event log for a policy with event rules")
}

// TestFirstQuotePassingPolicy: a device whose quote matches the policy of
// its inventory model re-enrolls.
func TestFirstQuotePassingPolicy(t *testing.T) {
	rec := record(t)
	h, pols := policyHarness(t, rec)
	id := knownDevice(t, h, rec)
	put(t, pols, policy.Policy{ID: "gw-real", Model: "gw-real", PCRs: map[string]map[int]string{"sha256": {0: recordedPCR(t, rec, 0)}}})
	if res := enrollAs(t, h, rec, "e-again", &rec.req); res.Status != wire.StatusActive || res.DeviceID != id {
		t.Fatalf("re-enrollment passing its policy: %+v", res)
	}
}
