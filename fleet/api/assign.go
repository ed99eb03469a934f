package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Secret steering under the two-person rule. A device's model and group
// decide which secrets (and policies) reach it, so choosing them is a
// secret-level action (assignPerm) and, with Config.Approvals set, needs
// a second person as storing a secret does: a PATCH that moves a device
// into another model or group is filed (approval.KindDeviceAssign, 202)
// and carried out once someone else approves; an enrollment token that
// grants a model or group is created pending, its secret shown once at
// creation and never kept in the request, and no device enrolls with it
// until someone else approves (approval.KindGrantingToken). Either runs
// as its requester, who must still hold devices.write and assignPerm.

// errHeld stops a device change that waits for a second person.
var errHeld = errors.New("api: changing a device's model or group waits for a second person")

// apply changes d as p says. A change of model or group needs mayAssign
// (errAssign) and, when held, waits for a second person (errHeld): then
// nothing changes.
func (p devicePatch) apply(d *inventory.Device, mayAssign, held bool) error {
	if (p.Model != nil && *p.Model != d.Model) || (p.Group != nil && *p.Group != d.Group) {
		if !mayAssign {
			return errAssign
		}
		if held {
			return errHeld
		}
	}
	if p.Owner != nil {
		d.Owner = *p.Owner
	}
	if p.Model != nil {
		d.Model = *p.Model
	}
	if p.Group != nil {
		d.Group = *p.Group
	}
	if p.Tags != nil {
		d.Tags = slices.Compact(slices.Sorted(slices.Values(*p.Tags)))
	}
	return nil
}

// deviceAssign is a device change filed for approval (KindDeviceAssign):
// the whole PATCH, carried out together once approved.
type deviceAssign struct {
	Device string      `json:"device"`
	Patch  devicePatch `json:"patch"`
}

// grantingToken is a pending enrollment token filed for approval
// (KindGrantingToken): its ID and what it grants, never its secret.
type grantingToken struct {
	Token string `json:"token"`
	Model string `json:"model,omitempty"`
	Group string `json:"group,omitempty"`
}

// registerAssignExecutors lets the two-person rule carry out device moves
// and granting tokens.
func (h *handler) registerAssignExecutors() {
	if h.cfg.Approvals == nil {
		return
	}
	for kind, exec := range map[approval.Kind]approval.Executor{
		approval.KindDeviceAssign: h.executeDeviceAssign, approval.KindGrantingToken: h.executeGrantingToken,
	} {
		if err := h.cfg.Approvals.Register(kind, exec); err != nil {
			h.log.Error("approvals: registering an executor failed", "kind", kind, "err", err)
		}
	}
}

// grantText names what a move or a token grants, quoted (ASCII) for an
// approval's one-line target.
func grantText(model, group *string) string {
	out := ""
	if model != nil {
		out += fmt.Sprintf(" model %+q", *model)
	}
	if group != nil {
		out += fmt.Sprintf(" group %+q", *group)
	}
	return out
}

// approvalTarget fits an approval target: at most 256 bytes of ASCII.
func approvalTarget(s string) string {
	if len(s) > 256 {
		s = s[:253] + "..."
	}
	return s
}

// fileDeviceAssign files the PATCH p of device id for a second person's
// approval and answers 202 with the request.
func (h *handler) fileDeviceAssign(w http.ResponseWriter, r *http.Request, id string, p devicePatch) {
	params, err := json.Marshal(deviceAssign{Device: id, Patch: p})
	if err != nil {
		h.internal(w, err)
		return
	}
	what := "move device " + id + " into" + grantText(p.Model, p.Group)
	ar, err := h.cfg.Approvals.Submit(r.Context(), principal(r), approval.Draft{Kind: approval.KindDeviceAssign,
		Target: approvalTarget("device " + id + ":" + grantText(p.Model, p.Group)), Params: params, Justification: justification(r, what)})
	if err != nil {
		h.approvalError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, Pending{Approval: ar, Message: "moving a device into a model or group decides which secrets it receives: filed for approval by a second person: see /api/v1/approvals/" + ar.ID})
}

