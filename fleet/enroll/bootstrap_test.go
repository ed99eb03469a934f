package enroll_test

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestKnownBootstrap: the broker's KnownDevice (Bootstrap.Known) recognizes sigild's
// bootstrap client IDs of devices that may recover by enrolling again,
// and nothing else.
func TestKnownBootstrap(t *testing.T) {
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	for id, st := range map[string]inventory.State{
		"0123456789abcdef0000000000000001": inventory.StateActive,
		"1111111111111111aaaaaaaaaaaaaaaa": inventory.StateQuarantined,
		"2222222222222222bbbbbbbbbbbbbbbb": inventory.StateDecommissioned,
		"3333333333333333cccccccccccccccc": inventory.StatePending,
	} {
		if err := inv.PutDevice(t.Context(), &inventory.Device{ID: id, State: st}); err != nil {
			t.Fatal(err)
		}
	}
	b := enroll.Bootstrap{Devices: inv}
	for _, c := range []struct {
		clientID, device string
	}{
		{"e-0123456789abcdef-1a2b3c4d", "0123456789abcdef0000000000000001"},
		{"e-1111111111111111-00000000", "1111111111111111aaaaaaaaaaaaaaaa"},
		{"e-2222222222222222-00000000", ""}, // decommissioned: no recovery
		{"e-3333333333333333-00000000", ""}, // pending: not a recovery
		{"e-0123456789abcdee-00000000", ""}, // no such device
		{"e-0123456789ABCDEF-00000000", ""}, // not sigild's form
		{"e-0123456789abcdef", ""},
		{"e-0123456789abcdef0", ""},
		{"x-0123456789abcdef-0", ""},
		{"e-0123456789abcde-00000000", ""},
		{"", ""},
	} {
		dev, ok := b.Known(c.clientID)
		if dev != c.device || ok != (c.device != "") {
			t.Errorf("Known(%q) = %q, %v; want %q", c.clientID, dev, ok, c.device)
		}
	}
}

// FuzzKnownBootstrap: any client ID (chosen by anonymous clients) gets an
// answer without a panic, and only sigild's form names a device.
func FuzzKnownBootstrap(f *testing.F) {
	inv, err := inventory.Open(filepath.Join(f.TempDir(), "inv.db"), inventory.WithNoSync())
	if err != nil {
		f.Fatal(err)
	}
	defer inv.Close()
	const id = "0123456789abcdef0000000000000001"
	if err := inv.PutDevice(context.Background(), &inventory.Device{ID: id, State: inventory.StateActive}); err != nil {
		f.Fatal(err)
	}
	b := enroll.Bootstrap{Devices: inv}
	for _, seed := range []string{"e-0123456789abcdef-1", "e-", "e-0123456789abcdef", "", "e-\xff\xfe", "e-0123456789abcdef-" + id} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, clientID string) {
		dev, ok := b.Known(clientID)
		if ok != (dev == id) {
			t.Fatalf("Known(%q) = %q, %v", clientID, dev, ok)
		}
		if ok && (len(clientID) < 19 || clientID[:19] != "e-0123456789abcdef-") {
			t.Fatalf("Known(%q) named a device", clientID)
		}
	})
}

// TestBootstrapCredential: a bootstrap CONNECT is admitted with a claim
// certificate, a valid enrollment token, a used token from the client ID
// of the device that used it, or a client ID operators decided to enroll;
// nothing else.
func TestBootstrapCredential(t *testing.T) {
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	valid, _, err := inv.CreateToken(t.Context(), inventory.Grant{}, "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	used, _, err := inv.CreateToken(t.Context(), inventory.Grant{}, "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const dev = "0123456789abcdef0000000000000001"
	if _, err := inv.ConsumeToken(t.Context(), used, dev, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	b := enroll.Bootstrap{Devices: inv, TriageEnrolled: func(clientID string) bool { return clientID == "e-decided" }}
	for _, c := range []struct {
		clientID, password string
		claim, ok          bool
	}{
		{"e-any", "", true, true},
		{"e-any", valid, false, true},
		{"e-0123456789abcdef-1", used, false, true},
		{"e-decided", "", false, true},
		{"e-any", "", false, false},
		{"e-any", "not a token", false, false},
		{"e-fedcba9876543210-1", used, false, false}, // another device's used token
	} {
		var claim *x509.Certificate
		if c.claim {
			claim = &x509.Certificate{}
		}
		if err := b.Credential(c.clientID, "", []byte(c.password), claim); (err == nil) != c.ok {
			t.Errorf("Credential(%q, claim %v, token %q) = %v, want ok %v", c.clientID, c.claim, c.password, err, c.ok)
		}
	}
}
