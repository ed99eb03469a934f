package inventory

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"time"
)

// TokenStatus is where an enrollment token is in its life.
type TokenStatus string

// Token statuses.
const (
	TokenUnused  TokenStatus = "unused"  // valid, not used yet
	TokenUsed    TokenStatus = "used"    // a device enrolled with it
	TokenExpired TokenStatus = "expired" // never used, past its expiry
)

// Status says whether the token is unused, used or expired at now.
func (t *Token) Status(now time.Time) TokenStatus {
	switch {
	case t.UsedBy != "":
		return TokenUsed
	case !now.Before(t.Expires):
		return TokenExpired
	}
	return TokenUnused
}

// TokenFilter selects enrollment tokens for Tokens.
type TokenFilter struct {
	// Status keeps tokens in this status at Now; "" keeps all.
	Status TokenStatus
	// Now is the time statuses are judged at; zero means the store's clock.
	Now time.Time
	// After is the cursor of the previous page ("" from the newest).
	After string
	// Limit is the page size: default 100, at most 1000.
	Limit int
}

// tokenCursor orders tokens newest first: the bitwise complement of the
// creation time, then the ID, as hex.
func tokenCursor(t *Token) string {
	b := binary.BigEndian.AppendUint64(nil, ^uint64(t.Created.UnixNano()))
	return hex.EncodeToString(append(b, t.ID...))
}

// Tokens pages through the enrollment tokens, newest first, with the
// cursor of the next page ("" at the end). Records carry the secret's
// hash, never the secret; callers showing tokens to people show neither.
// It reads every token record (tokens are never deleted), keeping only
// one page in memory.
func (s *Store) Tokens(ctx context.Context, f TokenFilter) ([]Token, string, error) {
	switch f.Status {
	case "", TokenUnused, TokenUsed, TokenExpired:
	default:
		return nil, "", fmt.Errorf("%w: token status %q is not unused, used or expired", ErrInvalid, f.Status)
	}
	after, err := hex.DecodeString(f.After)
	if err != nil {
		return nil, "", fmt.Errorf("%w: token cursor", ErrInvalid)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	now := f.Now
	if now.IsZero() {
		now = s.opts.now()
	}
	type entry struct {
		key []byte
		tok Token
	}
	var page []entry // sorted by key, at most limit+1
	err = s.e.view(ctx, func(tx tx) error {
		page = page[:0]
		return tx.eachToken(func(tok *Token) error {
			if f.Status != "" && tok.Status(now) != f.Status {
				return nil
			}
			key, _ := hex.DecodeString(tokenCursor(tok))
			if len(after) > 0 && bytes.Compare(key, after) <= 0 {
				return nil
			}
			i, _ := slices.BinarySearchFunc(page, key, func(e entry, k []byte) int { return bytes.Compare(e.key, k) })
			if i > limit {
				return nil
			}
			page = slices.Insert(page, i, entry{key: key, tok: *tok})
			if len(page) > limit+1 {
				page = page[:limit+1]
			}
			return nil
		})
	})
	if err != nil {
		return nil, "", fmt.Errorf("inventory: tokens: %w", err)
	}
	next := ""
	if len(page) > limit {
		page = page[:limit]
		next = hex.EncodeToString(page[limit-1].key)
	}
	out := make([]Token, len(page))
	for i := range page {
		out[i] = page[i].tok
	}
	return out, next, nil
}
