package agent

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestStatusSaysWhenTheFleetIsSilent: behind a broker that accepts the
// device while the fleet answers nothing (the fake fleet leaves a plain
// attestation request unanswered), the status says so instead of
// "connected"; once the fleet answers (a challenge, then the verdict for
// the evidence it asked for) it no longer does, and a silence after that
// names the last answer.
func TestStatusSaysWhenTheFleetIsSilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newTestDevice(t, nil)
		d.run(t)
		st := d.connected(t, time.Minute)
		if st.FleetSilentSince.IsZero() || !st.LastFleetMessage.IsZero() || st.Silence(time.Now()) != 0 {
			t.Fatalf("just connected: silent since %v, last message %v, silence %v", st.FleetSilentSince, st.LastFleetMessage, st.Silence(time.Now()))
		}
		time.Sleep(2*time.Minute + 10*time.Second) // sleep: fake time passes with no answer from the fleet
		st = d.a.Status()
		st.Running = true
		if got := st.Silence(time.Now()); got < 2*time.Minute {
			t.Fatalf("silence %v after 2m10s without an answer", got)
		}
		if txt := st.Text(); !strings.Contains(txt, "connected:    to the broker; no answer from the fleet for 2m1") ||
			!strings.Contains(txt, "(last answer: never)") {
			t.Fatalf("status does not say the fleet is silent:\n%s", txt)
		}

		// The fleet answers: a challenge (the device sends evidence, which
		// the fleet answers in turn) and then the verdict.
		if !d.fleet.Send(st.DeviceID, wire.TypeAttestChallenge, &wire.AttestChallenge{Nonce: make([]byte, 32),
			Selections: []wire.PCRSelection{{Hash: wire.AlgSHA256, PCRs: []int{0}}}}) {
			t.Fatal("no session to send on")
		}
		synctest.Wait()
		answered := time.Now()
		st = d.a.Status()
		st.Running = true
		if !st.LastFleetMessage.Equal(answered) || st.Silence(time.Now()) != 0 || strings.Contains(st.Text(), "no answer") {
			t.Fatalf("after the fleet's challenge: last message %v, silence %v\n%s", st.LastFleetMessage, st.Silence(time.Now()), st.Text())
		}
		if len(d.fleet.Sent(wire.TypeAttestEvidence)) != 1 || !st.FleetSilentSince.Equal(answered) {
			t.Fatalf("evidence sent %d times, waiting for the verdict since %v", len(d.fleet.Sent(wire.TypeAttestEvidence)), st.FleetSilentSince)
		}
		time.Sleep(time.Minute) // sleep: fake time passes with no verdict
		st = d.a.Status()
		st.Running = true
		if txt := st.Text(); !strings.Contains(txt, "no answer from the fleet for 1m0s (last answer: "+answered.Format(time.RFC3339)+")") {
			t.Fatalf("status does not name the last answer:\n%s", txt)
		}
		d.fleet.Send(st.DeviceID, wire.TypeAttestVerdict, &wire.AttestVerdict{Result: wire.VerdictPass})
		synctest.Wait()
		st = d.a.Status()
		st.Running = true
		if !st.FleetSilentSince.IsZero() || st.Silence(time.Now()) != 0 || !strings.Contains(st.Text(), "connected:    true") {
			t.Fatalf("after the verdict:\n%s", st.Text())
		}
	})
}
