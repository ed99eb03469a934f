package attest

import (
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestHooks: OnVerdict reports each recorded verdict with the time from
// its challenge, never refused-nonce evidence; OnQuarantine fires once the
// quarantine is complete.
func TestHooks(t *testing.T) {
	f := newFixture(t)
	type got struct {
		id      string
		seq     uint64
		result  string
		action  string
		latency time.Duration
	}
	var (
		mu       sync.Mutex
		verdicts []got
		quars    []time.Duration
	)
	f.svc.OnVerdict(func(id string, rec *Record, latency time.Duration) {
		mu.Lock()
		verdicts = append(verdicts, got{id, rec.Seq, rec.Result, rec.Action, latency})
		mu.Unlock()
	})
	f.svc.OnQuarantine(func(d time.Duration) {
		// By now the device is revoked, disconnected and alerted.
		dev, err := f.inv.Device(t.Context(), f.dev)
		if err != nil || dev.State != inventory.StateQuarantined || !dev.IsRevoked(dev.CertSerial) {
			t.Errorf("quarantine hook before the quarantine was complete: %+v %v", dev, err)
		}
		mu.Lock()
		quars = append(quars, d)
		mu.Unlock()
	})

	ch := f.challenge(f.dev)
	f.advance(250 * time.Millisecond)
	b := f.evidence(ch, f.ak, nil)
	f.submit(f.dev, b)
	f.submit(f.dev, b) // replayed: refused for its nonce, not recorded, not reported
	if len(verdicts) != 1 {
		t.Fatalf("verdicts %+v, want 1", verdicts)
	}
	if v := verdicts[0]; v.id != f.dev || v.seq == 0 || v.result != wire.VerdictPass || v.latency != 250*time.Millisecond {
		t.Fatalf("verdict %+v, want a recorded pass 250ms after its challenge", v)
	}
	if len(quars) != 0 {
		t.Fatalf("quarantine reported for a pass: %v", quars)
	}

	ak2, err := f.tpm.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	ch = f.challenge(f.dev)
	f.advance(time.Second)
	f.submit(f.dev, f.evidence(ch, ak2, nil))
	if len(verdicts) != 2 || len(quars) != 1 {
		t.Fatalf("after a failing quote: verdicts %+v, quarantines %v", verdicts, quars)
	}
	if v := verdicts[1]; v.result != wire.VerdictFail || v.action != "quarantined" || v.latency != time.Second {
		t.Fatalf("verdict %+v", v)
	}
	if quars[0] != 0 { // the fixture's clock stands still while the service works
		t.Fatalf("quarantine latency %v on a frozen clock", quars[0])
	}

	f.svc.OnVerdict(nil)
	f.svc.OnQuarantine(nil)
	f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	if len(verdicts) != 2 {
		t.Fatal("a removed OnVerdict callback was called")
	}
}
