package update_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/update"
)

// TestRecordedVersion: the version the state store says runs, at each
// kind of phase, without asking the backend.
func TestRecordedVersion(t *testing.T) {
	st, err := state.Open(filepath.Join(t.TempDir(), "state.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	check := func(what, want string) {
		t.Helper()
		got, err := update.RecordedVersion(st, "1.0.0")
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", what, got, err, want)
		}
	}
	check("no update", "1.0.0")
	now := time.Now()
	u := &state.Update{ID: "u1", Phase: string(update.PhaseAnnounced), Started: now, Changed: now}
	save := func(phase update.Phase, final bool, slots ...state.Slot) {
		t.Helper()
		u.Phase, u.Final = string(phase), final
		if err := st.SaveUpdate(u, slots...); err != nil {
			t.Fatal(err)
		}
	}
	save(update.PhaseAnnounced, false)
	check("announced", "1.0.0")
	u.From, u.Target = "a", "b"
	save(update.PhaseInstalling, false, state.Slot{Name: "b"})
	check("installing from the factory slot", "1.0.0")
	save(update.PhaseRebooting, false, state.Slot{Name: "b", Version: "2.0.0"})
	check("rebooting (not known to run the new slot)", "1.0.0")
	save(update.PhaseHealth, false)
	check("health on the new slot", "2.0.0")
	save(update.PhaseRollingBack, false)
	check("rolling back from the new slot", "2.0.0")
	u.Running, u.Slot = "1.0.0", "a"
	save(update.PhaseRolledBack, true)
	check("rolled back", "1.0.0")
	u.ID, u.Running, u.Slot = "u2", "2.0.0", "b"
	save(update.PhaseCommitted, true)
	check("committed", "2.0.0")
}
