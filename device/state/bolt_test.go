package state_test

import (
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/state/statetest"
)

// TestStore runs the store's tests over bbolt files.
func TestStore(t *testing.T) {
	statetest.Run(t, func(t *testing.T) statetest.Opener {
		path := filepath.Join(t.TempDir(), "state.db")
		return func(t *testing.T, readOnly bool) *state.Store {
			t.Helper()
			s, err := state.Open(path, state.Options{ReadOnly: readOnly})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	})
}

// TestEngine checks the bbolt engine against the contract the store
// relies on.
func TestEngine(t *testing.T) {
	statetest.RunEngine(t, func(t *testing.T) statetest.EngineOpener {
		path := filepath.Join(t.TempDir(), "state.db")
		return func(t *testing.T, readOnly bool) state.Engine {
			t.Helper()
			e, err := state.OpenBolt(path, state.Options{ReadOnly: readOnly})
			if err != nil {
				t.Fatal(err)
			}
			return e
		}
	})
}
