package secrets

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// DeliveryStore keeps delivery records in a bbolt file (OpenDeliveries)
// or in PostgreSQL (OpenDeliveriesPostgres): a bucket per secret name
// whose keys are device IDs and values JSON Delivery records. In
// PostgreSQL the buckets are rows of the table DeliveriesTable
// (fleet/storage/kv).
type DeliveryStore struct{ db kv.DB }

var _ Deliveries = (*DeliveryStore)(nil)

// DeliveriesTable is the PostgreSQL table holding the delivery records'
// buckets (kv.Postgres). Its buckets are the secrets' names: sigil
// migrate copies every one.
const DeliveriesTable = "secret_deliveries_kv"

// deliveryMigrations are the delivery records' tables in PostgreSQL
// (component "secret_deliveries" in schema_migrations).
//
//go:embed deliverymigrations/*.sql
var deliveryMigrations embed.FS

// OpenDeliveries opens (creating it) the delivery records at path.
func OpenDeliveries(path string) (*DeliveryStore, error) {
	db, err := boltdb.Open(path, boltdb.Schema{}, boltdb.Options{Name: "secrets"})
	if err != nil {
		return nil, err
	}
	return &DeliveryStore{db: kv.Bolt(db)}, nil
}

// OpenDeliveriesPostgres opens the delivery records in the PostgreSQL
// database db, bringing its tables up to date first. Each change is one
// serializable transaction that reads the record it changes, so changes
// of one record from several replicas apply one after the other. Close
// leaves db open.
func OpenDeliveriesPostgres(ctx context.Context, db *postgres.DB) (*DeliveryStore, error) {
	if err := db.Migrate(ctx, "secret_deliveries", deliveryMigrations); err != nil {
		return nil, fmt.Errorf("secrets: deliveries: %w", err)
	}
	k, err := kv.Postgres(db, DeliveriesTable)
	if err != nil {
		return nil, fmt.Errorf("secrets: deliveries: %w", err)
	}
	return &DeliveryStore{db: k}, nil
}

// Close closes the file (a PostgreSQL store leaves its database open).
func (d *DeliveryStore) Close() error { return d.db.Close() }

// Get implements Deliveries.
func (d *DeliveryStore) Get(ctx context.Context, name, deviceID string) (Delivery, error) {
	var r Delivery
	err := d.db.View(ctx, func(tx kv.Tx) error {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return nil
		}
		if v := b.Get([]byte(deviceID)); v != nil {
			return json.Unmarshal(v, &r)
		}
		return nil
	})
	return r, err
}

// Update implements Deliveries.
func (d *DeliveryStore) Update(ctx context.Context, name, deviceID string, fn func(*Delivery)) error {
	return d.modify(ctx, name, deviceID, true, fn)
}

// UpdateExisting implements Deliveries.
func (d *DeliveryStore) UpdateExisting(ctx context.Context, name, deviceID string, fn func(*Delivery)) error {
	return d.modify(ctx, name, deviceID, false, fn)
}

// modify changes a record in one transaction; fn may run more than once
// (a retried PostgreSQL transaction), each time on the record as stored.
func (d *DeliveryStore) modify(ctx context.Context, name, deviceID string, create bool, fn func(*Delivery)) error {
	return d.db.Update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket([]byte(name))
		if b == nil && !create {
			return nil
		}
		b, err := tx.CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		var r Delivery
		v := b.Get([]byte(deviceID))
		if v == nil && !create {
			return nil
		}
		if v != nil {
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
		}
		fn(&r)
		nv, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put([]byte(deviceID), nv)
	})
}

// ForDevice implements Deliveries.
func (d *DeliveryStore) ForDevice(ctx context.Context, deviceID string) (map[string]Delivery, error) {
	out := map[string]Delivery{}
	err := d.db.View(ctx, func(tx kv.Tx) error {
		clear(out)
		return tx.ForEachBucket(func(name []byte) error {
			if v := tx.Bucket(name).Get([]byte(deviceID)); v != nil {
				var r Delivery
				if err := json.Unmarshal(v, &r); err != nil {
					return err
				}
				out[string(name)] = r
			}
			return nil
		})
	})
	return out, err
}

// Summary implements Deliveries.
func (d *DeliveryStore) Summary(ctx context.Context, name string, version int) (DeliverySummary, error) {
	var sum DeliverySummary
	err := d.db.View(ctx, func(tx kv.Tx) error {
		sum = DeliverySummary{}
		b := tx.Bucket([]byte(name))
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var r Delivery
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			switch {
			case r.Acked >= version:
				sum.Acked++
			case r.Error != "":
				sum.Failed++
			case r.Sent >= version:
				sum.Pending++
			}
			return nil
		})
	})
	return sum, err
}
