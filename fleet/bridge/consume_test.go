package bridge_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/envelope"
	"github.com/sigil-iot/sigil/pkg/envelope/envelopetest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestCounterStore: the last counter accepted from a device's certificate
// only goes up, is kept per device, starts afresh with a new certificate,
// and survives a reopen of the store.
func TestCounterStore(t *testing.T) {
	f := newFixture(t)
	s := f.open(t)
	ctx := context.Background()
	if serial, last, err := s.Counter(ctx, "d1"); err != nil || serial != "" || last != 0 {
		t.Fatalf("Counter of a new device = %q, %d, %v", serial, last, err)
	}
	if err := s.AdvanceCounter(ctx, "d1", "aa", 5); err != nil {
		t.Fatal(err)
	}
	for _, c := range []uint64{5, 4, 0} {
		if err := s.AdvanceCounter(ctx, "d1", "aa", c); !errors.Is(err, envelope.ErrReplay) {
			t.Fatalf("AdvanceCounter(%d) after 5 = %v, want ErrReplay", c, err)
		}
	}
	if err := s.AdvanceCounter(ctx, "d2", "bb", 1); err != nil {
		t.Fatalf("another device: %v", err)
	}
	if err := s.AdvanceCounter(ctx, "d1", "aa", 9); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = f.open(t)
	if serial, last, err := s.Counter(ctx, "d1"); err != nil || serial != "aa" || last != 9 {
		t.Fatalf("after reopen: Counter = %q, %d, %v", serial, last, err)
	}
	if err := s.AdvanceCounter(ctx, "d1", "aa", 9); !errors.Is(err, envelope.ErrReplay) {
		t.Fatalf("replay after reopen = %v", err)
	}
	if err := s.AdvanceCounter(ctx, "d1", "cc", 1); err != nil {
		t.Fatalf("a renewed certificate's first counter: %v", err)
	}
	if serial, last, _ := s.Counter(ctx, "d1"); serial != "cc" || last != 1 {
		t.Fatalf("after renewal: %q, %d", serial, last)
	}
}

