package update

import (
	"errors"

	"github.com/sigil-iot/sigil/device/state"
)

// RecordedVersion returns the version of the firmware the device runs as
// the state store records it, for a reader that cannot ask the backend
// which slot booted (sigild status while the daemon is stopped):
//
//   - no update recorded: factory (Config.Version, the configured one);
//   - a finished update (committed, rolled back, failed): the version it
//     recorded as running when it finished (the booted slot's, not the
//     intended one);
//   - an update under way: the version of the slot it started from, or,
//     once the device is known to run the new slot (health, committing,
//     advancing_floor, rolling_back), the new slot's.
//
// A slot the engine never installed holds factory.
func RecordedVersion(st *state.Store, factory string) (string, error) {
	u, err := st.Update()
	if errors.Is(err, state.ErrNoUpdate) {
		return factory, nil
	}
	if err != nil {
		return "", err
	}
	if u.Final && u.Running != "" {
		return u.Running, nil
	}
	slot := u.From
	switch Phase(u.Phase) {
	case PhaseHealth, PhaseCommitting, PhaseAdvancingFloor, PhaseRollingBack:
		slot = u.Target
	}
	if slot == "" { // announced: not verified yet, nothing chosen
		return factory, nil
	}
	s, err := st.Slot(slot)
	if errors.Is(err, state.ErrNoSlot) {
		return factory, nil
	}
	if err != nil {
		return "", err
	}
	return s.Version, nil
}
