// Package inventorytest is the conformance suite every inventory
// backend (bbolt, PostgreSQL) must pass: Run, given a constructor.
package inventorytest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Store is the inventory as the suite uses it: every method of
// *inventory.Store.
type Store interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	DeviceByEK(ctx context.Context, fingerprint string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
	PutDevice(ctx context.Context, d *inventory.Device) error
	Update(ctx context.Context, id string, fn func(*inventory.Device) error) error
	UpdateAll(ctx context.Context, changes []inventory.Change) []error
	State(ctx context.Context, id string) (inventory.State, error)
	Hello(ctx context.Context, id, firmware string, protocol int, at time.Time) (string, bool, error)
	Protocol(ctx context.Context, id string) (int, error)
	Upsert(ctx context.Context, id string, fn func(d *inventory.Device, exists bool) error) error
	Query(ctx context.Context, q inventory.Query) (inventory.Page, error)
	Count(ctx context.Context, where map[inventory.Field]string) (int, error)
	Counts(ctx context.Context) (map[inventory.State]int, error)
	Quarantine(ctx context.Context, id string, c inventory.Cause) (*inventory.Device, []string, error)
	Release(ctx context.Context, id string) (*inventory.Device, error)
	AutoRelease(ctx context.Context, id, policy string) (*inventory.Device, error)
	Decommission(ctx context.Context, id string) (*inventory.Device, []string, error)
	RevokeDevice(ctx context.Context, id string, reason int) (*inventory.Device, []string, error)
	RevokeSuperseded(ctx context.Context, id, serial string) ([]string, error)
	Revocations(ctx context.Context, now time.Time) ([]inventory.Revocation, error)
	CreateToken(ctx context.Context, g inventory.Grant, owner string, ttl time.Duration) (secret string, tok *inventory.Token, err error)
	CreatePendingToken(ctx context.Context, g inventory.Grant, owner string, ttl time.Duration) (secret string, tok *inventory.Token, err error)
	ActivateToken(ctx context.Context, id string, g inventory.Grant) (*inventory.Token, error)
	DeleteToken(ctx context.Context, id string) error
	ConsumeToken(ctx context.Context, secret, deviceID, model string, now time.Time) (*inventory.Token, error)
	CheckToken(ctx context.Context, secret, model string, now time.Time) (*inventory.Token, error)
	TokenUsedBy(ctx context.Context, secret string) (string, error)
	Tokens(ctx context.Context, f inventory.TokenFilter) ([]inventory.Token, string, error)
	AddEvent(ctx context.Context, e inventory.Event) error
	Events(ctx context.Context, deviceID string, limit int) ([]inventory.Event, error)
}

// Opener returns a new, empty store configured with opts (clock,
// entropy, event limit) and arranges its closing with t.Cleanup.
type Opener func(t *testing.T, opts ...inventory.Option) Store

