package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Identity governance routes (fleet/governance). Reading needs
// devices.read. Changing owners, assignments and triage decisions, adding
// blocks and sweeping need devices.write, as other device changes do.
// Loosening a containment — removing a block, resolving a clone incident
// — needs security.approve.

// OwnerList is GET /api/v1/owners.
type OwnerList struct {
	Owners []governance.Owner `json:"owners"`
	Next   string             `json:"next,omitempty"` // pass as ?after=
}

// OwnerRequest is the body of PUT /api/v1/owners/{id}.
type OwnerRequest struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"` // person (default) or team
	Contact string `json:"contact"`
	Status  string `json:"status"` // active (default), inactive or departed
}

// OwnerStatusRequest is the body of POST /api/v1/owners/{id}/status.
type OwnerStatusRequest struct {
	Status string `json:"status"`
}

// AssignRequest is the body of PUT /api/v1/devices/{id}/owner.
type AssignRequest struct {
	Owner   string `json:"owner"`
	Purpose string `json:"purpose"`
}

// DeviceOwnership is GET /api/v1/devices/{id}/owner: who answers for a
// device and why it exists, and what the last sweep concluded.
type DeviceOwnership struct {
	DeviceID string `json:"device_id"`
	// Owner and Purpose are the assignment's, or the inventory's without one.
	Owner       string                 `json:"owner,omitempty"`
	Purpose     string                 `json:"purpose,omitempty"`
	OwnerRecord *governance.Owner      `json:"owner_record,omitempty"` // nil when Owner is not a registered owner
	Assignment  *governance.Assignment `json:"assignment,omitempty"`
	Status      *governance.Status     `json:"status,omitempty"` // nil before the first sweep judged it
}

// GovernanceStatusList is GET /api/v1/governance/orphans and /dormant.
type GovernanceStatusList struct {
	Devices []governance.Status `json:"devices"`
	Next    string              `json:"next,omitempty"`
}

// TriageStats are the triage list's counters.
type TriageStats struct {
	Entries uint64 `json:"entries"`
	Pending int    `json:"pending"` // identities waiting to be written
	Dropped uint64 `json:"dropped"` // attempts not recorded (too many new identities at once)
	Evicted uint64 `json:"evicted"` // entries removed to keep the list bounded
}

// TriageList is GET /api/v1/triage.
type TriageList struct {
	Entries []governance.Shadow `json:"entries"`
	Next    string              `json:"next,omitempty"`
	Stats   TriageStats         `json:"stats"`
}

// TriageDecisionRequest is the body of POST /api/v1/triage/{id}/decision.
type TriageDecisionRequest struct {
	Decision string `json:"decision"` // enroll, block or dismiss
	Note     string `json:"note"`
}

// BlockList is GET /api/v1/blocks.
type BlockList struct {
	Blocks []governance.Block `json:"blocks"`
	Next   string             `json:"next,omitempty"`
}

// BlockRequest is the body of POST /api/v1/blocks.
type BlockRequest struct {
	Kind   string `json:"kind"` // client-id, address (IP or CIDR) or ek (64 hex digits)
	Value  string `json:"value"`
	Reason string `json:"reason"`
}

// CloneList is GET /api/v1/clones.
type CloneList struct {
	Clones []governance.Clone `json:"clones"`
}

// ResolveCloneRequest is the body of POST /api/v1/clones/{id}/resolve.
type ResolveCloneRequest struct {
	Kind string `json:"kind"` // ek or certificate
	Note string `json:"note"`
}

// RiskList is GET /api/v1/risk: the scores of the last sweep, riskiest
// first.
type RiskList struct {
	Risks []governance.Risk `json:"risks"`
	Next  string            `json:"next,omitempty"`
}

// SweepReport is POST /api/v1/governance/sweep.
type SweepReport struct {
	Devices  int `json:"devices"`
	Orphaned int `json:"orphaned"`
	Dormant  int `json:"dormant"`
	Revoked  int `json:"revoked"`
	Clones   int `json:"clones"`
	Scored   int `json:"scored"`
	Failed   int `json:"failed"`
}

