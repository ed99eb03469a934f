package inventory_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

var _ inventorytest.Store = (*inventory.Store)(nil)

func open(t *testing.T, path string, opts ...inventory.Option) *inventory.Store {
	t.Helper()
	s, err := inventory.Open(path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	inventorytest.Run(t, func(t *testing.T) inventorytest.Store {
		s := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	s := open(t, path)
	d := inventorytest.NewDevice(1)
	if err := s.PutDevice(d); err != nil {
		t.Fatal(err)
	}
	secret, _, err := s.CreateToken(inventory.Grant{Model: "gw-1"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddEvent(inventory.Event{DeviceID: d.ID, Kind: "enrolled"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v, want 0600", fi.Mode().Perm())
	}

	s = open(t, path)
	defer s.Close()
	if got, err := s.DeviceByEK(d.EKFingerprint); err != nil || got.ID != d.ID || got.Serial != d.Serial {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	if _, err := s.ConsumeToken(secret, d.ID, "gw-1", time.Now()); err != nil {
		t.Fatalf("token after reopen: %v", err)
	}
	if ev, _ := s.Events(d.ID, 0); len(ev) != 1 || ev[0].Kind != "enrolled" {
		t.Fatalf("events after reopen: %v", ev)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	s := open(t, path)
	defer s.Close()
	start := time.Now()
	_, err := inventory.Open(path, inventory.WithTimeout(100*time.Millisecond))
	if !errors.Is(err, inventory.ErrLocked) {
		t.Fatalf("second open: err = %v, want ErrLocked", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("second open did not time out promptly")
	}
}

func TestEventsAreBounded(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithMaxEvents(3), inventory.WithNoSync())
	defer s.Close()
	id := inventorytest.ID(1)
	for i := range 10 {
		if err := s.AddEvent(inventory.Event{DeviceID: id, Kind: "k", Detail: string(rune('a' + i))}); err != nil {
			t.Fatal(err)
		}
		if err := s.AddEvent(inventory.Event{DeviceID: inventorytest.ID(2), Kind: "other"}); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := s.Events(id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 3 || ev[0].Detail != "j" || ev[2].Detail != "h" {
		t.Fatalf("events = %+v", ev)
	}
}

func TestClockAndEntropyAreInjected(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	zero := zeroReader{}
	s := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithClock(func() time.Time { return now }), inventory.WithRand(zero))
	defer s.Close()
	secret, tok, err := s.CreateToken(inventory.Grant{}, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if secret != "sgt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" || !tok.Created.Equal(now) || !tok.Expires.Equal(now.Add(time.Minute)) {
		t.Fatalf("secret %q token %+v", secret, tok)
	}
	// The same entropy again collides and is refused rather than overwriting.
	if _, _, err := s.CreateToken(inventory.Grant{}, "", time.Minute); err == nil {
		t.Fatal("colliding token created")
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestPendingTokenWorksOnlyOnceActivated: a token created pending (the
// two-person rule holds a token that grants a model or group) is refused
// at enrollment, and at the bootstrap CONNECT, until it is activated for
// exactly the grant it was created with; it is activated once.
func TestPendingTokenWorksOnlyOnceActivated(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync(), inventory.WithClock(func() time.Time { return now }))
	defer s.Close()
	g := inventory.Grant{Model: "gw-1", Group: "vault"}
	secret, tok, err := s.CreatePendingToken(g, "ops", time.Hour)
	if err != nil || !tok.Pending {
		t.Fatalf("CreatePendingToken: %+v %v", tok, err)
	}
	if _, err := s.CheckToken(secret, "gw-1", now); !errors.Is(err, inventory.ErrTokenPending) {
		t.Fatalf("CheckToken of a pending token: %v", err)
	}
	if _, err := s.ConsumeToken(secret, inventorytest.ID(1), "gw-1", now); !errors.Is(err, inventory.ErrTokenPending) {
		t.Fatalf("ConsumeToken of a pending token: %v", err)
	}
	if _, err := s.ActivateToken(tok.ID, inventory.Grant{Model: "gw-1", Group: "other"}); !errors.Is(err, inventory.ErrInvalid) {
		t.Fatalf("activating for another grant: %v", err)
	}
	if _, err := s.ActivateToken("tok_0000000000000000", g); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("activating an unknown token: %v", err)
	}
	got, err := s.ActivateToken(tok.ID, g)
	if err != nil || got.Pending {
		t.Fatalf("ActivateToken: %+v %v", got, err)
	}
	if _, err := s.ActivateToken(tok.ID, g); !errors.Is(err, inventory.ErrInvalid) {
		t.Fatalf("activating twice: %v", err)
	}
	used, err := s.ConsumeToken(secret, inventorytest.ID(1), "gw-1", now)
	if err != nil || used.Group != "vault" {
		t.Fatalf("ConsumeToken once activated: %+v %v", used, err)
	}

	// Expired before approval: it stays unusable.
	secret, tok, err = s.CreatePendingToken(g, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := s.ActivateToken(tok.ID, g); !errors.Is(err, inventory.ErrTokenExpired) {
		t.Fatalf("activating an expired token: %v", err)
	}
	if _, err := s.CheckToken(secret, "gw-1", now); !errors.Is(err, inventory.ErrTokenExpired) {
		t.Fatalf("CheckToken of an expired pending token: %v", err)
	}
	// A pending token whose approval could not be filed is deleted.
	secret, tok, err = s.CreatePendingToken(g, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteToken(tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CheckToken(secret, "gw-1", now); !errors.Is(err, inventory.ErrTokenInvalid) {
		t.Fatalf("CheckToken of a deleted token: %v", err)
	}
}

// TestUpdateAll: changes gathered into one call land as Update would land
// each (indexes included), and a failing change — an unknown device, a
// transition the lifecycle refuses, its function's own error — returns
// its error without keeping the others out.
func TestUpdateAll(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	defer s.Close()
	for n := 1; n <= 3; n++ {
		d := inventorytest.NewDevice(n)
		d.State = inventory.StateActive
		if err := s.PutDevice(d); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("boom")
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	attested := func(d *inventory.Device) error {
		d.Attestation, d.LastAttested, d.Firmware = "pass", at, "2.0.0"
		return nil
	}
	errs := s.UpdateAll([]inventory.Change{
		{ID: inventorytest.ID(1), Fn: attested},
		{ID: inventorytest.ID(9), Fn: attested},
		{ID: inventorytest.ID(2), Fn: func(d *inventory.Device) error { d.State = inventory.StatePending; return nil }},
		{ID: inventorytest.ID(3), Fn: func(d *inventory.Device) error { d.Owner = "x"; return boom }},
		{ID: inventorytest.ID(2), Fn: attested},
	})
	if errs[0] != nil || !errors.Is(errs[1], inventory.ErrNotFound) || !errors.Is(errs[2], inventory.ErrTransition) ||
		!errors.Is(errs[3], boom) || errs[4] != nil {
		t.Fatalf("errors %v", errs)
	}
	for _, n := range []int{1, 2} {
		d, err := s.Device(inventorytest.ID(n))
		if err != nil || d.Attestation != "pass" || !d.LastAttested.Equal(at) || d.Firmware != "2.0.0" || d.State != inventory.StateActive {
			t.Fatalf("device %d: %+v, %v", n, d, err)
		}
	}
	if d, _ := s.Device(inventorytest.ID(3)); d.Owner != inventorytest.NewDevice(3).Owner {
		t.Fatalf("a failed change landed: %+v", d)
	}
	if n, err := s.Count(map[inventory.Field]string{inventory.FieldFirmware: "2.0.0"}); err != nil || n != 2 {
		t.Fatalf("firmware index: %d devices, %v", n, err)
	}
}

// TestState: State reads a device's lifecycle state as Device does, and
// an unknown device is ErrNotFound.
func TestState(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	defer s.Close()
	d := inventorytest.NewDevice(1)
	d.State = inventory.StatePending
	if err := s.PutDevice(d); err != nil {
		t.Fatal(err)
	}
	for _, st := range []inventory.State{inventory.StatePending, inventory.StateActive, inventory.StateQuarantined, inventory.StateDecommissioned} {
		if err := s.Update(d.ID, func(d *inventory.Device) error { d.State = st; return nil }); err != nil {
			t.Fatal(err)
		}
		if got, err := s.State(d.ID); err != nil || got != st {
			t.Fatalf("State = %q, %v; want %q", got, err, st)
		}
	}
	if _, err := s.State(inventorytest.ID(2)); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
}
