package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Bulk actions: one action on a selection of devices (their IDs) or on
// every device a filter matches, one route per action so that each has
// its own permission:
//
//	POST /api/v1/devices/bulk/tag         devices.write   add and remove tags
//	POST /api/v1/devices/bulk/attest      devices.write   challenge the connected ones now
//	POST /api/v1/devices/bulk/quarantine  devices.write   quarantine the active ones (justification)
//	POST /api/v1/devices/bulk/rotate      rotation.write  a forced rotation job (two-person rule)
//
// Each call is bounded: it acts on at most BulkLimit devices and, for a
// filter, examines at most BulkScan records; an answer with "next" left
// more matches, which the caller continues by sending the same request
// with "after" set to it. So a filter that matches 100,000 devices is
// worked through in batches the caller sees, never in one unbounded
// request. Rotation is the exception that scales: it starts one job of the
// rotation service (rate-limited, resumed after a restart), whose selector
// takes the whole fleet, a model or a group at once; other filters and
// selections become a job over the devices of this batch. A rotation job
// falls under the two-person rule like POST /api/v1/rotations.
//
// Every device acted on or skipped gets its own audit entry
// (api.devices.bulk.<action>.device, its ID as the target, the request's
// ID), besides the request's own entry.

// Bounds of one bulk call.
const (
	BulkLimit = 500   // devices acted on per call
	BulkScan  = 10000 // records a filter examines per call
)

// BulkRequest is the body of the bulk routes: exactly one of DeviceIDs and
// Filter, and the action's own fields.
type BulkRequest struct {
	// DeviceIDs selects devices by ID (at most BulkLimit).
	DeviceIDs []string `json:"device_ids,omitempty"`
	// Filter selects every device it matches ({} for all of them).
	Filter *DeviceFilter `json:"filter,omitempty"`
	// After continues a filter where the previous answer's Next stopped.
	After string `json:"after,omitempty"`
	// Add and Remove are the tags to add and to remove (tag).
	Add    []string `json:"add,omitempty"`
	Remove []string `json:"remove,omitempty"`
	// Justification says why (quarantine: required, 3 to 500 characters).
	Justification string `json:"justification,omitempty"`
	// Reason is recorded with a rotation job (rotate).
	Reason string `json:"reason,omitempty"`
}

// DeviceFilter selects devices as the console's device list does: each
// field set must match (ignoring case); Q is its free-text search (a part
// of the ID, serial, model, owner, group or firmware, or a whole EK
// fingerprint); Connected, when set, compares with the broker's live
// sessions.
type DeviceFilter struct {
	State     string `json:"state,omitempty"`
	Model     string `json:"model,omitempty"`
	Firmware  string `json:"firmware,omitempty"`
	Owner     string `json:"owner,omitempty"`
	Group     string `json:"group,omitempty"`
	Tag       string `json:"tag,omitempty"`
	Q         string `json:"q,omitempty"`
	Connected *bool  `json:"connected,omitempty"`
}

// BulkSkip is a device a bulk call left as it was, and why.
type BulkSkip struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// BulkResult answers a bulk call.
type BulkResult struct {
	Action string `json:"action"`
	// Done lists the devices acted on, Skipped those left as they were.
	Done    []string   `json:"done"`
	Skipped []BulkSkip `json:"skipped,omitempty"`
	// Examined counts the records a filter examined; Next, when set,
	// continues it (BulkRequest.After): more devices may match.
	Examined int    `json:"examined,omitempty"`
	Next     string `json:"next,omitempty"`
	// Rotation is the job a rotate call started.
	Rotation *RotationView `json:"rotation,omitempty"`
}

func (h *handler) routesBulk() {
	h.route("POST /api/v1/devices/bulk/tag", auth.PermDevicesWrite, h.bulk("tag", h.bulkTag))
	h.route("POST /api/v1/devices/bulk/attest", auth.PermDevicesWrite, h.bulk("attest", h.bulkAttest))
	h.route("POST /api/v1/devices/bulk/quarantine", auth.PermDevicesWrite, h.bulk("quarantine", h.bulkQuarantine))
	h.dangerous("POST /api/v1/devices/bulk/rotate", auth.PermRotationWrite, approval.KindMassRotation, h.bulkRotate)
	for _, a := range []string{"tag", "attest", "quarantine", "rotate"} {
		h.describe("POST /api/v1/devices/bulk/"+a, "Bulk "+a+" of selected or filtered devices (bounded batches; see \"next\")", BulkRequest{}, BulkResult{})
	}
}

