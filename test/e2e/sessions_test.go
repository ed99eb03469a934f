package e2e

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
)

// publishAs has the real mosquitto_pub, as bootstrap client clientID,
// send an enrollment message (from a file: it is binary CBOR).
func publishAs(t testing.TB, f *harness.Fleet, clientID string, msg []byte) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "msg.cbor")
	if err := os.WriteFile(file, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	var topics wire.Topics
	host, port := hostPort(t, f)
	mustRun(t, "mosquitto_pub", "-h", host, "-p", port, "--cafile", f.CACertPath(), "-V", "mqttv311", "-q", "1",
		"-i", clientID, "-t", topics.EnrollUp(clientID, "enroll"), "-f", file)
}

// TestEnrollSessionBoundToClient (issue 11, item 10): a second bootstrap
// client that knows only a device's public EK (and the public parts of
// its request) cannot end the device's enrollment session, nor push the
// device's lifecycle events out by failing activation over and over.
// The second client is the real mosquitto_pub, then a flood from another
// bootstrap connection.
func TestEnrollSessionBoundToClient(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	k := newKit(t, newTPM(t))
	r := dialRaw(t, f, "e-device")
	first := r.result(r.send(wire.TypeEnrollProof, nil, k.answer(r.challenge(r.send(wire.TypeEnrollRequest, nil, k.request("SN-1", ""))))))
	if first.Status != wire.StatusActive {
		t.Fatalf("first enrollment: %+v", first)
	}

	// The device enrolls again (lost its state); while its session is
	// open, mosquitto_pub sends the same request from its own connection
	// and is challenged in a session of its own.
	ch := r.challenge(r.send(wire.TypeEnrollRequest, nil, k.request("SN-1", "")))
	msg, err := wire.Encode(wire.TypeEnrollRequest, nil, time.Now(), k.request("SN-1", ""))
	if err != nil {
		t.Fatal(err)
	}
	challenges := f.Enroll.Stats().Challenges.Load()
	publishAs(t, f, "e-thief", msg)
	waitFor(t, func() bool { return f.Enroll.Stats().Challenges.Load() > challenges }, "the fleet to challenge mosquitto_pub")
	if res := r.result(r.send(wire.TypeEnrollProof, nil, k.answer(ch))); res.Status != wire.StatusActive {
		t.Fatalf("the device's proof after another client asked with its EK: %s %s (%q)", res.Status, res.Reason, res.Message)
	}

	// Another bootstrap client fails activation again and again, more
	// often than the device keeps events.
	thief := dialRaw(t, f, "e-thief-2")
	for i := range 110 {
		tch := thief.challenge(thief.send(wire.TypeEnrollRequest, nil, k.request("SN-1", "")))
		guess := make([]byte, 32)
		rand.Read(guess)
		res := thief.result(thief.send(wire.TypeEnrollProof, nil, k.prove(tch, guess)))
		if res.Reason != wire.ReasonActivationFailed {
			t.Fatalf("guess %d: %+v", i, res)
		}
	}
	evs, err := f.Inv.Events(t.Context(), first.DeviceID, 0)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
		if e.Kind == "activation-failed" && !e.Anonymous {
			t.Errorf("a failed activation recorded as the device's own event: %+v", e)
		}
	}
	if kinds["enrolled"] != 1 || kinds["re-enrolled"] != 1 {
		t.Fatalf("the device's history was pushed out: %v", kinds)
	}
	if n := kinds["activation-failed"]; n == 0 || n > inventory.MaxAnonymousEvents {
		t.Fatalf("%d failed activations recorded, want 1 to %d", n, inventory.MaxAnonymousEvents)
	}
}