// TestAssignSite: only an operator's assignment binds a device to a
// site; it is audited, survives a reopen and can be ended.
func TestAssignSite(t *testing.T) {
	f := newFixture(t)
	s := f.open(t)
	ctx := context.Background()
	if err := s.AssignSite(ctx, operator, "d1", "plant1"); err != nil {
		t.Fatal(err)
	}
	if err := s.AssignSite(ctx, operator, "d1", "Bad Site"); !errors.Is(err, bridge.ErrInvalid) {
		t.Fatalf("invalid site: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = f.open(t)
	if site, err := s.Site(ctx, "d1"); err != nil || site != "plant1" {
		t.Fatalf("Site = %q, %v", site, err)
	}
	if err := s.AssignSite(ctx, operator, "d1", ""); err != nil {
		t.Fatal(err)
	}
	if site, err := s.Site(ctx, "d1"); err != nil || site != "" {
		t.Fatalf("Site after unassign = %q, %v", site, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := countAudit(f.audit, "bridge.assign"); n != 2 {
		t.Fatalf("%d bridge.assign audit entries, want 2", n)
	}
}

func countAudit(es []audit.Entry, action string) int {
	n := 0
	for _, e := range es {
		if e.Action == action {
			n++
		}
	}
	return n
}

// plantDevice is a device with a certificate of the fleet CA and its key
// in software (the key the TPM holds on a real device).
type plantDevice struct {
	id     string
	key    *ecdsa.PrivateKey
	serial string
	dev    *inventory.Device
}

func newPlantDevice(t testing.TB, f *fixture, id string, key *ecdsa.PrivateKey) plantDevice {
	t.Helper()
	cert, err := f.ca.IssueDevice(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	return plantDevice{id: id, key: key, serial: serial, dev: &inventory.Device{ID: id, State: inventory.StateActive,
		CertSerial: serial, CertDER: cert.Raw, Certs: []inventory.Cert{{Serial: serial, NotAfter: cert.NotAfter}}}}
}

// seal signs a wire message as the device would for topic (the form
// bound: the topic as the fleet receives it).
func (d plantDevice) seal(t testing.TB, key *ecdsa.PrivateKey, counter uint64, topic string, payload []byte) []byte {
	t.Helper()
	b, err := envelope.Sign(rand.Reader, key, envelope.Header{KeyID: d.serial, Counter: counter, Topic: topic}, payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pubFile publishes the bytes of msg on the plant broker with the real
// mosquitto_pub (-f: binary payloads).
func (p *plantFleet) pubFile(t *testing.T, topic string, msg []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "msg")
	if err := os.WriteFile(path, msg, 0o644); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(p.plant, ":")
	if out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-t", topic, "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
}

type dispatched struct {
	id      broker.Identity
	topic   string
	payload []byte
}

// TestMosquittoBridgedMessages: a real plant Mosquitto bridged to the
// fleet's broker; mosquitto_pub on the plant publishes device messages
// in their envelope. A message signed by the device's current key, for
// the topic the fleet receives it on, from a device assigned to the site,
// is dispatched as the device's direct message; a replayed one, a forged
// one, one bound to another topic, one of another site's device and one
// of an unknown or a revoked device are refused, counted by reason (Health, metrics),
// audited once per reason, and never dispatched.
func TestMosquittoBridgedMessages(t *testing.T) {
	p := startFleet(t)
	f := p.f
	var mu sync.Mutex
	var got []dispatched
	var audits []audit.Entry
	svc, err := bridge.Open(bridge.Config{Path: filepath.Join(t.TempDir(), bridge.File), CA: f.ca, NoSync: true,
		Audit: audit.RecorderFunc(func(_ context.Context, e audit.Entry) error {
			mu.Lock()
			audits = append(audits, e)
			mu.Unlock()
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	d1 := newPlantDevice(t, f, "d1", envelopetest.Key())
	d2 := newPlantDevice(t, f, "d2", newKey(t))
	d3 := newPlantDevice(t, f, "d3", newKey(t)) // revoked: quarantine, decommissioning and renewal revoke
	d3.dev.Certs[0].Revoked = true
	ctx := context.Background()
	for _, a := range [][2]string{{"d1", "plant1"}, {"d2", "plant2"}, {"d3", "plant1"}} {
		if err := svc.AssignSite(ctx, operator, a[0], a[1]); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	err = svc.Consume(p.b, bridge.Consume{Devices: devices{"d1": d1.dev, "d2": d2.dev, "d3": d3.dev}, TrustDomain: "fleet.test", Metrics: reg,
		Dispatch: func(id broker.Identity, topic string, payload []byte) {
			mu.Lock()
			got = append(got, dispatched{id, topic, payload})
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	p.startPlant(t, "plant1", "")

	topics := wire.Topics{}
	local := func(id string) string { return topics.DeviceUp(id, "telemetry") }
	remote := func(site, id string) string { return "sigil/site/" + site + "/v1/dev/" + id + "/up/telemetry" }
	msg := func(n int) []byte { return []byte(fmt.Sprintf("wire message %d", n)) } // opaque here: the fleet's deviceMessage decodes it
	good := d1.seal(t, d1.key, 1, remote("plant1", "d1"), msg(1))
	d9 := newPlantDevice(t, f, "d9", newKey(t)) // not in the inventory
	p.pubFile(t, local("d1"), good)
	p.pubFile(t, local("d1"), good)                                                                // replayed
	p.pubFile(t, local("d1"), d1.seal(t, envelopetest.Other(), 2, remote("plant1", "d1"), msg(2))) // forged
	p.pubFile(t, local("d1"), d1.seal(t, d1.key, 3, local("d1"), msg(3)))                          // bound to the plant's local topic
	p.pubFile(t, local("d1"), d1.seal(t, d1.key, 4, remote("plant2", "d1"), msg(4)))               // bound to another site's
	p.pubFile(t, local("d2"), d2.seal(t, d2.key, 1, remote("plant1", "d2"), msg(5)))               // another site's device
	p.pubFile(t, local("d9"), d9.seal(t, d9.key, 1, remote("plant1", "d9"), msg(6)))               // unknown device
	p.pubFile(t, local("d3"), d3.seal(t, d3.key, 1, remote("plant1", "d3"), msg(8)))               // revoked device
	p.pubFile(t, local("d1"), d1.seal(t, d1.key, 7, remote("plant1", "d1"), msg(7)))               // accepted: above every counter seen

	want := map[string]uint64{bridge.RefusedReplay: 1, bridge.RefusedSignature: 1, bridge.RefusedTopic: 2, bridge.RefusedSite: 1, bridge.RefusedDevice: 2}
	wait.For(t, "every message to be served", func() bool {
		h := svc.Health("plant1")
		n := h.Accepted
		for _, c := range h.Refused {
			n += c
		}
		return n == 9
	})
	h := svc.Health("plant1")
	if !h.Connected || h.LastSeen.IsZero() || h.Accepted != 2 {
		t.Fatalf("health %+v", h)
	}
	for r, n := range want {
		if h.Refused[r] != n {
			t.Errorf("refused %s: %d, want %d (health %+v)", r, h.Refused[r], n, h)
		}
		if m := refusedMetric(t, reg, "plant1", r); m != float64(n) {
			t.Errorf("sigil_bridge_messages_refused_total{site=plant1,reason=%s} = %v, want %d", r, m, n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || string(got[0].payload) != string(msg(1)) || string(got[1].payload) != string(msg(7)) {
		t.Fatalf("dispatched %d messages: %+v", len(got), got)
	}
	for _, d := range got {
		if d.topic != local("d1") || d.id.DeviceID != "d1" || d.id.Site != "plant1" || d.id.Cert == nil || hex.EncodeToString(d.id.Cert.SerialNumber.Bytes()) != d1.serial {
			t.Fatalf("dispatched as %+v on %q", d.id, d.topic)
		}
	}
	// Audited in aggregate: one entry per reason at its first refusal
	// (the second wrong topic is only counted).
	if n := countAudit(audits, "bridge.refused"); n != len(want) {
		t.Fatalf("%d bridge.refused audit entries, want %d: %+v", n, len(want), audits)
	}
	if serial, last, err := svc.Counter(ctx, "d1"); err != nil || serial != d1.serial || last != 7 {
		t.Fatalf("stored counter %q %d %v", serial, last, err)
	}
}

// refusedMetric reads sigil_bridge_messages_refused_total{site,reason}
// from reg (0 when absent).
func refusedMetric(t *testing.T, reg *prometheus.Registry, site, reason string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range fams {
		if fam.GetName() != "sigil_bridge_messages_refused_total" {
			continue
		}
		for _, m := range fam.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["site"] == site && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// fakeBroker keeps the handler Consume subscribes.
type fakeBroker struct {
	filter  string
	handler func(broker.Identity, string, []byte)
}

func (b *fakeBroker) Subscribe(filter string, h func(broker.Identity, string, []byte)) error {
	b.filter, b.handler = filter, h
	return nil
}

func (b *fakeBroker) BridgeConnected(string) bool { return true }

// FuzzHandle: whatever a bridge publishes (topic and bytes), Handle
// never panics and dispatches nothing that is not a valid envelope of the
// assigned device's current key for that topic.
func FuzzHandle(f *testing.F) {
	fx := newFixture(f)
	s := fx.open(f)
	d1 := newPlantDevice(f, fx, "d1", newKey(f))
	if err := s.AssignSite(context.Background(), operator, "d1", "plant1"); err != nil {
		f.Fatal(err)
	}
	var b fakeBroker
	dispatched := 0
	if err := s.Consume(&b, bridge.Consume{Devices: devices{"d1": d1.dev}, TrustDomain: "fleet.test",
		Dispatch: func(broker.Identity, string, []byte) { dispatched++ }}); err != nil {
		f.Fatal(err)
	}
	if b.filter != "sigil/site/+/v1/dev/+/up/#" {
		f.Fatalf("Consume subscribed to %q", b.filter)
	}
	topic := "sigil/site/plant1/v1/dev/d1/up/telemetry"
	f.Add(topic, d1.seal(f, envelopetest.Other(), 1, topic, []byte("x")))
	f.Add("sigil/site/plant1/v1/dev/d1/up/", []byte{0xd2, 0x84})
	f.Add("sigil/site/plant1/v1/enroll/d1/up/x", []byte{})
	for _, v := range envelopetest.Vectors() {
		f.Add(topic, v.Bytes())
	}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		b.handler(broker.Identity{ClientID: "bridge-plant1", Site: "plant1"}, topic, payload)
		if dispatched != 0 {
			t.Fatalf("dispatched a message no key of the device signed: %q %x", topic, payload)
		}
	})
}
