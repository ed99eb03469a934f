package governance_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

func TestOrphanedDevicesAreFlaggedAndCleared(t *testing.T) {
	f := newFleet(t, nil)
	// Device 1's owner comes from its enrollment token ("plant-a") and is
	// not a registered owner yet; device 2 has no owner at all.
	d1 := f.device(1, nil)
	d2 := f.device(2, func(d *inventory.Device) { d.Owner = "" })

	rep := f.sweep()
	if rep.Orphaned != 2 {
		t.Fatalf("sweep found %d orphans, want 2", rep.Orphaned)
	}
	st, err := f.svc.Status(d1.ID)
	if err != nil || !st.Orphaned || !strings.Contains(st.OrphanReason, `"plant-a" is not a registered owner`) {
		t.Fatalf("status of device 1: %+v, %v", st, err)
	}
	if st, _ := f.svc.Status(d2.ID); st.OrphanReason != "no owner assigned" {
		t.Fatalf("device 2 orphan reason %q", st.OrphanReason)
	}
	if !hasFlag(f.get(d1.ID), governance.FlagOrphaned) || !hasFlag(f.get(d2.ID), governance.FlagOrphaned) {
		t.Fatal("orphans not flagged in the inventory")
	}
	if n := len(f.alerts.of(governance.KindOrphaned, "")); n != 2 {
		t.Fatalf("%d orphan alerts, want 2", n)
	}
	// A second sweep does not alert again.
	f.sweep()
	if n := len(f.alerts.of(governance.KindOrphaned, "")); n != 2 {
		t.Fatalf("%d orphan alerts after a second sweep, want still 2", n)
	}

	// Registering plant-a gives device 1 a live owner.
	f.owner("plant-a", governance.OwnerActive)
	f.sweep()
	if st, _ := f.svc.Status(d1.ID); st.Orphaned {
		t.Fatal("device 1 still orphaned with an active owner")
	}
	if hasFlag(f.get(d1.ID), governance.FlagOrphaned) {
		t.Fatal("orphan flag not cleared")
	}
	if a := f.alerts.of(governance.KindOrphaned, d1.ID); len(a) != 2 || !a[1].Resolved {
		t.Fatalf("alerts of device 1: %+v, want a resolution", a)
	}

	// Assigning device 2 to a team judges it at once, without a sweep.
	if _, err := f.svc.PutOwner(governance.Owner{ID: "ops-team", Kind: governance.OwnerTeam, Name: "Ops"}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Assign(governance.Assignment{DeviceID: d2.ID, Owner: "ops-team", Purpose: "line 3 PLC gateway", By: "alice"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := f.svc.Status(d2.ID); st.Orphaned {
		t.Fatal("assigned device still orphaned")
	}
	if a, err := f.svc.Assignment(d2.ID); err != nil || a.Purpose != "line 3 PLC gateway" || a.Owner != "ops-team" {
		t.Fatalf("assignment %+v, %v", a, err)
	}

	// plant-a departs: device 1 is orphaned again; device 2, assigned to
	// the team, is not.
	if err := f.svc.SetOwnerStatus("plant-a", governance.OwnerDeparted); err != nil {
		t.Fatal(err)
	}
	f.sweep()
	orphans, next, err := f.svc.Orphans("", 10)
	if err != nil || next != "" || len(orphans) != 1 || orphans[0].DeviceID != d1.ID || !strings.Contains(orphans[0].OrphanReason, "departed") {
		t.Fatalf("orphans %+v next %q err %v", orphans, next, err)
	}

	// Assigning to an unknown owner or an unknown device fails.
	if err := f.svc.Assign(governance.Assignment{DeviceID: d1.ID, Owner: "nobody"}); !errors.Is(err, governance.ErrNotFound) {
		t.Fatalf("assign to unknown owner: %v", err)
	}
	if err := f.svc.Assign(governance.Assignment{DeviceID: strings.Repeat("f", 32), Owner: "ops-team"}); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("assign unknown device: %v", err)
	}
	if _, err := f.svc.PutOwner(governance.Owner{ID: "bad id"}); !errors.Is(err, governance.ErrInvalid) {
		t.Fatalf("bad owner ID: %v", err)
	}
}

func TestDormantDeviceIsAlertedAndRevokedByPolicy(t *testing.T) {
	f := newFleet(t, func(c *governance.Config) {
		c.DormantAfter = 30 * 24 * time.Hour
		c.RevokeDormant = true
		c.Revoker = governance.InventoryRevoker{Inventory: c.Devices.(*inventory.Store), Now: c.Now}
	})
	f.owner("plant-a", governance.OwnerActive)
	year := 365 * 24 * time.Hour
	// Unseen for 31 days with a certificate valid for a year: dormant.
	sleeper := f.device(1, func(d *inventory.Device) {
		d.Connected, d.LastSeen, d.CertExpiry = false, t0.Add(-31*24*time.Hour), t0.Add(year)
	})
	// Unseen as long, but its certificate has expired: nothing to revoke.
	expired := f.device(2, func(d *inventory.Device) {
		d.Connected, d.LastSeen, d.CertExpiry = false, t0.Add(-31*24*time.Hour), t0.Add(-time.Hour)
	})
	// Connected for 40 days without a reconnect: its LastSeen is old, but
	// it is here.
	online := f.device(3, func(d *inventory.Device) {
		d.LastSeen, d.CertExpiry = t0.Add(-40*24*time.Hour), t0.Add(year)
	})
	// Seen 29 days ago: not yet.
	recent := f.device(4, func(d *inventory.Device) {
		d.Connected, d.LastSeen, d.CertExpiry = false, t0.Add(-29*24*time.Hour), t0.Add(year)
	})

	rep := f.sweep()
	if rep.Dormant != 1 || rep.Revoked != 1 {
		t.Fatalf("report %+v, want 1 dormant and 1 revoked", rep)
	}
	got := f.get(sleeper.ID)
	if !got.IsRevoked(sleeper.CertSerial) || !hasFlag(got, governance.FlagDormant) {
		t.Fatalf("dormant device: revoked %v, flags %v", got.IsRevoked(sleeper.CertSerial), got.Flags)
	}
	revs, err := f.inv.Revocations(t.Context(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 1 || revs[0].Serial != sleeper.CertSerial || revs[0].Reason != inventory.ReasonCessationOfOperation {
		t.Fatalf("revocation list %+v", revs)
	}
	if a := f.alerts.of(governance.KindDormant, sleeper.ID); len(a) != 1 || a[0].Attrs["serial"] != sleeper.CertSerial {
		t.Fatalf("dormant alerts %+v", a)
	}
	if a := f.alerts.of(governance.KindDormantRevoked, sleeper.ID); len(a) != 1 {
		t.Fatalf("revocation alerts %+v", a)
	}
	for _, d := range []*inventory.Device{expired, online, recent} {
		if st, _ := f.svc.Status(d.ID); st.Dormant || hasFlag(f.get(d.ID), governance.FlagDormant) {
			t.Errorf("device %s judged dormant", d.ID)
		}
	}

	// Two more days: device 4 crosses the line; device 1 is not revoked twice.
	f.clock.Advance(2 * 24 * time.Hour)
	rep = f.sweep()
	if rep.Dormant != 2 || rep.Revoked != 1 || !f.get(recent.ID).IsRevoked(recent.CertSerial) {
		t.Fatalf("second sweep %+v", rep)
	}
	if n := len(f.alerts.of(governance.KindDormant, sleeper.ID)); n != 1 {
		t.Fatalf("dormant device alerted %d times", n)
	}

	// The sleeper comes back (it re-enrolled): flag and status clear.
	f.update(sleeper.ID, func(d *inventory.Device) { d.Connected, d.LastSeen = true, f.clock.Now() })
	f.sweep()
	if st, _ := f.svc.Status(sleeper.ID); st.Dormant || hasFlag(f.get(sleeper.ID), governance.FlagDormant) {
		t.Fatal("device seen again is still dormant")
	}
	if a := f.alerts.of(governance.KindDormant, sleeper.ID); len(a) != 2 || !a[1].Resolved {
		t.Fatalf("no resolution alert: %+v", a)
	}
	dormant, _, _ := f.svc.Dormant("", 0)
	if len(dormant) != 1 || dormant[0].DeviceID != recent.ID {
		t.Fatalf("dormant list %+v", dormant)
	}
}

func TestDormantWithoutPolicyOnlyAlerts(t *testing.T) {
	f := newFleet(t, nil)
	d := f.device(1, func(d *inventory.Device) {
		d.Connected, d.LastSeen, d.CertExpiry = false, t0.Add(-31*24*time.Hour), t0.Add(90*24*time.Hour)
	})
	if rep := f.sweep(); rep.Dormant != 1 || rep.Revoked != 0 {
		t.Fatalf("report %+v", rep)
	}
	if f.get(d.ID).IsRevoked(d.CertSerial) {
		t.Fatal("revoked without the policy")
	}
	if len(f.alerts.of(governance.KindDormant, d.ID)) != 1 {
		t.Fatal("no dormant alert")
	}
	// The policy needs a revoker.
	if _, err := governance.Open(governance.Config{Path: t.TempDir() + "/g.db", Devices: f.inv, RevokeDormant: true}); !errors.Is(err, governance.ErrInvalid) {
		t.Fatalf("RevokeDormant without Revoker: %v", err)
	}
}

// The flag this package acts on is the one the enrollment service sets.
func TestCloneFlagIsEnrollments(t *testing.T) {
	if governance.FlagCloneSuspect != enroll.FlagCloneSuspect {
		t.Fatalf("governance acts on %q, enrollment sets %q", governance.FlagCloneSuspect, enroll.FlagCloneSuspect)
	}
}

func TestCloneByEKIsQuarantined(t *testing.T) {
	f := newFleet(t, nil)
	d := f.device(1, nil)
	other := f.device(2, nil)
	// What enrollment does when a client proves d's EK under another
	// identity.
	f.update(d.ID, func(x *inventory.Device) { x.Flags = append(x.Flags, enroll.FlagCloneSuspect) })

	rep := f.sweep()
	if rep.Clones != 1 {
		t.Fatalf("report %+v, want one clone", rep)
	}
	got := f.get(d.ID)
	if got.State != inventory.StateQuarantined || !got.IsRevoked(d.CertSerial) {
		t.Fatalf("clone state %s, revoked %v", got.State, got.IsRevoked(d.CertSerial))
	}
	if f.get(other.ID).State != inventory.StateActive {
		t.Fatal("an unrelated device was quarantined")
	}
	a := f.alerts.of(governance.KindClone, d.ID)
	if len(a) != 1 || a[0].Severity != governance.SeverityCritical || a[0].Attrs["kind"] != "ek" {
		t.Fatalf("clone alerts %+v", a)
	}
	clones, err := f.svc.Clones(false)
	if err != nil || len(clones) != 1 || !clones[0].Quarantined || clones[0].Kind != governance.CloneEK {
		t.Fatalf("incidents %+v, %v", clones, err)
	}
	risk, err := f.svc.Score(d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := risk.Factor(governance.FactorClone); !ok {
		t.Fatalf("risk of a clone lacks the clone factor: %+v", risk)
	}

	// Once raised, the open incident is not raised again.
	f.sweep()
	if n := len(f.alerts.of(governance.KindClone, d.ID)); n != 1 {
		t.Fatalf("clone alerted %d times", n)
	}
	// Resolving clears enrollment's flag.
	if err := f.svc.ResolveClone(d.ID, governance.CloneEK, "alice", "RMA: the board was swapped"); err != nil {
		t.Fatal(err)
	}
	if hasFlag(f.get(d.ID), governance.FlagCloneSuspect) {
		t.Fatal("flag not cleared")
	}
	if open, _ := f.svc.Clones(false); len(open) != 0 {
		t.Fatalf("open incidents after resolve: %+v", open)
	}
	if err := f.svc.ResolveClone(d.ID, governance.CloneEK, "alice", ""); !errors.Is(err, governance.ErrNotFound) {
		t.Fatalf("second resolve: %v", err)
	}

	// EKConflict acts at once, without waiting for a sweep.
	if err := f.svc.EKConflict(other.ID, `EK presented with serial "SN9", enrolled as "SN2"`); err != nil {
		t.Fatal(err)
	}
	if f.get(other.ID).State != inventory.StateQuarantined {
		t.Fatal("EKConflict did not quarantine")
	}
}

// session opens a session of device d from remote.
func session(d *inventory.Device, remote string) governance.Session {
	return governance.Session{DeviceID: d.ID, CertSerial: d.CertSerial, Remote: remote}
}

func TestCloneByConcurrentCertificateUse(t *testing.T) {
	f := newFleet(t, func(c *governance.Config) { c.CloneGrace = 30 * time.Second })
	d := f.device(1, nil)
	f.svc.SessionOpened(session(d, "10.0.0.1:50000"))
	f.svc.SessionOpened(session(d, "192.0.2.7:41000"))
	// Within the grace period nothing happens (a takeover in progress).
	f.clock.Advance(10 * time.Second)
	f.svc.CheckSessions()
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	if f.get(d.ID).State != inventory.StateActive || len(f.alerts.of(governance.KindClone, "")) != 0 {
		t.Fatal("clone raised within the grace period")
	}
	// Both still open past the grace period: a clone.
	f.clock.Advance(30 * time.Second)
	f.svc.CheckSessions()
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	got := f.get(d.ID)
	if got.State != inventory.StateQuarantined || !got.IsRevoked(d.CertSerial) {
		t.Fatalf("state %s, serial revoked %v", got.State, got.IsRevoked(d.CertSerial))
	}
	a := f.alerts.of(governance.KindClone, d.ID)
	if len(a) != 1 || a[0].Attrs["hosts"] != "10.0.0.1, 192.0.2.7" || a[0].Attrs["serial"] != d.CertSerial {
		t.Fatalf("alerts %+v", a)
	}
}

func TestCloneByTakeoverPingPong(t *testing.T) {
	f := newFleet(t, nil)
	d := f.device(1, nil)
	step := func(open, closeRemote string) {
		f.clock.Advance(3 * time.Second)
		f.svc.SessionOpened(session(d, open))
		if closeRemote != "" {
			// The broker's takeover closes the older connection at once.
			f.svc.SessionClosed(session(d, closeRemote))
		}
		if err := f.svc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	step("10.0.0.1:1000", "")
	step("10.9.9.9:2000", "10.0.0.1:1000") // taken over
	step("10.0.0.1:1001", "10.9.9.9:2000") // taken back once
	if f.get(d.ID).State != inventory.StateActive {
		t.Fatal("one take-back is not yet a clone")
	}
	step("10.9.9.9:2001", "10.0.0.1:1001") // and back again
	if f.get(d.ID).State != inventory.StateQuarantined {
		t.Fatal("two holders kicking each other off were not quarantined")
	}
	c, _ := f.svc.Clones(false)
	if len(c) != 1 || c[0].Kind != governance.CloneCertificate || !strings.Contains(c[0].Evidence, "taken back 2 times") {
		t.Fatalf("incidents %+v", c)
	}
}

func TestMovingDeviceIsNotAClone(t *testing.T) {
	f := newFleet(t, nil)
	d := f.device(1, nil)
	// The device changes address three times; each new connection takes
	// over the old one, which the broker then closes. It also reconnects
	// from the same host on a new port.
	remotes := []string{"10.0.0.1:1000", "10.0.0.1:1001", "10.0.0.2:1000", "10.0.0.3:1000", "10.0.0.4:1000"}
	for i, r := range remotes {
		f.clock.Advance(5 * time.Second)
		f.svc.SessionOpened(session(d, r))
		if i > 0 {
			f.svc.SessionClosed(session(d, remotes[i-1]))
		}
	}
	f.clock.Advance(time.Minute)
	f.svc.CheckSessions()
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	if f.get(d.ID).State != inventory.StateActive || len(f.alerts.of(governance.KindClone, "")) != 0 {
		t.Fatal("a device changing address was taken for a clone")
	}
	if st := f.svc.SessionStats(); st.Open != 1 {
		t.Fatalf("%d sessions tracked, want 1", st.Open)
	}
	// The broker reports the last connection gone: nothing stays open.
	f.svc.SessionClosed(governance.Session{DeviceID: d.ID, CertSerial: d.CertSerial})
	if st := f.svc.SessionStats(); st.Open != 0 {
		t.Fatalf("%d sessions tracked after the last closed", st.Open)
	}
}

func TestStrictCloneGraceCountsAnyOverlap(t *testing.T) {
	f := newFleet(t, func(c *governance.Config) { c.CloneGrace = -1 })
	d := f.device(1, nil)
	f.svc.SessionOpened(session(d, "10.0.0.1:1000"))
	f.svc.SessionOpened(session(d, "10.0.0.2:1000"))
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	if f.get(d.ID).State != inventory.StateQuarantined {
		t.Fatal("strict mode did not act on an overlap")
	}
}

func TestStatePersistsAcrossRestart(t *testing.T) {
	f := newFleet(t, nil)
	f.owner("plant-a", governance.OwnerActive)
	d := f.device(1, func(d *inventory.Device) { d.Owner = "" })
	f.sweep()
	if err := f.svc.Block(governance.Block{Kind: governance.BlockAddress, Value: "198.51.100.0/24", Reason: "scanner"}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: "rogue-1", Remote: "203.0.113.9:1234"}); err != nil {
		t.Fatal(err)
	}
	f.reopen() // Close flushes the pending attempt
	if _, err := f.svc.Owner("plant-a"); err != nil {
		t.Fatal(err)
	}
	if st, err := f.svc.Status(d.ID); err != nil || !st.Orphaned {
		t.Fatalf("status after restart: %+v, %v", st, err)
	}
	if !f.svc.IsBlocked("", "198.51.100.77:9", "") {
		t.Fatal("block list lost across restart")
	}
	sh, err := f.svc.Shadow("unknown-client/client:rogue-1")
	if err != nil || sh.Count != 1 || sh.Remotes[0] != "203.0.113.9" {
		t.Fatalf("triage after restart: %+v, %v", sh, err)
	}
	if r, _, err := f.svc.Ranking("", 10); err != nil || len(r) != 1 || r[0].DeviceID != d.ID {
		t.Fatalf("ranking after restart: %+v, %v", r, err)
	}
}

// The inventory's Connected flag goes stale when the fleet stops without
// recording disconnects; with Config.Connected the broker's word counts.
func TestBrokerPresenceOverridesAStaleConnectedFlag(t *testing.T) {
	live := map[string]bool{}
	f := newFleet(t, func(c *governance.Config) {
		c.Connected = func(id string) bool { return live[id] }
	})
	f.owner("plant-a", governance.OwnerActive)
	d := f.device(1, func(d *inventory.Device) {
		d.Connected, d.LastSeen, d.CertExpiry = true, t0.Add(-40*24*time.Hour), t0.Add(90*24*time.Hour)
	})
	if rep := f.sweep(); rep.Dormant != 1 {
		t.Fatalf("stale Connected flag hid a dormant device: %+v", rep)
	}
	live[d.ID] = true
	if rep := f.sweep(); rep.Dormant != 0 {
		t.Fatalf("a device the broker holds is dormant: %+v", rep)
	}

	// Sessions the broker no longer holds are dropped, so that a later
	// connection from elsewhere is not taken for concurrent use.
	f.svc.SessionOpened(session(d, "10.0.0.1:1"))
	live[d.ID] = false
	f.svc.CheckSessions()
	if st := f.svc.SessionStats(); st.Open != 0 {
		t.Fatalf("%d sessions kept for a device the broker does not hold", st.Open)
	}
	live[d.ID] = true
	f.svc.SessionOpened(session(d, "10.0.0.2:1"))
	f.clock.Advance(time.Minute)
	f.svc.CheckSessions()
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(f.alerts.of(governance.KindClone, "")) != 0 {
		t.Fatal("a reconnect after a missed close was taken for a clone")
	}
}

func TestFailedCloneQuarantineIsRetried(t *testing.T) {
	calls := 0
	f := newFleet(t, nil)
	real := governance.InventoryQuarantiner{Inventory: f.inv, Now: f.clock.Now}
	f.cfg.Quarantiner = governance.QuarantinerFunc(func(id, why string) error {
		calls++
		if calls == 1 {
			return errors.New("inventory busy")
		}
		return real.Quarantine(id, why)
	})
	f.reopen()
	d := f.device(1, func(d *inventory.Device) { d.Flags = []string{governance.FlagCloneSuspect} })
	f.sweep()
	c, _ := f.svc.Clones(false)
	if len(c) != 1 || c[0].Quarantined || c[0].QuarantineError != "inventory busy" || f.get(d.ID).State != inventory.StateActive {
		t.Fatalf("after a failed quarantine: %+v", c)
	}
	f.sweep()
	c, _ = f.svc.Clones(false)
	if len(c) != 1 || !c[0].Quarantined || c[0].QuarantineError != "" || f.get(d.ID).State != inventory.StateQuarantined {
		t.Fatalf("after the retry: %+v", c)
	}
	if n := len(f.alerts.of(governance.KindClone, d.ID)); n != 1 {
		t.Fatalf("%d clone alerts, want 1", n)
	}
}

// TestCloneFromBrokerPoolSessions: a broker pool reports device sessions
// without their certificate (mqttpool reads them from Mosquitto's
// connection log: review item 6 of issue 14). Two holders of one device
// identity taking its session from each other on one broker, and two
// holding it at once on two brokers, are clones as with the embedded
// broker's events; the incident names the device's identity, no serial.
func TestCloneFromBrokerPoolSessions(t *testing.T) {
	f := newFleet(t, func(c *governance.Config) { c.CloneGrace = 30 * time.Second })
	ev := func(d *inventory.Device, kind broker.EventKind, remote string) {
		f.svc.BrokerEvent(broker.Event{Kind: kind, Identity: broker.Identity{ClientID: d.ID, DeviceID: d.ID}, Remote: remote, Time: f.clock.Now()})
	}
	// One broker: each connection takes the session over (the pool
	// reports the new one, then the end of the old one).
	d := f.device(1, nil)
	last := ""
	for _, r := range []string{"10.0.0.1:1000", "10.9.9.9:2000", "10.0.0.1:1001", "10.9.9.9:2001"} {
		f.clock.Advance(3 * time.Second)
		ev(d, broker.Connected, r)
		if last != "" {
			ev(d, broker.Disconnected, last)
		}
		last = r
		if err := f.svc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if f.get(d.ID).State != inventory.StateQuarantined {
		t.Fatal("two holders taking a device's session from each other on a pool broker were not quarantined")
	}
	c, err := f.svc.Clones(false)
	if err != nil || len(c) != 1 || c[0].Serial != "" || !strings.Contains(c[0].Evidence, "identity of device "+d.ID) {
		t.Fatalf("incidents %+v, %v", c, err)
	}
	// Two brokers: both sessions stay open past the grace period.
	e := f.device(2, nil)
	ev(e, broker.Connected, "10.0.0.2:1000")
	ev(e, broker.Connected, "192.0.2.7:41000")
	f.clock.Advance(31 * time.Second)
	f.svc.CheckSessions()
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	if f.get(e.ID).State != inventory.StateQuarantined {
		t.Fatal("a device identity in use on two pool brokers at once was not quarantined")
	}
	// A device moving between brokers (the old session closed first, or
	// with its broker lost) is none.
	g := f.device(3, nil)
	ev(g, broker.Connected, "10.0.0.3:1000")
	f.clock.Advance(time.Minute)
	ev(g, broker.Disconnected, "10.0.0.3:1000")
	ev(g, broker.Connected, "10.0.0.4:1000")
	f.clock.Advance(time.Minute)
	f.svc.CheckSessions()
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	if f.get(g.ID).State != inventory.StateActive {
		t.Fatal("a device moving between pool brokers was taken for a clone")
	}
}
