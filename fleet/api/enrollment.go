package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// EnrollmentToken is an issued enrollment token as the API lists it: what
// it grants and where it is in its life, never its secret (shown once, at
// creation) nor the secret's hash.
type EnrollmentToken struct {
	ID      string    `json:"id"`
	Owner   string    `json:"owner,omitempty"` // owner of the device that enrolls with it
	Model   string    `json:"model,omitempty"` // model the device gets (and must claim)
	Group   string    `json:"group,omitempty"` // group the device gets
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	Status  string    `json:"status"`            // unused, used or expired
	UsedBy  string    `json:"used_by,omitempty"` // the device that enrolled with it
	UsedAt  time.Time `json:"used_at,omitzero"`
}

// EnrollmentTokenList is GET /api/v1/enrollment-tokens.
type EnrollmentTokenList struct {
	Tokens []EnrollmentToken `json:"tokens"`
	Next   string            `json:"next,omitempty"` // pass as ?after=
}

// TokenView is the API's view of an inventory token at now.
func TokenView(t *inventory.Token, now time.Time) EnrollmentToken {
	return EnrollmentToken{ID: t.ID, Owner: t.Owner, Model: t.Model, Group: t.Group, Created: t.Created,
		Expires: t.Expires, Status: string(t.Status(now)), UsedBy: t.UsedBy, UsedAt: t.UsedAt}
}

func (h *handler) routesEnrollmentTokens() {
	h.route("GET /api/v1/enrollment-tokens", auth.PermDevicesRead, h.listEnrollmentTokens)
	h.describe("GET /api/v1/enrollment-tokens", "Issued enrollment tokens, newest first, without their secrets (status=unused|used|expired; page with after and limit)",
		nil, EnrollmentTokenList{})
}

func (h *handler) listEnrollmentTokens(w http.ResponseWriter, r *http.Request, _ string) {
	after, limit, ok := pageParams(w, r)
	if !ok {
		return
	}
	now := h.cfg.Now()
	toks, next, err := h.cfg.Inventory.Tokens(r.Context(), inventory.TokenFilter{Status: inventory.TokenStatus(r.URL.Query().Get("status")),
		After: after, Limit: limit, Now: now})
	if errors.Is(err, inventory.ErrInvalid) {
		problem(w, http.StatusBadRequest, "bad request", "status must be unused, used or expired, and after a cursor from a previous page")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	out := EnrollmentTokenList{Tokens: []EnrollmentToken{}, Next: next}
	for i := range toks {
		out.Tokens = append(out.Tokens, TokenView(&toks[i], now))
	}
	writeJSON(w, http.StatusOK, out)
}

// EnrollmentTokens pages through the issued enrollment tokens, newest
// first; status "" lists all.
func (c *Client) EnrollmentTokens(ctx context.Context, status, after string, limit int) (*EnrollmentTokenList, error) {
	v := url.Values{}
	if status != "" {
		v.Set("status", status)
	}
	if after != "" {
		v.Set("after", after)
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	path := "/api/v1/enrollment-tokens"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out EnrollmentTokenList
	return &out, c.Do(ctx, http.MethodGet, path, nil, &out)
}
