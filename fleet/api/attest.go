package api

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Policies are the reference policies the policy routes read and
// change. *policy.Store implements it.
type Policies interface {
	List(ctx context.Context) ([]policy.Policy, error)
	Get(ctx context.Context, id string) (policy.Policy, error)
	History(ctx context.Context, id string) ([]policy.Policy, error)
	Put(ctx context.Context, p policy.Policy) (policy.Policy, error)
	Delete(ctx context.Context, id, by, comment string) error
}

// Attestation is the attestation service as the API uses it.
type Attestation interface {
	Challenge(deviceID string) error
	Release(deviceID, by, justification string) error
	History(ctx context.Context, deviceID string, limit int) ([]attest.Record, error)
}

func (h *handler) routesAttest() {
	h.route("GET /api/v1/devices/{id}/attestations", auth.PermDevicesRead, h.attestations)
	h.route("POST /api/v1/devices/{id}/attest", auth.PermDevicesWrite, h.attestNow)
	h.route("POST /api/v1/devices/{id}/release", auth.PermDevicesWrite, h.release)
	h.route("GET /api/v1/policies", auth.PermPoliciesRead, h.listPolicies)
	h.dangerous("POST /api/v1/policies", auth.PermPoliciesWrite, approval.KindPolicyChange, h.putPolicy)
	h.dangerous("POST /api/v1/policies/learn", auth.PermPoliciesWrite, approval.KindPolicyChange, h.learnPolicy)
	h.route("GET /api/v1/policies/{id}", auth.PermPoliciesRead, h.getPolicy)
	h.dangerous("PUT /api/v1/policies/{id}", auth.PermPoliciesWrite, approval.KindPolicyChange, h.putPolicy)
	h.dangerous("DELETE /api/v1/policies/{id}", auth.PermPoliciesWrite, approval.KindPolicyChange, h.deletePolicy)
	h.route("GET /api/v1/policies/{id}/versions", auth.PermPoliciesRead, h.policyVersions)
}

// device loads the device named in the path or writes a 404.
func (h *handler) device(w http.ResponseWriter, r *http.Request) (*inventory.Device, bool) {
	d, err := h.cfg.Inventory.Device(r.Context(), r.PathValue("id"))
	if errors.Is(err, inventory.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no device with that ID")
		return nil, false
	}
	if err != nil {
		h.internal(w, err)
		return nil, false
	}
	return d, true
}

func (h *handler) attestations(w http.ResponseWriter, r *http.Request, _ string) {
	d, ok := h.device(w, r)
	if !ok {
		return
	}
	limit := 50
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			problem(w, http.StatusBadRequest, "bad request", "limit must be an integer from 1 to 1000")
			return
		}
		limit = n
	}
	recs, err := h.cfg.Attestation.History(r.Context(), d.ID, limit)
	if err != nil {
		h.internal(w, err)
		return
	}
	if recs == nil {
		recs = []attest.Record{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_id": d.ID, "attestation": d.Attestation, "attestations": recs})
}

func (h *handler) attestNow(w http.ResponseWriter, r *http.Request, _ string) {
	d, ok := h.device(w, r)
	if !ok {
		return
	}
	if h.cfg.Connected != nil && !h.cfg.Connected(d.ID) {
		problem(w, http.StatusConflict, "conflict", "the device is not connected; it attests when it reconnects")
		return
	}
	if err := h.cfg.Attestation.Challenge(d.ID); err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "challenge sent", "device_id": d.ID})
}

type releaseRequest struct {
	Justification string `json:"justification"`
}

func (h *handler) release(w http.ResponseWriter, r *http.Request, who string) {
	var req releaseRequest
	if !decode(w, r, &req) {
		return
	}
	d, ok := h.device(w, r)
	if !ok {
		return
	}
	switch err := h.cfg.Attestation.Release(d.ID, who, req.Justification); {
	case errors.Is(err, attest.ErrJustification):
		problem(w, http.StatusBadRequest, "bad request", "a justification of at least 3 characters is required")
		return
	case errors.Is(err, attest.ErrNotQuarantined):
		problem(w, http.StatusConflict, "conflict", "the device is not quarantined")
		return
	case err != nil:
		h.internal(w, err)
		return
	}
	d, ok = h.device(w, r)
	if ok {
		writeJSON(w, http.StatusOK, h.view(d))
	}
}

func (h *handler) listPolicies(w http.ResponseWriter, r *http.Request, _ string) {
	ps, err := h.cfg.Policies.List(r.Context())
	if err != nil {
		h.internal(w, err)
		return
	}
	if ps == nil {
		ps = []policy.Policy{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"policies": ps})
}

func (h *handler) policyError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, policy.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", "no policy with that ID")
	case errors.Is(err, policy.ErrConflict):
		problem(w, http.StatusConflict, "conflict", "another policy already matches the same model, firmware and group")
	default:
		h.internal(w, err)
	}
}

