// Package state is the device's crash-safe store (bbolt): its identity, the
// TPM-wrapped key blobs, certificates, enrollment status, the sealed
// secrets the fleet delivered, the release trust set, the firmware update
// record and anti-rollback floor, the SSH host key and the telemetry
// outbox.
//
// Nothing stored here is secret on its own: key blobs and sealed secrets are
// wrapped by the TPM and can be loaded only into the TPM that created or
// imported them. Every write is one bbolt transaction, synced before it
// returns, so a crash leaves either the old or the new record.
//
// The records and their rules live here; the bytes live in an Engine. Open
// uses bbolt; New takes any engine (a simulator keeps its devices' state
// in memory). Package statetest holds the tests every engine must pass.
package state

import (
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
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

// Store is the device state store. Its methods are safe for concurrent
// use as far as its Engine's transactions are (bbolt's are).
type Store struct {
	db Engine
}

// New returns a store over e, which it owns: Close closes e. Open gives a
// store on a bbolt file; New serves other engines (a simulator's in
// memory).
func New(e Engine) *Store { return &Store{db: e} }

// init creates the identity bucket of a store opened for writing.
func (s *Store) init() error {
	err := s.db.Update(func(tx Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketIdentity)
		return err
	})
	if err != nil {
		return fmt.Errorf("state: init: %w", err)
	}
	return nil
}

// Close closes the store and its engine.
func (s *Store) Close() error { return s.db.Close() }

// Identity returns the stored identity, or an empty one (StatusNew).
func (s *Store) Identity() (*Identity, error) {
	id := &Identity{}
	err := s.db.View(func(tx Tx) error {
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
	err = s.db.Update(func(tx Tx) error {
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
