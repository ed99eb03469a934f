package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
)

// File is the policies' bbolt file in the fleet's data directory.
const File = "policies.db"

// Errors of the store.
var (
	ErrNotFound = errors.New("policy: not found")                                             // no such policy or version, or it is deleted
	ErrConflict = errors.New("policy: another policy has the same model, firmware and group") // Select could not tell them apart
	ErrLocked   = errors.New("policy: store file locked by another process")
)

// StoreOption configures Open.
type StoreOption func(*storeOptions)

type storeOptions struct {
	now     func() time.Time
	noSync  bool
	timeout time.Duration
}

// WithClock sets the clock that stamps CreatedAt (default time.Now).
func WithClock(now func() time.Time) StoreOption { return func(o *storeOptions) { o.now = now } }

// WithNoSync skips fsync on commit: faster, and a power loss may lose
// recent commits (never consistency). For tests.
func WithNoSync() StoreOption { return func(o *storeOptions) { o.noSync = true } }

// Store keeps every version of every policy: in a bbolt file
// (policies.db in the fleet data directory, by convention; Open) where
// each policy has a bucket of versions keyed by the big-endian version
// number, or in PostgreSQL (OpenPostgres) where each version is a row. A
// version is JSON and is never rewritten. Its methods are safe for
// concurrent use.
type Store struct {
	e   engine
	now func() time.Time
}

var (
	bucketPolicies = []byte("policies")
)

const (
	schemaVersion = 1
	recordVersion = 1
	maxPolicySize = 256 << 10
)

