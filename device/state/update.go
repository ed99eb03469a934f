package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Errors of the update bucket.
var (
	// ErrNoUpdate is returned by Update when no firmware update was ever
	// started.
	ErrNoUpdate = errors.New("state: no firmware update recorded")
	// ErrNoSlot is returned by Slot for a slot nothing was recorded about.
	ErrNoSlot = errors.New("state: nothing recorded about the slot")
	// ErrNoMeasurement is returned by Measurement before the first one.
	ErrNoMeasurement = errors.New("state: no measurement recorded")
)

// Update is the firmware update the device is working on, or the last one
// it finished (Final). device/update writes it before acting on each phase,
// so after a crash it says what may have been under way.
type Update struct {
	ID       string      `cbor:"1,keyasint"`           // the fleet's ID for this update
	Phase    string      `cbor:"2,keyasint"`           // device/update's phase name
	Final    bool        `cbor:"3,keyasint,omitempty"` // finished: committed, rolled back or failed
	Reason   wire.Reason `cbor:"4,keyasint,omitempty"` // why it failed or rolled back
	Message  string      `cbor:"5,keyasint,omitempty"` // public detail for the fleet
	URL      string      `cbor:"6,keyasint,omitempty"` // where the image is downloaded from
	Manifest []byte      `cbor:"7,keyasint,omitempty"` // the announced manifest, as received
	Bundle   []byte      `cbor:"8,keyasint,omitempty"` // the announced signature bundle, as received
	Release  *Release    `cbor:"9,keyasint,omitempty"` // the verified manifest, once verified
	From     string      `cbor:"10,keyasint,omitempty"`
	Target   string      `cbor:"11,keyasint,omitempty"`
	// BootID identifies the boot in which the device switched to Target
	// or started rolling back, to tell after a restart whether the device
	// has rebooted since.
	BootID   string    `cbor:"12,keyasint,omitempty"`
	Attempts int       `cbor:"13,keyasint,omitempty"` // failed attempts of the current phase
	Running  string    `cbor:"14,keyasint,omitempty"` // version running when it finished
	Started  time.Time `cbor:"15,keyasint,omitempty"`
	Changed  time.Time `cbor:"16,keyasint,omitempty"`
	Slot     string    `cbor:"17,keyasint,omitempty"` // slot running when it finished
	// Fetched counts the bytes of image and block index the device
	// downloaded for this update (an adaptive update fetches less than
	// the image's size).
	Fetched int64 `cbor:"18,keyasint,omitempty"`
}

// Release is the part of a verified manifest the device keeps.
type Release struct {
	Name            string `cbor:"1,keyasint"`
	Version         string `cbor:"2,keyasint"`
	SecurityVersion uint64 `cbor:"3,keyasint"`
	Size            int64  `cbor:"4,keyasint"`
	SHA256          []byte `cbor:"5,keyasint"`
	BlockSize       int64  `cbor:"6,keyasint,omitempty"` // of the block-hash index, 0 if none
	IndexSHA256     []byte `cbor:"7,keyasint,omitempty"` // digest of the block-hash index file
}

// Slot is what the device knows about the image in one firmware slot. A
// slot with an empty Version holds no known image (it is being written).
type Slot struct {
	Name            string `cbor:"1,keyasint"`
	Version         string `cbor:"2,keyasint,omitempty"`
	SHA256          []byte `cbor:"3,keyasint,omitempty"`
	SecurityVersion uint64 `cbor:"4,keyasint,omitempty"`
}

// Measurement is the last image digest the device extended into its
// firmware PCR, and the PCR's value (as computed) after the extension.
// Writing it before extending makes the extension happen once even across
// a crash: a PCR that reads After has been extended.
type Measurement struct {
	PCR    int    `cbor:"1,keyasint"`
	Digest []byte `cbor:"2,keyasint"`
	After  []byte `cbor:"4,keyasint"`
}

var (
	bucketUpdate   = []byte("update")
	keyUpdate      = []byte("current")
	keyMeasurement = []byte("measurement")
	keyFloor       = []byte("floor")
	prefixReport   = []byte("report/") // final updates not yet reported to the fleet
	prefixSlot     = []byte("slot/")
)

