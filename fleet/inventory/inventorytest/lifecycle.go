package inventorytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestStateChangesFollowTheLifecycle: a state changes only from the states
// that permit it, whatever the write path; a refused change leaves the
// record as it was.
func testStateChangesFollowTheLifecycle(t *testing.T, open Opener) {
	s := open(t, inventory.WithNoSync())
	cases := []struct {
		from, to inventory.State
		ok       bool
	}{
		{inventory.StatePending, inventory.StateQuarantined, false}, // a pending record stays pending
		{inventory.StateDecommissioned, inventory.StateQuarantined, false},
		{inventory.StateDecommissioned, inventory.StateActive, false},
		{inventory.StateDecommissioned, inventory.StatePending, false},
		{inventory.StateActive, inventory.StatePending, false},
		{inventory.StateQuarantined, inventory.StatePending, false},
		{inventory.StatePending, inventory.StateActive, true},
		{inventory.StateActive, inventory.StateQuarantined, true},
		{inventory.StateQuarantined, inventory.StateActive, true},
		{inventory.StateActive, inventory.StateDecommissioned, true},
		{inventory.StatePending, inventory.StateDecommissioned, true},
	}
	for i, c := range cases {
		id := ID(100 + i)
		if err := s.PutDevice(t.Context(), &inventory.Device{ID: id, State: c.from}); err != nil {
			t.Fatal(err)
		}
		err := s.Update(t.Context(), id, func(d *inventory.Device) error { d.State = c.to; return nil })
		d, _ := s.Device(t.Context(), id)
		switch {
		case c.ok && (err != nil || d.State != c.to):
			t.Errorf("%s -> %s refused: %v (state %s)", c.from, c.to, err, d.State)
		case !c.ok && (!errors.Is(err, inventory.ErrTransition) || d.State != c.from):
			t.Errorf("%s -> %s: err %v, state %s; want ErrTransition and no change", c.from, c.to, err, d.State)
		}
		var te *inventory.TransitionError
		if !c.ok && (!errors.As(err, &te) || te.From != c.from || te.To != c.to || te.DeviceID != id) {
			t.Errorf("%s -> %s: error %#v does not name the refused change", c.from, c.to, err)
		}
	}
}

