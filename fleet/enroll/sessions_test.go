package enroll_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// sessionHarness is a service that trusts the recording's vendor CA and
// keeps maxEvents lifecycle events per device.
func sessionHarness(t *testing.T, rec *recording, maxEvents int) *harness {
	t.Helper()
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inventory.db"), inventory.WithNoSync(), inventory.WithMaxEvents(maxEvents))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	fleetCA, err := newCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{inv: inv, ca: fleetCA, rand: newReplayRand()}
	if h.svc, err = enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: rec.trust(), Rand: h.rand, Sessions: testSessions(t),
		Send: h.send,
	}); err != nil {
		t.Fatal(err)
	}
	return h
}

// challengeFor sends req from clientID and returns the challenge.
func challengeFor(t *testing.T, h *harness, clientID string, req *wire.EnrollRequest) *wire.EnrollChallenge {
	t.Helper()
	h.svc.Handle(clientID, encode(wire.TypeEnrollRequest, req))
	var ch wire.EnrollChallenge
	if err := h.last(wire.TypeEnrollChallenge, &ch); err != nil {
		t.Fatalf("%s: no challenge: %v", clientID, err)
	}
	return &ch
}

// guess is a proof for ch from a client that does not hold the EK: a random
// activation answer and the recording's other fields.
func guess(rec *recording, ch *wire.EnrollChallenge) *wire.EnrollProof {
	p := rec.proof
	p.Session = ch.Session
	p.Activation = make([]byte, 32)
	rand.Read(p.Activation)
	return &p
}

// TestSessionBoundToClient: another client that sends the device's public
// EK while the device's enrollment is open cannot end that session; the
// device's proof still enrolls it. The other client's own session gets
// nowhere without the TPM.
func TestSessionBoundToClient(t *testing.T) {
	rec := record(t)
	h := sessionHarness(t, rec, 0)

	h.rand.rewind() // the recorded proof answers the device's session
	challengeFor(t, h, "e-device", &rec.req)
	// Another client, with the same public EK, certificate and keys.
	thief := challengeFor(t, h, "e-thief", &rec.req)

	h.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
	if res := result(t, h); res.Status != wire.StatusActive {
		t.Fatalf("the device's own proof after another client asked with its EK: %s %s (%q)", res.Status, res.Reason, res.Message)
	}
	h.svc.Handle("e-thief", encode(wire.TypeEnrollProof, guess(rec, thief)))
	if res := result(t, h); res.Status != wire.StatusRefused || res.Reason != wire.ReasonActivationFailed {
		t.Fatalf("the other client's guess: %+v", res)
	}
	// Nor can the other client answer the device's session with the
	// device's own (captured) proof: the session belongs to its client.
	h.rand.rewind()
	challengeFor(t, h, "e-device", &rec.req)
	h.svc.Handle("e-thief", encode(wire.TypeEnrollProof, &rec.proof))
	if res := result(t, h); res.Status != wire.StatusRefused {
		t.Fatalf("another client's proof for the device's session: %+v", res)
	}
}

// TestAnonymousFailuresKeepLifecycleEvents: a client that knows only a
// device's public EK fails credential activation over and over; the
// device's lifecycle events (its enrollment) are still kept afterwards.
func TestAnonymousFailuresKeepLifecycleEvents(t *testing.T) {
	rec := record(t)
	const keep = 5
	h := sessionHarness(t, rec, keep)
	res := enrollAs(t, h, rec, "e-device", &rec.req)
	if res.Status != wire.StatusActive {
		t.Fatalf("enrollment: %+v", res)
	}
	for i := range 3 * keep {
		ch := challengeFor(t, h, "e-thief", &rec.req)
		h.svc.Handle("e-thief", encode(wire.TypeEnrollProof, guess(rec, ch)))
		if r := result(t, h); r.Reason != wire.ReasonActivationFailed {
			t.Fatalf("guess %d: %+v", i, r)
		}
	}
	evs, err := h.inv.Events(t.Context(), res.DeviceID, 0)
	if err != nil {
		t.Fatal(err)
	}
	enrolled, failed := 0, 0
	for _, e := range evs {
		switch e.Kind {
		case "enrolled":
			enrolled++
		case "activation-failed":
			failed++
		}
	}
	if enrolled != 1 {
		t.Fatalf("the device's enrollment event was pushed out by %d anonymous failures: %+v", 3*keep, evs)
	}
	if failed == 0 {
		t.Fatalf("the failed activations left no trace: %+v", evs)
	}
}

