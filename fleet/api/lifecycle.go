package api

import (
	"encoding/pem"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/crl"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/rotation"
)

func (h *handler) routesLifecycle() {
	h.route("POST /api/v1/devices/{id}/revoke", auth.PermRotationWrite, h.revoke)
	h.route("POST /api/v1/devices/{id}/decommission", auth.PermDevicesWrite, h.decommission)
	h.route("POST /api/v1/devices/{id}/rotate", auth.PermRotationWrite, h.rotateDevice)
	h.route("GET /api/v1/rotations", auth.PermDevicesRead, h.listRotations)
	h.dangerous("POST /api/v1/rotations", auth.PermRotationWrite, approval.KindMassRotation, h.startRotation)
	h.route("GET /api/v1/rotations/{id}", auth.PermDevicesRead, h.getRotation)
	h.route("POST /api/v1/rotations/{id}/cancel", auth.PermRotationWrite, h.cancelRotation)
	h.route("GET /api/v1/rotations/{id}/devices", auth.PermDevicesRead, h.rotationDevices)
	h.public("GET /api/v1/crl", h.crl) // public, like any CRL
	h.public("GET /crl", h.crl)
}

type revokeRequest struct {
	Reason  string `json:"reason"`
	Comment string `json:"comment"`
}

// decodeRevoke reads a revocation request and its CRL reason code
// (unspecified when none is named); on a bad one it has answered 400.
func decodeRevoke(w http.ResponseWriter, r *http.Request) (revokeRequest, int, bool) {
	var req revokeRequest
	if !decode(w, r, &req) {
		return req, 0, false
	}
	reason := inventory.ReasonUnspecified
	if req.Reason != "" {
		var ok bool
		if reason, ok = inventory.ReasonCode(req.Reason); !ok {
			problem(w, http.StatusBadRequest, "bad request", "reason must be one of unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold")
			return req, 0, false
		}
	}
	return req, reason, true
}

// revoke revokes every certificate of the device that has not expired,
// with the revocation's CRL entries, in one transaction
// (inventory.Store.RevokeDevice: a renewed-away certificate is revoked
// too), and closes its sessions whatever was left to revoke. The device
// keeps its identity: it can prove itself again from its EK
// (re-enrollment); to shut it out, decommission it.
func (h *handler) revoke(w http.ResponseWriter, r *http.Request, who string) {
	req, reason, ok := decodeRevoke(w, r)
	if !ok {
		return
	}
	d, ok := h.device(w, r)
	if !ok {
		return
	}
	_, revoked, err := h.cfg.Inventory.RevokeDevice(r.Context(), d.ID, reason)
	if err != nil {
		h.internal(w, err)
		return
	}
	h.crls.Changed()
	if h.cfg.Disconnect != nil {
		h.cfg.Disconnect(d.ID) // always: a session may hold a serial revoked earlier
	}
	if len(revoked) > 0 {
		_ = h.cfg.Inventory.AddEvent(r.Context(), inventory.Event{Time: h.cfg.Now(), DeviceID: d.ID, Kind: "revoked",
			Detail: "certificates " + strings.Join(revoked, ", ") + " revoked (" + inventory.ReasonName(reason) + ") by " + who + ": " + req.Comment})
	}
	d, ok = h.device(w, r)
	if ok {
		writeJSON(w, http.StatusOK, h.view(d))
	}
}

// decommission retires a device for good: every certificate it holds that
// has not expired is revoked with the state change (inventory.Decommission),
// its sessions are closed whatever was left to revoke, and its EK is
// refused at enrollment from now on.
func (h *handler) decommission(w http.ResponseWriter, r *http.Request, who string) {
	var req revokeRequest
	if !decode(w, r, &req) {
		return
	}
	d, ok := h.device(w, r)
	if !ok {
		return
	}
	_, revoked, err := h.cfg.Inventory.Decommission(r.Context(), d.ID)
	if err != nil {
		h.internal(w, err)
		return
	}
	h.crls.Changed()
	if h.cfg.Disconnect != nil {
		h.cfg.Disconnect(d.ID) // always: a session may hold a serial revoked earlier
	}
	_ = h.cfg.Inventory.AddEvent(r.Context(), inventory.Event{Time: h.cfg.Now(), DeviceID: d.ID, Kind: "decommissioned",
		Detail: "by " + who + ": " + req.Comment + "; certificates revoked (cessationOfOperation): " + strings.Join(revoked, ", ")})
	d, ok = h.device(w, r)
	if ok {
		writeJSON(w, http.StatusOK, h.view(d))
	}
}

type rotationRequest struct {
	rotation.Selector
	Rate   float64 `json:"rate"`
	Reason string  `json:"reason"`
}

// RotationView is a job with its progress.
type RotationView struct {
	*rotation.Job
	Progress rotation.Progress `json:"progress"`
}

func view(j *rotation.Job) RotationView { return RotationView{Job: j, Progress: j.Progress()} }