// bulkAction acts on one device; it returns a reason to report it as
// skipped, or an error that fails the call.
type bulkAction func(r *http.Request, req *BulkRequest, who string, d *inventory.Device) (skip string, err error)

// bulk makes the handler of a per-device bulk route: it validates the
// request (check), selects the devices, runs act on each (a few at a
// time, so that their writes and audit entries share commits) and audits
// each.
func (h *handler) bulk(action string, act bulkAction) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, who string) {
		var req BulkRequest
		if !decode(w, r, &req) {
			return
		}
		if msg := h.checkBulk(action, &req); msg != "" {
			problem(w, http.StatusBadRequest, "bad request", msg)
			return
		}
		if action == "attest" && h.cfg.Attestation == nil || action == "quarantine" && h.cfg.Quarantiner == nil {
			problem(w, http.StatusNotImplemented, "not implemented", action+" is not available on this server")
			return
		}
		devs, res, ok := h.selectBulk(w, &req, nil)
		if !ok {
			return
		}
		res.Action = action
		rid := w.Header().Get(RequestIDHeader) // read once: the workers below share it
		for _, s := range res.Skipped {
			h.auditDevice(r, rid, action, who, req.Justification, s.ID, s.Reason, nil)
		}
		skips := make([]string, len(devs))
		errs := make([]error, len(devs))
		var wg sync.WaitGroup
		work := make(chan int)
		for range min(8, len(devs)) {
			wg.Go(func() {
				for i := range work {
					skips[i], errs[i] = act(r, &req, who, &devs[i])
					h.auditDevice(r, rid, action, who, req.Justification, devs[i].ID, skips[i], errs[i])
				}
			})
		}
		for i := range devs {
			work <- i
		}
		close(work)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			h.internal(w, err)
			return
		}
		res.Done = []string{}
		for i := range devs {
			if skips[i] != "" {
				res.Skipped = append(res.Skipped, BulkSkip{ID: devs[i].ID, Reason: skips[i]})
			} else {
				res.Done = append(res.Done, devs[i].ID)
			}
		}
		if action == "quarantine" && len(res.Done) > 0 {
			h.crls.Changed()
		}
		h.log.Info("bulk action", "action", action, "by", who, "done", len(res.Done), "skipped", len(res.Skipped), "more", res.Next != "")
		writeJSON(w, http.StatusOK, res)
	}
}

// checkBulk validates the selection and the action's fields; it returns
// the public message of what is wrong, or "".
func (h *handler) checkBulk(action string, req *BulkRequest) string {
	switch {
	case (len(req.DeviceIDs) > 0) == (req.Filter != nil):
		return "choose the devices: either device_ids or a filter"
	case len(req.DeviceIDs) > BulkLimit:
		return fmt.Sprintf("at most %d device IDs per call; send the rest in another", BulkLimit)
	case req.After != "" && req.Filter == nil:
		return "after continues a filter"
	}
	for _, id := range req.DeviceIDs {
		if !wire.ValidID(id) {
			return "invalid device ID " + strconv.Quote(id)
		}
	}
	if f := req.Filter; f != nil {
		if f.State != "" && !validState(f.State) {
			return "state must be one of pending, active, quarantined, decommissioned"
		}
		for _, s := range []string{f.Model, f.Firmware, f.Owner, f.Group, f.Tag, f.Q, req.After} {
			if len(s) > 256 {
				return "filter values are at most 256 characters"
			}
		}
	}
	switch action {
	case "tag":
		if len(req.Add)+len(req.Remove) == 0 {
			return "name the tags to add or remove"
		}
		if len(req.Add) > inventory.MaxTags || len(req.Remove) > inventory.MaxTags {
			return fmt.Sprintf("at most %d tags", inventory.MaxTags)
		}
		for _, t := range slices.Concat(req.Add, req.Remove) {
			if !inventory.ValidTag(t) {
				return "a tag is 1 to 64 characters of a-z, 0-9 and ._:-=, starting with a letter or digit: " + strconv.Quote(t)
			}
		}
	case "quarantine":
		req.Justification = strings.Join(strings.Fields(req.Justification), " ")
		if len(req.Justification) < 3 || len(req.Justification) > 500 {
			return "a justification of 3 to 500 characters is required"
		}
	case "rotate":
		if len(req.Reason) > 500 {
			return "the reason is at most 500 characters"
		}
	}
	return ""
}

