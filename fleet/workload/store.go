package workload

import (
	"cmp"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// File is the store's bbolt file in the fleet's data directory.
const File = "workloads.db"

// Table is the PostgreSQL table holding the buckets (kv.Postgres).
const Table = "workload_kv"

var (
	bucketRegistrations = []byte("registrations")
	bucketKeys          = []byte("jwt_keys")
)

// Buckets are the store's buckets, in the bbolt file and in PostgreSQL.
var Buckets = [][]byte{bucketRegistrations, bucketKeys}

// migrations are the store's tables in PostgreSQL (component "workload"
// in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// Store keeps workload registrations (name -> JSON) and the JWT-SVID
// signing keys (key ID -> JSON, the private key sealed with AES-256-GCM
// under the key given to Open, so that it is never at rest in clear): in a
// bbolt file (Open) or in PostgreSQL (OpenPostgres). Safe for concurrent
// use.
type Store struct {
	db   kv.DB
	aead cipher.AEAD
}

// Open opens (creating it) the store file at path; kek is the 32-byte
// key that seals the signing keys (secrets.DerivedKey).
func Open(path string, kek []byte) (*Store, error) {
	a, err := newAEAD(kek)
	if err != nil {
		return nil, err
	}
	db, err := boltdb.Open(path, boltdb.Schema{Buckets: Buckets}, boltdb.Options{Name: "workload"})
	if err != nil {
		return nil, err
	}
	return &Store{db: kv.Bolt(db), aead: a}, nil
}

// OpenPostgres opens the store in the PostgreSQL database db, bringing its
// tables up to date first. Close leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB, kek []byte) (*Store, error) {
	a, err := newAEAD(kek)
	if err != nil {
		return nil, err
	}
	k, err := kv.PostgresMigrated(ctx, db, "workload", migrations, Table)
	if err != nil {
		return nil, err
	}
	return &Store{db: k, aead: a}, nil
}

func newAEAD(kek []byte) (cipher.AEAD, error) {
	if len(kek) != 32 {
		return nil, errors.New("workload: the sealing key must be 32 bytes")
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	return cipher.NewGCM(b)
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Put creates or replaces a registration after validating it.
func (s *Store) Put(ctx context.Context, r Registration) error {
	if err := r.Validate(); err != nil {
		return err
	}
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	return s.db.Update(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketRegistrations).Put([]byte(r.Name), v)
	})
}

// Get returns the registration name (ErrNotFound).
func (s *Store) Get(ctx context.Context, name string) (Registration, error) {
	var r Registration
	err := s.db.View(ctx, func(tx kv.Tx) error {
		v := tx.Bucket(bucketRegistrations).Get([]byte(name))
		if v == nil {
			return ErrNotFound
		}
		r = Registration{}
		return json.Unmarshal(v, &r)
	})
	return r, err
}

// Delete removes the registration name (ErrNotFound).
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketRegistrations)
		if b.Get([]byte(name)) == nil {
			return ErrNotFound
		}
		return b.Delete([]byte(name))
	})
}

// List returns every registration, by name.
func (s *Store) List(ctx context.Context) ([]Registration, error) {
	var out []Registration
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = nil
		return tx.Bucket(bucketRegistrations).ForEach(func(_, v []byte) error {
			var r Registration
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("workload: list: %w", err)
	}
	return out, nil
}

// storedKey is a signing key as stored: the PKCS#8 private key sealed.
type storedKey struct {
	ID      string    `json:"kid"`
	Sealed  []byte    `json:"sealed"`
	Created time.Time `json:"created"`
	// Retired is when the key stopped signing; zero for the active key.
	Retired time.Time `json:"retired,omitzero"`
}

// keys returns the stored signing keys, oldest first (the active one
// last).
func (s *Store) keys(ctx context.Context) ([]storedKey, error) {
	var out []storedKey
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = nil
		return tx.Bucket(bucketKeys).ForEach(func(_, v []byte) error {
			var k storedKey
			if err := json.Unmarshal(v, &k); err != nil {
				return err
			}
			out = append(out, k)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("workload: signing keys: %w", err)
	}
	slices.SortFunc(out, func(a, b storedKey) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return cmp.Compare(b.Retired.UnixNano(), a.Retired.UnixNano()) // the active key (zero) last
	})
	return out, nil
}

// rotateKeys stores next as the active key, retiring the others at now,
// and deletes the keys retired before drop, in one transaction. When
// onlyIfNone is set and a key is active, it changes nothing and reports
// false (the first key, created by whichever replica gets there first).
func (s *Store) rotateKeys(ctx context.Context, next *storedKey, now, drop time.Time, onlyIfNone bool) (bool, error) {
	var done bool
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		done = false
		if err := tx.Lock("workload.jwt_keys"); err != nil {
			return err
		}
		b := tx.Bucket(bucketKeys)
		var keys []storedKey
		if err := b.ForEach(func(_, v []byte) error {
			var k storedKey
			if err := json.Unmarshal(v, &k); err != nil {
				return err
			}
			keys = append(keys, k)
			return nil
		}); err != nil {
			return err
		}
		if onlyIfNone && slices.ContainsFunc(keys, func(k storedKey) bool { return k.Retired.IsZero() }) {
			return nil
		}
		for _, k := range keys {
			switch {
			case !k.Retired.IsZero() && k.Retired.Before(drop):
				if err := b.Delete([]byte(k.ID)); err != nil {
					return err
				}
				continue
			case k.Retired.IsZero() && next != nil:
				k.Retired = now
			default:
				continue
			}
			v, err := json.Marshal(k)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(k.ID), v); err != nil {
				return err
			}
		}
		if next != nil {
			v, err := json.Marshal(next)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(next.ID), v); err != nil {
				return err
			}
		}
		done = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("workload: rotate signing keys: %w", err)
	}
	return done, nil
}

func (s *Store) seal(kid string, der []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, der, []byte("sigil workload jwt key "+kid)), nil
}

func (s *Store) unseal(kid string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("workload: sealed signing key too short")
	}
	der, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte("sigil workload jwt key "+kid))
	if err != nil {
		return nil, fmt.Errorf("workload: signing key %s does not open with this fleet's key: %w", kid, err)
	}
	return der, nil
}
