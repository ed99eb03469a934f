package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/rotation"
)

// CARotation drives the fleet CA's generations (fleet/server implements
// it): prepare a new signing key, activate it (re-issuing every device),
// retire the old one.
type CARotation interface {
	PrepareCA(by string) (ca.Generation, error)
	ActivateCA(by string, rate float64) (ca.Generation, *rotation.Job, error)
	RetireCA(by string) ([]ca.Generation, error)
}

// CAView is GET /api/v1/ca: the CA's generations and the trust bundle
// devices receive.
type CAView struct {
	Generations []ca.Generation `json:"generations"`
	BundlePEM   string          `json:"bundle_pem"`
}

// CAActivateRequest is the body of POST /api/v1/ca/activate. Rate is the
// re-issue rate (devices per second) of the forced rotation started for
// every active device; 0 means 10, -1 means no re-issue job.
type CAActivateRequest struct {
	Rate float64 `json:"rate"`
}

// CAActivateResponse answers POST /api/v1/ca/activate.
type CAActivateResponse struct {
	Generation ca.Generation `json:"generation"`
	Rotation   *RotationView `json:"rotation,omitempty"`
}

func (h *handler) routesCA() {
	h.route("GET /api/v1/ca", auth.PermDevicesRead, h.getCA)
	h.dangerous("POST /api/v1/ca/prepare", auth.PermCAAdmin, approval.KindCARotation, h.prepareCA)
	h.dangerous("POST /api/v1/ca/activate", auth.PermCAAdmin, approval.KindCARotation, h.activateCA)
	h.dangerous("POST /api/v1/ca/retire", auth.PermCAAdmin, approval.KindCARotation, h.retireCA)
}

func (h *handler) getCA(w http.ResponseWriter, _ *http.Request, _ string) {
	if h.cfg.CA == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "no CA configured")
		return
	}
	writeJSON(w, http.StatusOK, CAView{Generations: h.cfg.CA.Generations(), BundlePEM: string(h.cfg.CA.CertPEM())})
}

// caConflict maps the CA's state errors to 409 and anything else to 500.
func (h *handler) caError(w http.ResponseWriter, op string, err error) {
	if be, ok := errors.AsType[*rotation.BrokersError](err); ok {
		// The cause of a failed check stays in the log.
		h.log.Warn("CA retirement refused", "op", op, "err", err)
		msg := "the brokers' certificates could not all be checked; see the server log"
		if len(be.Brokers) > 0 {
			msg = "brokers " + strings.Join(be.Brokers, ", ") + " still present certificates of the generation to retire: re-issue them (sigil broker-config) first"
		}
		problem(w, http.StatusConflict, "conflict", msg)
		return
	}
	for _, e := range []error{ca.ErrAlreadyPrepared, ca.ErrNothingPrepared, ca.ErrNothingToRetire, ca.ErrExternalSigner, ca.ErrStale} {
		if errors.Is(err, e) {
			problem(w, http.StatusConflict, "conflict", err.Error())
			return
		}
	}
	h.log.Error("CA rotation failed", "op", op, "err", err)
	problem(w, http.StatusInternalServerError, "internal error", "the CA operation failed; see the server log")
}

func (h *handler) prepareCA(w http.ResponseWriter, r *http.Request, who string) {
	if h.cfg.CARotation == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "CA rotation is not available")
		return
	}
	g, err := h.cfg.CARotation.PrepareCA(who)
	if err != nil {
		h.caError(w, "prepare", err)
		return
	}
	writeJSON(w, http.StatusCreated, g)
}

func (h *handler) activateCA(w http.ResponseWriter, r *http.Request, who string) {
	if h.cfg.CARotation == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "CA rotation is not available")
		return
	}
	var req CAActivateRequest
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	if req.Rate < -1 || req.Rate > 10000 {
		problem(w, http.StatusBadRequest, "bad request", "rate must be -1 (no re-issue), 0 (default 10) or up to 10000 per second")
		return
	}
	rate := req.Rate
	if rate == 0 {
		rate = 10
	}
	g, job, err := h.cfg.CARotation.ActivateCA(who, rate)
	if err != nil {
		h.caError(w, "activate", err)
		return
	}
	resp := CAActivateResponse{Generation: g}
	if job != nil {
		v := view(job)
		resp.Rotation = &v
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) retireCA(w http.ResponseWriter, _ *http.Request, who string) {
	if h.cfg.CARotation == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "CA rotation is not available")
		return
	}
	gens, err := h.cfg.CARotation.RetireCA(who)
	if err != nil {
		h.caError(w, "retire", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"retired": gens})
}

// CA fetches the CA's generations and trust bundle.
func (c *Client) CA(ctx context.Context) (*CAView, error) {
	var v CAView
	return &v, c.Do(ctx, http.MethodGet, "/api/v1/ca", nil, &v)
}

// PrepareCA prepares the next CA generation.
func (c *Client) PrepareCA(ctx context.Context) (*ca.Generation, error) {
	var g ca.Generation
	return &g, c.Do(ctx, http.MethodPost, "/api/v1/ca/prepare", struct{}{}, &g)
}

// ActivateCA activates the prepared generation; see CAActivateRequest.
func (c *Client) ActivateCA(ctx context.Context, rate float64) (*CAActivateResponse, error) {
	var v CAActivateResponse
	return &v, c.Do(ctx, http.MethodPost, "/api/v1/ca/activate", CAActivateRequest{Rate: rate}, &v)
}

// RetireCA retires the superseded generations.
func (c *Client) RetireCA(ctx context.Context) ([]ca.Generation, error) {
	var v struct {
		Retired []ca.Generation `json:"retired"`
	}
	return v.Retired, c.Do(ctx, http.MethodPost, "/api/v1/ca/retire", struct{}{}, &v)
}
