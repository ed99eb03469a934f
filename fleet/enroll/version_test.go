package enroll_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// encodeAt encodes a device's message in protocol version v.
func encodeAt(t *testing.T, v int, typ string, body any) []byte {
	t.Helper()
	b, err := wire.EncodeFor(v, typ, nil, time.Now(), body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sentVersion is the envelope version of the last message the service sent.
func sentVersion(t *testing.T, h *harness) int {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	env, err := wire.Decode(h.sent)
	if err != nil {
		t.Fatal(err)
	}
	return env.V
}

// TestVersion4Device: a device of the previous release (protocol version
// 4) enrolls and is answered in its version: the challenge and the result
// in version 4 envelopes, the result without the release trust rotations
// it cannot decode and, once the set was rotated, without the set (a
// version 4 device takes a set in the result as it is; it gets it with
// its rotations in firmware.trust, which it verifies). The inventory
// keeps the version; a version 5 device gets both.
func TestVersion4Device(t *testing.T) {
	if testing.Short() {
		t.Skip("records evidence with the TPM simulator")
	}
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.inv.Close()
	trust := []byte(`{"type":"sigil.firmware.trust/v1","sequence":2}`)
	var rots []wire.TrustRotation
	h.svc, err = enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: rec.trust(), Rand: h.rand,
		FirmwareTrust: func() ([]byte, []wire.TrustRotation) { return trust, rots },
		Send: func(_, _ string, payload []byte) error {
			h.mu.Lock()
			h.sent = payload
			h.mu.Unlock()
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	enrollAt := func(client string, v int) wire.EnrollResult {
		t.Helper()
		h.rand.rewind()
		h.svc.Handle(client, encodeAt(t, v, wire.TypeEnrollRequest, &rec.req))
		var ch wire.EnrollChallenge
		if err := h.last(wire.TypeEnrollChallenge, &ch); err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		if got := sentVersion(t, h); got != v {
			t.Fatalf("challenge to a version %d device in version %d", v, got)
		}
		h.svc.Handle(client, encodeAt(t, v, wire.TypeEnrollProof, &rec.proof))
		res := result(t, h)
		if got := sentVersion(t, h); got != v {
			t.Fatalf("result to a version %d device in version %d", v, got)
		}
		if res.Status != wire.StatusActive {
			t.Fatalf("version %d: %s %s %s", v, res.Status, res.Reason, res.Message)
		}
		d, err := h.inv.Device(t.Context(), res.DeviceID)
		if err != nil || d.Protocol != v {
			t.Fatalf("version %d: inventory keeps protocol %d, %v", v, d.Protocol, err)
		}
		return res
	}
	// No rotation yet: the set as it is, as version 4 expects it.
	if res := enrollAt("e-v4-a", 4); !bytes.Equal(res.FirmwareTrust, trust) || res.FirmwareRotations != nil {
		t.Fatalf("version 4, no rotations: trust %q, rotations %v", res.FirmwareTrust, res.FirmwareRotations)
	}
	rots = []wire.TrustRotation{{Statement: trust, Bundles: [][]byte{[]byte(`{"bundle":1}`)}}}
	if res := enrollAt("e-v4-b", 4); res.FirmwareTrust != nil || res.FirmwareRotations != nil {
		t.Fatalf("version 4 after a rotation: trust %q, rotations %v", res.FirmwareTrust, res.FirmwareRotations)
	}
	if res := enrollAt("e-v5", 5); !bytes.Equal(res.FirmwareTrust, trust) || len(res.FirmwareRotations) != 1 {
		t.Fatalf("version 5: trust %q, rotations %v", res.FirmwareTrust, res.FirmwareRotations)
	}
	if res := enrollAt("e-v4-c", 4); res.FirmwareRotations != nil {
		t.Fatalf("back to version 4: rotations %v", res.FirmwareRotations)
	}
}

// TestVersionTooOld: a device older than the fleet speaks to is refused
// with unsupported_version before anything is verified.
func TestVersionTooOld(t *testing.T) {
	rec := record(t)
	h, _ := policyHarness(t, rec)
	h.svc.Handle("e-old", encode3(t, &rec.req))
	res := result(t, h)
	if res.Status != wire.StatusRefused || res.Reason != wire.ReasonUnsupportedVersion {
		t.Fatalf("version 3: %s %s %q", res.Status, res.Reason, res.Message)
	}
}

// encode3 encodes a version 3 enrollment request (EncodeFor refuses to).
func encode3(t *testing.T, req *wire.EnrollRequest) []byte {
	t.Helper()
	b, err := wire.Encode(wire.TypeEnrollRequest, nil, time.Now(), req)
	if err != nil {
		t.Fatal(err)
	}
	env, err := wire.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	env.V = 3
	out, err := wire.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestVersion4EventRulesRefused: the policy that judges the first quote has
// event rules and a version 4 request cannot be asked for the event log.
// The device is refused (unsupported_version) before any challenge, not
// judged without its log: claiming version 4 skips no check.
func TestVersion4EventRulesRefused(t *testing.T) {
	rec := record(t)
	h, pols := policyHarness(t, rec)
	id := knownDevice(t, h, rec)
	put(t, pols, policy.Policy{ID: "gw-real", Model: "gw-real",
		PCRs:   map[string]map[int]string{"sha256": {0: recordedPCR(t, rec, 0)}},
		Events: &policy.EventRules{SecureBoot: policy.SecureBootEnabled}})
	before, err := h.inv.Device(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	h.rand.rewind()
	h.svc.Handle("e-v4", encodeAt(t, 4, wire.TypeEnrollRequest, &rec.req))
	res := result(t, h)
	if res.Status != wire.StatusRefused || res.Reason != wire.ReasonUnsupportedVersion || len(res.Certificate) != 0 {
		t.Fatalf("version 4 under event rules: %s %s %q", res.Status, res.Reason, res.Message)
	}
	if v := sentVersion(t, h); v != 4 {
		t.Fatalf("refusal in version %d, want 4", v)
	}
	after, err := h.inv.Device(t.Context(), before.ID)
	if err != nil || after.CertSerial != before.CertSerial || after.Protocol != before.Protocol {
		t.Fatalf("the refusal changed the record: %+v -> %+v, %v", before, after, err)
	}
	// The same device in version 5 is asked for its log, and without one
	// fails the policy (TestFirstQuoteEventRulesNotSkipped).
	h.rand.rewind()
	h.svc.Handle("e-v5", encodeAt(t, 5, wire.TypeEnrollRequest, &rec.req))
	var ch wire.EnrollChallenge
	if err := h.last(wire.TypeEnrollChallenge, &ch); err != nil || !ch.EventLog {
		t.Fatalf("version 5: challenge %+v, %v", ch, err)
	}
	// Its proof in version 4, without the log, fails the policy: a lower
	// version after the challenge skips nothing either.
	h.svc.Handle("e-v5", encodeAt(t, 4, wire.TypeEnrollProof, &rec.proof))
	wantPolicyRefusal(t, result(t, h), "a version 4 proof answering a challenge that asked for the event log")
	if v := sentVersion(t, h); v != 4 {
		t.Fatalf("refusal in version %d, want 4", v)
	}
}
