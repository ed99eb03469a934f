// Package state is the device's crash-safe store (bbolt): its identity, the
// TPM-wrapped key blobs, certificates, enrollment status and the sealed
// secrets the fleet delivered.
//
// Nothing stored here is secret on its own: key blobs and sealed secrets are
// wrapped by the TPM and can be loaded only into the TPM that created or
// imported them. Every write is one bbolt transaction, synced before it
// returns, so a crash leaves either the old or the new record.
package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Enrollment statuses, in the order a device moves through them.
const (
	StatusNew      = ""         // nothing yet
	StatusKeys     = "keys"     // AK and transport key created, not enrolled
	StatusPending  = "pending"  // fleet waits for an operator's approval
	StatusEnrolled = "enrolled" // certificate held
)

// KeyBlob is a TPM-wrapped key: the public area and the private part
// encrypted by the TPM's storage key.
type KeyBlob struct {
	Public  []byte `cbor:"1,keyasint"`
	Private []byte `cbor:"2,keyasint"`
}

// Identity is everything the device needs to prove who it is.
type Identity struct {
	Status      string    `cbor:"1,keyasint"`
	DeviceID    string    `cbor:"2,keyasint,omitempty"`
	AK          KeyBlob   `cbor:"3,keyasint"`
	TK          KeyBlob   `cbor:"4,keyasint"`
	Cert        []byte    `cbor:"5,keyasint,omitempty"`
	Chain       [][]byte  `cbor:"6,keyasint,omitempty"`
	TrustBundle [][]byte  `cbor:"7,keyasint,omitempty"`
	EnrolledAt  time.Time `cbor:"8,keyasint,omitempty"`
	LastReason  string    `cbor:"9,keyasint,omitempty"` // last refusal or pending reason from the fleet
	Attempts    int       `cbor:"10,keyasint,omitempty"`
	// Next is a renewal in progress: a new transport key, created and
	// stored before it is used, and, once issued, its certificate. The
	// device switches to it only after it connected with it; until then
	// TK and Cert stay the working identity.
	Next *Renewal `cbor:"11,keyasint,omitempty"`
}

// Renewal is the next identity of a device during renewal.
type Renewal struct {
	TK          KeyBlob  `cbor:"1,keyasint"`
	Cert        []byte   `cbor:"2,keyasint,omitempty"`
	Chain       [][]byte `cbor:"3,keyasint,omitempty"`
	TrustBundle [][]byte `cbor:"4,keyasint,omitempty"`
}

var (
	bucketIdentity = []byte("identity")
	keyCurrent     = []byte("current")
)

// ErrLocked is returned when another process holds the store.
var ErrLocked = errors.New("state: store is locked by another process (is sigild running?)")

// Store is the device state store.
type Store struct {
	db *bolt.DB
}

// Options for Open.
type Options struct {
	ReadOnly bool
	Timeout  time.Duration // how long to wait for the file lock; 0 means 1s
}

// Open opens or creates the store at path (mode 0600, parent 0700).
func Open(path string, opts Options) (*Store, error) {
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout, ReadOnly: opts.ReadOnly})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("state: open %s: %w", path, err)
	}
	if !opts.ReadOnly {
		err = db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(bucketIdentity)
			return err
		})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("state: init: %w", err)
		}
	}
	return &Store{db: db}, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// Identity returns the stored identity, or an empty one (StatusNew).
func (s *Store) Identity() (*Identity, error) {
	id := &Identity{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIdentity)
		if b == nil {
			return nil
		}
		v := b.Get(keyCurrent)
		if v == nil {
			return nil
		}
		return wire.Unmarshal(v, id)
	})
	if err != nil {
		return nil, fmt.Errorf("state: read identity: %w", err)
	}
	return id, nil
}

// SaveIdentity replaces the stored identity in one transaction, synced to
// disk before it returns.
func (s *Store) SaveIdentity(id *Identity) error {
	v, err := wire.Marshal(id)
	if err != nil {
		return fmt.Errorf("state: encode identity: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketIdentity)
		if err != nil {
			return err
		}
		return b.Put(keyCurrent, v)
	})
	if err != nil {
		return fmt.Errorf("state: save identity: %w", err)
	}
	return nil
}
