package governance_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/internal/runtest"
)

// Run sweeps on its interval, flushes triage on its own and checks
// sessions, on fake time.
func TestRunSweepsFlushesAndChecksOnItsClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet(t, func(c *governance.Config) {
			c.Now = nil // the bubble's clock
			c.SweepInterval = time.Hour
			c.FlushInterval = time.Second
			c.DormantAfter = 3 * time.Hour
			c.CloneGrace = 30 * time.Second
		})
		start := time.Now()
		f.owner("plant-a", governance.OwnerActive)
		quiet := f.device(1, func(d *inventory.Device) {
			d.Connected, d.LastSeen, d.CertExpiry = false, start, start.Add(365*24*time.Hour)
		})
		twin := f.device(2, func(d *inventory.Device) { d.CertExpiry = start.Add(365 * 24 * time.Hour) })

		stop := runtest.Start(t, f.svc.Run)
		synctest.Wait()
		if rep, _, _ := f.svc.Ranking("", 0); len(rep) != 2 {
			t.Fatalf("no sweep at start: %+v", rep)
		}

		// An attempt is written within a flush interval, without a call.
		if err := f.svc.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: "stranger"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		if _, err := f.svc.Shadow("unknown-client/client:stranger"); err != nil {
			t.Fatalf("not flushed by Run: %v", err)
		}

		// Two sessions with one serial from two hosts, held past the
		// grace period: Run checks and acts.
		f.svc.SessionOpened(governance.Session{DeviceID: twin.ID, CertSerial: twin.CertSerial, Remote: "10.0.0.1:1"})
		f.svc.SessionOpened(governance.Session{DeviceID: twin.ID, CertSerial: twin.CertSerial, Remote: "10.0.0.2:1"})
		time.Sleep(time.Minute + 2*time.Second)
		synctest.Wait()
		if f.get(twin.ID).State != inventory.StateQuarantined {
			t.Fatal("Run did not act on concurrent use")
		}

		// Dormant after 3h: the sweep at 3h (or 4h) finds it.
		if st, _ := f.svc.Status(quiet.ID); st.Dormant {
			t.Fatal("dormant too early")
		}
		time.Sleep(4 * time.Hour)
		synctest.Wait()
		if st, err := f.svc.Status(quiet.ID); err != nil || !st.Dormant {
			t.Fatalf("not dormant after 4h: %+v %v", st, err)
		}

		if err := stop(); err != nil {
			t.Fatalf("Run returned %v", err)
		}
	})
}
