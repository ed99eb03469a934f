package inventory_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestPresence: a connection event sets the connected flag and last seen;
// a hello takes the reported firmware of an active device only, and says
// whether it changed.
func TestPresence(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	defer s.Close()
	const active, quarantined = "0123456789abcdef0123456789abcde1", "0123456789abcdef0123456789abcde2"
	for id, st := range map[string]inventory.State{active: inventory.StateActive, quarantined: inventory.StateQuarantined} {
		if err := s.PutDevice(t.Context(), &inventory.Device{ID: id, State: st, Firmware: "1.0"}); err != nil {
			t.Fatal(err)
		}
	}
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.SetConnected(t.Context(), active, true, at); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Device(t.Context(), active); !d.Connected || !d.LastSeen.Equal(at) {
		t.Fatalf("after a connection: connected %v, last seen %v", d.Connected, d.LastSeen)
	}
	for _, c := range []struct {
		id, firmware, prev, now string
		changed                 bool
	}{
		{active, "1.1", "1.0", "1.1", true},
		{active, "1.1", "1.1", "1.1", false},
		{active, "", "1.1", "1.1", false},
		{quarantined, "6.6", "1.0", "1.0", false}, // only an active device's report is taken
	} {
		at = at.Add(time.Minute)
		prev, changed, err := s.Hello(t.Context(), c.id, c.firmware, 5, at)
		d, _ := s.Device(t.Context(), c.id)
		if err != nil || prev != c.prev || changed != c.changed || d.Firmware != c.now || !d.LastSeen.Equal(at) {
			t.Errorf("Hello(%s, %q) = %q, %v, %v; firmware %q, last seen %v", c.id[28:], c.firmware, prev, changed, err, d.Firmware, d.LastSeen)
		}
	}
	if _, _, err := s.Hello(t.Context(), "ffffffffffffffffffffffffffffffff", "1", 5, at); err == nil {
		t.Error("a hello of an unknown device was recorded")
	}
}
