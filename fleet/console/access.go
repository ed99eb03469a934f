package console

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Grants lists just-in-time access grants; *access.Service implements it.
type Grants interface {
	List(ctx context.Context, actor approval.Actor, f access.Filter) ([]access.Grant, error)
	Policy() access.Policy
}

var _ Grants = (*access.Service)(nil)

// AccessPages is the just-in-time SSH access page: request access for
// one's own public key, the grants (one's own, or all with
// access.approve) with their state, approvers and the sessions devices
// reported, and approve, deny and revoke forms.
type AccessPages struct {
	// Grants is the access service; nil makes an empty Extension.
	Grants Grants
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// AccessPage is the access page's data.
type AccessPage struct {
	Grants []AccessRow
	Policy access.Policy
	// MaxDuration is the policy's bound as people write it ("8h0m0s").
	MaxDuration string
}

// AccessRow is a grant as the page shows it.
type AccessRow struct {
	access.Grant
	Status access.State
	Tone   string
	Mine   bool
}

// Extension returns the access page.
func (a AccessPages) Extension() Extension {
	if a.Grants == nil {
		return Extension{}
	}
	a.Now = clockOr(a.Now)
	return Extension{Pages: []Page{{Name: "access", Path: "/access", Nav: "Access", Title: "Just-in-time SSH access",
		Perm: auth.PermAccessRequest, Template: source("access.html"), Load: a.load, Actions: []Action{
			{Name: "access.request", Path: "/access/request", API: "POST /api/v1/access", Then: "/access", Body: accessDraft,
				OK: "Requested: someone else with access.approve must approve it; the certificate appears here once they do."},
			{Name: "access.approve", Path: "/access/{id}/approve", API: "POST /api/v1/access/{id}/approve", Then: "/access",
				Body: approveBody,
				OK:   "Approved: the certificate is signed once the grant has every approval it needs."},
			{Name: "access.deny", Path: "/access/{id}/deny", API: "POST /api/v1/access/{id}/deny", Then: "/access", Body: rejectBody,
				OK: "Denied: no certificate will be signed."},
			{Name: "access.revoke", Path: "/access/{id}/revoke", API: "POST /api/v1/access/{id}/revoke", Then: "/access", Body: rejectBody,
				OK: "Revoked: the devices refuse the certificate as soon as they have the new revocation list."},
		}}}}
}

// accessDraft builds a request from the form.
func accessDraft(form url.Values) (any, error) {
	j, err := justification(form)
	if err != nil {
		return nil, err
	}
	d := access.Draft{Login: strings.TrimSpace(form.Get("login")), PublicKey: strings.TrimSpace(form.Get("public_key")),
		Justification: j, SourceAddress: strings.TrimSpace(form.Get("source_address"))}
	target := strings.TrimSpace(form.Get("target"))
	if form.Get("kind") == "group" {
		d.Group = target
	} else {
		d.Device = target
	}
	if target == "" || d.PublicKey == "" {
		return nil, errUser("name the device or group and paste your public key (the .pub file)")
	}
	if s := strings.TrimSpace(form.Get("duration")); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil || v <= 0 {
			return nil, errUser("write the duration as 30m, 1h or 2h30m")
		}
		d.Duration = config.Duration(v)
	}
	return d, nil
}

func (a AccessPages) load(r *http.Request, p auth.Principal) (any, error) {
	gs, err := a.Grants.List(r.Context(), p, access.Filter{})
	if err != nil {
		return nil, err
	}
	now := a.Now()
	pol := a.Grants.Policy()
	out := AccessPage{Policy: pol, MaxDuration: time.Duration(pol.MaxDuration).String()}
	for _, g := range gs {
		row := AccessRow{Grant: g, Status: g.StateAt(now), Mine: g.Requester == p.User}
		switch row.Status {
		case access.StateApproved, access.StateActive:
			row.Tone = "ok"
		case access.StateRequested:
			row.Tone = "warn"
		case access.StateRevoked, access.StateDenied:
			row.Tone = "bad"
		default:
			row.Tone = "muted"
		}
		out.Grants = append(out.Grants, row)
	}
	return out, nil
}
