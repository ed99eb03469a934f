package governance_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

func testCert(tb testing.TB, cn string) *x509.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(4242), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

const (
	knownDevice   = "0123456789abcdef0123456789abcdef"
	unknownDevice = "fedcba9876543210fedcba9876543210"
)

// TestBrokerEventClassifies: refused connections go to the triage
// list by what they presented — a known device's refusal does not; device
// sessions are opened and closed per connection.
func TestBrokerEventClassifies(t *testing.T) {
	f := newFleet(t, nil)
	if err := f.inv.PutDevice(t.Context(), &inventory.Device{ID: knownDevice, State: inventory.StateActive, EKFingerprint: strings.Repeat("ab", 32)}); err != nil {
		t.Fatal(err)
	}
	cert := testCert(t, "dev")
	now := time.Now()
	for _, ev := range []broker.Event{
		{Kind: broker.Refused, Identity: broker.Identity{ClientID: knownDevice, DeviceID: knownDevice, Cert: cert}, Reason: "gate: certificate revoked", Remote: "192.0.2.1:1000", Time: now},
		{Kind: broker.Refused, Identity: broker.Identity{ClientID: unknownDevice, DeviceID: unknownDevice, Cert: cert}, Reason: "gate: unknown device", Remote: "192.0.2.2:1000", Time: now},
		{Kind: broker.Refused, Identity: broker.Identity{ClientID: "e-intruder"}, Reason: "bootstrap credential: none", Remote: "192.0.2.3:1000", Time: now},
		{Kind: broker.Refused, Presented: testCert(t, "rogue"), Reason: "tls: bad certificate", Remote: "192.0.2.4:1000", Time: now},
	} {
		f.svc.BrokerEvent(ev)
	}
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	l, _, err := f.svc.Triage(governance.TriageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[governance.AttemptKind]string{}
	for _, e := range l {
		got[e.Kind] = e.Key
	}
	if len(l) != 3 || got[governance.AttemptUnknownDevice] != "unknown-device/client:"+unknownDevice ||
		got[governance.AttemptUnknownClient] != "unknown-client/client:e-intruder" || got[governance.AttemptForeignCert] == "" {
		t.Fatalf("triage %+v", l)
	}

	id := broker.Identity{ClientID: knownDevice, DeviceID: knownDevice, Cert: cert}
	f.svc.BrokerEvent(broker.Event{Kind: broker.Connected, Identity: id, Remote: "192.0.2.1:1", Time: now})
	f.svc.BrokerEvent(broker.Event{Kind: broker.Connected, Identity: id, Remote: "192.0.2.9:2", Time: now})
	if n := f.svc.SessionStats().Open; n != 2 {
		t.Fatalf("open sessions %d, want 2", n)
	}
	f.svc.BrokerEvent(broker.Event{Kind: broker.Closed, Identity: id, Remote: "192.0.2.1:1", Time: now})
	f.svc.BrokerEvent(broker.Event{Kind: broker.Disconnected, Identity: id, Remote: "192.0.2.9:2", Time: now})
	if n := f.svc.SessionStats().Open; n != 0 {
		t.Fatalf("open sessions %d after both ended", n)
	}
}

// TestScreen: the broker's screen (Service.Screen) refuses blocked client IDs, addresses,
// device IDs and enrolled devices' EKs, and nothing else.
func TestScreen(t *testing.T) {
	f := newFleet(t, nil)
	ek := strings.Repeat("cd", 32)
	if err := f.inv.PutDevice(t.Context(), &inventory.Device{ID: knownDevice, State: inventory.StateActive, EKFingerprint: ek}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Screen(knownDevice, knownDevice, "192.0.2.1:5"); err != nil {
		t.Fatalf("nothing blocked: %v", err)
	}
	for _, b := range []governance.Block{{Kind: governance.BlockEK, Value: ek}, {Kind: governance.BlockAddress, Value: "198.51.100.0/24"}, {Kind: governance.BlockClientID, Value: "e-bad"}} {
		if err := f.svc.Block(b); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		client, device, remote string
		blocked                bool
	}{
		{knownDevice, knownDevice, "192.0.2.1:5", true}, // its EK
		{"e-ok", "", "198.51.100.77:5", true},           // the prefix
		{"e-bad", "", "192.0.2.1:5", true},
		{"e-ok", "", "192.0.2.1:5", false},
		{unknownDevice, unknownDevice, "192.0.2.1:5", false},
	} {
		if err := f.svc.Screen(c.client, c.device, c.remote); (err != nil) != c.blocked {
			t.Errorf("screen(%s, %s, %s) = %v, want blocked %v", c.client, c.device, c.remote, err, c.blocked)
		}
	}
}

// BenchmarkScreen is what the block list adds to each device CONNECT:
// three block-list lookups and one inventory read, with 1,000 client IDs
// and 100 prefixes blocked.
func BenchmarkScreen(b *testing.B) {
	f := newFleet(b, nil)
	if err := f.inv.PutDevice(context.Background(), &inventory.Device{ID: knownDevice, State: inventory.StateActive, EKFingerprint: strings.Repeat("ab", 32)}); err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		if err := f.svc.Block(governance.Block{Kind: governance.BlockClientID, Value: fmt.Sprintf("e-%d", i)}); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 100 {
		if err := f.svc.Block(governance.Block{Kind: governance.BlockAddress, Value: fmt.Sprintf("10.%d.0.0/16", i)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		if err := f.svc.Screen(knownDevice, knownDevice, "192.0.2.1:4000"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSessionEvents is what governance adds to each device
// connection: a session opened and closed (Service.BrokerEvent).
func BenchmarkSessionEvents(b *testing.B) {
	f := newFleet(b, nil)
	id := broker.Identity{ClientID: knownDevice, DeviceID: knownDevice, Cert: testCert(b, "dev")}
	now := time.Now()
	for b.Loop() {
		f.svc.BrokerEvent(broker.Event{Kind: broker.Connected, Identity: id, Remote: "192.0.2.1:1", Time: now})
		f.svc.BrokerEvent(broker.Event{Kind: broker.Disconnected, Identity: id, Remote: "192.0.2.1:1", Time: now})
	}
}

// TestFindingsRecordAndRaise: a device's finding becomes a lifecycle event
// of the device ("-resolved" when it ends) and only a raised one goes on
// to the alert feed; a fleet-wide finding (no device) does neither.
func TestFindingsRecordAndRaise(t *testing.T) {
	f := newFleet(t, nil)
	d := f.device(1, nil)
	var raised []governance.Alert
	fs := governance.Findings{Events: f.inv, Raise: func(a governance.Alert) { raised = append(raised, a) }}
	now := time.Now()
	fs.Alert(governance.Alert{Kind: "dormant", DeviceID: d.ID, Summary: "unseen for 31 days", Time: now})
	fs.Alert(governance.Alert{Kind: "dormant", DeviceID: d.ID, Resolved: true, Time: now})
	fs.Alert(governance.Alert{Kind: "shadow", Summary: "fleet-wide", Time: now})
	evs, err := f.inv.Events(t.Context(), d.ID, 10)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, e := range evs {
		kinds[e.Kind] = true
	}
	if !kinds["dormant"] || !kinds["dormant-resolved"] {
		t.Errorf("lifecycle events %+v, want dormant and dormant-resolved", evs)
	}
	if len(raised) != 1 || raised[0].Kind != "dormant" || raised[0].Resolved {
		t.Errorf("raised %+v, want the one dormant finding", raised)
	}
}