func (h *handler) getPolicy(w http.ResponseWriter, r *http.Request, _ string) {
	p, err := h.cfg.Policies.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		h.policyError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (h *handler) policyVersions(w http.ResponseWriter, r *http.Request, _ string) {
	ps, err := h.cfg.Policies.History(r.Context(), r.PathValue("id"))
	if err != nil {
		h.policyError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"versions": ps})
}

// putPolicy stores a new version (POST creates, PUT replaces): versions are
// kept, never overwritten.
func (h *handler) putPolicy(w http.ResponseWriter, r *http.Request, who string) {
	if ct := r.Header.Get("Content-Type"); ct != "" && ct != "application/json" {
		problem(w, http.StatusUnsupportedMediaType, "unsupported media type", "send the body as JSON with Content-Type: application/json")
		return
	}
	p, err := policy.Decode(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			problem(w, http.StatusRequestEntityTooLarge, "request too large", "the policy is too large")
			return
		}
		problem(w, http.StatusBadRequest, "invalid policy", err.Error())
		return
	}
	if id := r.PathValue("id"); id != "" {
		if p.ID != "" && p.ID != id {
			problem(w, http.StatusBadRequest, "invalid policy", "the policy's id differs from the URL")
			return
		}
		p.ID = id
		if _, err := h.cfg.Policies.Get(r.Context(), id); err != nil {
			h.policyError(w, err)
			return
		}
	}
	p.CreatedBy = who
	stored, err := h.cfg.Policies.Put(r.Context(), *p)
	if err != nil {
		h.policyError(w, err)
		return
	}
	h.log.Info("policy stored", "policy", stored.ID, "version", stored.Version, "by", who)
	status := http.StatusOK
	if r.Method == http.MethodPost {
		status = http.StatusCreated
	}
	writeJSON(w, status, stored)
}

func (h *handler) deletePolicy(w http.ResponseWriter, r *http.Request, who string) {
	if err := h.cfg.Policies.Delete(r.Context(), r.PathValue("id"), who, r.URL.Query().Get("comment")); err != nil {
		h.policyError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type learnRequest struct {
	DeviceID    string `json:"device_id"`
	ID          string `json:"id"`
	Name        string `json:"name"`
	PCRs        []int  `json:"pcrs"`
	Action      string `json:"action"`
	AutoRelease bool   `json:"auto_release"`
	AnyFirmware bool   `json:"any_firmware"` // match every firmware version of the model
}

// learnPolicy builds a policy from the newest passing attestation of a
// device the operator vouches for (its PCR values came from a verified
// quote).
func (h *handler) learnPolicy(w http.ResponseWriter, r *http.Request, who string) {
	var req learnRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Name == "" || req.DeviceID == "" {
		problem(w, http.StatusBadRequest, "bad request", "device_id and name are required")
		return
	}
	d, err := h.cfg.Inventory.Device(r.Context(), req.DeviceID)
	if errors.Is(err, inventory.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no device with that ID")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	recs, err := h.cfg.Attestation.History(r.Context(), d.ID, 50)
	if err != nil {
		h.internal(w, err)
		return
	}
	var golden *attest.Record
	for i := range recs {
		if recs[i].Result == wire.VerdictPass && len(recs[i].PCRs) > 0 {
			golden = &recs[i]
			break
		}
	}
	if golden == nil {
		problem(w, http.StatusConflict, "conflict", "the device has no passing attestation to learn from; challenge it first")
		return
	}
	ev := &policy.Evidence{Model: d.Model, Firmware: golden.Firmware, PCRs: map[string]map[int][]byte{}}
	for bank, vals := range golden.PCRs {
		ev.PCRs[bank] = map[int][]byte{}
		for i, v := range vals {
			b, err := hex.DecodeString(v)
			if err != nil {
				h.internal(w, err)
				return
			}
			ev.PCRs[bank][i] = b
		}
	}
	p := policy.Learn(req.Name, ev, req.PCRs)
	if req.ID != "" {
		p.ID = req.ID
	}
	if req.Action != "" {
		p.Action = req.Action
	}
	if req.AnyFirmware {
		p.Firmware = ""
	}
	p.AutoRelease = req.AutoRelease
	p.CreatedBy = who
	p.Comment = "learned from device " + d.ID + " attestation #" + strconv.FormatUint(golden.Seq, 10) + " at " + golden.Time.Format(time.RFC3339)
	if err := p.Validate(); err != nil {
		problem(w, http.StatusBadRequest, "invalid policy", err.Error())
		return
	}
	stored, err := h.cfg.Policies.Put(r.Context(), *p)
	if err != nil {
		h.policyError(w, err)
		return
	}
	h.log.Info("policy learned", "policy", stored.ID, "version", stored.Version, "device_id", d.ID, "by", who)
	writeJSON(w, http.StatusCreated, stored)
}
