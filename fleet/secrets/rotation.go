package secrets

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"

	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Rotation generates a new random value for a secret on a schedule. The
// version it replaces stays valid for Grace: devices keep it available to
// local consumers until then, and the API shows it as "grace".
type Rotation struct {
	Every    config.Duration `json:"every"`              // at least a second
	Grace    config.Duration `json:"grace,omitempty"`    // 0 to 30 days
	Length   int             `json:"length,omitempty"`   // random bytes; 0 means 32
	Encoding string          `json:"encoding,omitempty"` // "base64url" (default, unpadded), "hex" or "raw"
}

// Validate checks the schedule.
func (r *Rotation) Validate() error {
	var errs []error
	if r.Every < config.Duration(time.Second) {
		errs = append(errs, errors.New("every must be at least 1s"))
	}
	if r.Grace < 0 || time.Duration(r.Grace) > wire.MaxSecretGrace*time.Second {
		errs = append(errs, errors.New("grace must be from 0 to 720h"))
	}
	if r.Length < 0 || r.Length > MaxValue/2 {
		errs = append(errs, fmt.Errorf("length must be from 1 to %d bytes", MaxValue/2))
	}
	switch r.Encoding {
	case "", "base64url", "hex", "raw":
	default:
		errs = append(errs, fmt.Errorf("encoding %q: want base64url, hex or raw", r.Encoding))
	}
	return errors.Join(errs...)
}

// Generate returns a new random value as the schedule says.
func (r *Rotation) Generate(rand io.Reader) ([]byte, error) {
	n := r.Length
	if n == 0 {
		n = 32
	}
	raw := make([]byte, n)
	if _, err := io.ReadFull(rand, raw); err != nil {
		return nil, fmt.Errorf("secrets: generate: %w", err)
	}
	switch r.Encoding {
	case "hex":
		out := []byte(hex.EncodeToString(raw))
		clear(raw)
		return out, nil
	case "raw":
		return raw, nil
	}
	out := []byte(base64.RawURLEncoding.EncodeToString(raw))
	clear(raw)
	return out, nil
}

var bucketRotation = []byte("rotation")

// SetRotation sets (or with nil clears) the rotation schedule of the
// secret name, which must exist.
func (s *Store) SetRotation(ctx context.Context, name string, r *Rotation) error {
	if r != nil {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("secrets: rotation of %s: %w", name, err)
		}
	}
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		if secretBucket(tx, name) == nil {
			return ErrNotFound
		}
		b, err := tx.CreateBucketIfNotExists(bucketRotation)
		if err != nil {
			return err
		}
		if r == nil {
			return b.Delete([]byte(name))
		}
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), v)
	})
	if err != nil {
		return fmt.Errorf("secrets: rotation of %s: %w", name, err)
	}
	return nil
}

// rotationOf reads the schedule of name inside tx (nil when none).
func rotationOf(tx kv.Tx, name string) *Rotation {
	b := tx.Bucket(bucketRotation)
	if b == nil {
		return nil
	}
	v := b.Get([]byte(name))
	if v == nil {
		return nil
	}
	var r Rotation
	if json.Unmarshal(v, &r) != nil {
		return nil
	}
	return &r
}

// Due returns the names of scheduled secrets whose latest version is at
// least their Every old at now.
func (s *Store) Due(ctx context.Context, now time.Time) ([]string, error) {
	var due []string
	err := s.db.View(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketRotation)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r Rotation
			if json.Unmarshal(v, &r) != nil {
				return nil
			}
			sb := tx.Bucket(bucketSecrets).Bucket(k)
			if sb == nil {
				return nil
			}
			key, val := sb.Cursor().Last()
			if key == nil {
				return nil
			}
			info, _, err := decodeRecord(string(k), key, val)
			if err != nil {
				return nil
			}
			if !now.Before(info.Created.Add(time.Duration(r.Every))) {
				due = append(due, string(k))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("secrets: due: %w", err)
	}
	return due, nil
}

// Rotate stores a new random version of the scheduled secret name with
// the latest version's target and PCR binding, and returns its Info. The
// schedule, the latest version's metadata and the new version are read and
// written in one transaction, and no stored value is decrypted.
func (s *Store) Rotate(ctx context.Context, name string) (*Info, error) {
	return s.rotate(ctx, name, time.Time{})
}

// RotateDue is Rotate for a scheduled rotation: it rotates name only if
// it is still due at now, checked in the rotation's transaction, and
// returns nil otherwise. Replicas that all find the secret due (Due)
// rotate it once.
func (s *Store) RotateDue(ctx context.Context, name string, now time.Time) (*Info, error) {
	return s.rotate(ctx, name, now)
}

// rotate rotates name; when due is set, only if it is due then.
func (s *Store) rotate(ctx context.Context, name string, due time.Time) (*Info, error) {
	var info *Info
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		info = nil
		r := rotationOf(tx, name)
		if r == nil {
			return fmt.Errorf("secrets: rotate %s: no rotation schedule", name)
		}
		b := tx.Bucket(bucketSecrets).Bucket([]byte(name))
		if b == nil {
			return ErrNotFound
		}
		k, v := b.Cursor().Last()
		if k == nil {
			return ErrNotFound
		}
		latest, _, err := decodeRecord(name, k, v)
		if err != nil {
			return err
		}
		if !due.IsZero() && due.Before(latest.Created.Add(time.Duration(r.Every))) {
			return nil // rotated meanwhile
		}
		value, err := r.Generate(s.rand)
		if err != nil {
			return err
		}
		defer clear(value)
		info, err = s.putTx(tx, name, value, latest.Target, latest.PCRBound)
		return err
	})
	if err != nil || info == nil {
		return nil, err
	}
	s.log.Info("secrets: rotated", "name", name, "version", info.Version)
	return info, nil
}

// Version states in a listing.
const (
	VersionCurrent = "current" // the latest version, delivered to devices
	VersionGrace   = "grace"   // replaced, still valid until ValidUntil
	VersionExpired = "expired" // replaced and past its grace period
)

// VersionInfo describes one stored version in a listing.
type VersionInfo struct {
	Version    int       `json:"version"`
	Created    time.Time `json:"created"`
	State      string    `json:"state"`
	ValidUntil time.Time `json:"valid_until,omitzero"`
}

// versionStates derives each version's state: a version is valid until
// the next one was created plus that one's grace period.
func versionStates(infos []Info, now time.Time) []VersionInfo {
	slices.SortFunc(infos, func(a, b Info) int { return a.Version - b.Version })
	out := make([]VersionInfo, len(infos))
	for i, in := range infos {
		v := VersionInfo{Version: in.Version, Created: in.Created, State: VersionCurrent}
		if i+1 < len(infos) {
			next := infos[i+1]
			v.ValidUntil = next.Created.Add(time.Duration(next.Grace))
			v.State = VersionExpired
			if now.Before(v.ValidUntil) {
				v.State = VersionGrace
			}
		}
		out[i] = v
	}
	return out
}