// mayStillAssign checks that an approved change's requester still holds
// what the routes need: devices.write and assignPerm (the approval rule
// checked its own request permission already; rules are configurable).
func mayStillAssign(as approval.Actor) error {
	for _, perm := range []auth.Permission{auth.PermDevicesWrite, assignPerm} {
		if !as.Can(perm) {
			return fmt.Errorf("%s no longer holds %s", as.Subject(), perm)
		}
	}
	return nil
}

// executeDeviceAssign carries out an approved device change as its
// requester.
func (h *handler) executeDeviceAssign(_ context.Context, req approval.Request, as approval.Actor) error {
	if err := mayStillAssign(as); err != nil {
		return err
	}
	var a deviceAssign
	if err := json.Unmarshal(req.Params, &a); err != nil {
		return fmt.Errorf("stored change: %w", err)
	}
	if err := h.cfg.Inventory.Update(context.TODO(), a.Device, func(d *inventory.Device) error { return a.Patch.apply(d, true, false) }); err != nil {
		return err
	}
	h.log.Info("device updated after approval", "device_id", a.Device, "request_id", req.ID, "by", as.Subject())
	return nil
}

// createHeldToken creates a token that grants a model or group pending,
// files it for a second person's approval, and answers 201 with its
// secret (shown once) and the request.
func (h *handler) createHeldToken(w http.ResponseWriter, r *http.Request, req EnrollmentTokenRequest, ttl time.Duration) {
	g := inventory.Grant{Model: req.Model, Group: req.Group}
	secret, tok, err := h.cfg.Inventory.CreatePendingToken(r.Context(), g, req.Owner, ttl)
	if err != nil {
		h.internal(w, err)
		return
	}
	params, err := json.Marshal(grantingToken{Token: tok.ID, Model: tok.Model, Group: tok.Group})
	var ar approval.Request
	if err == nil {
		var model, group *string
		if tok.Model != "" {
			model = &tok.Model
		}
		if tok.Group != "" {
			group = &tok.Group
		}
		ar, err = h.cfg.Approvals.Submit(r.Context(), principal(r), approval.Draft{Kind: approval.KindGrantingToken,
			Target: approvalTarget("enrollment token " + tok.ID + " granting" + grantText(model, group)), Params: params,
			Justification: justification(r, "enrollment token "+tok.ID+" granting"+grantText(model, group))})
	}
	if err != nil {
		if derr := h.cfg.Inventory.DeleteToken(r.Context(), tok.ID); derr != nil {
			h.log.Error("deleting a pending enrollment token whose approval could not be filed failed", "token_id", tok.ID, "err", derr)
		}
		h.approvalError(w, err)
		return
	}
	h.log.Info("enrollment token created pending approval", "token_id", tok.ID, "model", tok.Model, "group", tok.Group, "owner", tok.Owner, "expires", tok.Expires, "request_id", ar.ID)
	writeJSON(w, http.StatusCreated, TokenResponse{ID: tok.ID, Token: secret, Model: tok.Model, Group: tok.Group, Owner: tok.Owner, Expires: tok.Expires,
		Pending: true, Approval: &ar})
}

// executeGrantingToken lets an approved pending token be used, as its
// requester.
func (h *handler) executeGrantingToken(_ context.Context, req approval.Request, as approval.Actor) error {
	if err := mayStillAssign(as); err != nil {
		return err
	}
	var g grantingToken
	if err := json.Unmarshal(req.Params, &g); err != nil {
		return fmt.Errorf("stored token: %w", err)
	}
	tok, err := h.cfg.Inventory.ActivateToken(context.TODO(), g.Token, inventory.Grant{Model: g.Model, Group: g.Group})
	if err != nil {
		return err
	}
	h.log.Info("enrollment token activated after approval", "token_id", tok.ID, "model", tok.Model, "group", tok.Group, "request_id", req.ID, "by", as.Subject())
	return nil
}