// Run runs the suite against the stores open returns, one per subtest.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		f    func(*testing.T, Store)
	}{
		{"CRUD", testCRUD},
		{"Validation", testValidation},
		{"EKIndex", testEKIndex},
		{"Update", testUpdate},
		{"UpdateAll", testUpdateAll},
		{"State", testState},
		{"Protocol", testProtocol},
		{"List", testList},
		{"Counts", testCounts},
		{"Tokens", testTokens},
		{"TokenConcurrency", testTokenConcurrency},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"ConcurrentEKClaims", testConcurrentEKClaims},
		{"ConcurrentRevocation", testConcurrentRevocation},
		{"Events", testEvents},
		{"AnonymousEvents", testAnonymousEvents},
		{"Lifecycle", testLifecycle},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.f(t, open(t)) })
	}
	withOptions := []struct {
		name string
		f    func(*testing.T, Opener)
	}{
		{"StateChangesFollowTheLifecycle", testStateChangesFollowTheLifecycle},
		{"RevokedSerialsAreNotForgotten", testRevokedSerialsAreNotForgotten},
		{"RevokeDeviceRevokesEverySerial", testRevokeDeviceRevokesEverySerial},
		{"RevocationHookOnCommit", testRevocationHookOnCommit},
		{"AdmitsOnlyIssuedCurrentSerials", testAdmitsOnlyIssuedCurrentSerials},
		{"QuarantineRevokesEveryCertificate", testQuarantineRevokesEveryCertificate},
		{"AutoReleaseOnlyItsOwnCause", testAutoReleaseOnlyItsOwnCause},
		{"DecommissionIsTerminal", testDecommissionIsTerminal},
		{"CertBookkeepingPrunedByExpiryOnly", testCertBookkeepingPrunedByExpiryOnly},
		{"SupersededByTheCertificateInUse", testSupersededByTheCertificateInUse},
		{"LegacyRecordCertificates", testLegacyRecordCertificates},
		{"IssuanceBounded", testIssuanceBounded},
		{"IssuedCertificateKeepsDER", testIssuedCertificateKeepsDER},
		{"EventsAreBounded", testEventsAreBounded},
		{"ClockAndEntropyAreInjected", testClockAndEntropyAreInjected},
		{"PendingTokenWorksOnlyOnceActivated", testPendingTokenWorksOnlyOnceActivated},
		{"TokensNewestFirst", testTokensNewestFirst},
		{"QueryMatchesBruteForce", testQueryMatchesBruteForce},
	}
	for _, tc := range withOptions {
		t.Run(tc.name, func(t *testing.T) { tc.f(t, open) })
	}
}

// ID returns a valid device ID for n.
func ID(n int) string { return fmt.Sprintf("%032x", n) }

// EK returns a valid EK fingerprint for n.
func EK(n int) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(fmt.Sprint("ek", n)))) }

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

// NewDevice returns a fully populated device numbered n.
func NewDevice(n int) *inventory.Device {
	return &inventory.Device{
		ID:            ID(n),
		EKFingerprint: EK(n),
		Model:         "gw-1",
		Firmware:      "1.0.0",
		Owner:         "plant-a",
		Serial:        fmt.Sprint("SN", n),
		State:         inventory.StateActive,
		TrustPath:     inventory.TrustEKCA,
		CertSerial:    "0a1b2c",
		CertExpiry:    t0.Add(30 * 24 * time.Hour),
		FirstSeen:     t0,
		LastSeen:      t0.Add(time.Minute),
		EnrolledAt:    t0.Add(time.Second),
		Connected:     true,
		Flags:         []string{"clone-suspect"},
		AKName:        []byte{0, 11, 1, 2, 3},
		EKPublic:      []byte{1, 2, 3, 4},
		AKPublic:      []byte{5, 6, 7},
	}
}

func equalDevice(t *testing.T, got, want *inventory.Device) {
	t.Helper()
	g, w := *got, *want
	for _, p := range []struct{ a, b *time.Time }{
		{&g.CertExpiry, &w.CertExpiry}, {&g.FirstSeen, &w.FirstSeen}, {&g.LastSeen, &w.LastSeen}, {&g.EnrolledAt, &w.EnrolledAt},
	} {
		if !p.a.Equal(*p.b) {
			t.Errorf("time differs: got %v, want %v", *p.a, *p.b)
		}
		*p.a, *p.b = time.Time{}, time.Time{}
	}
	if fmt.Sprintf("%#v", g) != fmt.Sprintf("%#v", w) {
		t.Errorf("device differs:\n got %#v\nwant %#v", g, w)
	}
}