func (h *handler) routesGovernance() {
	for _, r := range []struct {
		pattern, summary string
		perm             auth.Permission
		fn               func(http.ResponseWriter, *http.Request, string)
		req, resp        any
		status           int
	}{
		{"GET /api/v1/owners", "List owners (page with after and limit)", auth.PermDevicesRead, h.listOwners, nil, OwnerList{}, 0},
		{"GET /api/v1/owners/{id}", "An owner", auth.PermDevicesRead, h.getOwner, nil, governance.Owner{}, 0},
		{"PUT /api/v1/owners/{id}", "Create or replace an owner (person or team)", auth.PermDevicesWrite, h.putOwner, OwnerRequest{}, governance.Owner{}, 0},
		{"POST /api/v1/owners/{id}/status", "Change an owner's status; its devices are orphaned at the next sweep unless active", auth.PermDevicesWrite, h.setOwnerStatus, OwnerStatusRequest{}, governance.Owner{}, 0},
		{"GET /api/v1/devices/{id}/owner", "A device's owner, purpose and governance status", auth.PermDevicesRead, h.getOwnership, nil, DeviceOwnership{}, 0},
		{"PUT /api/v1/devices/{id}/owner", "Assign a device an owner and a purpose", auth.PermDevicesWrite, h.assignOwner, AssignRequest{}, DeviceOwnership{}, 0},
		{"GET /api/v1/governance/orphans", "Devices without a live owner (page with after and limit)", auth.PermDevicesRead, h.listOrphans, nil, GovernanceStatusList{}, 0},
		{"GET /api/v1/governance/dormant", "Devices unseen for dormant_after while holding a valid credential", auth.PermDevicesRead, h.listDormant, nil, GovernanceStatusList{}, 0},
		{"POST /api/v1/governance/sweep", "Judge every device now (orphans, dormancy, clones, risk scores)", auth.PermDevicesWrite, h.sweep, nil, SweepReport{}, 0},
		{"GET /api/v1/triage", "Unknown identities that tried to connect, most recent first, written every second (undecided=true, kind, after, limit)", auth.PermDevicesRead, h.listTriage, nil, TriageList{}, 0},
		{"GET /api/v1/triage/{id}", "A triage entry (its key, path-escaped)", auth.PermDevicesRead, h.getTriage, nil, governance.Shadow{}, 0},
		{"POST /api/v1/triage/{id}/decision", "Decide on a triage entry: enroll, block or dismiss", auth.PermDevicesWrite, h.decideTriage, TriageDecisionRequest{}, governance.Shadow{}, 0},
		{"GET /api/v1/blocks", "The block list the broker and enrollment consult (page with after and limit)", auth.PermDevicesRead, h.listBlocks, nil, BlockList{}, 0},
		{"POST /api/v1/blocks", "Block a client ID, an address or prefix, or an EK", auth.PermDevicesWrite, h.addBlock, BlockRequest{}, nil, http.StatusNoContent},
		{"DELETE /api/v1/blocks", "Remove a block (kind and value in the query)", auth.PermSecurityApprove, h.removeBlock, nil, nil, http.StatusNoContent},
		{"GET /api/v1/clones", "Clone incidents, open ones unless all=true", auth.PermDevicesRead, h.listClones, nil, CloneList{}, 0},
		{"POST /api/v1/clones/{id}/resolve", "Close a device's clone incident after looking into it (the device stays quarantined)", auth.PermSecurityApprove, h.resolveClone, ResolveCloneRequest{}, nil, http.StatusNoContent},
		{"GET /api/v1/devices/{id}/risk", "A device's risk score now, with its factors", auth.PermDevicesRead, h.deviceRisk, nil, governance.Risk{}, 0},
		{"GET /api/v1/risk", "Devices by risk score of the last sweep, riskiest first (page with after and limit)", auth.PermDevicesRead, h.riskRanking, nil, RiskList{}, 0},
	} {
		h.route(r.pattern, r.perm, r.fn)
		if r.status != 0 {
			h.describe(r.pattern, r.summary, r.req, r.resp, r.status)
		} else {
			h.describe(r.pattern, r.summary, r.req, r.resp)
		}
	}
}

// governanceOn writes a 501 when governance is not configured.
func (h *handler) governanceOn(w http.ResponseWriter) bool {
	if h.cfg.Governance == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "identity governance is not enabled on this server")
		return false
	}
	return true
}

