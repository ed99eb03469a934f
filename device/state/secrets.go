package state

import (
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Errors of the secrets bucket.
var (
	// ErrNoSecret is returned for a secret the store does not hold.
	ErrNoSecret = errors.New("state: no such secret")
	// ErrOlderSecret is returned by PutSecret for a version older than the
	// one stored: a late redelivery never rolls a secret back.
	ErrOlderSecret = errors.New("state: a newer version of the secret is stored")
)

// Secret is a sealed secret the fleet delivered, as imported into the TPM:
// only the TPM-wrapped blob (device/tpm.SealedBlob), never the value.
type Secret struct {
	Name     string             `cbor:"1,keyasint"`
	Version  int                `cbor:"2,keyasint"`
	Public   []byte             `cbor:"3,keyasint"` // TPMT_PUBLIC of the sealed data object
	Private  []byte             `cbor:"4,keyasint"` // TPM2B_PRIVATE contents, encrypted by the EK
	PCRs     *wire.PCRSelection `cbor:"5,keyasint,omitempty"`
	Received time.Time          `cbor:"6,keyasint,omitempty"`
	// Previous is the version this one replaced, kept until its
	// ValidUntil when the fleet rotated the secret with a grace period.
	Previous   *Secret   `cbor:"7,keyasint,omitempty"`
	ValidUntil time.Time `cbor:"8,keyasint,omitempty"` // set on a Previous only
}

var bucketSecrets = []byte("secrets")

// PutSecret stores sec under its name, replacing an older or equal
// version, in one synced transaction. A version older than the stored one
// is refused with ErrOlderSecret. When keep is positive and sec replaces
// an older version, that version stays available (SecretVersion) until
// sec.Received + keep: the grace period of a rotated secret.
func (s *Store) PutSecret(sec *Secret, keep time.Duration) error {
	if !wire.ValidID(sec.Name) || sec.Version < 1 || len(sec.Public) == 0 || len(sec.Private) == 0 {
		return errors.New("state: save secret: name, version or blob missing")
	}
	v, err := wire.Marshal(sec)
	if err != nil {
		return fmt.Errorf("state: encode secret: %w", err)
	}
	err = s.db.Update(func(tx Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketSecrets)
		if err != nil {
			return err
		}
		if old := b.Get([]byte(sec.Name)); old != nil {
			var prev Secret
			err := wire.Unmarshal(old, &prev)
			if err == nil && prev.Version > sec.Version {
				return ErrOlderSecret
			}
			if err == nil && prev.Version < sec.Version && keep > 0 {
				prev.Previous = nil
				prev.ValidUntil = sec.Received.Add(keep)
				kept := *sec
				kept.Previous = &prev
				if v, err = wire.Marshal(&kept); err != nil {
					return err
				}
			}
		}
		return b.Put([]byte(sec.Name), v)
	})
	if errors.Is(err, ErrOlderSecret) {
		return err
	}
	if err != nil {
		return fmt.Errorf("state: save secret %s: %w", sec.Name, err)
	}
	return nil
}

// Secret returns the stored secret name, or ErrNoSecret.
func (s *Store) Secret(name string) (*Secret, error) {
	var out *Secret
	err := s.db.View(func(tx Tx) error {
		b := tx.Bucket(bucketSecrets)
		if b == nil {
			return ErrNoSecret
		}
		v := b.Get([]byte(name))
		if v == nil {
			return ErrNoSecret
		}
		out = &Secret{}
		return wire.Unmarshal(v, out)
	})
	if errors.Is(err, ErrNoSecret) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("state: read secret %s: %w", name, err)
	}
	return out, nil
}

// SecretVersion returns version of the secret name: the current one
// (version 0 means current), or the previous one while its grace period
// lasts at now. Anything else is ErrNoSecret.
func (s *Store) SecretVersion(name string, version int, now time.Time) (*Secret, error) {
	sec, err := s.Secret(name)
	if err != nil {
		return nil, err
	}
	switch p := sec.Previous; {
	case version == 0 || version == sec.Version:
		sec.Previous = nil
		return sec, nil
	case p != nil && p.Version == version && now.Before(p.ValidUntil):
		return p, nil
	case p != nil && p.Version == version:
		return nil, fmt.Errorf("%w: version %d of %s was valid until %s", ErrNoSecret, version, name, p.ValidUntil.Format(time.RFC3339))
	}
	return nil, fmt.Errorf("%w: version %d of %s", ErrNoSecret, version, name)
}

// Secrets returns every stored secret, sorted by name: the bucket is keyed
// by name, and Ascend walks it in key order.
func (s *Store) Secrets() ([]Secret, error) {
	var out []Secret
	err := s.db.View(func(tx Tx) error {
		b := tx.Bucket(bucketSecrets)
		if b == nil {
			return nil
		}
		return b.Ascend(nil, func(_, v []byte) (bool, error) {
			var sec Secret
			if err := wire.Unmarshal(v, &sec); err != nil {
				return false, err
			}
			out = append(out, sec)
			return true, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("state: read secrets: %w", err)
	}
	return out, nil
}
