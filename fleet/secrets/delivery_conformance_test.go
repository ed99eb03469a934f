package secrets

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
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
