package server

import (
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

func openInventory(t *testing.T) *inventory.Store {
	t.Helper()
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	return inv
}

// TestDeviceMessagesFollowState: messages from a decommissioned device are
// dropped at the fleet's handler, whatever the broker admitted.
func TestDeviceMessagesFollowState(t *testing.T) {
	inv := openInventory(t)
	hist, err := attest.OpenHistory(filepath.Join(t.TempDir(), "hist.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hist.Close() })
	var mu sync.Mutex
	var sent []string
	svc, err := attest.New(attest.Config{Inventory: inv, History: hist,
		Send: func(id, kind string, _ []byte) error {
			mu.Lock()
			sent = append(sent, id+"/"+kind)
			mu.Unlock()
			return nil
		},
		Disconnect: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Inv: inv, Attest: svc, log: slog.New(slog.DiscardHandler), topics: wire.Topics{}}
	const id = "0123456789abcdef0123456789abcdef"
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: id, State: inventory.StateDecommissioned}); err != nil {
		t.Fatal(err)
	}
	b, _ := wire.Encode(wire.TypeAttestRequest, nil, time.Now(), &wire.AttestRequest{Reason: "connect"})
	s.deviceMessage(broker.Identity{ClientID: id, DeviceID: id}, s.topics.DeviceUp(id, "attest"), b)
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != 0 {
		t.Fatalf("a decommissioned device was answered: %v", sent)
	}
}

// TestPoolMessagesNeedCurrentCertificate: with a broker pool the fleet
// does not see the certificate a message came with, and Mosquitto keeps
// a session open after its certificate is revoked: a device none of whose
// certificates is current any more (revoked, expired) is not served,
// while one holding a current certificate is.
func TestPoolMessagesNeedCurrentCertificate(t *testing.T) {
	inv := openInventory(t)
	hist, err := attest.OpenHistory(filepath.Join(t.TempDir(), "hist.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hist.Close() })
	var mu sync.Mutex
	sent := map[string]int{}
	svc, err := attest.New(attest.Config{Inventory: inv, History: hist,
		Send: func(id, _ string, _ []byte) error {
			mu.Lock()
			sent[id]++
			mu.Unlock()
			return nil
		},
		Disconnect: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Inv: inv, Attest: svc, log: slog.New(slog.DiscardHandler), topics: wire.Topics{}}
	const current, revoked, expired = "0123456789abcdef0123456789abcde1", "0123456789abcdef0123456789abcde2", "0123456789abcdef0123456789abcde3"
	now := time.Now()
	for id, c := range map[string]inventory.Cert{
		current: {Serial: "0a", NotAfter: now.Add(time.Hour)},
		revoked: {Serial: "0b", NotAfter: now.Add(time.Hour), Revoked: true, RevokedAt: now},
		expired: {Serial: "0c", NotAfter: now.Add(-time.Minute)},
	} {
		if err := inv.PutDevice(t.Context(), &inventory.Device{ID: id, State: inventory.StateActive, Certs: []inventory.Cert{c}}); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := wire.Encode(wire.TypeAttestRequest, nil, now, &wire.AttestRequest{Reason: "connect"})
	for _, id := range []string{current, revoked, expired} {
		// As the pool reports a sender: no certificate.
		s.deviceMessage(broker.Identity{ClientID: id, DeviceID: id}, s.topics.DeviceUp(id, "attest"), b)
	}
	mu.Lock()
	defer mu.Unlock()
	if sent[current] != 1 {
		t.Errorf("the device with a current certificate was not answered: %v", sent)
	}
	if sent[revoked] != 0 || sent[expired] != 0 {
		t.Errorf("a device without a current certificate was answered: %v", sent)
	}
}
