package policy

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
)

// versions reads every version of every policy in one transaction of s,
// by ID then version.
func (s *Store) versions(ctx context.Context) ([]Policy, error) {
	var out []Policy
	err := s.e.view(ctx, func(t tx) error {
		out = nil
		var ids []string
		if err := t.eachLatest(func(p *Policy) error { ids = append(ids, p.ID); return nil }); err != nil {
			return err
		}
		for _, id := range ids {
			if err := t.history(id, func(p *Policy) error { out = append(out, *p); return nil }); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// Digest counts the versions s holds and digests them: equal on both
// backends for equal contents (sigil migrate checks a copy with it).
func (s *Store) Digest(ctx context.Context) (int, [32]byte, error) {
	vs, err := s.versions(ctx)
	if err != nil {
		return 0, [32]byte{}, fmt.Errorf("policy: digest: %w", err)
	}
	h := sha256.New()
	for i := range vs {
		b, err := json.Marshal(record{V: recordVersion, Policy: &vs[i]})
		if err != nil {
			return 0, [32]byte{}, fmt.Errorf("policy: digest: %w", err)
		}
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	var d [32]byte
	h.Sum(d[:0])
	return len(vs), d, nil
}

// Copy copies every version of every policy of src into dst, in one
// transaction of dst (sigil migrate); dst must hold none of them.
func Copy(ctx context.Context, dst, src *Store) error {
	vs, err := src.versions(ctx)
	if err != nil {
		return fmt.Errorf("policy: copy: read: %w", err)
	}
	err = dst.e.update(ctx, func(t tx) error {
		for i := range vs {
			b, err := json.Marshal(record{V: recordVersion, Policy: &vs[i]})
			if err != nil {
				return err
			}
			if err := t.put(vs[i].ID, vs[i].Version, b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("policy: copy: write: %w", err)
	}
	return nil
}

// ClearPostgres deletes every policy version in the PostgreSQL store s
// (sigil migrate --force); a bbolt store is refused.
func ClearPostgres(ctx context.Context, s *Store) error {
	p, ok := s.e.(pgEngine)
	if !ok {
		return fmt.Errorf("policy: clear: not a PostgreSQL store")
	}
	if _, err := p.db.Pool().Exec(ctx, "DELETE FROM policy_versions"); err != nil {
		return fmt.Errorf("policy: clear: %w", err)
	}
	return nil
}
