package enroll_test

import (
	"slices"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// identities records what enrollment tells governance and answers its
// questions from sets.
type identities struct {
	mu       sync.Mutex
	blocked  []string // client IDs and EK fingerprints
	admitted []string
	unknown  []string // "client ek"
	clones   []string // device IDs
}

func (x *identities) Blocked(clientID, ek string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Contains(x.blocked, clientID) || slices.Contains(x.blocked, ek)
}

func (x *identities) Admitted(ek string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Contains(x.admitted, ek)
}

func (x *identities) UnknownEK(clientID, ek, _ string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.unknown = append(x.unknown, clientID+" "+ek)
}

func (x *identities) CloneSuspect(deviceID, _ string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.clones = append(x.clones, deviceID)
}

var _ enroll.Identities = (*identities)(nil)

// identityHarness is a service that trusts no EK by itself (no CA, no
// allow-list, no tokens) and asks ids.
func identityHarness(t *testing.T, rec *recording, ids *identities) *harness {
	t.Helper()
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.inv.Close() })
	h.svc, err = enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: &verifier.EKTrust{}, Rand: h.rand, Identities: ids,
		Send: h.send,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func ekFingerprint(t *testing.T, rec *recording) string {
	t.Helper()
	ek, err := (&verifier.EKTrust{}).VerifyEK(rec.req.EKPublic, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ek.Fingerprint
}

func result(t *testing.T, h *harness) wire.EnrollResult {
	t.Helper()
	var res wire.EnrollResult
	if err := h.last(wire.TypeEnrollResult, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// TestIdentitiesUnknownBlockedAdmitted: an EK no path trusts is refused
// and reported as unknown; a blocked EK is refused without a challenge and
// not reported; an EK an operator admitted enrolls through the triage
// path.
func TestIdentitiesUnknownBlockedAdmitted(t *testing.T) {
	rec := record(t)
	fp := ekFingerprint(t, rec)
	ids := &identities{}
	h := identityHarness(t, rec, ids)

	h.svc.Handle("e-unknown", encode(wire.TypeEnrollRequest, &rec.req))
	if res := result(t, h); res.Status != wire.StatusRefused || res.Reason != wire.ReasonUnknownEK {
		t.Fatalf("unknown EK: %+v", res)
	}
	if len(ids.unknown) != 1 || ids.unknown[0] != "e-unknown "+fp {
		t.Fatalf("reported unknown EKs %q, want [e-unknown %s]", ids.unknown, fp)
	}

	ids.blocked = []string{fp}
	ids.admitted = []string{fp}
	h.svc.Handle("e-blocked", encode(wire.TypeEnrollRequest, &rec.req))
	if res := result(t, h); res.Status != wire.StatusRefused || res.Reason != wire.ReasonUnknownEK {
		t.Fatalf("blocked EK: %+v", res)
	}
	if len(ids.unknown) != 1 {
		t.Fatalf("a blocked EK was reported as unknown: %q", ids.unknown)
	}

	ids.blocked = []string{"e-other"}
	h.rand.rewind() // the recorded proof answers this session
	h.svc.Handle("e-admitted", encode(wire.TypeEnrollRequest, &rec.req))
	var ch wire.EnrollChallenge
	if err := h.last(wire.TypeEnrollChallenge, &ch); err != nil {
		t.Fatalf("admitted EK got no challenge: %v", err)
	}
	h.svc.Handle("e-admitted", encode(wire.TypeEnrollProof, &rec.proof))
	res := result(t, h)
	if res.Status != wire.StatusActive {
		t.Fatalf("admitted EK: %+v", res)
	}
	d, err := h.inv.Device(t.Context(), res.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if d.TrustPath != enroll.PathTriage || d.State != inventory.StateActive {
		t.Fatalf("enrolled %s via %q, want active via %q", d.State, d.TrustPath, enroll.PathTriage)
	}
	if d.CertIssued.IsZero() || !d.CertIssued.Before(d.CertExpiry) {
		t.Fatalf("certificate issue time %v (expiry %v)", d.CertIssued, d.CertExpiry)
	}

	// A blocked client ID is refused even for a known device.
	ids.blocked = []string{"e-blocked-client"}
	h.svc.Handle("e-blocked-client", encode(wire.TypeEnrollRequest, &rec.req))
	if res := result(t, h); res.Status != wire.StatusRefused {
		t.Fatalf("blocked client: %+v", res)
	}
}

// TestIdentitiesCloneSuspect: the device's EK proven under another serial
// is reported to governance as a clone of the enrolled device.
func TestIdentitiesCloneSuspect(t *testing.T) {
	rec := record(t)
	ids := &identities{admitted: []string{ekFingerprint(t, rec)}}
	h := identityHarness(t, rec, ids)
	h.rand.rewind()
	h.svc.Handle("e-first", encode(wire.TypeEnrollRequest, &rec.req))
	h.svc.Handle("e-first", encode(wire.TypeEnrollProof, &rec.proof))
	first := result(t, h)
	if first.Status != wire.StatusActive {
		t.Fatalf("first enrollment: %+v", first)
	}
	if len(ids.clones) != 0 {
		t.Fatalf("clone reported for a first enrollment: %q", ids.clones)
	}
	other := rec.req
	other.Serial = "ANOTHER-SERIAL"
	h.rand.rewind()
	h.svc.Handle("e-second", encode(wire.TypeEnrollRequest, &other))
	h.svc.Handle("e-second", encode(wire.TypeEnrollProof, &rec.proof))
	if res := result(t, h); res.Reason != wire.ReasonClone {
		t.Fatalf("second serial: %+v", res)
	}
	if len(ids.clones) != 1 || ids.clones[0] != first.DeviceID {
		t.Fatalf("clones reported %q, want [%s]", ids.clones, first.DeviceID)
	}
}