// TestRevokedSerialsAreNotForgotten: however many serials a device had
// revoked, each stays revoked (the broker used to remember only the last
// 32).
func testRevokedSerialsAreNotForgotten(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	var serials []string
	for i := range 40 {
		serials = append(serials, fmt.Sprintf("%04x", i+1))
	}
	id := enrolled(t, s, *now, 1, serials...)
	if _, _, err := s.RevokeDevice(t.Context(), id, inventory.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	d, _ := s.Device(t.Context(), id)
	for _, serial := range serials {
		if !d.IsRevoked(serial) {
			t.Errorf("revoked serial %s forgotten", serial)
		}
	}
}

// TestRevokeDeviceRevokesEverySerial: the revocation of a device revokes
// every certificate it holds that has not expired (a renewed-away one as
// well as the current one) and lists each in the CRL, in one
// transaction, without changing its state; again, it finds nothing left.
func testRevokeDeviceRevokesEverySerial(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	d := &inventory.Device{ID: ID(1), State: inventory.StateActive}
	d.Issued("0a", now.Add(-48*time.Hour), now.Add(time.Minute)) // expires in a minute
	d.Issued("0b", *now, now.Add(24*time.Hour))                  // renewed away
	d.Issued("0c", *now, now.Add(24*time.Hour))                  // current
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	*now = now.Add(2 * time.Minute)
	got, revoked, err := s.RevokeDevice(t.Context(), d.ID, inventory.ReasonKeyCompromise)
	if err != nil || !slices.Equal(revoked, []string{"0b", "0c"}) {
		t.Fatalf("RevokeDevice: revoked %v, %v", revoked, err)
	}
	if got.State != inventory.StateActive || got.Admits("0b", *now) || got.Admits("0c", *now) {
		t.Fatalf("after RevokeDevice: %s %+v", got.State, got.Certs)
	}
	if rs := revocations(t, s); !slices.Equal(rs, []string{"0b", "0c"}) {
		t.Fatalf("CRL entries %v", rs)
	}
	rs, _ := s.Revocations(t.Context(), *now)
	for _, r := range rs {
		if r.Reason != inventory.ReasonKeyCompromise || r.DeviceID != d.ID || r.Expires.IsZero() {
			t.Errorf("CRL entry %+v", r)
		}
	}
	if _, revoked, err := s.RevokeDevice(t.Context(), d.ID, inventory.ReasonUnspecified); err != nil || len(revoked) != 0 {
		t.Fatalf("RevokeDevice again: revoked %v, %v", revoked, err)
	}
	if _, _, err := s.RevokeDevice(t.Context(), d.ID, 99); !errors.Is(err, inventory.ErrInvalid) {
		t.Fatalf("unknown reason: %v", err)
	}
	if _, _, err := s.RevokeDevice(t.Context(), ID(9), inventory.ReasonUnspecified); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
}

// testRevocationHookOnCommit: WithRevocationHook's function is called
// once a transaction that recorded a revocation committed, and not for
// one that recorded none or failed.
func testRevocationHookOnCommit(t *testing.T, open Opener) {
	var calls atomic.Int32
	s := open(t, inventory.WithRevocationHook(func() { calls.Add(1) }))
	now := time.Now()
	d := &inventory.Device{ID: ID(1), State: inventory.StateActive}
	d.Issued("0a", now, now.Add(time.Hour))
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d calls for a transaction without revocations", n)
	}
	failed := errors.New("test: fails")
	if err := s.Update(t.Context(), d.ID, func(d *inventory.Device) error {
		d.RevokeSerial("0a", inventory.ReasonKeyCompromise, now)
		return failed
	}); !errors.Is(err, failed) {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d calls for a failed transaction", n)
	}
	if _, _, err := s.RevokeDevice(t.Context(), d.ID, inventory.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n < 1 {
		t.Fatal("no call once a revocation committed")
	}
}

// clocked opens a store whose clock the test sets.
func clocked(t *testing.T, open Opener) (Store, *time.Time) {
	t.Helper()
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	s := open(t, inventory.WithNoSync(), inventory.WithClock(func() time.Time { return now }))
	return s, &now
}

// enrolled stores an active device holding serials issued one after the
// other (the last one current), each valid for a day from now.
func enrolled(t *testing.T, s Store, now time.Time, n int, serials ...string) string {
	t.Helper()
	d := &inventory.Device{ID: ID(n), State: inventory.StateActive}
	for _, sr := range serials {
		d.Issued(sr, now, now.Add(24*time.Hour))
	}
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	return d.ID
}

func revocations(t *testing.T, s Store) []string {
	t.Helper()
	rs, err := s.Revocations(t.Context(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.Serial)
	}
	slices.Sort(out)
	return out
}

// TestAdmitsOnlyIssuedCurrentSerials: the broker's question — a serial
// the fleet issued to this device, neither revoked nor expired.
func testAdmitsOnlyIssuedCurrentSerials(t *testing.T, open Opener) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	d := &inventory.Device{ID: ID(1), State: inventory.StateActive}
	d.Issued("0a", now.Add(-48*time.Hour), now.Add(-24*time.Hour)) // expired
	d.Issued("0b", now, now.Add(24*time.Hour))                     // renewed away, not yet revoked
	d.Issued("0c", now, now.Add(24*time.Hour))                     // current
	for serial, want := range map[string]bool{"0a": false, "0b": true, "0c": true, "0d": false, "": false} {
		if got := d.Admits(serial, now); got != want {
			t.Errorf("Admits(%q) = %v, want %v", serial, got, want)
		}
	}
	if got := d.RevokeOthers("0c", inventory.ReasonSuperseded, now); !slices.Equal(got, []string{"0b"}) {
		t.Fatalf("RevokeOthers revoked %v, want [0b]", got)
	}
	if d.Admits("0b", now) || !d.Admits("0c", now) || d.CertSerial != "0c" {
		t.Fatalf("after the switch-over: %+v", d.Certs)
	}
}

