package campaign

import (
	"context"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/internal/runtest"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Run drives the engine on its ticker: in a synctest bubble the device
// timeout fires after a minute of fake time, without sleeping.
func TestRunTimesOutSilentDevice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store, err := Open(filepath.Join(t.TempDir(), "campaigns.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		fleet := &fakeFleet{}
		m, err := New(Config{
			Store:     store,
			Targets:   TargetsFunc(func(context.Context, string, Selector) ([]string, error) { return []string{"dev-a", "dev-b"}, nil }),
			Announcer: fleet,
		})
		if err != nil {
			t.Fatal(err)
		}
		d := def(1, 1)
		d.DeviceTimeout = config.Duration(time.Minute)
		c, err := m.Create(t.Context(), d, "alice", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(c.ID, time.Time{}, "alice", ""); err != nil {
			t.Fatal(err)
		}
		stop := runtest.Start(t, m.Run)

		synctest.Wait()
		wantDevices(t, "first tick", devices(fleet.take()), "dev-a")
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if got, _ := m.Device(c.ID, "dev-a"); got.Step != StepAnnounced {
			t.Fatalf("after 59 s: %+v", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		got, _ := m.Device(c.ID, "dev-a")
		camp, _ := m.Get(c.ID)
		if got.Step != StepTimedOut || camp.State != StatePaused {
			t.Fatalf("after 60 s: device %s, campaign %s", got.Step, camp.State)
		}
		wantDevices(t, "after the pause", devices(fleet.take()))
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}
