package api

import (
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestEnrollmentTokenList: GET /api/v1/enrollment-tokens lists the issued
// tokens newest first with what they grant and their status, filters by
// status, and never carries a secret or its hash.
func TestEnrollmentTokenList(t *testing.T) {
	srv, inv := newAPI(t)
	var secrets, hashes []string
	var ids []string
	for i, g := range []inventory.Grant{{Model: "gw-1", Group: "line-3"}, {}} {
		secret, tok, err := inv.CreateToken(t.Context(), g, "plant-"+string(rune('a'+i)), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		secrets, hashes, ids = append(secrets, secret), append(hashes, hex.EncodeToString(tok.Hash)), append(ids, tok.ID)
	}
	if _, err := inv.ConsumeToken(t.Context(), secrets[1], "0123456789abcdef0123456789abcdef", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, body := call(t, srv, "GET", "/api/v1/enrollment-tokens", token, "")
	var l EnrollmentTokenList
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &l) != nil || len(l.Tokens) != 2 {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	byID := map[string]EnrollmentToken{}
	for _, tok := range l.Tokens {
		byID[tok.ID] = tok
	}
	if u, g := byID[ids[1]], byID[ids[0]]; u.Status != "used" || u.UsedBy == "" ||
		g.Status != "unused" || g.Model != "gw-1" || g.Group != "line-3" || g.Owner != "plant-a" || g.Expires.IsZero() {
		t.Fatalf("tokens %+v", l.Tokens)
	}
	for _, bad := range append(append([]string{"hash", "sgt_"}, secrets...), hashes...) {
		if strings.Contains(body, bad) {
			t.Fatalf("the list carries %q: %s", bad, body)
		}
	}
	resp, body = call(t, srv, "GET", "/api/v1/enrollment-tokens?status=unused", token, "")
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &l) != nil || len(l.Tokens) != 1 || l.Tokens[0].ID != ids[0] {
		t.Fatalf("unused: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/enrollment-tokens?status=revoked", token, "")
	wantProblem(t, resp, body, 400, "status must be")
	resp, _ = call(t, srv, "GET", "/api/v1/enrollment-tokens", "", "")
	if resp.StatusCode != 401 {
		t.Fatalf("without a token: %d", resp.StatusCode)
	}
}