// page parses the after and limit query parameters; on failure it has
// written a 400.
func pageParams(w http.ResponseWriter, r *http.Request) (after string, limit int, ok bool) {
	q := r.URL.Query()
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			problem(w, http.StatusBadRequest, "bad request", "limit must be an integer from 1 to 1000")
			return "", 0, false
		}
		limit = n
	}
	return q.Get("after"), limit, true
}

// governanceError answers a governance error. Its messages name only what
// the caller sent (cleaned), so invalid and not-found details are public.
func (h *handler) governanceError(w http.ResponseWriter, err error) {
	public := func() string {
		s := err.Error()
		if i := strings.LastIndex(s, "governance: "); i >= 0 {
			s = s[i+len("governance: "):]
		}
		for _, p := range []string{"not found: ", "invalid: "} {
			s = strings.TrimPrefix(s, p)
		}
		return s
	}
	var ne *governance.NotEnrollableError
	switch {
	case errors.As(err, &ne):
		problem(w, http.StatusConflict, "conflict", "this entry cannot be enrolled: "+ne.Reason)
	case errors.Is(err, inventory.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", "no device with that ID")
	case errors.Is(err, governance.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", public())
	case errors.Is(err, governance.ErrInvalid):
		problem(w, http.StatusBadRequest, "bad request", public())
	case errors.Is(err, governance.ErrFull):
		problem(w, http.StatusConflict, "conflict", "the block list is full")
	case errors.Is(err, governance.ErrNoEnroller):
		problem(w, http.StatusNotImplemented, "not implemented", "this server cannot enroll from the triage list")
	default:
		h.internal(w, err)
	}
}

func (h *handler) listOwners(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	after, limit, ok := pageParams(w, r)
	if !ok {
		return
	}
	owners, next, err := h.cfg.Governance.Owners(after, limit)
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, OwnerList{Owners: emptyIfNil(owners), Next: next})
}

func emptyIfNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (h *handler) getOwner(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	o, err := h.cfg.Governance.Owner(r.PathValue("id"))
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (h *handler) putOwner(w http.ResponseWriter, r *http.Request, who string) {
	if !h.governanceOn(w) {
		return
	}
	var req OwnerRequest
	if !decode(w, r, &req) {
		return
	}
	o, err := h.cfg.Governance.PutOwner(governance.Owner{ID: r.PathValue("id"), Name: req.Name,
		Kind: governance.OwnerKind(req.Kind), Contact: req.Contact, Status: governance.OwnerStatus(req.Status)})
	if err != nil {
		h.governanceError(w, err)
		return
	}
	h.log.Info("owner stored", "owner", o.ID, "status", o.Status, "by", who)
	writeJSON(w, http.StatusOK, o)
}

func (h *handler) setOwnerStatus(w http.ResponseWriter, r *http.Request, who string) {
	if !h.governanceOn(w) {
		return
	}
	var req OwnerStatusRequest
	if !decode(w, r, &req) {
		return
	}
	id := r.PathValue("id")
	if err := h.cfg.Governance.SetOwnerStatus(id, governance.OwnerStatus(req.Status)); err != nil {
		h.governanceError(w, err)
		return
	}
	o, err := h.cfg.Governance.Owner(id)
	if err != nil {
		h.governanceError(w, err)
		return
	}
	h.log.Info("owner status changed", "owner", id, "status", o.Status, "by", who)
	writeJSON(w, http.StatusOK, o)
}

// ownership builds a device's DeviceOwnership.
func (h *handler) ownership(id string) (*DeviceOwnership, error) {
	d, err := h.cfg.Inventory.Device(context.TODO(), id)
	if err != nil {
		return nil, err
	}
	g := h.cfg.Governance
	out := &DeviceOwnership{DeviceID: d.ID, Owner: d.Owner, Purpose: d.Purpose}
	if a, err := g.Assignment(d.ID); err == nil {
		out.Assignment, out.Owner, out.Purpose = a, a.Owner, a.Purpose
	} else if !errors.Is(err, governance.ErrNotFound) {
		return nil, err
	}
	if out.Owner != "" {
		if o, err := g.Owner(out.Owner); err == nil {
			out.OwnerRecord = o
		} else if !errors.Is(err, governance.ErrNotFound) {
			return nil, err
		}
	}
	if st, err := g.Status(d.ID); err == nil {
		out.Status = st
	} else if !errors.Is(err, governance.ErrNotFound) {
		return nil, err
	}
	return out, nil
}

func (h *handler) getOwnership(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	out, err := h.ownership(r.PathValue("id"))
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// assignOwner records the assignment in governance (which judges the
// device at once) and mirrors owner and purpose into the inventory, so
// that device listings show them.
func (h *handler) assignOwner(w http.ResponseWriter, r *http.Request, who string) {
	if !h.governanceOn(w) {
		return
	}
	var req AssignRequest
	if !decode(w, r, &req) {
		return
	}
	if len(req.Purpose) > 256 || strings.ContainsAny(req.Purpose, "\x00\n\r") {
		problem(w, http.StatusBadRequest, "bad request", "purpose must be at most 256 characters on one line")
		return
	}
	id := r.PathValue("id")
	if err := h.cfg.Governance.Assign(governance.Assignment{DeviceID: id, Owner: req.Owner, Purpose: req.Purpose, By: who}); err != nil {
		h.governanceError(w, err)
		return
	}
	err := h.cfg.Inventory.Update(r.Context(), id, func(d *inventory.Device) error {
		d.Owner, d.Purpose = req.Owner, req.Purpose
		return nil
	})
	if err != nil {
		h.governanceError(w, err)
		return
	}
	h.log.Info("device owner assigned", "device_id", id, "owner", req.Owner, "by", who)
	out, err := h.ownership(id)
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) listOrphans(w http.ResponseWriter, r *http.Request, _ string) {
	h.listStatuses(w, r, h.cfg.Governance.Orphans)
}

func (h *handler) listDormant(w http.ResponseWriter, r *http.Request, _ string) {
	h.listStatuses(w, r, h.cfg.Governance.Dormant)
}

func (h *handler) listStatuses(w http.ResponseWriter, r *http.Request, list func(string, int) ([]governance.Status, string, error)) {
	if !h.governanceOn(w) {
		return
	}
	after, limit, ok := pageParams(w, r)
	if !ok {
		return
	}
	sts, next, err := list(after, limit)
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, GovernanceStatusList{Devices: emptyIfNil(sts), Next: next})
}

func (h *handler) sweep(w http.ResponseWriter, r *http.Request, who string) {
	if !h.governanceOn(w) {
		return
	}
	rep, err := h.cfg.Governance.Sweep(r.Context())
	if err != nil {
		h.governanceError(w, err)
		return
	}
	h.log.Info("governance sweep requested", "by", who, "devices", rep.Devices)
	writeJSON(w, http.StatusOK, SweepReport{Devices: rep.Devices, Orphaned: rep.Orphaned, Dormant: rep.Dormant,
		Revoked: rep.Revoked, Clones: rep.Clones, Scored: rep.Scored, Failed: rep.Failed})
}

func (h *handler) listTriage(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	after, limit, ok := pageParams(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	f := governance.TriageFilter{Undecided: q.Get("undecided") == "true", Kind: governance.AttemptKind(q.Get("kind")), After: after, Limit: limit}
	switch f.Kind {
	case "", governance.AttemptForeignCert, governance.AttemptUnknownDevice, governance.AttemptUnknownClient, governance.AttemptUnknownEK:
	default:
		problem(w, http.StatusBadRequest, "bad request", "kind must be foreign-certificate, unknown-device, unknown-client or unknown-ek")
		return
	}
	entries, next, err := h.cfg.Governance.Triage(f)
	if err != nil {
		h.governanceError(w, err)
		return
	}
	st, err := h.cfg.Governance.TriageStats()
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, TriageList{Entries: emptyIfNil(entries), Next: next,
		Stats: TriageStats{Entries: st.Entries, Pending: st.Pending, Dropped: st.Dropped, Evicted: st.Evicted}})
}

func (h *handler) getTriage(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	sh, err := h.cfg.Governance.Shadow(r.PathValue("id"))
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sh)
}

func (h *handler) decideTriage(w http.ResponseWriter, r *http.Request, who string) {
	if !h.governanceOn(w) {
		return
	}
	var req TriageDecisionRequest
	if !decode(w, r, &req) {
		return
	}
	key := r.PathValue("id")
	sh, err := h.cfg.Governance.Decide(key, governance.Decision(req.Decision), who, req.Note)
	if err != nil {
		h.governanceError(w, err)
		return
	}
	h.log.Info("triage decision", "entry", key, "decision", sh.Decision, "by", who)
	writeJSON(w, http.StatusOK, sh)
}

func (h *handler) listBlocks(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	after, limit, ok := pageParams(w, r)
	if !ok {
		return
	}
	blocks, next, err := h.cfg.Governance.Blocks(after, limit)
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, BlockList{Blocks: emptyIfNil(blocks), Next: next})
}