func (h *handler) startRotation(w http.ResponseWriter, r *http.Request, who string) {
	var req rotationRequest
	if !decode(w, r, &req) {
		return
	}
	if err := req.Selector.Validate(); err != nil {
		problem(w, http.StatusBadRequest, "bad request", err.Error())
		return
	}
	if req.Rate < 0 || req.Rate > 10000 {
		problem(w, http.StatusBadRequest, "bad request", "rate must be from 0 (default 10) to 10000 per second")
		return
	}
	job, err := h.cfg.Rotation.Start(req.Selector, req.Rate, req.Reason, who)
	if err != nil {
		problem(w, http.StatusConflict, "conflict", err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, view(job))
}

func (h *handler) rotateDevice(w http.ResponseWriter, r *http.Request, who string) {
	d, ok := h.device(w, r)
	if !ok {
		return
	}
	job, err := h.cfg.Rotation.Start(rotation.Selector{DeviceIDs: []string{d.ID}}, 1, "operator request", who)
	if err != nil {
		problem(w, http.StatusConflict, "conflict", err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, view(job))
}

func (h *handler) getRotation(w http.ResponseWriter, r *http.Request, _ string) {
	job, err := h.cfg.Rotation.Job(r.PathValue("id"))
	if errors.Is(err, rotation.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no rotation job with that ID")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view(job))
}

func (h *handler) listRotations(w http.ResponseWriter, _ *http.Request, _ string) {
	jobs, err := h.cfg.Rotation.Jobs()
	if err != nil {
		h.internal(w, err)
		return
	}
	out := make([]map[string]any, 0, len(jobs))
	for i := range jobs {
		j := &jobs[i]
		out = append(out, map[string]any{"id": j.ID, "state": j.State, "created": j.Created, "reason": j.Reason, "selector": j.Selector, "progress": j.Progress()})
	}
	writeJSON(w, http.StatusOK, map[string]any{"rotations": out})
}

func (h *handler) cancelRotation(w http.ResponseWriter, r *http.Request, _ string) {
	if err := h.cfg.Rotation.Cancel(r.PathValue("id")); errors.Is(err, rotation.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no rotation job with that ID")
		return
	} else if err != nil {
		h.internal(w, err)
		return
	}
	h.getRotation(w, r, "")
}

// rotationDevices pages through a job's devices and their progress.
func (h *handler) rotationDevices(w http.ResponseWriter, r *http.Request, _ string) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			problem(w, http.StatusBadRequest, "bad request", "limit must be an integer from 1 to 1000")
			return
		}
		limit = n
	}
	devs, next, err := h.cfg.Rotation.JobDevices(r.PathValue("id"), r.URL.Query().Get("after"), limit)
	if errors.Is(err, rotation.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no rotation job with that ID")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	if devs == nil {
		devs = []rotation.JobDevice{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": devs, "next": next})
}

// crl serves the fleet's CRL (crl.Publisher). With ?after=N (a CRL
// number) it waits, up to the publisher's hold, for a CRL whose number is
// greater and answers 304 when none came: a broker's sync (`sigil
// broker-sync`) learns of a revocation the moment it is recorded. The
// waiting requests are bounded per source (an IPv4 address or an IPv6
// /64: 429) and in all (503). A request that presents a credential is a
// broker sync's: it must hold auth.PermBrokersSync (else 401 or 403, never
// the anonymous slots as a fallback), and may take the slots kept for
// the syncs, which no anonymous request can fill.
func (h *handler) crl(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !q.Has("after") {
		l, err := h.crls.Current(r.Context())
		if err != nil {
			h.internal(w, err)
			return
		}
		w.Header().Set("Cache-Control", "max-age=300")
		writeCRL(w, r, l)
		return
	}
	if _, ok := r.Header["Authorization"]; ok {
		h.authorize(auth.PermBrokersSync, func(w http.ResponseWriter, r *http.Request, _ string) {
			h.crlWait(w, r, true)
		}).ServeHTTP(w, r)
		return
	}
	h.crlWait(w, r, false)
}

// crlWait serves GET /crl?after=N; sync is set for a broker sync's
// request (its credential checked).
func (h *handler) crlWait(w http.ResponseWriter, r *http.Request, sync bool) {
	q, hold := r.URL.Query(), h.crls.Hold()
	after, err := crl.ParseNumber(q.Get("after"))
	if err != nil {
		problem(w, http.StatusBadRequest, "bad request", "after must be a CRL number in decimal")
		return
	}
	// The server's read and write timeouts are shorter than the hold: a
	// read deadline that passes while the handler runs ends its context.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(hold + 15*time.Second))
	_ = rc.SetWriteDeadline(time.Now().Add(hold + 15*time.Second))
	l, err := h.crls.Wait(r.Context(), crl.Waiter{Source: auth.ClientAddr(r), Sync: sync}, after)
	switch {
	case errors.Is(err, crl.ErrSourceBusy):
		w.Header().Set("Retry-After", strconv.Itoa(int(hold.Seconds())))
		problem(w, http.StatusTooManyRequests, "too many requests", "this client already has as many CRL requests waiting as it may")
	case errors.Is(err, crl.ErrBusy):
		w.Header().Set("Retry-After", strconv.Itoa(int(hold.Seconds())))
		problem(w, http.StatusServiceUnavailable, "busy", "too many CRL requests are waiting; retry later")
	case r.Context().Err() != nil:
		// The client left.
	case err != nil:
		h.internal(w, err)
	case l == nil:
		w.WriteHeader(http.StatusNotModified)
	default:
		writeCRL(w, r, *l)
	}
}

// writeCRL writes l: its DER, or with set=generations (a broker's sync)
// the trust bundle and one CRL per trusted CA generation in PEM
// (crl.List.Set), which a broker needs to accept the certificates of
// each generation during a CA rotation.
func writeCRL(w http.ResponseWriter, r *http.Request, l crl.List) {
	if r.URL.Query().Get("set") != "generations" {
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(l.DER)
		return
	}
	set := l.Set
	if set == nil {
		set = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: l.DER})
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(set)
}
