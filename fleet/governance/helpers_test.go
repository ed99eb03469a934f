package governance_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/internal/clocktest"
)

// t0 is the start of every test's clock.
var t0 = time.Date(2030, 3, 1, 12, 0, 0, 0, time.UTC)

// alerts records the alerts a service raises.
type alerts struct {
	mu  sync.Mutex
	all []governance.Alert
}

func (a *alerts) Alert(x governance.Alert) {
	a.mu.Lock()
	a.all = append(a.all, x)
	a.mu.Unlock()
}

// of returns the alerts of kind for device (any device when "").
func (a *alerts) of(kind, device string) []governance.Alert {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []governance.Alert
	for _, x := range a.all {
		if x.Kind == kind && (device == "" || x.DeviceID == device) {
			out = append(out, x)
		}
	}
	return out
}

// fleet is a real inventory and a governance service over it.
type fleet struct {
	t      testing.TB
	clock  *clocktest.Clock
	inv    *inventory.Store
	svc    *governance.Service
	alerts *alerts
	path   string
	cfg    governance.Config
}

// newFleet opens an inventory and a service; configure may change the
// config before Open.
func newFleet(t testing.TB, configure func(*governance.Config)) *fleet {
	t.Helper()
	dir := t.TempDir()
	c := clocktest.New(t0)
	inv, err := inventory.Open(filepath.Join(dir, "inventory.db"), inventory.WithNoSync(), inventory.WithClock(c.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	f := &fleet{t: t, clock: c, inv: inv, alerts: &alerts{}, path: filepath.Join(dir, "governance.db")}
	f.cfg = governance.Config{
		Path: f.path, NoSync: true, Devices: inv, Alerter: f.alerts, Now: c.Now,
		Quarantiner: governance.InventoryQuarantiner{Inventory: inv, Now: c.Now},
	}
	if configure != nil {
		configure(&f.cfg)
	}
	f.open()
	return f
}

func (f *fleet) open() {
	f.t.Helper()
	svc, err := openBackend(f.t, f.cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.svc = svc
	f.t.Cleanup(func() { svc.Close() })
}

// reopen closes the service and opens it again on the same file.
func (f *fleet) reopen() {
	f.t.Helper()
	if err := f.svc.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.open()
}

// device adds a healthy device n: active, connected, attested just now,
// a fresh certificate that replaced an earlier one, owned by "plant-a".
func (f *fleet) device(n int, change func(*inventory.Device)) *inventory.Device {
	f.t.Helper()
	now := f.clock.Now()
	d := inventorytest.NewDevice(n)
	d.Flags = nil
	d.Connected = true
	d.LastSeen = now
	d.FirstSeen = now.Add(-90 * 24 * time.Hour)
	d.EnrolledAt = d.FirstSeen
	d.CertSerial = "c0ffee" + inventorytest.ID(n)[24:]
	d.CertExpiry = now.Add(23 * time.Hour)
	d.Revoked = []string{"0ld5e7"}
	d.Attestation = "pass"
	d.LastAttested = now.Add(-time.Minute)
	if change != nil {
		change(d)
	}
	if err := f.inv.PutDevice(context.Background(), d); err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *fleet) get(id string) *inventory.Device {
	f.t.Helper()
	d, err := f.inv.Device(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *fleet) update(id string, fn func(*inventory.Device)) {
	f.t.Helper()
	err := f.inv.Update(context.Background(), id, func(d *inventory.Device) error {
		fn(d)
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *fleet) sweep() governance.SweepReport {
	f.t.Helper()
	rep, err := f.svc.Sweep(f.t.Context())
	if err != nil {
		f.t.Fatal(err)
	}
	return rep
}

func (f *fleet) owner(id string, st governance.OwnerStatus) {
	f.t.Helper()
	if _, err := f.svc.PutOwner(governance.Owner{ID: id, Status: st}); err != nil {
		f.t.Fatal(err)
	}
}

func hasFlag(d *inventory.Device, flag string) bool { return slices.Contains(d.Flags, flag) }