func (h *handler) addBlock(w http.ResponseWriter, r *http.Request, who string) {
	if !h.governanceOn(w) {
		return
	}
	var req BlockRequest
	if !decode(w, r, &req) {
		return
	}
	err := h.cfg.Governance.Block(governance.Block{Kind: governance.BlockKind(req.Kind), Value: req.Value, Reason: req.Reason, By: who})
	if err != nil {
		h.governanceError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) removeBlock(w http.ResponseWriter, r *http.Request, who string) {
	if !h.governanceOn(w) {
		return
	}
	q := r.URL.Query()
	kind, value := governance.BlockKind(q.Get("kind")), q.Get("value")
	if err := h.cfg.Governance.Unblock(kind, value); err != nil {
		h.governanceError(w, err)
		return
	}
	h.log.Info("unblocked", "kind", kind, "value", value, "by", who)
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) listClones(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	clones, err := h.cfg.Governance.Clones(r.URL.Query().Get("all") == "true")
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, CloneList{Clones: emptyIfNil(clones)})
}

func (h *handler) resolveClone(w http.ResponseWriter, r *http.Request, who string) {
	if !h.governanceOn(w) {
		return
	}
	var req ResolveCloneRequest
	if !decode(w, r, &req) {
		return
	}
	kind := governance.CloneKind(req.Kind)
	if kind != governance.CloneEK && kind != governance.CloneCertificate {
		problem(w, http.StatusBadRequest, "bad request", "kind must be ek or certificate")
		return
	}
	id := r.PathValue("id")
	if err := h.cfg.Governance.ResolveClone(id, kind, who, req.Note); err != nil {
		h.governanceError(w, err)
		return
	}
	h.log.Info("clone incident resolved", "device_id", id, "kind", kind, "by", who)
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) deviceRisk(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	risk, err := h.cfg.Governance.Score(r.PathValue("id"))
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, risk)
}

