// Package devicetest builds what the unit tests of the device's state
// machines (device/enroll, device/renew, device/agent) run on: a software
// TPM (sim/softtpm) and a state store in a temporary directory, both
// closed when the test ends, and the keys a device makes before it
// enrolls.
package devicetest

import (
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// Device is a device's TPM and state store.
type Device struct {
	TPM   *softtpm.TPM
	Store *state.Store
	Path  string // the state store's file
}

// New opens a new software TPM and an empty state store.
func New(t testing.TB) *Device {
	t.Helper()
	tp, err := softtpm.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := state.Open(path, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Device{TPM: tp, Store: st, Path: path}
}

// Keys makes the attestation key and the transport key in the TPM and
// returns the identity that holds them, in status state.StatusKeys: what
// a device has before it enrolls. The identity is not saved.
func (d *Device) Keys(t testing.TB) *state.Identity {
	t.Helper()
	ak, err := d.TPM.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	tk, err := d.TPM.CreateTransportKey()
	if err != nil {
		t.Fatal(err)
	}
	return &state.Identity{Status: state.StatusKeys, AK: state.KeyBlob(*ak), TK: state.KeyBlob(*tk)}
}