// TestQuarantineRevokesEveryCertificate: quarantine revokes every
// unexpired certificate in the transaction that changes the state, lists
// them in the CRL, records the cause, and refuses pending and
// decommissioned devices.
func testQuarantineRevokesEveryCertificate(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	id := enrolled(t, s, *now, 1, "0a", "0b")
	d, revoked, err := s.Quarantine(t.Context(), id, inventory.Cause{Source: inventory.CauseAlert, Reason: "rule x"})
	if err != nil {
		t.Fatal(err)
	}
	if d.State != inventory.StateQuarantined || !slices.Equal(revoked, []string{"0a", "0b"}) || d.Admits("0a", *now) || d.Admits("0b", *now) {
		t.Fatalf("quarantined %s, revoked %v", d.State, revoked)
	}
	if got := revocations(t, s); !slices.Equal(got, []string{"0a", "0b"}) {
		t.Fatalf("CRL lists %v", got)
	}
	if len(d.Quarantine) != 1 || d.Quarantine[0].Source != inventory.CauseAlert || d.Quarantine[0].Time.IsZero() {
		t.Fatalf("causes %+v", d.Quarantine)
	}
	// Quarantined again: the cause is added; the certificate it
	// re-enrolled with to prove itself stays.
	if err := s.Update(t.Context(), id, func(d *inventory.Device) error { d.Issued("0c", *now, now.Add(time.Hour)); return nil }); err != nil {
		t.Fatal(err)
	}
	d, revoked, err = s.Quarantine(t.Context(), id, inventory.Cause{Source: inventory.CauseClone})
	if err != nil || len(revoked) != 0 || len(d.Quarantine) != 2 || !d.Admits("0c", *now) {
		t.Fatalf("second cause: revoked %v, causes %+v, %v", revoked, d, err)
	}

	for _, st := range []inventory.State{inventory.StatePending, inventory.StateDecommissioned} {
		other := ID(2)
		if st == inventory.StateDecommissioned {
			other = ID(3)
		}
		if err := s.PutDevice(t.Context(), &inventory.Device{ID: other, State: st}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Quarantine(t.Context(), other, inventory.Cause{Source: inventory.CauseClone}); !errors.Is(err, inventory.ErrTransition) {
			t.Errorf("quarantine of a %s device: %v, want ErrTransition", st, err)
		}
		if d, _ := s.Device(t.Context(), other); d.State != st || len(d.Quarantine) != 0 {
			t.Errorf("a refused quarantine changed a %s device: %+v", st, d)
		}
	}
}

// TestAutoReleaseOnlyItsOwnCause: a policy's passing verdict lifts only a
// quarantine every cause of which is that policy's failing verdict; an
// operator lifts any.
func testAutoReleaseOnlyItsOwnCause(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	id := enrolled(t, s, *now, 1, "0a")
	if _, _, err := s.Quarantine(t.Context(), id, inventory.Cause{Source: inventory.CauseAttestation, Policy: "p1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AutoRelease(t.Context(), id, "p2"); !errors.Is(err, inventory.ErrOtherCause) {
		t.Fatalf("another policy released: %v", err)
	}
	if _, _, err := s.Quarantine(t.Context(), id, inventory.Cause{Source: inventory.CauseOperator}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AutoRelease(t.Context(), id, "p1"); !errors.Is(err, inventory.ErrOtherCause) {
		t.Fatalf("an operator's quarantine was lifted by a policy: %v", err)
	}
	d, err := s.Release(t.Context(), id)
	if err != nil || d.State != inventory.StateActive || len(d.Quarantine) != 0 || d.Admits("0a", *now) {
		t.Fatalf("operator release: %+v %v", d, err)
	}
	if _, err := s.Release(t.Context(), id); !errors.Is(err, inventory.ErrNotQuarantined) {
		t.Fatalf("release of an active device: %v", err)
	}
	id2 := enrolled(t, s, *now, 2, "0b")
	if _, _, err := s.Quarantine(t.Context(), id2, inventory.Cause{Source: inventory.CauseAttestation, Policy: "p1"}); err != nil {
		t.Fatal(err)
	}
	if d, err := s.AutoRelease(t.Context(), id2, "p1"); err != nil || d.State != inventory.StateActive {
		t.Fatalf("its own quarantine: %+v %v", d, err)
	}
}

// TestDecommissionIsTerminal: decommissioning revokes every unexpired
// certificate from any state, may be repeated, and nothing leaves it.
func testDecommissionIsTerminal(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	id := enrolled(t, s, *now, 1, "0a", "0b")
	if _, _, err := s.Quarantine(t.Context(), id, inventory.Cause{Source: inventory.CauseAlert}); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(t.Context(), id, func(d *inventory.Device) error { d.Issued("0c", *now, now.Add(time.Hour)); return nil }); err != nil {
		t.Fatal(err)
	}
	d, revoked, err := s.Decommission(t.Context(), id)
	if err != nil || d.State != inventory.StateDecommissioned || !slices.Equal(revoked, []string{"0c"}) || len(d.Quarantine) != 0 {
		t.Fatalf("decommission: %+v revoked %v %v", d, revoked, err)
	}
	if got := revocations(t, s); !slices.Equal(got, []string{"0a", "0b", "0c"}) {
		t.Fatalf("CRL lists %v", got)
	}
	if _, revoked, err := s.Decommission(t.Context(), id); err != nil || len(revoked) != 0 {
		t.Fatalf("again: %v %v", revoked, err)
	}
	if _, _, err := s.Quarantine(t.Context(), id, inventory.Cause{Source: inventory.CauseAttestation}); !errors.Is(err, inventory.ErrTransition) {
		t.Fatalf("quarantine of a decommissioned device: %v", err)
	}
	if _, err := s.Release(t.Context(), id); !errors.Is(err, inventory.ErrNotQuarantined) {
		t.Fatalf("release of a decommissioned device: %v", err)
	}
	if err := s.Upsert(t.Context(), id, func(d *inventory.Device, _ bool) error { d.State = inventory.StateActive; return nil }); !errors.Is(err, inventory.ErrTransition) {
		t.Fatalf("upsert to active: %v", err)
	}
}

// TestCertBookkeepingPrunedByExpiryOnly: however many certificates a
// device was issued, each is remembered until it expires; then it leaves
// (the current one never does).
func testCertBookkeepingPrunedByExpiryOnly(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	d := &inventory.Device{ID: ID(1), State: inventory.StateActive}
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	var serials []string
	for i := range 50 {
		serial := fmt.Sprintf("%04x", i+1)
		serials = append(serials, serial)
		if err := s.Update(t.Context(), d.ID, func(d *inventory.Device) error { d.Issued(serial, *now, now.Add(time.Hour)); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := s.Device(t.Context(), d.ID)
	for _, serial := range serials {
		if !got.Admits(serial, *now) {
			t.Fatalf("serial %s forgotten before it expired", serial)
		}
	}
	if _, err := s.RevokeSuperseded(t.Context(), d.ID, "0032"); err != nil {
		t.Fatal(err)
	}
	if got := revocations(t, s); len(got) != 49 {
		t.Fatalf("%d superseded serials in the CRL, want 49", len(got))
	}
	*now = now.Add(2 * time.Hour)
	if err := s.Update(t.Context(), d.ID, func(*inventory.Device) error { return nil }); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Device(t.Context(), d.ID)
	if len(got.Certs) != 1 || got.Certs[0].Serial != "0032" {
		t.Fatalf("after expiry: %+v", got.Certs)
	}
	if rs, _ := s.Revocations(t.Context(), *now); len(rs) != 0 {
		t.Fatalf("expired revocations still served: %d", len(rs))
	}
}

// TestSupersededByTheCertificateInUse: a device that connects with a
// renewed certificate has every older one revoked, even when the fleet
// issued another one since (the device asked again for the same key while
// the first answer was on its way, as a loaded fleet makes it do: seen
// with 200 simulated devices in one rotation); newer ones stay admitted,
// and connecting with the oldest revokes nothing.
func testSupersededByTheCertificateInUse(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	d := &inventory.Device{ID: ID(1), State: inventory.StateActive}
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	for _, serial := range []string{"0a", "0b", "0c"} {
		if err := s.Update(t.Context(), d.ID, func(d *inventory.Device) error { d.Issued(serial, *now, now.Add(time.Hour)); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.RevokeSuperseded(t.Context(), d.ID, "0a"); err != nil || len(got) != 0 {
		t.Fatalf("connecting with the oldest certificate revoked %v, %v", got, err)
	}
	if got, err := s.RevokeSuperseded(t.Context(), d.ID, "0b"); err != nil || fmt.Sprint(got) != "[0a]" {
		t.Fatalf("connecting with the second certificate revoked %v, %v; want [0a]", got, err)
	}
	got, _ := s.Device(t.Context(), d.ID)
	if got.Admits("0a", *now) || !got.Admits("0b", *now) || !got.Admits("0c", *now) {
		t.Fatalf("after connecting with 0b: %+v", got.Certs)
	}
	if rs := revocations(t, s); len(rs) != 1 {
		t.Fatalf("%d serials in the CRL, want 1", len(rs))
	}
	if got, err := s.RevokeSuperseded(t.Context(), d.ID, "ff"); err != nil || len(got) != 0 {
		t.Fatalf("a serial the device does not hold revoked %v, %v", got, err)
	}
	if got, err := s.RevokeSuperseded(t.Context(), d.ID, "0c"); err != nil || fmt.Sprint(got) != "[0b]" {
		t.Fatalf("connecting with the newest certificate revoked %v, %v; want [0b]", got, err)
	}
}

// TestLegacyRecordCertificates: a record written before Certs existed
// (current serial, superseded ones, a revoked list) is judged the same.
func testLegacyRecordCertificates(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	legacy := &inventory.Device{ID: ID(1), State: inventory.StateActive, CertSerial: "0c", CertExpiry: now.Add(time.Hour),
		Superseded: []string{"0b"}, Revoked: []string{"0a"}}
	if err := s.PutDevice(t.Context(), legacy); err != nil {
		t.Fatal(err)
	}
	d, _ := s.Device(t.Context(), legacy.ID)
	if !d.Admits("0c", *now) || !d.Admits("0b", *now) || d.Admits("0a", *now) || !d.IsRevoked("0a") {
		t.Fatalf("legacy record judged %+v", d.Certificates())
	}
	d, revoked, err := s.Quarantine(t.Context(), d.ID, inventory.Cause{Source: inventory.CauseAlert})
	if err != nil || !slices.Equal(revoked, []string{"0b", "0c"}) || len(d.Superseded) != 0 {
		t.Fatalf("quarantine of a legacy record: revoked %v, %+v, %v", revoked, d, err)
	}
}

// TestIssuanceBounded: a device holding MaxCerts unexpired certificates
// gets no more (nothing is forgotten to make room) until some expire.
func testIssuanceBounded(t *testing.T, open Opener) {
	s, now := clocked(t, open)
	d := &inventory.Device{ID: ID(1), State: inventory.StateActive}
	for i := range inventory.MaxCerts {
		if err := d.CanIssue(*now); err != nil {
			t.Fatalf("certificate %d: %v", i, err)
		}
		d.Issued(fmt.Sprintf("%04x", i+1), *now, now.Add(time.Duration(i+1)*time.Minute))
	}
	if err := d.CanIssue(*now); !errors.Is(err, inventory.ErrTooManyCerts) {
		t.Fatalf("past the bound: %v", err)
	}
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	*now = now.Add(90 * time.Second) // the first one expires
	if err := s.Update(t.Context(), d.ID, func(d *inventory.Device) error { return d.CanIssue(*now) }); err != nil {
		t.Fatalf("after one expired: %v", err)
	}
}

func testCert(t *testing.T, serial int64, now time.Time) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "d"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIssuedCertificateKeepsDER: the inventory keeps the DER of a device's
// current certificate, so that the fleet can export it; recording a serial
// without its certificate forgets the DER of the one before rather than
// pair it with the wrong serial.
func testIssuedCertificateKeepsDER(t *testing.T, open Opener) {
	s := open(t, inventory.WithNoSync())
	now := time.Now()
	d := NewDevice(1)
	d.State = inventory.StateActive
	first, second := testCert(t, 0x1a2b, now), testCert(t, 0x3c4d, now)
	d.IssuedCertificate(first)
	d.IssuedCertificate(second)
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	got, err := s.Device(t.Context(), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.CertDER, second.Raw) || got.CertSerial != hex.EncodeToString(second.SerialNumber.Bytes()) ||
		!got.CertIssued.Equal(second.NotBefore) || !got.CertExpiry.Equal(second.NotAfter) {
		t.Fatalf("stored: serial %s, issued %v, expiry %v, %d bytes of DER", got.CertSerial, got.CertIssued, got.CertExpiry, len(got.CertDER))
	}
	if !got.Admits("1a2b", now) || !got.Admits("3c4d", now) {
		t.Fatalf("certificates %+v", got.Certs)
	}
	got.Issued("5e6f", now, now.Add(time.Hour))
	if got.CertDER != nil || got.CertSerial != "5e6f" {
		t.Fatalf("after Issued without a certificate: serial %s with %d bytes of DER", got.CertSerial, len(got.CertDER))
	}
}
func testEventsAreBounded(t *testing.T, open Opener) {
	s := open(t, inventory.WithMaxEvents(3), inventory.WithNoSync())
	id := ID(1)
	for i := range 10 {
		if err := s.AddEvent(t.Context(), inventory.Event{DeviceID: id, Kind: "k", Detail: string(rune('a' + i))}); err != nil {
			t.Fatal(err)
		}
		if err := s.AddEvent(t.Context(), inventory.Event{DeviceID: ID(2), Kind: "other"}); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := s.Events(t.Context(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 3 || ev[0].Detail != "j" || ev[2].Detail != "h" {
		t.Fatalf("events = %+v", ev)
	}
}

func testClockAndEntropyAreInjected(t *testing.T, open Opener) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	zero := zeroReader{}
	s := open(t, inventory.WithClock(func() time.Time { return now }), inventory.WithRand(zero))
	secret, tok, err := s.CreateToken(t.Context(), inventory.Grant{}, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if secret != "sgt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" || !tok.Created.Equal(now) || !tok.Expires.Equal(now.Add(time.Minute)) {
		t.Fatalf("secret %q token %+v", secret, tok)
	}
	// The same entropy again collides and is refused rather than overwriting.
	if _, _, err := s.CreateToken(t.Context(), inventory.Grant{}, "", time.Minute); err == nil {
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
func testPendingTokenWorksOnlyOnceActivated(t *testing.T, open Opener) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := open(t, inventory.WithNoSync(), inventory.WithClock(func() time.Time { return now }))
	g := inventory.Grant{Model: "gw-1", Group: "vault"}
	secret, tok, err := s.CreatePendingToken(t.Context(), g, "ops", time.Hour)
	if err != nil || !tok.Pending {
		t.Fatalf("CreatePendingToken: %+v %v", tok, err)
	}
	if _, err := s.CheckToken(t.Context(), secret, "gw-1", now); !errors.Is(err, inventory.ErrTokenPending) {
		t.Fatalf("CheckToken of a pending token: %v", err)
	}
	if _, err := s.ConsumeToken(t.Context(), secret, ID(1), "gw-1", now); !errors.Is(err, inventory.ErrTokenPending) {
		t.Fatalf("ConsumeToken of a pending token: %v", err)
	}
	if _, err := s.ActivateToken(t.Context(), tok.ID, inventory.Grant{Model: "gw-1", Group: "other"}); !errors.Is(err, inventory.ErrInvalid) {
		t.Fatalf("activating for another grant: %v", err)
	}
	if _, err := s.ActivateToken(t.Context(), "tok_0000000000000000", g); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("activating an unknown token: %v", err)
	}
	got, err := s.ActivateToken(t.Context(), tok.ID, g)
	if err != nil || got.Pending {
		t.Fatalf("ActivateToken: %+v %v", got, err)
	}
	if _, err := s.ActivateToken(t.Context(), tok.ID, g); !errors.Is(err, inventory.ErrInvalid) {
		t.Fatalf("activating twice: %v", err)
	}
	used, err := s.ConsumeToken(t.Context(), secret, ID(1), "gw-1", now)
	if err != nil || used.Group != "vault" {
		t.Fatalf("ConsumeToken once activated: %+v %v", used, err)
	}

	// Expired before approval: it stays unusable.
	secret, tok, err = s.CreatePendingToken(t.Context(), g, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := s.ActivateToken(t.Context(), tok.ID, g); !errors.Is(err, inventory.ErrTokenExpired) {
		t.Fatalf("activating an expired token: %v", err)
	}
	if _, err := s.CheckToken(t.Context(), secret, "gw-1", now); !errors.Is(err, inventory.ErrTokenExpired) {
		t.Fatalf("CheckToken of an expired pending token: %v", err)
	}
	// A pending token whose approval could not be filed is deleted.
	secret, tok, err = s.CreatePendingToken(t.Context(), g, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteToken(t.Context(), tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CheckToken(t.Context(), secret, "gw-1", now); !errors.Is(err, inventory.ErrTokenInvalid) {
		t.Fatalf("CheckToken of a deleted token: %v", err)
	}
}

// TestTokensNewestFirst: tokens page newest first with a cursor, filter
// by status (unused, used, expired at the given time), and refuse an
// unknown status or a malformed cursor.
func testTokensNewestFirst(t *testing.T, open Opener) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	s := open(t, inventory.WithClock(clock))
	var ids []string
	var secrets []string
	for i := range 7 {
		now = now.Add(time.Minute)
		ttl := 24 * time.Hour
		if i == 1 {
			ttl = time.Minute
		}
		secret, tok, err := s.CreateToken(t.Context(), inventory.Grant{}, "owner", ttl)
		if err != nil {
			t.Fatal(err)
		}
		ids, secrets = append(ids, tok.ID), append(secrets, secret)
	}
	if _, err := s.ConsumeToken(t.Context(), secrets[2], "dev-2", "", now); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour) // token 1 expired
	var got []string
	for after, pages := "", 0; ; pages++ {
		page, next, err := s.Tokens(t.Context(), inventory.TokenFilter{After: after, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range page {
			got = append(got, tok.ID)
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		after = next
	}
	if len(got) != 7 {
		t.Fatalf("listed %d tokens", len(got))
	}
	for i := range got {
		if got[i] != ids[6-i] {
			t.Fatalf("not newest first: %v, created %v", got, ids)
		}
	}
	for st, want := range map[inventory.TokenStatus][]string{inventory.TokenUsed: {ids[2]}, inventory.TokenExpired: {ids[1]}} {
		page, _, err := s.Tokens(t.Context(), inventory.TokenFilter{Status: st})
		if err != nil || len(page) != len(want) || page[0].ID != want[0] {
			t.Errorf("%s tokens: %+v %v", st, page, err)
		}
	}
	if page, _, _ := s.Tokens(t.Context(), inventory.TokenFilter{Status: inventory.TokenUnused}); len(page) != 5 {
		t.Errorf("%d unused tokens, want 5", len(page))
	}
	if _, _, err := s.Tokens(t.Context(), inventory.TokenFilter{Status: "revoked"}); !errors.Is(err, inventory.ErrInvalid) {
		t.Errorf("unknown status: %v", err)
	}
	if _, _, err := s.Tokens(t.Context(), inventory.TokenFilter{After: "zz"}); !errors.Is(err, inventory.ErrInvalid) {
		t.Errorf("bad cursor: %v", err)
	}
}