func testCRUD(t *testing.T, s Store) {
	if _, err := s.Device(t.Context(), ID(1)); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("missing device: err = %v, want ErrNotFound", err)
	}
	d := NewDevice(1)
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	got, err := s.Device(t.Context(), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	equalDevice(t, got, d)
	got, err = s.DeviceByEK(t.Context(), d.EKFingerprint)
	if err != nil {
		t.Fatal(err)
	}
	equalDevice(t, got, d)
	if _, err := s.DeviceByEK(t.Context(), EK(2)); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("unknown EK: err = %v", err)
	}
	// Upsert replaces.
	d.State, d.Firmware, d.Flags = inventory.StateQuarantined, "1.1.0", nil
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Device(t.Context(), d.ID)
	equalDevice(t, got, d)
	// The caller's copy is not aliased.
	got.Model = "changed"
	again, _ := s.Device(t.Context(), d.ID)
	if again.Model != "gw-1" {
		t.Fatal("store returned an aliased record")
	}
	// A device without EK (not yet known) is allowed.
	if err := s.PutDevice(t.Context(), &inventory.Device{ID: ID(3), State: inventory.StatePending}); err != nil {
		t.Fatal(err)
	}
}

func testValidation(t *testing.T, s Store) {
	for _, d := range []*inventory.Device{
		nil,
		{ID: "", State: inventory.StateActive},
		{ID: "a/b", State: inventory.StateActive},
		{ID: "#", State: inventory.StateActive},
		{ID: ID(1), State: "gone"},
		{ID: ID(1)},
		{ID: ID(1), State: inventory.StateActive, EKFingerprint: "not-hex"},
		{ID: ID(1), State: inventory.StateActive, EKFingerprint: strings.ToUpper(EK(1))},
	} {
		if err := s.PutDevice(t.Context(), d); !errors.Is(err, inventory.ErrInvalid) {
			t.Errorf("PutDevice(%+v): err = %v, want ErrInvalid", d, err)
		}
	}
	if _, _, err := s.ListDevices(t.Context(), inventory.Filter{}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Counts(t.Context()); len(c) != 0 {
		t.Fatalf("invalid devices were stored: %v", c)
	}
}

func testEKIndex(t *testing.T, s Store) {
	a := NewDevice(1)
	if err := s.PutDevice(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	// Another ID with the same EK: a clone or a re-keyed ID.
	b := NewDevice(2)
	b.EKFingerprint = a.EKFingerprint
	if err := s.PutDevice(t.Context(), b); !errors.Is(err, inventory.ErrEKConflict) {
		t.Fatalf("duplicate EK: err = %v, want ErrEKConflict", err)
	}
	if _, err := s.Device(t.Context(), b.ID); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatal("refused device was stored")
	}
	// The EK of an existing device cannot change.
	a2 := NewDevice(1)
	a2.EKFingerprint = EK(9)
	if err := s.PutDevice(t.Context(), a2); !errors.Is(err, inventory.ErrEKConflict) {
		t.Fatalf("changed EK: err = %v, want ErrEKConflict", err)
	}
	if _, err := s.DeviceByEK(t.Context(), EK(9)); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatal("index changed by a refused put")
	}
	// Setting the EK of a device that had none is fine, and indexed.
	c := &inventory.Device{ID: ID(3), State: inventory.StatePending}
	if err := s.PutDevice(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	c.EKFingerprint = EK(3)
	if err := s.PutDevice(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	if got, err := s.DeviceByEK(t.Context(), EK(3)); err != nil || got.ID != c.ID {
		t.Fatalf("DeviceByEK = %v, %v", got, err)
	}
	if got, err := s.DeviceByEK(t.Context(), a.EKFingerprint); err != nil || got.ID != a.ID {
		t.Fatalf("DeviceByEK = %v, %v", got, err)
	}
}

// testUpdateAll: changes gathered into one call land as Update would land
// each (indexes included), and a failing change — an unknown device, a
// transition the lifecycle refuses, its function's own error — returns
// its error without keeping the others out.
func testUpdateAll(t *testing.T, s Store) {
	for n := 1; n <= 3; n++ {
		d := NewDevice(n)
		d.State = inventory.StateActive
		if err := s.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("boom")
	at := t0.Add(time.Hour)
	attested := func(d *inventory.Device) error {
		d.Attestation, d.LastAttested, d.Firmware = "pass", at, "2.0.0"
		return nil
	}
	errs := s.UpdateAll(t.Context(), []inventory.Change{
		{ID: ID(1), Fn: attested},
		{ID: ID(9), Fn: attested},
		{ID: ID(2), Fn: func(d *inventory.Device) error { d.State = inventory.StatePending; return nil }},
		{ID: ID(3), Fn: func(d *inventory.Device) error { d.Owner = "x"; return boom }},
		{ID: ID(2), Fn: attested},
	})
	if len(errs) != 5 || errs[0] != nil || !errors.Is(errs[1], inventory.ErrNotFound) || !errors.Is(errs[2], inventory.ErrTransition) ||
		!errors.Is(errs[3], boom) || errs[4] != nil {
		t.Fatalf("errors %v", errs)
	}
	for _, n := range []int{1, 2} {
		d, err := s.Device(t.Context(), ID(n))
		if err != nil || d.Attestation != "pass" || !d.LastAttested.Equal(at) || d.Firmware != "2.0.0" || d.State != inventory.StateActive {
			t.Fatalf("device %d: %+v, %v", n, d, err)
		}
	}
	if d, _ := s.Device(t.Context(), ID(3)); d.Owner != NewDevice(3).Owner {
		t.Fatalf("a failed change landed: %+v", d)
	}
	if n, err := s.Count(t.Context(), map[inventory.Field]string{inventory.FieldFirmware: "2.0.0"}); err != nil || n != 2 {
		t.Fatalf("firmware index: %d devices, %v", n, err)
	}
	if errs := s.UpdateAll(t.Context(), nil); len(errs) != 0 {
		t.Fatalf("no changes: %v", errs)
	}
}

// testState: State reads a device's lifecycle state as Device does, and
// an unknown device is ErrNotFound.
func testState(t *testing.T, s Store) {
	d := NewDevice(1)
	d.State = inventory.StatePending
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	for _, st := range []inventory.State{inventory.StatePending, inventory.StateActive, inventory.StateQuarantined, inventory.StateDecommissioned} {
		if err := s.Update(t.Context(), d.ID, func(d *inventory.Device) error { d.State = st; return nil }); err != nil {
			t.Fatal(err)
		}
		if got, err := s.State(t.Context(), d.ID); err != nil || got != st {
			t.Fatalf("State = %q, %v; want %q", got, err, st)
		}
	}
	if _, err := s.State(t.Context(), ID(2)); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
}

// testProtocol: the fleet speaks to a device the protocol version of its
// last hello, up or down (a daemon upgraded or rolled back), and the
// oldest it speaks to a record written before it kept one; every replica
// reads what one recorded.
func testProtocol(t *testing.T, s Store) {
	d := NewDevice(1)
	d.State = inventory.StateActive
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Protocol(t.Context(), d.ID); err != nil || v != wire.OldestVersion {
		t.Fatalf("record without a version: %d, %v; want %d", v, err, wire.OldestVersion)
	}
	for _, v := range []int{5, 4, 5} {
		if _, _, err := s.Hello(t.Context(), d.ID, "", v, time.Now()); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Protocol(t.Context(), d.ID); err != nil || got != v {
			t.Fatalf("after a hello of version %d: %d, %v", v, got, err)
		}
		if got, err := s.Device(t.Context(), d.ID); err != nil || got.Protocol != v {
			t.Fatalf("after a hello of version %d: the record holds %+v, %v", v, got, err)
		}
	}
	if _, err := s.Protocol(t.Context(), ID(2)); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
}

func testUpdate(t *testing.T, s Store) {
	if err := s.Update(t.Context(), ID(1), func(*inventory.Device) error { return nil }); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("Update missing: err = %v", err)
	}
	d := NewDevice(1)
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	seen := t0.Add(time.Hour)
	if err := s.Update(t.Context(), d.ID, func(x *inventory.Device) error {
		x.LastSeen, x.Connected = seen, false
		x.Flags = append(x.Flags, "late")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Device(t.Context(), d.ID)
	if !got.LastSeen.Equal(seen) || got.Connected || !slices.Equal(got.Flags, []string{"clone-suspect", "late"}) {
		t.Fatalf("after update: %+v", got)
	}
	// fn's error aborts the write and comes back unchanged.
	boom := errors.New("boom")
	if err := s.Update(t.Context(), d.ID, func(x *inventory.Device) error { x.Owner = "x"; return boom }); err != boom {
		t.Fatalf("err = %v, want fn's error", err)
	}
	for name, fn := range map[string]func(*inventory.Device){
		"ID":    func(x *inventory.Device) { x.ID = ID(7) },
		"EK":    func(x *inventory.Device) { x.EKFingerprint = EK(7) },
		"State": func(x *inventory.Device) { x.State = "bogus" },
	} {
		if err := s.Update(t.Context(), d.ID, func(x *inventory.Device) error { x.Owner = "x"; fn(x); return nil }); err == nil {
			t.Errorf("Update changing %s succeeded", name)
		}
	}
	got, _ = s.Device(t.Context(), d.ID)
	if got.Owner != d.Owner || got.ID != d.ID || got.EKFingerprint != d.EKFingerprint {
		t.Fatalf("aborted updates left changes: %+v", got)
	}
	if _, err := s.Device(t.Context(), ID(7)); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatal("aborted ID change created a device")
	}
	// Concurrent read-modify-write loses nothing.
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Update(t.Context(), d.ID, func(x *inventory.Device) error {
				x.Flags = append(x.Flags, fmt.Sprint("f", i))
				return nil
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got, _ = s.Device(t.Context(), d.ID)
	if len(got.Flags) != 12 {
		t.Fatalf("flags after concurrent updates: %v", got.Flags)
	}
}

func testList(t *testing.T, s Store) {
	const n = 25
	for i := range n {
		d := NewDevice(i)
		if i%3 == 0 {
			d.State = inventory.StatePending
		}
		if i%5 == 0 {
			d.Model = "gw-2"
		}
		if err := s.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	// Pages of 7 return every device once, in ID order.
	var ids []string
	cursor, pages := "", 0
	for {
		page, next, err := s.ListDevices(t.Context(), inventory.Filter{After: cursor, Limit: 7})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(page) > 7 {
			t.Fatalf("page of %d", len(page))
		}
		for _, d := range page {
			ids = append(ids, d.ID)
		}
		if next == "" {
			break
		}
		cursor = next
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
	}
	want := make([]string, n)
	for i := range n {
		want[i] = ID(i)
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("listed %v", ids)
	}
	if pages != 4 {
		t.Fatalf("%d pages, want 4", pages)
	}
	// Filters.
	all, next, err := s.ListDevices(t.Context(), inventory.Filter{State: inventory.StatePending, Limit: 1000})
	if err != nil || next != "" {
		t.Fatal(err, next)
	}
	for _, d := range all {
		if d.State != inventory.StatePending {
			t.Fatalf("filter returned %s", d.State)
		}
	}
	if len(all) != 9 {
		t.Fatalf("%d pending, want 9", len(all))
	}
	both, _, _ := s.ListDevices(t.Context(), inventory.Filter{State: inventory.StatePending, Model: "gw-2"})
	if len(both) != 2 || both[0].ID != ID(0) || both[1].ID != ID(15) {
		t.Fatalf("pending gw-2: %v", both)
	}
	// Filtered pagination.
	var got []string
	cursor = ""
	for {
		page, next, err := s.ListDevices(t.Context(), inventory.Filter{State: inventory.StatePending, After: cursor, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page {
			got = append(got, d.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(got) != 9 {
		t.Fatalf("filtered pagination returned %d", len(got))
	}
	// A cursor past the end, and the default limit.
	if page, next, err := s.ListDevices(t.Context(), inventory.Filter{After: ID(999)}); err != nil || len(page) != 0 || next != "" {
		t.Fatalf("past the end: %v %q %v", page, next, err)
	}
	if page, _, _ := s.ListDevices(t.Context(), inventory.Filter{}); len(page) != n {
		t.Fatalf("default limit returned %d", len(page))
	}
}

func testCounts(t *testing.T, s Store) {
	states := []inventory.State{inventory.StateActive, inventory.StateActive, inventory.StatePending, inventory.StateDecommissioned}
	for i, st := range states {
		d := NewDevice(i)
		d.State = st
		if err := s.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	c, err := s.Counts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if c[inventory.StateActive] != 2 || c[inventory.StatePending] != 1 || c[inventory.StateDecommissioned] != 1 || c[inventory.StateQuarantined] != 0 {
		t.Fatalf("counts = %v", c)
	}
}

func testTokens(t *testing.T, s Store) {
	now := time.Now()
	secret, tok, err := s.CreateToken(t.Context(), inventory.Grant{Model: "gw-1", Group: "pumps"}, "plant-a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, inventory.TokenPrefix) || len(secret) != len(inventory.TokenPrefix)+43 {
		t.Fatalf("secret %q", secret)
	}
	if tok.ID == "" || strings.Contains(tok.ID, secret[len(inventory.TokenPrefix):]) || tok.Model != "gw-1" || tok.Group != "pumps" || tok.Owner != "plant-a" {
		t.Fatalf("token %+v", tok)
	}
	if sum := sha256.Sum256([]byte(secret)); string(tok.Hash) != string(sum[:]) {
		t.Fatal("token hash is not SHA-256 of the secret")
	}
	if tok.Expires.Sub(tok.Created) != time.Hour {
		t.Fatalf("lifetime %v", tok.Expires.Sub(tok.Created))
	}
	secret2, _, _ := s.CreateToken(t.Context(), inventory.Grant{}, "", time.Hour)
	if secret2 == secret {
		t.Fatal("two tokens share a secret")
	}

	for _, c := range []struct {
		secret, model string
		at            time.Time
		want          error
	}{
		{"sgt_unknown", "gw-1", now, inventory.ErrTokenInvalid},
		{"", "gw-1", now, inventory.ErrTokenInvalid},
		{secret[len(inventory.TokenPrefix):], "gw-1", now, inventory.ErrTokenInvalid},
		{secret + "x", "gw-1", now, inventory.ErrTokenInvalid},
		{secret, "gw-1", now.Add(2 * time.Hour), inventory.ErrTokenExpired},
		{secret, "gw-9", now, inventory.ErrTokenBinding},
	} {
		if _, err := s.CheckToken(t.Context(), c.secret, c.model, c.at); !errors.Is(err, c.want) {
			t.Errorf("CheckToken(%q, %q): err = %v, want %v", c.secret, c.model, err, c.want)
		}
		if _, err := s.ConsumeToken(t.Context(), c.secret, ID(1), c.model, c.at); !errors.Is(err, c.want) {
			t.Errorf("ConsumeToken(%q, %q): err = %v, want %v", c.secret, c.model, err, c.want)
		}
	}
	if _, err := s.CheckToken(t.Context(), secret, "gw-1", now); err != nil {
		t.Fatalf("CheckToken: %v", err)
	}
	if _, err := s.CheckToken(t.Context(), secret, "gw-1", now); err != nil {
		t.Fatalf("CheckToken consumed the token: %v", err)
	}
	used, err := s.ConsumeToken(t.Context(), secret, ID(1), "gw-1", now)
	if err != nil {
		t.Fatal(err)
	}
	if used.UsedBy != ID(1) || !used.UsedAt.Equal(now) || used.ID != tok.ID {
		t.Fatalf("consumed token %+v", used)
	}
	if _, err := s.ConsumeToken(t.Context(), secret, ID(2), "gw-1", now); !errors.Is(err, inventory.ErrTokenUsed) {
		t.Fatalf("reuse: err = %v, want ErrTokenUsed", err)
	}
	if _, err := s.CheckToken(t.Context(), secret, "gw-1", now); !errors.Is(err, inventory.ErrTokenUsed) {
		t.Fatalf("check after use: err = %v, want ErrTokenUsed", err)
	}
	// An unbound token fits any model.
	if _, err := s.ConsumeToken(t.Context(), secret2, ID(2), "anything", now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateToken(t.Context(), inventory.Grant{Model: "m"}, "o", 0); err == nil {
		t.Fatal("token without lifetime created")
	}
}

func testTokenConcurrency(t *testing.T, s Store) {
	secret, _, err := s.CreateToken(t.Context(), inventory.Grant{Model: "gw-1"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	toks := make([]*inventory.Token, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			toks[i], errs[i] = s.ConsumeToken(t.Context(), secret, ID(i), "gw-1", time.Now())
		}()
	}
	close(start)
	wg.Wait()
	wins, winner := 0, -1
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
			winner = i
		case !errors.Is(err, inventory.ErrTokenUsed):
			t.Errorf("goroutine %d: %v", i, err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d goroutines consumed the token, want 1", wins)
	}
	_, err = s.CheckToken(t.Context(), secret, "gw-1", time.Now())
	if !errors.Is(err, inventory.ErrTokenUsed) {
		t.Fatalf("after race: %v", err)
	}
	if toks[winner].UsedBy != ID(winner) {
		t.Fatalf("winner %d got a token used by %q", winner, toks[winner].UsedBy)
	}
}

func testEvents(t *testing.T, s Store) {
	if ev, err := s.Events(t.Context(), ID(1), 0); err != nil || len(ev) != 0 {
		t.Fatalf("no events: %v %v", ev, err)
	}
	for i := range 5 {
		for _, id := range []string{ID(1), ID(2), ID(1) + "0"} {
			if err := s.AddEvent(t.Context(), inventory.Event{Time: t0.Add(time.Duration(i) * time.Second), DeviceID: id, Kind: fmt.Sprint("k", i), Detail: id}); err != nil {
				t.Fatal(err)
			}
		}
	}
	ev, err := s.Events(t.Context(), ID(1), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 5 {
		t.Fatalf("%d events, want 5: %v", len(ev), ev)
	}
	for i, e := range ev {
		if e.DeviceID != ID(1) || e.Detail != ID(1) || e.Kind != fmt.Sprint("k", 4-i) || !e.Time.Equal(t0.Add(time.Duration(4-i)*time.Second)) {
			t.Fatalf("event %d = %+v (want newest first, this device only)", i, e)
		}
	}
	ev, _ = s.Events(t.Context(), ID(2), 2)
	if len(ev) != 2 || ev[0].Kind != "k4" || ev[1].Kind != "k3" {
		t.Fatalf("limited: %v", ev)
	}
	// A missing time is filled in.
	if err := s.AddEvent(t.Context(), inventory.Event{DeviceID: ID(3), Kind: "enrolled"}); err != nil {
		t.Fatal(err)
	}
	if ev, _ := s.Events(t.Context(), ID(3), 1); len(ev) != 1 || ev[0].Time.IsZero() {
		t.Fatalf("event time not set: %v", ev)
	}
	for _, e := range []inventory.Event{{Kind: "x"}, {DeviceID: ID(1)}, {DeviceID: "a/b", Kind: "x"}} {
		if err := s.AddEvent(t.Context(), e); !errors.Is(err, inventory.ErrInvalid) {
			t.Errorf("AddEvent(%+v): err = %v", e, err)
		}
	}
}

// testAnonymousEvents: anonymous events are listed with the others, in
// order, and bounded apart: however many arrive, the device's other events
// stay, and at most inventory.MaxAnonymousEvents anonymous ones are kept.
func testAnonymousEvents(t *testing.T, s Store) {
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	for i, kind := range []string{"enrolled", "connected"} {
		if err := s.AddEvent(t.Context(), inventory.Event{Time: at(i), DeviceID: ID(1), Kind: kind}); err != nil {
			t.Fatal(err)
		}
	}
	n := 10 * inventory.MaxAnonymousEvents
	for i := range n {
		if err := s.AddEvent(t.Context(), inventory.Event{Time: at(2 + i), DeviceID: ID(1), Kind: "activation-failed", Anonymous: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddEvent(t.Context(), inventory.Event{Time: at(2 + n), DeviceID: ID(1), Kind: "renewed"}); err != nil {
		t.Fatal(err)
	}
	ev, err := s.Events(t.Context(), ID(1), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 3+inventory.MaxAnonymousEvents {
		t.Fatalf("%d events kept, want %d", len(ev), 3+inventory.MaxAnonymousEvents)
	}
	if ev[0].Kind != "renewed" || ev[len(ev)-2].Kind != "connected" || ev[len(ev)-1].Kind != "enrolled" {
		t.Fatalf("events out of order or lost: first %+v, last two %+v", ev[0], ev[len(ev)-2:])
	}
	for i, e := range ev[1 : len(ev)-2] {
		if !e.Anonymous || !e.Time.Equal(at(2+n-1-i)) {
			t.Fatalf("anonymous event %d = %+v, want the newest ones, newest first", i, e)
		}
	}
	if lim, _ := s.Events(t.Context(), ID(1), 2); len(lim) != 2 || lim[0].Kind != "renewed" || !lim[1].Anonymous {
		t.Fatalf("limited: %+v", lim)
	}
}

// testLifecycle: every write path keeps to the lifecycle (a refused state
// change is an ErrTransition and changes nothing), and a device's
// certificates round-trip.
func testLifecycle(t *testing.T, s Store) {
	d := NewDevice(1)
	d.State = inventory.StateDecommissioned
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	for _, to := range []inventory.State{inventory.StateActive, inventory.StateQuarantined, inventory.StatePending} {
		if err := s.Update(t.Context(), d.ID, func(x *inventory.Device) error { x.State = to; return nil }); !errors.Is(err, inventory.ErrTransition) {
			t.Errorf("Update decommissioned -> %s: %v, want ErrTransition", to, err)
		}
		again := *d
		again.State = to
		if err := s.PutDevice(t.Context(), &again); !errors.Is(err, inventory.ErrTransition) {
			t.Errorf("PutDevice decommissioned -> %s: %v, want ErrTransition", to, err)
		}
	}
	if got, _ := s.Device(t.Context(), d.ID); got.State != inventory.StateDecommissioned {
		t.Fatalf("a refused change was stored: %s", got.State)
	}
	p := &inventory.Device{ID: ID(2), State: inventory.StatePending}
	if err := s.PutDevice(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(t.Context(), p.ID, func(x *inventory.Device) error { x.State = inventory.StateQuarantined; return nil }); !errors.Is(err, inventory.ErrTransition) {
		t.Errorf("Update pending -> quarantined: %v, want ErrTransition", err)
	}
	now := time.Now() // the store prunes certificates expired by its own clock
	if err := s.Update(t.Context(), p.ID, func(x *inventory.Device) error {
		x.State = inventory.StateActive
		x.Issued("0a", now, now.Add(time.Hour))
		x.Issued("0b", now, now.Add(2*time.Hour))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Device(t.Context(), p.ID)
	if got.State != inventory.StateActive || got.CertSerial != "0b" || len(got.Certs) != 2 || !got.Certs[1].NotAfter.Equal(now.Add(2*time.Hour)) || !got.Admits("0a", now) {
		t.Fatalf("issued certificates: %+v", got)
	}
}

// Open opens an inventory in bbolt, in a temporary directory, without
// fsync (WithNoSync) and with opts; it is closed when t ends.
func Open(t testing.TB, opts ...inventory.Option) *inventory.Store {
	t.Helper()
	s, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), append([]inventory.Option{inventory.WithNoSync()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
