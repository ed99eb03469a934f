package inventory_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
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

// TestConformance runs the conformance suite against both backends: a
// bbolt file, and a real PostgreSQL (pgtest; skipped without one unless
// CI=true).
func TestConformance(t *testing.T) {
	t.Run("bbolt", func(t *testing.T) {
		inventorytest.Run(t, func(t *testing.T, opts ...inventory.Option) inventorytest.Store {
			s := open(t, filepath.Join(t.TempDir(), "inv.db"), append([]inventory.Option{inventory.WithNoSync()}, opts...)...)
			t.Cleanup(func() { s.Close() })
			return s
		})
	})
	t.Run("postgres", func(t *testing.T) {
		srv := pgtest.Start(t)
		inventorytest.Run(t, func(t *testing.T, opts ...inventory.Option) inventorytest.Store {
			return openPostgres(t, srv.NewDatabase(t), opts...)
		})
	})
}

// openPostgres opens the inventory in the database at url.
func openPostgres(t *testing.T, url string, opts ...inventory.Option) *inventory.Store {
	t.Helper()
	db := pgtest.Open(t, url)
	s, err := inventory.OpenPostgres(t.Context(), db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	s := open(t, path)
	d := inventorytest.NewDevice(1)
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	secret, _, err := s.CreateToken(t.Context(), inventory.Grant{Model: "gw-1"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddEvent(t.Context(), inventory.Event{DeviceID: d.ID, Kind: "enrolled"}); err != nil {
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
	if got, err := s.DeviceByEK(t.Context(), d.EKFingerprint); err != nil || got.ID != d.ID || got.Serial != d.Serial {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	if _, err := s.ConsumeToken(t.Context(), secret, d.ID, "gw-1", time.Now()); err != nil {
		t.Fatalf("token after reopen: %v", err)
	}
	if ev, _ := s.Events(t.Context(), d.ID, 0); len(ev) != 1 || ev[0].Kind != "enrolled" {
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

// TestCopyToPostgres: Copy moves a bbolt inventory's devices, revocations,
// enrollment tokens and events (anonymous ones too) into PostgreSQL,
// where they digest alike and keep working (EK lookup, tokens, queries).
func TestCopyToPostgres(t *testing.T) {
	src := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	defer src.Close()
	ctx := t.Context()
	for i := range 5 {
		if err := src.PutDevice(ctx, inventorytest.NewDevice(i)); err != nil {
			t.Fatal(err)
		}
		for _, kind := range []string{"enrolled", "attested"} {
			if err := src.AddEvent(ctx, inventory.Event{DeviceID: inventorytest.ID(i), Kind: kind}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := src.AddEvent(ctx, inventory.Event{DeviceID: inventorytest.ID(1), Kind: "enroll_failed", Anonymous: true}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.RevokeDevice(ctx, inventorytest.ID(2), inventory.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	secret, _, err := src.CreateToken(ctx, inventory.Grant{Model: "gw-1"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	want, err := src.Digest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want.Devices != 5 || want.Revocations == 0 || want.Tokens != 1 || want.Events < 11 {
		t.Fatalf("source %+v", want)
	}

	dst := openPostgres(t, pgtest.Start(t).NewDatabase(t))
	if err := inventory.Copy(ctx, dst, src); err != nil {
		t.Fatal(err)
	}
	got, err := dst.Digest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("after the copy: %+v, source %+v", got, want)
	}
	if d, err := dst.DeviceByEK(ctx, inventorytest.EK(3)); err != nil || d.ID != inventorytest.ID(3) {
		t.Fatalf("DeviceByEK in the copy: %v, %v", d, err)
	}
	if _, err := dst.ConsumeToken(ctx, secret, inventorytest.ID(9), "gw-1", time.Now()); err != nil {
		t.Fatalf("token in the copy: %v", err)
	}
	if ev, _ := dst.Events(ctx, inventorytest.ID(1), 0); len(ev) != 3 || ev[0].Kind != "enroll_failed" {
		t.Fatalf("events in the copy: %+v", ev)
	}
	// A change shows in the digest.
	if err := dst.AddEvent(ctx, inventory.Event{DeviceID: inventorytest.ID(4), Kind: "x"}); err != nil {
		t.Fatal(err)
	}
	if got, _ = dst.Digest(ctx); got.Digest == want.Digest {
		t.Fatal("digest unchanged by a new event")
	}
}
