package secrets

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// openStoreBackend opens the store of cfg.Dir in bbolt, or in PostgreSQL
// under TestDeliveryConformance/postgres.
func openStoreBackend(t testing.TB, cfg Config) (*Store, error) {
	db, ok := pgtest.Database(t, cfg.Dir)
	if !ok {
		return Open(cfg)
	}
	return OpenPostgres(context.Background(), db, cfg)
}

// openDeliveriesBackend opens the delivery records at path in bbolt, or
// in PostgreSQL under TestDeliveryConformance/postgres.
func openDeliveriesBackend(t testing.TB, path string) (*DeliveryStore, error) {
	db, ok := pgtest.Database(t, path)
	if !ok {
		return OpenDeliveries(path)
	}
	return OpenDeliveriesPostgres(context.Background(), db)
}

// deliveryConformanceTests are the delivery tests run against both
// backends (the store's own are in TestConformance).
var deliveryConformanceTests = []pgtest.Test{
	{Name: "SecretDelivery", Fn: TestSecretDelivery},
	{Name: "SecretsNeedACurrentVerdict", Fn: TestSecretsNeedACurrentVerdict},
	{Name: "NoSecretsNoDeviceRead", Fn: TestNoSecretsNoDeviceRead},
}

// TestDeliveryConformance runs the delivery tests on PostgreSQL (pgtest:
// skipped without one unless CI=true); the package's tests run them on
// bbolt.
func TestDeliveryConformance(t *testing.T) {
	srv := pgtest.Conformance(t, deliveryConformanceTests)
	t.Run("ReplicasLoseNoDeliveryChange", func(t *testing.T) { testReplicasLoseNoChange(t, srv) })
	t.Run("FailedSendKeepsAnotherReplicasSend", func(t *testing.T) { testFailedSendKeepsOthers(t, srv) })
}

// testFailedSendKeepsOthers: replica A records a secret's delivery as
// sent and publishes it; while A's publish hangs, replica B (the device
// reconnected through another broker) delivers the same version and its
// publish succeeds; then A's publish fails. A's undo must leave B's
// delivery recorded as sent, with no error (review N1: the undo reverted
// it, so that the device's ack of B's delivery was ignored as one for a
// version never sent).
func testFailedSendKeepsOthers(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev-a", State: inventory.StateActive, Model: "gw-1", EKPublic: softEK(t)}); err != nil {
		t.Fatal(err)
	}
	var b *Service
	replica := func(send func(deviceID, kind string, payload []byte) error) *Service {
		db := pgtest.Open(t, url)
		st, err := OpenPostgres(t.Context(), db, Config{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		dl, err := OpenDeliveriesPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dl.Close() })
		return NewService(ServiceConfig{Store: st, Deliveries: dl, Devices: inv, Send: send,
			Connected: func(string) bool { return true }, Current: func(string) error { return nil }})
	}
	a := replica(func(deviceID, _ string, _ []byte) error {
		b.deliver(t.Context(), deviceID) // meanwhile, on B
		return errors.New("publish: broker gone")
	})
	bSent := 0
	b = replica(func(string, string, []byte) error { bSent++; return nil })
	if _, err := a.Put("api-key", []byte("k"), Target{Device: "dev-a"}, false); err != nil {
		t.Fatal(err)
	}
	a.deliver(t.Context(), "dev-a")
	if bSent != 1 {
		t.Fatalf("B sent %d deliveries, want 1", bSent)
	}
	ds, err := b.DeviceSecrets("dev-a")
	if err != nil || len(ds) != 1 || ds[0].Sent != 1 || ds[0].Error != "" {
		t.Fatalf("after A's publish failed and B's succeeded: %+v, %v; want version 1 sent, no error", ds, err)
	}
	b.Ack("dev-a", ackEnv(t, &wire.SecretAck{Name: "api-key", Version: 1, OK: true}))
	if ds, err := a.DeviceSecrets("dev-a"); err != nil || len(ds) != 1 || ds[0].Acked != 1 {
		t.Fatalf("the device's ack of B's delivery: %+v, %v; want version 1 acknowledged", ds, err)
	}
}

// testReplicasLoseNoChange: changes of one delivery record made at once
// on two replicas all land (each reads the record it changes in its
// transaction: none overwrites another), and a record is created once.
func testReplicasLoseNoChange(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	var replicas []*DeliveryStore
	for range 2 {
		db := pgtest.Open(t, url)
		d, err := OpenDeliveriesPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		replicas = append(replicas, d)
	}
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			err := replicas[i%2].Update(t.Context(), "wifi", "dev-a", func(r *Delivery) { r.Sent++ })
			if err != nil {
				t.Errorf("update: %v", err)
			}
		})
	}
	wg.Wait()
	got, err := replicas[0].Get(t.Context(), "wifi", "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	all, err := replicas[1].ForDevice(t.Context(), "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Sent != n || fmt.Sprint(len(all)) != "1" {
		t.Fatalf("after %d changes on two replicas: sent %d, %d records (want %d, 1)", n, got.Sent, len(all), n)
	}
	sum, err := replicas[1].Summary(t.Context(), "wifi", n)
	if err != nil || sum.Pending != 1 {
		t.Fatalf("summary %+v %v", sum, err)
	}
}
