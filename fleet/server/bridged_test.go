package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/admission"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/envelope"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestBridgedHelloReachesTheInventory: a running fleet serves a device
// message that a site's bridge delivers in the device's envelope through
// the same admission and dispatch as a direct one (a hello updates the
// inventory's firmware); a decommissioned device's is refused, and the
// bridge's health on GET /api/v1/bridges/{site} counts both; after a
// restart of the fleet, the same envelope is a replay. (The plant
// Mosquitto, mosquitto_pub and every refusal reason are in fleet/bridge's
// TestMosquittoBridgedMessages.)
func TestBridgedHelloReachesTheInventory(t *testing.T) {
	dir := t.TempDir()
	s, stop := runFleet(t, dir)
	ctx := t.Context()
	bkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := s.bridges.Create(ctx, audit.User("alice"), "plant1", bkey.Public(), 0); err != nil {
		t.Fatal(err)
	}
	put := func(id string, st inventory.State) (*ecdsa.PrivateKey, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		cert, err := s.CA.IssueDevice(id, key.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		serial := hex.EncodeToString(cert.SerialNumber.Bytes())
		if err := s.Inv.PutDevice(ctx, &inventory.Device{ID: id, State: st, Firmware: "1.0.0", CertSerial: serial, CertDER: cert.Raw,
			Certs: []inventory.Cert{{Serial: serial, NotAfter: cert.NotAfter}}}); err != nil {
			t.Fatal(err)
		}
		if err := s.bridges.AssignSite(ctx, audit.User("alice"), id, "plant1"); err != nil {
			t.Fatal(err)
		}
		return key, serial
	}
	const good, gone = "0123456789abcdef0123456789abcde1", "0123456789abcdef0123456789abcde2"
	hello, err := wire.Encode(wire.TypeHello, nil, time.Now(), &wire.Hello{Firmware: "2.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	bridgeID := broker.Identity{ClientID: "bridge-plant1", Site: "plant1"}
	sealed := map[string][]byte{}
	for _, d := range []struct {
		id string
		st inventory.State
	}{{good, inventory.StateActive}, {gone, inventory.StateDecommissioned}} {
		key, serial := put(d.id, d.st)
		env, err := envelope.Sign(rand.Reader, key, envelope.Header{KeyID: serial, Counter: 1, Topic: helloTopic(d.id)}, hello)
		if err != nil {
			t.Fatal(err)
		}
		sealed[d.id] = env
		s.bridges.Handle(bridgeID, helloTopic(d.id), env) // as the broker delivers a bridge's publish
	}
	wait.For(t, "the bridged hello in the inventory", func() bool {
		d, err := s.Inv.Device(ctx, good)
		return err == nil && d.Firmware == "2.0.0"
	})

	tok, err := os.ReadFile(s.AdminTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/api/v1/bridges/plant1", nil)
	r.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	w := httptest.NewRecorder()
	s.API().ServeHTTP(w, r)
	var v api.BridgeView
	if err := json.Unmarshal(w.Body.Bytes(), &v); w.Code != http.StatusOK || err != nil {
		t.Fatalf("GET /api/v1/bridges/plant1: %d %s", w.Code, w.Body)
	}
	if v.Health.Accepted != 1 || v.Health.Refused["device"] != 1 || v.Health.LastSeen.IsZero() {
		t.Fatalf("health %+v", v.Health)
	}

	// The counter survives a restart of the fleet: the same envelope
	// again is a replay.
	stop()
	s, _ = runFleet(t, dir)
	s.bridges.Handle(bridgeID, helloTopic(good), sealed[good])
	if h := s.bridges.Health("plant1"); h.Accepted != 0 || h.Refused["replay"] != 1 {
		t.Fatalf("after a restart, the replayed hello: health %+v", h)
	}
}

// runFleet runs a fleet on dir until stop (or the test's end).
func runFleet(t *testing.T, dir string) (_ *Server, stop func()) {
	t.Helper()
	s, err := New(testConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(stop) // also when the test fails before it stops the fleet
	return s, stop
}

func helloTopic(id string) string {
	return "sigil/site/plant1/v1/dev/" + id + "/up/" + admission.UpKind(wire.TypeHello)
}
