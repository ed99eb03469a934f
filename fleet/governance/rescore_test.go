package governance_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/internal/runtest"
)

// countingHistory is an attestation history that counts how often each
// device's verdicts were read: once per score.
type countingHistory struct {
	mu    sync.Mutex
	reads map[string]int
}

func (h *countingHistory) Outcomes(_ context.Context, id string, _ int) ([]attest.Outcome, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reads[id]++
	return nil, nil
}

func (h *countingHistory) count(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reads[id]
}

// stored returns the device's stored score from the ranking, if any.
func stored(t *testing.T, svc *governance.Service, id string) (governance.Risk, bool) {
	t.Helper()
	all, _, err := svc.Ranking("", 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if r.DeviceID == id {
			return r, true
		}
	}
	return governance.Risk{}, false
}

// TestRescoreOnInputChange: a device whose inputs change is scored and
// its score stored by Run within two RescoreDelay ticks, long before the
// hourly sweep; a stream of changes is scored once per tick, not once per
// change; a decommissioned device loses its score; a full queue turns into
// one sweep that scores everyone; owner status changes rescore their
// devices.
func TestRescoreOnInputChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hist := &countingHistory{reads: map[string]int{}}
		f := newFleet(t, func(c *governance.Config) {
			c.Now = nil // the bubble's clock
			c.SweepInterval = time.Hour
			c.RescoreDelay = 2 * time.Second
			c.MaxRescore = 3
			c.Attestations = hist
		})
		f.owner("plant-a", governance.OwnerActive)
		stop := runtest.Start(t, f.svc.Run)
		synctest.Wait() // the sweep at start: no device yet

		// A device enrolled after the sweep, then failing attestation.
		d := f.device(1, nil)
		f.update(d.ID, func(d *inventory.Device) { d.Attestation = "fail" })
		if _, ok := stored(t, f.svc, d.ID); ok {
			t.Fatal("scored before any mark")
		}
		f.svc.Rescore(d.ID)
		time.Sleep(4*time.Second + time.Millisecond) // two ticks, in the bubble
		synctest.Wait()
		r, ok := stored(t, f.svc, d.ID)
		if !ok {
			t.Fatal("not scored within two ticks of its mark")
		}
		if _, ok := r.Factor(governance.FactorAttestationFailing); !ok {
			t.Fatalf("stored score lacks the failing attestation: %+v", r)
		}

		// A stream of marks within one tick: one score.
		before := hist.count(d.ID)
		for range 1000 {
			f.svc.Rescore(d.ID)
		}
		time.Sleep(4*time.Second + time.Millisecond)
		synctest.Wait()
		if n := hist.count(d.ID) - before; n != 1 {
			t.Fatalf("1000 marks in one tick scored %d times, want 1", n)
		}

		// Decommissioned: its score is gone.
		f.update(d.ID, func(d *inventory.Device) { d.State = inventory.StateDecommissioned })
		f.svc.Rescore(d.ID)
		time.Sleep(4*time.Second + time.Millisecond)
		synctest.Wait()
		if _, ok := stored(t, f.svc, d.ID); ok {
			t.Fatal("a decommissioned device kept its score")
		}

		// More marks than MaxRescore: one sweep scores every device.
		var ids []string
		for i := 2; i <= 6; i++ {
			ids = append(ids, f.device(i, nil).ID)
		}
		for _, id := range ids {
			f.svc.Rescore(id)
		}
		if st := f.svc.RescoreStats(); st.Overflows != 1 {
			t.Fatalf("stats after overflowing: %+v", st)
		}
		time.Sleep(2*time.Second + time.Millisecond)
		synctest.Wait()
		for _, id := range ids {
			if _, ok := stored(t, f.svc, id); !ok {
				t.Fatalf("device %s not scored by the sweep an overflow asked for", id)
			}
		}

		// An owner leaving orphans its devices: their scores follow at
		// the next tick.
		f.update(ids[0], func(d *inventory.Device) { d.Owner = "plant-a" })
		if err := f.svc.SetOwnerStatus("plant-a", governance.OwnerDeparted); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2*time.Second + time.Millisecond)
		synctest.Wait()
		if r, _ := stored(t, f.svc, ids[0]); func() bool { _, ok := r.Factor(governance.FactorOrphaned); return !ok }() {
			t.Fatalf("the departed owner's device was not rescored: %+v", r)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestScorePending scores what is marked at once, without Run.
func TestScorePending(t *testing.T) {
	f := newFleet(t, nil)
	d := f.device(1, nil)
	f.svc.Rescore(d.ID)
	n, err := f.svc.ScorePending(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("ScorePending = %d, %v", n, err)
	}
	if _, ok := stored(t, f.svc, d.ID); !ok {
		t.Fatal("not stored")
	}
	if st := f.svc.RescoreStats(); st.Queued != 0 || st.Scored != 1 {
		t.Fatalf("stats %+v", st)
	}
}
