package api

import (
	"errors"
	"net/http"
	"strings"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Quarantiner isolates a device on an operator's word: it becomes
// quarantined, its current certificate is revoked and its sessions are
// closed, so that it may only prove itself again (attestation) until
// released. governance.InventoryQuarantiner implements it.
type Quarantiner interface {
	Quarantine(deviceID, why string) error
}

// QuarantineRequest is the body of POST /api/v1/devices/{id}/quarantine.
type QuarantineRequest struct {
	// Justification says why (at least 3 characters); it is recorded in
	// the device's events.
	Justification string `json:"justification"`
}

func (h *handler) routesQuarantine() {
	h.route("POST /api/v1/devices/{id}/quarantine", auth.PermDevicesWrite, h.quarantine)
	h.describe("POST /api/v1/devices/{id}/quarantine", "Quarantine an active device (justification required)", QuarantineRequest{}, Device{})
}

// quarantine isolates an active device until an operator releases it
// (POST .../release) or a passing attestation under an auto-release policy
// does.
func (h *handler) quarantine(w http.ResponseWriter, r *http.Request, who string) {
	if h.cfg.Quarantiner == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "quarantine on request is not available on this server")
		return
	}
	var req QuarantineRequest
	if !decode(w, r, &req) {
		return
	}
	why := strings.Join(strings.Fields(req.Justification), " ")
	if len(why) < 3 || len(why) > 500 {
		problem(w, http.StatusBadRequest, "bad request", "a justification of 3 to 500 characters is required")
		return
	}
	d, ok := h.device(w, r)
	if !ok {
		return
	}
	if d.State != inventory.StateActive {
		problem(w, http.StatusConflict, "conflict", "only an active device can be quarantined; this one is "+string(d.State))
		return
	}
	if err := h.cfg.Quarantiner.Quarantine(d.ID, "quarantined by "+who+": "+why); errors.Is(err, inventory.ErrTransition) {
		problem(w, http.StatusConflict, "conflict", "the device's state changed meanwhile; it can no longer be quarantined")
		return
	} else if err != nil {
		h.internal(w, err)
		return
	}
	h.crls.Changed()
	h.log.Info("device quarantined on request", "device_id", d.ID, "by", who)
	if d, ok = h.device(w, r); ok {
		writeJSON(w, http.StatusOK, h.view(d))
	}
}