// strangerEK is the public area of a made-up ECC P-256 endorsement key:
// well-formed, held by no TPM.
func strangerEK(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := tpm2.ECCEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))},
		Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))},
	})
	return tpm2.Marshal(pub)
}

// TestClientSessionsBounded: a client holds at most a few open sessions;
// opening more ends its own oldest, never another client's.
func TestClientSessionsBounded(t *testing.T) {
	rec := record(t)
	h := sessionHarness(t, rec, 0)
	var err error
	if h.svc, err = enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: rec.trust(), Rand: h.rand, Sessions: testSessions(t), ManualApproval: true,
		Send: h.send,
	}); err != nil {
		t.Fatal(err)
	}
	h.rand.rewind()
	device := challengeFor(t, h, "e-device", &rec.req)

	var flood []*wire.EnrollChallenge
	for range 12 {
		req := rec.req
		req.EKPublic, req.EKCert = strangerEK(t), nil
		flood = append(flood, challengeFor(t, h, "e-flood", &req))
	}
	answer := func(clientID string, p *wire.EnrollProof) wire.Reason {
		h.svc.Handle(clientID, encode(wire.TypeEnrollProof, p))
		return result(t, h).Reason
	}
	// The oldest of the flood's sessions are gone; its newest are open
	// (a guess reaches the activation check).
	if got := answer("e-flood", guess(rec, flood[0])); got != wire.ReasonChallengeExpired {
		t.Fatalf("the flood's first session: %s, want it ended (%s)", got, wire.ReasonChallengeExpired)
	}
	if got := answer("e-flood", guess(rec, flood[len(flood)-1])); got != wire.ReasonActivationFailed {
		t.Fatalf("the flood's last session: %s, want it open", got)
	}
	// The device's session, opened first, is intact.
	if res := func() wire.EnrollResult {
		h.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
		return result(t, h)
	}(); res.Status != wire.StatusActive {
		t.Fatalf("the device's session after another client's flood: %+v (challenge %x)", res, device.Session)
	}
}

// TestFailedActivationsCounted: failed activations of a known EK are
// recorded at most once a minute; the ones in between are counted into
// the next record.
func TestFailedActivationsCounted(t *testing.T) {
	rec := record(t)
	h := sessionHarness(t, rec, 0)
	now := time.Now()
	var err error
	if h.svc, err = enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: rec.trust(), Rand: h.rand, Sessions: testSessions(t), Now: func() time.Time { return now },
		Send: h.send,
	}); err != nil {
		t.Fatal(err)
	}
	res := enrollAs(t, h, rec, "e-device", &rec.req)
	fail := func() {
		ch := challengeFor(t, h, "e-thief", &rec.req)
		h.svc.Handle("e-thief", encode(wire.TypeEnrollProof, guess(rec, ch)))
	}
	failures := func() []inventory.Event {
		evs, err := h.inv.Events(t.Context(), res.DeviceID, 0)
		if err != nil {
			t.Fatal(err)
		}
		var out []inventory.Event
		for _, e := range evs {
			if e.Kind == "activation-failed" {
				out = append(out, e)
			}
		}
		return out
	}
	for range 3 {
		fail()
	}
	if got := failures(); len(got) != 1 || !got[0].Anonymous {
		t.Fatalf("three failures within a minute: %+v", got)
	}
	now = now.Add(2 * time.Minute)
	fail()
	got := failures()
	if len(got) != 2 || !strings.Contains(got[0].Detail, "2 more failed") {
		t.Fatalf("after a minute: %+v", got)
	}
}