func (h *handler) riskRanking(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.governanceOn(w) {
		return
	}
	after, limit, ok := pageParams(w, r)
	if !ok {
		return
	}
	risks, next, err := h.cfg.Governance.Ranking(after, limit)
	if err != nil {
		h.governanceError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, RiskList{Risks: emptyIfNil(risks), Next: next})
}

// Client methods for the governance routes.

func pageQuery(after string, limit int, q url.Values) string {
	if q == nil {
		q = url.Values{}
	}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// Owners lists owners.
func (c *Client) Owners(ctx context.Context, after string, limit int) (*OwnerList, error) {
	var out OwnerList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/owners"+pageQuery(after, limit, nil), nil, &out)
}

// Owner returns one owner.
func (c *Client) Owner(ctx context.Context, id string) (*governance.Owner, error) {
	var out governance.Owner
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/owners/"+url.PathEscape(id), nil, &out)
}

// PutOwner creates or replaces an owner.
func (c *Client) PutOwner(ctx context.Context, id string, req OwnerRequest) (*governance.Owner, error) {
	var out governance.Owner
	return &out, c.Do(ctx, http.MethodPut, "/api/v1/owners/"+url.PathEscape(id), req, &out)
}

// SetOwnerStatus changes an owner's status (active, inactive, departed).
func (c *Client) SetOwnerStatus(ctx context.Context, id, status string) (*governance.Owner, error) {
	var out governance.Owner
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/owners/"+url.PathEscape(id)+"/status", OwnerStatusRequest{Status: status}, &out)
}

// Ownership returns a device's owner, purpose and governance status.
func (c *Client) Ownership(ctx context.Context, deviceID string) (*DeviceOwnership, error) {
	var out DeviceOwnership
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(deviceID)+"/owner", nil, &out)
}

