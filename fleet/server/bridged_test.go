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
// bridge's health on GET /api/v1/bridges/{site} counts both. (The plant
// Mosquitto, mosquitto_pub and every refusal reason are in fleet/bridge's
// TestMosquittoBridgedMessages.)
func TestBridgedHelloReachesTheInventory(t *testing.T) {
	s, err := New(testConfig(t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
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
	for _, d := range []struct {
		id string
		st inventory.State
	}{{good, inventory.StateActive}, {gone, inventory.StateDecommissioned}} {
		key, serial := put(d.id, d.st)
		topic := "sigil/site/plant1/v1/dev/" + d.id + "/up/" + admission.UpKind(wire.TypeHello)
		env, err := envelope.Sign(rand.Reader, key, envelope.Header{KeyID: serial, Counter: 1, Topic: topic}, hello)
		if err != nil {
			t.Fatal(err)
		}
		s.bridges.Handle(bridgeID, topic, env) // as the broker delivers a bridge's publish
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
}
