package state

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrNoReleaseTrust is returned by ReleaseTrust before the device got a
// release trust set.
var ErrNoReleaseTrust = errors.New("state: no release trust set")

var (
	bucketFirmware  = []byte("firmware")
	keyReleaseTrust = []byte("release-trust")
)

// ReleaseTrust returns the release trust set the device holds (the
// canonical encoding of firmware/verify's TrustSet), or ErrNoReleaseTrust.
// It is public data: the keys release signatures are checked against.
func (s *Store) ReleaseTrust() ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx Tx) error {
		if b := tx.Bucket(bucketFirmware); b != nil {
			out = bytes.Clone(b.Get(keyReleaseTrust))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("state: read release trust: %w", err)
	}
	if out == nil {
		return nil, ErrNoReleaseTrust
	}
	return out, nil
}

// SaveReleaseTrust replaces the release trust set in one synced
// transaction. The caller verified it: the device's first set (trust on
// first enrollment, when it holds none), or one reached by rotations that
// firmware/verify.Rotate accepted, each signed by the set it replaces.
func (s *Store) SaveReleaseTrust(trust []byte) error {
	if len(trust) == 0 {
		return errors.New("state: save release trust: empty")
	}
	err := s.db.Update(func(tx Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketFirmware)
		if err != nil {
			return err
		}
		return b.Put(keyReleaseTrust, trust)
	})
	if err != nil {
		return fmt.Errorf("state: save release trust: %w", err)
	}
	return nil
}
