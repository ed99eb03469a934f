package secrets

import (
	"encoding/json"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
)

// DeliveryStore keeps delivery records in bbolt: a bucket per secret name
// whose keys are device IDs and values JSON Delivery records.
type DeliveryStore struct{ db *boltdb.DB }

var _ Deliveries = (*DeliveryStore)(nil)

// OpenDeliveries opens (creating it) the delivery records at path.
func OpenDeliveries(path string) (*DeliveryStore, error) {
	db, err := boltdb.Open(path, boltdb.Schema{}, boltdb.Options{Name: "secrets"})
	if err != nil {
		return nil, err
	}
	return &DeliveryStore{db: db}, nil
}

// Close closes the file.
func (d *DeliveryStore) Close() error { return d.db.Close() }

// Get implements Deliveries.
func (d *DeliveryStore) Get(name, deviceID string) (Delivery, error) {
	var r Delivery
	err := d.db.View(func(tx *bolt.Tx) error {
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
func (d *DeliveryStore) Update(name, deviceID string, fn func(*Delivery)) error {
	return d.modify(name, deviceID, true, fn)
}

// UpdateExisting implements Deliveries.
func (d *DeliveryStore) UpdateExisting(name, deviceID string, fn func(*Delivery)) error {
	return d.modify(name, deviceID, false, fn)
}

func (d *DeliveryStore) modify(name, deviceID string, create bool, fn func(*Delivery)) error {
	return d.db.Update(func(tx *bolt.Tx) error {
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
func (d *DeliveryStore) ForDevice(deviceID string) (map[string]Delivery, error) {
	out := map[string]Delivery{}
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if v := b.Get([]byte(deviceID)); v != nil {
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
func (d *DeliveryStore) Summary(name string, version int) (DeliverySummary, error) {
	var sum DeliverySummary
	err := d.db.View(func(tx *bolt.Tx) error {
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
