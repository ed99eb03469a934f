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
