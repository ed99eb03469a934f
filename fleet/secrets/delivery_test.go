package secrets

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// softEK is the TPMT_PUBLIC of an ECC EK (TCG template) over a software key.
func softEK(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := tpm2.ECCEKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))},
		Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))},
	})
	return tpm2.Marshal(tmpl)
}

type sent struct {
	mu  sync.Mutex
	msg map[string][]*wire.SecretDeliver
}

func (s *sent) send(deviceID, kind string, payload []byte) error {
	env, err := wire.Decode(payload)
	if err != nil {
		return err
	}
	var d wire.SecretDeliver
	if err := wire.DecodeBody(env, wire.TypeSecretDeliver, &d); err != nil || kind != "secret" {
		return err
	}
	s.mu.Lock()
	s.msg[deviceID] = append(s.msg[deviceID], &d)
	s.mu.Unlock()
	return nil
}

func (s *sent) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msg[id])
}

func ackEnv(t *testing.T, a *wire.SecretAck) *wire.Envelope {
	t.Helper()
	b, err := wire.Encode(wire.TypeSecretAck, nil, time.Now(), a)
	if err != nil {
		t.Fatal(err)
	}
	env, err := wire.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// deliveryStores opens what the delivery service reads and writes, in a
// test directory: the inventory, the attestation history, the secrets and
// their delivery records (the last two on the backend the test runs on);
// each is closed when t ends.
func deliveryStores(t *testing.T) (*inventory.Store, *attest.History, *Store, Deliveries) {
	t.Helper()
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	hist, err := attest.OpenHistory(filepath.Join(dir, "hist.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hist.Close() })
	st, err := openStoreBackend(t, Config{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dl, err := openDeliveriesBackend(t, filepath.Join(dir, DeliveriesFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dl.Close() })
	return inv, hist, st, dl
}

// TestSecretDelivery drives the delivery service on real stores: PCR
// binding waits for a passing attestation and uses its sha256 values, an
// ack stops redelivery, and disconnected or quarantined devices get
// nothing.
func TestSecretDelivery(t *testing.T) {
	inv, hist, st, dl := deliveryStores(t)
	out := &sent{msg: map[string][]*wire.SecretDeliver{}}
	online := map[string]bool{"dev-a": true, "dev-q": true}
	current := func(string) error { return nil } // attestation judged current; TestSecretsNeedACurrentVerdict has the other case
	svc := NewService(ServiceConfig{Store: st, Deliveries: dl, Devices: inv, Attestations: hist, PCRs: BoundPCRs(nil),
		Send: out.send, Connected: func(id string) bool { return online[id] }, Current: current})
	for _, d := range []*inventory.Device{
		{ID: "dev-a", State: inventory.StateActive, Model: "gw-1", EKPublic: softEK(t)},
		{ID: "dev-off", State: inventory.StateActive, Model: "gw-1", EKPublic: softEK(t)},
		{ID: "dev-q", State: inventory.StateQuarantined, Model: "gw-1", EKPublic: softEK(t)},
	} {
		if err := inv.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := svc.Put("disk-key", []byte("k"), Target{Model: "gw-1"}, true); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-a", "dev-off", "dev-q"} {
		svc.deliver(t.Context(), id)
	}
	if out.count("dev-a")+out.count("dev-off")+out.count("dev-q") != 0 {
		t.Fatalf("sent before any attestation: %v", out.msg)
	}
	ds, err := svc.DeviceSecrets("dev-a")
	if err != nil || len(ds) != 1 || !strings.Contains(ds[0].Error, "no passing attestation") || ds[0].Latest != 1 {
		t.Fatalf("device secrets %+v %v", ds, err)
	}

	pcrs := map[int]string{}
	for _, p := range BoundPCRs(nil) {
		pcrs[p] = strings.Repeat("0", 62) + "0" + string("0123456789abcdef"[p%16])
	}
	for _, r := range []*attest.Record{
		{DeviceID: "dev-a", Result: "pass", PCRs: map[string]map[int]string{"sha256": pcrs}},
		{DeviceID: "dev-a", Result: "fail", PCRs: map[string]map[int]string{"sha256": {0: strings.Repeat("ff", 32)}}},
	} {
		if err := hist.Add(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	svc.deliver(t.Context(), "dev-a")
	if out.count("dev-a") != 1 {
		t.Fatalf("sent %d to dev-a", out.count("dev-a"))
	}
	d := out.msg["dev-a"][0]
	if d.Name != "disk-key" || d.Version != 1 || d.PCRs == nil || d.PCRs.Hash != wire.AlgSHA256 || len(d.PCRs.PCRs) != 11 {
		t.Fatalf("delivery %+v", d)
	}
	// An ack for a version never sent is ignored; the right one counts.
	svc.Ack("dev-a", ackEnv(t, &wire.SecretAck{Name: "disk-key", Version: 5, OK: true}))
	if ds, _ := svc.DeviceSecrets("dev-a"); ds[0].Acked != 0 {
		t.Fatalf("ack for an unsent version recorded: %+v", ds[0])
	}
	svc.Ack("dev-a", ackEnv(t, &wire.SecretAck{Name: "disk-key", Version: 1, OK: true}))
	ds, _ = svc.DeviceSecrets("dev-a")
	if ds[0].Acked != 1 || ds[0].Sent != 1 || ds[0].Error != "" {
		t.Fatalf("after ack %+v", ds[0])
	}
	svc.deliver(t.Context(), "dev-a")
	if out.count("dev-a") != 1 {
		t.Fatal("an acknowledged version was sent again")
	}
	l, err := svc.List()
	if err != nil || len(l) != 1 || l[0].Delivery.Acked != 1 {
		t.Fatalf("list %+v %v", l, err)
	}
	if out.count("dev-off")+out.count("dev-q") != 0 {
		t.Fatal("sent to a disconnected or quarantined device")
	}

	// A new version goes out again; a failed import is recorded.
	if _, err := svc.Put("disk-key", []byte("k2"), Target{Model: "gw-1"}, true); err != nil {
		t.Fatal(err)
	}
	svc.deliver(t.Context(), "dev-a")
	if out.count("dev-a") != 2 || out.msg["dev-a"][1].Version != 2 {
		t.Fatalf("rotation not sent: %d", out.count("dev-a"))
	}
	svc.Ack("dev-a", ackEnv(t, &wire.SecretAck{Name: "disk-key", Version: 2, Error: "tpm: import secret: integrity"}))
	ds, _ = svc.DeviceSecrets("dev-a")
	if ds[0].Acked != 1 || !strings.HasPrefix(ds[0].Error, "device: ") {
		t.Fatalf("failed import %+v", ds[0])
	}
	if l, _ := svc.List(); l[0].Delivery.Failed != 1 {
		t.Fatalf("summary %+v", l[0].Delivery)
	}
}

func TestBoundPCRs(t *testing.T) {
	if got := BoundPCRs([]wire.PCRSelection{{Hash: 0x0004, PCRs: []int{1}}, {Hash: wire.AlgSHA256, PCRs: []int{7, 14}}}); len(got) != 2 || got[0] != 7 {
		t.Fatalf("%v", got)
	}
	if got := BoundPCRs([]wire.PCRSelection{{Hash: 0x0004, PCRs: []int{1}}}); got != nil {
		t.Fatalf("sha1 only: %v", got)
	}
}

// TestSecretsNeedACurrentVerdict: a secret goes to an active, connected
// device only once it passed an attestation in its current session.
func TestSecretsNeedACurrentVerdict(t *testing.T) {
	dir := t.TempDir()
	inv := openInventory(t)
	hist, err := attest.OpenHistory(filepath.Join(dir, "hist.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	st, err := openStoreBackend(t, Config{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dl, err := openDeliveriesBackend(t, filepath.Join(dir, DeliveriesFile))
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	att, err := attest.New(attest.Config{Inventory: inv, History: hist, Send: func(string, string, []byte) error { return nil }, Disconnect: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	att.SessionStarted("dev-a", time.Now())
	out := &sent{msg: map[string][]*wire.SecretDeliver{}}
	svc := NewService(ServiceConfig{Store: st, Deliveries: dl, Devices: inv, Attestations: hist, PCRs: BoundPCRs(nil),
		Send: out.send, Connected: func(string) bool { return true }, Current: att.Current})
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev-a", State: inventory.StateActive, Model: "gw-1", EKPublic: softEK(t),
		Attestation: wire.VerdictPass, LastAttested: time.Now().Add(-48 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Put("api-key", []byte("k"), Target{Device: "dev-a"}, false); err != nil {
		t.Fatal(err)
	}
	svc.deliver(t.Context(), "dev-a")
	if n := out.count("dev-a"); n != 0 {
		t.Fatalf("secret sent on a pass from two days ago (%d deliveries)", n)
	}
	if ds, err := svc.DeviceSecrets("dev-a"); err != nil || len(ds) != 1 || !strings.Contains(ds[0].Error, "current session") {
		t.Fatalf("the wait is not recorded: %+v %v", ds, err)
	}
	// Without a way to judge attestations, nothing goes out.
	svc.current = nil
	svc.deliver(t.Context(), "dev-a")
	if n := out.count("dev-a"); n != 0 {
		t.Fatalf("secret sent without an attestation check (%d deliveries)", n)
	}
}

func openInventory(t *testing.T) *inventory.Store {
	t.Helper()
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	return inv
}

// countingDevices counts the device records read through it.
type countingDevices struct {
	Devices
	mu    sync.Mutex
	reads int
}

func (c *countingDevices) Device(ctx context.Context, id string) (*inventory.Device, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Devices.Device(ctx, id)
}

// TestNoSecretsNoDeviceRead: with no secret to deliver, a device's
// passing verdict (or hello) costs no read of its inventory record — the
// fleet queues one after every pass — and once there is a secret for it,
// the device is read and served as before.
func TestNoSecretsNoDeviceRead(t *testing.T) {
	inv, hist, st, dl := deliveryStores(t)
	devs := &countingDevices{Devices: inv}
	out := &sent{msg: map[string][]*wire.SecretDeliver{}}
	svc := NewService(ServiceConfig{Store: st, Deliveries: dl, Devices: devs, Attestations: hist, PCRs: BoundPCRs(nil),
		Send: out.send, Connected: func(string) bool { return true }, Current: func(string) error { return nil }})
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev-a", State: inventory.StateActive, Model: "gw-1", EKPublic: softEK(t)}); err != nil {
		t.Fatal(err)
	}
	svc.deliver(t.Context(), "dev-a")
	if devs.reads != 0 {
		t.Fatalf("%d device reads with no secret to deliver", devs.reads)
	}
	if _, err := svc.Put("api-key", []byte("k"), Target{Model: "gw-1"}, false); err != nil {
		t.Fatal(err)
	}
	svc.deliver(t.Context(), "dev-a")
	if devs.reads != 1 || out.count("dev-a") != 1 {
		t.Fatalf("with a secret: %d device reads, %d deliveries", devs.reads, out.count("dev-a"))
	}
}

// TestAckBeforeSendReturns: the device's acknowledgement may be handled
// (on another replica of a broker pool, or another goroutine) before the
// publish that carried the secret has returned; it counts. A secret whose
// publish failed is not recorded as sent.
func TestAckBeforeSendReturns(t *testing.T) {
	inv, _, st, dl := deliveryStores(t)
	var svc *Service
	failing := false
	send := func(deviceID, _ string, payload []byte) error {
		if failing {
			return errors.New("publish: no broker")
		}
		env, err := wire.Decode(payload)
		if err != nil {
			return err
		}
		var d wire.SecretDeliver
		if err := wire.DecodeBody(env, wire.TypeSecretDeliver, &d); err != nil {
			return err
		}
		svc.Ack(deviceID, ackEnv(t, &wire.SecretAck{Name: d.Name, Version: d.Version, OK: true})) // the device answered first
		return nil
	}
	svc = NewService(ServiceConfig{Store: st, Deliveries: dl, Devices: inv, Send: send,
		Connected: func(string) bool { return true }, Current: func(string) error { return nil }})
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev-a", State: inventory.StateActive, Model: "gw-1", EKPublic: softEK(t)}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Put("api-key", []byte("k"), Target{Device: "dev-a"}, false); err != nil {
		t.Fatal(err)
	}
	svc.deliver(t.Context(), "dev-a")
	ds, err := svc.DeviceSecrets("dev-a")
	if err != nil || len(ds) != 1 || ds[0].Sent != 1 || ds[0].Acked != 1 || ds[0].Error != "" {
		t.Fatalf("an ack handled before the publish returned: %+v, %v", ds, err)
	}
	failing = true
	if _, err := svc.Put("api-key", []byte("k2"), Target{Device: "dev-a"}, false); err != nil {
		t.Fatal(err)
	}
	svc.deliver(t.Context(), "dev-a")
	ds, err = svc.DeviceSecrets("dev-a")
	if err != nil || len(ds) != 1 || ds[0].Sent != 1 || ds[0].Acked != 1 || !strings.Contains(ds[0].Error, "no broker") {
		t.Fatalf("a publish that failed: %+v, %v", ds, err)
	}
}
