package inventory

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestTokensNewestFirst: tokens page newest first with a cursor, filter
// by status (unused, used, expired at the given time), and refuse an
// unknown status or a malformed cursor.
func TestTokensNewestFirst(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	s, err := Open(filepath.Join(t.TempDir(), "inv.db"), WithNoSync(), WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ids []string
	var secrets []string
	for i := range 7 {
		now = now.Add(time.Minute)
		ttl := 24 * time.Hour
		if i == 1 {
			ttl = time.Minute
		}
		secret, tok, err := s.CreateToken(Grant{}, "owner", ttl)
		if err != nil {
			t.Fatal(err)
		}
		ids, secrets = append(ids, tok.ID), append(secrets, secret)
	}
	if _, err := s.ConsumeToken(secrets[2], "dev-2", "", now); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour) // token 1 expired
	var got []string
	for after, pages := "", 0; ; pages++ {
		page, next, err := s.Tokens(TokenFilter{After: after, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range page {
			got = append(got, tok.ID)
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		after = next
	}
	if len(got) != 7 {
		t.Fatalf("listed %d tokens", len(got))
	}
	for i := range got {
		if got[i] != ids[6-i] {
			t.Fatalf("not newest first: %v, created %v", got, ids)
		}
	}
	for st, want := range map[TokenStatus][]string{TokenUsed: {ids[2]}, TokenExpired: {ids[1]}} {
		page, _, err := s.Tokens(TokenFilter{Status: st})
		if err != nil || len(page) != len(want) || page[0].ID != want[0] {
			t.Errorf("%s tokens: %+v %v", st, page, err)
		}
	}
	if page, _, _ := s.Tokens(TokenFilter{Status: TokenUnused}); len(page) != 5 {
		t.Errorf("%d unused tokens, want 5", len(page))
	}
	if _, _, err := s.Tokens(TokenFilter{Status: "revoked"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown status: %v", err)
	}
	if _, _, err := s.Tokens(TokenFilter{After: "zz"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad cursor: %v", err)
	}
}