// SaveUpdate replaces the current update record and records slots (each
// replacing the record of the slot with its name), in one synced
// transaction. A final update is also queued for reporting until
// UpdateReported is called with its ID.
func (s *Store) SaveUpdate(u *Update, slots ...Slot) error {
	if !wire.ValidID(u.ID) || u.Phase == "" {
		return errors.New("state: save update: invalid ID or no phase")
	}
	v, err := wire.Marshal(u)
	if err != nil {
		return fmt.Errorf("state: encode update: %w", err)
	}
	vs := make([][]byte, len(slots))
	for i := range slots {
		if slots[i].Name == "" {
			return errors.New("state: save update: slot without a name")
		}
		if vs[i], err = wire.Marshal(&slots[i]); err != nil {
			return fmt.Errorf("state: encode slot: %w", err)
		}
	}
	err = s.db.Update(func(tx Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketUpdate)
		if err != nil {
			return err
		}
		if err := b.Put(keyUpdate, v); err != nil {
			return err
		}
		if u.Final {
			if err := b.Put(reportKey(u.ID), v); err != nil {
				return err
			}
		}
		for i := range slots {
			if err := b.Put(slotKey(slots[i].Name), vs[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("state: save update %s: %w", u.ID, err)
	}
	return nil
}

// Update returns the current update record, or ErrNoUpdate.
func (s *Store) Update() (*Update, error) {
	var u *Update
	err := s.db.View(func(tx Tx) error {
		v := updateValue(tx, keyUpdate)
		if v == nil {
			return ErrNoUpdate
		}
		u = &Update{}
		return wire.Unmarshal(v, u)
	})
	if errors.Is(err, ErrNoUpdate) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("state: read update: %w", err)
	}
	return u, nil
}

// UnreportedUpdates returns the finished updates not yet reported, oldest
// change first.
func (s *Store) UnreportedUpdates() ([]Update, error) {
	var out []Update
	err := s.db.View(func(tx Tx) error {
		b := tx.Bucket(bucketUpdate)
		if b == nil {
			return nil
		}
		return b.Ascend(prefixReport, func(k, v []byte) (bool, error) {
			if !bytes.HasPrefix(k, prefixReport) {
				return false, nil
			}
			var u Update
			if err := wire.Unmarshal(v, &u); err != nil {
				return false, fmt.Errorf("%s: %w", k, err)
			}
			out = append(out, u)
			return true, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("state: read unreported updates: %w", err)
	}
	// Sort pointers (their sort shares the code of every other pointer sort
	// in sigild), by change time, then by ID: the key order Ascend read them
	// in.
	order := make([]*Update, len(out))
	for i := range out {
		order[i] = &out[i]
	}
	slices.SortFunc(order, func(a, b *Update) int {
		if c := a.Changed.Compare(b.Changed); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	sorted := make([]Update, len(out))
	for i, u := range order {
		sorted[i] = *u
	}
	return sorted, nil
}

// UpdateReported removes the finished update id from the reporting queue.
// Removing one that is not queued is not an error.
func (s *Store) UpdateReported(id string) error {
	err := s.db.Update(func(tx Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketUpdate)
		if err != nil {
			return err
		}
		return b.Delete(reportKey(id))
	})
	if err != nil {
		return fmt.Errorf("state: update %s reported: %w", id, err)
	}
	return nil
}

// Slot returns what is recorded about slot name, or ErrNoSlot.
func (s *Store) Slot(name string) (*Slot, error) {
	var sl *Slot
	err := s.db.View(func(tx Tx) error {
		v := updateValue(tx, slotKey(name))
		if v == nil {
			return ErrNoSlot
		}
		sl = &Slot{}
		return wire.Unmarshal(v, sl)
	})
	if errors.Is(err, ErrNoSlot) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("state: read slot %s: %w", name, err)
	}
	return sl, nil
}

// SaveMeasurement records m in one synced transaction.
func (s *Store) SaveMeasurement(m *Measurement) error {
	v, err := wire.Marshal(m)
	if err != nil {
		return fmt.Errorf("state: encode measurement: %w", err)
	}
	err = s.db.Update(func(tx Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketUpdate)
		if err != nil {
			return err
		}
		return b.Put(keyMeasurement, v)
	})
	if err != nil {
		return fmt.Errorf("state: save measurement: %w", err)
	}
	return nil
}

// Measurement returns the last measurement recorded, or ErrNoMeasurement.
func (s *Store) Measurement() (*Measurement, error) {
	var m *Measurement
	err := s.db.View(func(tx Tx) error {
		v := updateValue(tx, keyMeasurement)
		if v == nil {
			return ErrNoMeasurement
		}
		m = &Measurement{}
		return wire.Unmarshal(v, m)
	})
	if errors.Is(err, ErrNoMeasurement) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("state: read measurement: %w", err)
	}
	return m, nil
}

// Floor returns the anti-rollback floor device/update recorded (see
// RaiseFloor); 0 when none was.
func (s *Store) Floor() (uint64, error) {
	var v uint64
	err := s.db.View(func(tx Tx) error {
		b := updateValue(tx, keyFloor)
		if b == nil {
			return nil
		}
		if len(b) != 8 {
			return fmt.Errorf("%d bytes, want 8", len(b))
		}
		v = binary.BigEndian.Uint64(b)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("state: read floor: %w", err)
	}
	return v, nil
}

// RaiseFloor records v as the anti-rollback floor, the lowest security
// version the device accepts, unless a higher one is recorded: it never
// lowers it. device/update raises it before it raises the TPM counter, so
// the floor holds even while the counter cannot be advanced, or after its
// NV index was deleted.
func (s *Store) RaiseFloor(v uint64) error {
	err := s.db.Update(func(tx Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketUpdate)
		if err != nil {
			return err
		}
		if cur := b.Get(keyFloor); len(cur) == 8 && binary.BigEndian.Uint64(cur) >= v {
			return nil
		}
		return b.Put(keyFloor, binary.BigEndian.AppendUint64(nil, v))
	})
	if err != nil {
		return fmt.Errorf("state: raise floor: %w", err)
	}
	return nil
}

// updateValue returns the value of key in the update bucket, nil when absent. The
// slice is valid only inside the transaction.
func updateValue(tx Tx, key []byte) []byte {
	b := tx.Bucket(bucketUpdate)
	if b == nil {
		return nil
	}
	return b.Get(key)
}

func reportKey(id string) []byte { return append(bytes.Clone(prefixReport), id...) }
func slotKey(name string) []byte { return append(bytes.Clone(prefixSlot), name...) }