// Open opens or creates the store file (mode 0600).
func Open(path string, opts ...StoreOption) (*Store, error) {
	o := storeOptions{now: time.Now, timeout: time.Second}
	for _, f := range opts {
		f(&o)
	}
	db, err := boltdb.Open(path, boltdb.Schema{Buckets: [][]byte{bucketPolicies}, Version: schemaVersion},
		boltdb.Options{Name: "policy", Timeout: o.timeout, NoSync: o.noSync, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	return &Store{e: boltEngine{db}, now: o.now}, nil
}

// Close closes the file (a PostgreSQL store leaves the database open).
func (s *Store) Close() error {
	if err := s.e.close(); err != nil {
		return fmt.Errorf("policy: close: %w", err)
	}
	return nil
}

// Put validates p and stores it as a new version of p.ID: Version is the
// latest version plus one (1 for a new ID, and after a deletion),
// CreatedAt the store's clock; p.Version and p.CreatedAt are ignored. It
// returns what was stored. Put refuses (ErrConflict) a policy whose model,
// firmware and group equal those of another live policy.
func (s *Store) Put(ctx context.Context, p Policy) (Policy, error) {
	if p.Deleted {
		return Policy{}, errors.New("policy: put: use Delete to delete")
	}
	p.Version = 0
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	p = p.clone()
	err := s.e.update(ctx, func(t tx) error {
		err := t.eachLatest(func(o *Policy) error {
			if o.ID != p.ID && !o.Deleted && o.Model == p.Model && o.Firmware == p.Firmware && o.Group == p.Group {
				return fmt.Errorf("%w: %q", ErrConflict, o.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		last, err := t.latest(p.ID)
		if err != nil {
			return err
		}
		return s.append(t, last, &p)
	})
	if err != nil {
		return Policy{}, fmt.Errorf("policy: put %s: %w", p.ID, err)
	}
	return p, nil
}

// append stores p as the version after last (nil: none).
func (s *Store) append(t tx, last, p *Policy) error {
	p.Version = 1
	if last != nil {
		p.Version = last.Version + 1
	}
	p.CreatedAt = s.now().UTC()
	v, err := json.Marshal(record{V: recordVersion, Policy: p})
	if err != nil {
		return err
	}
	return t.put(p.ID, p.Version, v)
}

// Delete records a deletion of id as a new version (a copy of the latest
// with Deleted set, by and comment replaced). Get and List no longer
// return it; History still does. Deleting a deleted policy is ErrNotFound.
func (s *Store) Delete(ctx context.Context, id, by, comment string) error {
	err := s.e.update(ctx, func(t tx) error {
		p, err := t.latest(id)
		if err != nil {
			return err
		}
		if p == nil || p.Deleted {
			return ErrNotFound
		}
		last := *p
		p.Deleted, p.CreatedBy, p.Comment = true, by, comment
		return s.append(t, &last, p)
	})
	if err != nil {
		return fmt.Errorf("policy: delete %s: %w", id, err)
	}
	return nil
}

// Get returns the latest version of id; ErrNotFound if there is none or it
// is deleted.
func (s *Store) Get(ctx context.Context, id string) (Policy, error) {
	var p *Policy
	err := s.e.view(ctx, func(t tx) error {
		var err error
		if p, err = t.latest(id); err != nil {
			return err
		}
		if p == nil || p.Deleted {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return Policy{}, fmt.Errorf("policy: get %s: %w", id, err)
	}
	return *p, nil
}

// GetVersion returns one version of id, deleted or not.
func (s *Store) GetVersion(ctx context.Context, id string, version int) (Policy, error) {
	var p *Policy
	err := s.e.view(ctx, func(t tx) error {
		if version < 1 {
			return ErrNotFound
		}
		var err error
		if p, err = t.version(id, version); err == nil && p == nil {
			err = ErrNotFound
		}
		return err
	})
	if err != nil {
		return Policy{}, fmt.Errorf("policy: get %s version %d: %w", id, version, err)
	}
	return *p, nil
}

// History returns every version of id, oldest first, deletions included.
func (s *Store) History(ctx context.Context, id string) ([]Policy, error) {
	var out []Policy
	err := s.e.view(ctx, func(t tx) error {
		out = nil // a transaction may run again
		if err := t.history(id, func(p *Policy) error { out = append(out, *p); return nil }); err != nil {
			return err
		}
		if out == nil {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy: history %s: %w", id, err)
	}
	return out, nil
}

// List returns the latest version of every policy that is not deleted,
// ordered by ID: the input of Select.
func (s *Store) List(ctx context.Context) ([]Policy, error) {
	var out []Policy
	err := s.e.view(ctx, func(t tx) error {
		out = nil
		return t.eachLatest(func(p *Policy) error {
			if !p.Deleted {
				out = append(out, *p)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("policy: list: %w", err)
	}
	return out, nil
}

// Select returns the latest live policy that applies to a device (see the
// package function Select), or nil, nil when none does.
func (s *Store) Select(ctx context.Context, model, firmware, group string) (*Policy, error) {
	list, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	return Select(list, model, firmware, group), nil
}

// record wraps a stored policy with a format version.
type record struct {
	V      int     `json:"v"`
	Policy *Policy `json:"policy"`
}

func decodeRecord(v []byte) (*Policy, error) {
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if r.V < 1 || r.V > recordVersion || r.Policy == nil {
		return nil, fmt.Errorf("decode: unsupported record version %d", r.V)
	}
	return r.Policy, nil
}

// Decode reads one policy as JSON (the API's upload format: the fields of
// Policy with their JSON names), refusing unknown fields, trailing data
// and more than 256 KiB, and validates it.
func Decode(r io.Reader) (*Policy, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("policy: decode: %w", err)
	}
	if len(b) > maxPolicySize {
		return nil, fmt.Errorf("policy: decode: larger than %d bytes", maxPolicySize)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var p Policy
	if err := d.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy: decode: %w", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("policy: decode: trailing data")
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Choose returns how a device is judged by the latest live policies (see
// the package function Choose).
func (s *Store) Choose(ctx context.Context, model, firmware, group string) (Choice, error) {
	list, err := s.List(ctx)
	if err != nil {
		return Choice{}, err
	}
	return Choose(list, model, firmware, group), nil
}