// selectBulk returns the devices of the call: those named that exist (the
// others reported as skipped), or a batch of the filter's matches with
// the cursor to continue. extra, when set, must also accept a filtered
// device. It writes the error when it reports false.
func (h *handler) selectBulk(w http.ResponseWriter, req *BulkRequest, extra func(*inventory.Device) bool) ([]inventory.Device, BulkResult, bool) {
	var res BulkResult
	if req.Filter == nil {
		var devs []inventory.Device
		seen := map[string]bool{}
		for _, id := range req.DeviceIDs {
			if seen[id] {
				continue
			}
			seen[id] = true
			d, err := h.cfg.Inventory.Device(context.TODO(), id)
			if errors.Is(err, inventory.ErrNotFound) {
				res.Skipped = append(res.Skipped, BulkSkip{ID: id, Reason: "no such device"})
				continue
			}
			if err != nil {
				h.internal(w, err)
				return nil, res, false
			}
			devs = append(devs, *d)
		}
		return devs, res, true
	}
	f := req.Filter
	q := inventory.Query{
		Where: map[inventory.Field]string{inventory.FieldState: f.State, inventory.FieldModel: f.Model, inventory.FieldFirmware: f.Firmware,
			inventory.FieldOwner: f.Owner, inventory.FieldGroup: f.Group, inventory.FieldTag: f.Tag},
		After: req.After, Limit: BulkLimit, Budget: BulkScan,
		Match: func(d *inventory.Device) bool {
			if f.Connected != nil && h.connected(d) != *f.Connected {
				return false
			}
			return d.MatchesText(f.Q) && (extra == nil || extra(d))
		},
	}
	page, err := h.cfg.Inventory.Query(context.TODO(), q)
	if errors.Is(err, inventory.ErrQuery) {
		problem(w, http.StatusBadRequest, "bad request", "after is not a cursor this filter returned")
		return nil, res, false
	}
	if err != nil {
		h.internal(w, err)
		return nil, res, false
	}
	res.Examined, res.Next = page.Examined, page.Next
	return page.Devices, res, true
}

// connected reports whether the broker holds a session for d now (the
// inventory's flag when the server gave no live view).
func (h *handler) connected(d *inventory.Device) bool {
	if h.cfg.Connected != nil {
		return h.cfg.Connected(d.ID)
	}
	return d.Connected
}

// auditDevice records one device's part of a bulk call.
func (h *handler) auditDevice(r *http.Request, rid, action, who, why, id, skip string, err error) {
	if h.cfg.Audit == nil {
		return
	}
	e := audit.New(audit.User(who), "api.devices.bulk."+action+".device", id).With("route", "POST /api/v1/devices/bulk/"+action)
	if why != "" {
		e = e.Because(why)
	}
	if rid != "" {
		e = e.Request(rid)
	}
	switch {
	case err != nil:
		e = e.Fail(errors.New("internal error"))
	case skip != "":
		e = e.Fail(errors.New("skipped: " + skip))
	}
	if err := h.cfg.Audit.Record(context.WithoutCancel(r.Context()), e); err != nil {
		h.log.Error("audit: recording a bulk action failed", "device_id", id, "err", err)
	}
}

func (h *handler) bulkTag(_ *http.Request, req *BulkRequest, _ string, d *inventory.Device) (string, error) {
	var tooMany bool
	err := h.cfg.Inventory.Update(context.TODO(), d.ID, func(x *inventory.Device) error {
		tags := slices.DeleteFunc(slices.Clone(x.Tags), func(t string) bool { return slices.Contains(req.Remove, t) })
		tags = slices.Compact(slices.Sorted(slices.Values(append(tags, req.Add...))))
		if tooMany = len(tags) > inventory.MaxTags; tooMany {
			return nil
		}
		x.Tags = tags
		return nil
	})
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return "no such device", nil
	case err != nil:
		return "", err
	case tooMany:
		return fmt.Sprintf("it would carry more than %d tags", inventory.MaxTags), nil
	}
	return "", nil
}

