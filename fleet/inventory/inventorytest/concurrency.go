package inventorytest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// testConcurrentUpdates: concurrent read-modify-writes of one device all
// land (none overwrites another's change), whatever the backend does to
// serialize them.
func testConcurrentUpdates(t *testing.T, s Store) {
	d := NewDevice(1)
	d.Flags = nil
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	const n = 24
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Update(t.Context(), d.ID, func(d *inventory.Device) error {
				d.Flags = append(d.Flags, fmt.Sprint("f", i))
				return nil
			})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	got, err := s.Device(t.Context(), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got.Flags)
	if len(slices.Compact(got.Flags)) != n {
		t.Fatalf("%d flags after %d concurrent updates: %v (an update was lost or applied twice)", len(got.Flags), n, got.Flags)
	}
}

// testConcurrentEKClaims: of devices that claim one EK at once, exactly
// one holds it; the others fail with ErrEKConflict and are not stored.
func testConcurrentEKClaims(t *testing.T, s Store) {
	const n = 12
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Upsert(t.Context(), ID(100+i), func(d *inventory.Device, exists bool) error {
				d.EKFingerprint, d.State = EK(7), inventory.StateActive
				return nil
			})
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner < 0:
			winner = i
		case err == nil:
			t.Fatalf("devices %d and %d both hold the EK", winner, i)
		case !errors.Is(err, inventory.ErrEKConflict):
			t.Fatalf("claim %d: %v, want ErrEKConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no device holds the EK")
	}
	if d, err := s.DeviceByEK(t.Context(), EK(7)); err != nil || d.ID != ID(100+winner) {
		t.Fatalf("DeviceByEK: %v, %v; want device %d", d, err, winner)
	}
	if n, err := s.Count(t.Context(), nil); err != nil || n != 1 {
		t.Fatalf("%d devices stored, %v; want only the winner", n, err)
	}
}

// testConcurrentRevocation: a renewal that records a new serial and a
// revocation of the device that run at once never leave the new serial
// admitted with the revocation reported done before it: either the
// revocation saw (and revoked) the new serial, or the renewal came after
// and the CRL lists every serial the revocation returned.
func testConcurrentRevocation(t *testing.T, s Store) {
	now := time.Now()
	for round := range 10 {
		id := ID(200 + round)
		d := &inventory.Device{ID: id, State: inventory.StateActive}
		d.Issued(fmt.Sprintf("a%02d", round), now, now.Add(24*time.Hour))
		if err := s.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
		newSerial := fmt.Sprintf("b%02d", round)
		var wg sync.WaitGroup
		var revoked []string
		var revErr, renewErr error
		wg.Go(func() {
			_, revoked, revErr = s.RevokeDevice(t.Context(), id, inventory.ReasonKeyCompromise)
		})
		wg.Go(func() {
			renewErr = s.Update(t.Context(), id, func(d *inventory.Device) error {
				d.Issued(newSerial, now, now.Add(24*time.Hour))
				return nil
			})
		})
		wg.Wait()
		if revErr != nil || renewErr != nil {
			t.Fatalf("round %d: revoke %v, renew %v", round, revErr, renewErr)
		}
		got, err := s.Device(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		crl, err := s.Revocations(t.Context(), time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		inCRL := func(serial string) bool {
			return slices.ContainsFunc(crl, func(r inventory.Revocation) bool { return r.Serial == serial })
		}
		for _, serial := range revoked {
			if !inCRL(serial) || got.Admits(serial, now) {
				t.Fatalf("round %d: %s reported revoked but admitted or missing from the CRL", round, serial)
			}
		}
		if got.Admits(fmt.Sprintf("a%02d", round), now) {
			t.Fatalf("round %d: the serial held before the revocation is still admitted", round)
		}
		if slices.Contains(revoked, newSerial) == got.Admits(newSerial, now) {
			t.Fatalf("round %d: new serial revoked=%v admitted=%v", round, slices.Contains(revoked, newSerial), got.Admits(newSerial, now))
		}
	}
}