// AssignOwner gives a device an owner and a purpose.
func (c *Client) AssignOwner(ctx context.Context, deviceID, owner, purpose string) (*DeviceOwnership, error) {
	var out DeviceOwnership
	return &out, c.Do(ctx, http.MethodPut, "/api/v1/devices/"+url.PathEscape(deviceID)+"/owner", AssignRequest{Owner: owner, Purpose: purpose}, &out)
}

// Orphans lists devices without a live owner.
func (c *Client) Orphans(ctx context.Context, after string, limit int) (*GovernanceStatusList, error) {
	var out GovernanceStatusList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/governance/orphans"+pageQuery(after, limit, nil), nil, &out)
}

// Dormant lists dormant devices.
func (c *Client) Dormant(ctx context.Context, after string, limit int) (*GovernanceStatusList, error) {
	var out GovernanceStatusList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/governance/dormant"+pageQuery(after, limit, nil), nil, &out)
}

// Sweep judges every device now.
func (c *Client) Sweep(ctx context.Context) (*SweepReport, error) {
	var out SweepReport
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/governance/sweep", nil, &out)
}

// Triage lists triage entries; kind "" for any.
func (c *Client) Triage(ctx context.Context, undecided bool, kind, after string, limit int) (*TriageList, error) {
	q := url.Values{}
	if undecided {
		q.Set("undecided", "true")
	}
	if kind != "" {
		q.Set("kind", kind)
	}
	var out TriageList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/triage"+pageQuery(after, limit, q), nil, &out)
}

// TriageEntry returns one triage entry.
func (c *Client) TriageEntry(ctx context.Context, key string) (*governance.Shadow, error) {
	var out governance.Shadow
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/triage/"+url.PathEscape(key), nil, &out)
}

// Decide records a decision (enroll, block, dismiss) on a triage entry.
func (c *Client) Decide(ctx context.Context, key, decision, note string) (*governance.Shadow, error) {
	var out governance.Shadow
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/triage/"+url.PathEscape(key)+"/decision", TriageDecisionRequest{Decision: decision, Note: note}, &out)
}

// Blocks lists the block list.
func (c *Client) Blocks(ctx context.Context, after string, limit int) (*BlockList, error) {
	var out BlockList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/blocks"+pageQuery(after, limit, nil), nil, &out)
}

// Block adds a block (kind client-id, address or ek).
func (c *Client) Block(ctx context.Context, kind, value, reason string) error {
	return c.Do(ctx, http.MethodPost, "/api/v1/blocks", BlockRequest{Kind: kind, Value: value, Reason: reason}, nil)
}

// Unblock removes a block.
func (c *Client) Unblock(ctx context.Context, kind, value string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/blocks?"+url.Values{"kind": {kind}, "value": {value}}.Encode(), nil, nil)
}

// Clones lists clone incidents, open ones unless all.
func (c *Client) Clones(ctx context.Context, all bool) (*CloneList, error) {
	path := "/api/v1/clones"
	if all {
		path += "?all=true"
	}
	var out CloneList
	return &out, c.Do(ctx, http.MethodGet, path, nil, &out)
}

// ResolveClone closes a device's clone incident of kind (ek, certificate).
func (c *Client) ResolveClone(ctx context.Context, deviceID, kind, note string) error {
	return c.Do(ctx, http.MethodPost, "/api/v1/clones/"+url.PathEscape(deviceID)+"/resolve", ResolveCloneRequest{Kind: kind, Note: note}, nil)
}

// Risk returns a device's risk score now.
func (c *Client) Risk(ctx context.Context, deviceID string) (*governance.Risk, error) {
	var out governance.Risk
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(deviceID)+"/risk", nil, &out)
}

// RiskRanking pages devices by the last sweep's risk scores.
func (c *Client) RiskRanking(ctx context.Context, after string, limit int) (*RiskList, error) {
	var out RiskList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/risk"+pageQuery(after, limit, nil), nil, &out)
}