func (h *handler) bulkAttest(_ *http.Request, _ *BulkRequest, _ string, d *inventory.Device) (string, error) {
	if d.State != inventory.StateActive && d.State != inventory.StateQuarantined {
		return "it is " + string(d.State), nil
	}
	if h.cfg.Connected != nil && !h.cfg.Connected(d.ID) {
		return "not connected; it attests when it reconnects", nil
	}
	return "", h.cfg.Attestation.Challenge(d.ID)
}

func (h *handler) bulkQuarantine(_ *http.Request, req *BulkRequest, who string, d *inventory.Device) (string, error) {
	if d.State != inventory.StateActive {
		return "it is " + string(d.State) + "; only an active device can be quarantined", nil
	}
	err := h.cfg.Quarantiner.Quarantine(d.ID, "quarantined by "+who+": "+req.Justification)
	if errors.Is(err, inventory.ErrTransition) {
		return "its state changed meanwhile", nil
	}
	return "", err
}

// bulkRotate starts a forced rotation job: over the whole fleet, a model
// or a group when the filter is no more than that (one job however many
// devices, rate-limited by the rotation service); otherwise over this
// batch's active devices.
func (h *handler) bulkRotate(w http.ResponseWriter, r *http.Request, who string) {
	var req BulkRequest
	if !decode(w, r, &req) {
		return
	}
	if msg := h.checkBulk("rotate", &req); msg != "" {
		problem(w, http.StatusBadRequest, "bad request", msg)
		return
	}
	if h.cfg.Rotation == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "rotation is not available on this server")
		return
	}
	reason := req.Reason
	if reason == "" {
		reason = "bulk rotation by " + who
	}
	rid := w.Header().Get(RequestIDHeader)
	res := BulkResult{Action: "rotate", Done: []string{}}
	var sel rotation.Selector
	if f := req.Filter; f != nil && req.After == "" && f.Firmware == "" && f.Owner == "" && f.Tag == "" && f.Q == "" && f.Connected == nil &&
		(f.State == "" || f.State == string(inventory.StateActive)) && (f.Model == "" || f.Group == "") {
		switch {
		case f.Model != "":
			sel.Model = f.Model
		case f.Group != "":
			sel.Group = f.Group
		default:
			sel.All = true
		}
	} else {
		devs, sr, ok := h.selectBulk(w, &req, func(d *inventory.Device) bool { return d.State == inventory.StateActive })
		if !ok {
			return
		}
		res.Skipped, res.Examined, res.Next = sr.Skipped, sr.Examined, sr.Next
		for _, d := range devs {
			if d.State != inventory.StateActive {
				res.Skipped = append(res.Skipped, BulkSkip{ID: d.ID, Reason: "it is " + string(d.State) + "; only active devices rotate"})
				continue
			}
			sel.DeviceIDs = append(sel.DeviceIDs, d.ID)
		}
		if len(sel.DeviceIDs) == 0 {
			for _, s := range res.Skipped {
				h.auditDevice(r, rid, "rotate", who, req.Reason, s.ID, s.Reason, nil)
			}
			writeJSON(w, http.StatusOK, res)
			return
		}
	}
	job, err := h.cfg.Rotation.Start(sel, 0, reason, who)
	if errors.Is(err, rotation.ErrNoMatch) {
		problem(w, http.StatusConflict, "conflict", "no active device matches")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	v := view(job)
	res.Rotation = &v
	if sel.DeviceIDs != nil {
		res.Done = sel.DeviceIDs
	}
	for _, id := range res.Done {
		h.auditDevice(r, rid, "rotate", who, req.Reason, id, "", nil)
	}
	for _, s := range res.Skipped {
		h.auditDevice(r, rid, "rotate", who, req.Reason, s.ID, s.Reason, nil)
	}
	h.log.Info("bulk rotation", "by", who, "job", job.ID, "devices", v.Progress.Total)
	writeJSON(w, http.StatusCreated, res)
}
