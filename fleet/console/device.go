package console

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// historyShown is how many entries each history section of the device
// page (attestations, events, firmware, audit) lists per page.
const historyShown = 20

// DevicePage is the device page's data.
type DevicePage struct {
	Device inventory.Device
	Online bool
	// CertRevoked says the current certificate is revoked.
	CertRevoked bool
	// Events is a page of the lifecycle events, newest first.
	Events     []inventory.Event
	EventsPage HistoryPage
	// Attestations is nil when the operator may not read them or they are
	// not configured; HasAttestations tells which.
	Attestations     []attest.Record
	AttestationsPage HistoryPage
	HasAttestations  bool
	Secrets          []api.DeviceSecret
	HasSecrets       bool
	SecretsError     string
	Sections         []renderedSection
	// RevokeReasons are the reasons the revoke form offers.
	RevokeReasons []string
	// HasActions says the operator may use at least one of the actions.
	HasActions bool
	// Contents are the page's sections, for the links at its top.
	Contents []Anchor
}

// Anchor is a link to a part of a page.
type Anchor struct{ ID, Label string }

// HistoryPage links a history section's pages: Older to the next entries
// (empty on the last page), Newer back toward the newest (empty on the
// first), both returning to the section's anchor.
type HistoryPage struct {
	// Name says whose pages they are ("lifecycle events").
	Name         string
	Older, Newer string
	// From numbers the first entry shown (1 on the first page).
	From int
}

// PageTitle names the page after the device.
func (d DevicePage) PageTitle() string { return "Device " + short(d.Device.ID) }

// historyLink is the device page with one history section's page set and
// the other sections' pages kept, ending at the section's anchor.
func historyLink(r *http.Request, deviceID, param, value, anchor string) string {
	v := r.URL.Query()
	v.Del("ok")
	if value == "" {
		v.Del(param)
	} else {
		v.Set(param, value)
	}
	link := "/devices/" + url.PathEscape(deviceID)
	if len(v) > 0 {
		link += "?" + v.Encode()
	}
	return link + "#" + anchor
}

// pageNumber reads a 1-based page number parameter ("" is 1).
func pageNumber(r *http.Request, param string) (int, error) {
	s := r.URL.Query().Get(param)
	if s == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 10000 {
		return 0, badRequestf("%s is a page number", param)
	}
	return n, nil
}

// numberedPage is HistoryPage for a section paged by number (n, 1-based)
// with more saying a next page exists.
func numberedPage(r *http.Request, deviceID, param, anchor string, n int, more bool) HistoryPage {
	hp := HistoryPage{From: (n-1)*historyShown + 1}
	if more {
		hp.Older = historyLink(r, deviceID, param, strconv.Itoa(n+1), anchor)
	}
	switch {
	case n == 2:
		hp.Newer = historyLink(r, deviceID, param, "", anchor)
	case n > 2:
		hp.Newer = historyLink(r, deviceID, param, strconv.Itoa(n-1), anchor)
	}
	return hp
}

// allowed reports whether p may run the named action.
func (c *Console) allowed(p auth.Principal, name string) bool {
	a, ok := c.actions[name]
	return ok && a.enabled && p.Can(a.perm)
}

func (c *Console) loadDevice(r *http.Request, p auth.Principal) (any, error) {
	d, err := c.cfg.Inventory.Device(r.Context(), r.PathValue("id"))
	if errors.Is(err, inventory.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	out := DevicePage{Device: *d, Online: c.connected(d), CertRevoked: d.CertSerial != "" && d.IsRevoked(d.CertSerial),
		RevokeReasons: []string{"unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "certificateHold"}}
	// Events: paged by number (a device keeps at most its newest 100 or
	// so); read one more than shown to know whether another page exists.
	n, err := pageNumber(r, "events")
	if err != nil {
		return nil, err
	}
	evs, err := c.cfg.Inventory.Events(r.Context(), d.ID, n*historyShown+1)
	if err != nil {
		return nil, err
	}
	if from := (n - 1) * historyShown; from < len(evs) {
		out.Events = evs[from:min(len(evs), from+historyShown)]
	}
	out.EventsPage = numberedPage(r, d.ID, "events", "events", n, len(evs) > n*historyShown)
	out.EventsPage.Name = "lifecycle events"
	if c.cfg.Attestations != nil {
		out.HasAttestations = true
		if err := c.loadAttestations(r, d.ID, &out); err != nil {
			return nil, err
		}
	}
	if c.cfg.Secrets != nil && p.Can(auth.PermSecretsRead) {
		out.HasSecrets = true
		if out.Secrets, err = c.cfg.Secrets.DeviceSecrets(d.ID); err != nil {
			c.log.Error("console: reading a device's secrets failed", "device_id", d.ID, "err", err)
			out.SecretsError = "The secrets' delivery state could not be read; the server log says why."
		}
	}
	out.Sections = c.renderSections(r, c.view(r, p, ""), d)
	for _, name := range []string{"device.approve", "device.quarantine", "device.release", "device.revoke", "device.rotate", "device.edit", "device.attest", "device.decommission"} {
		out.HasActions = out.HasActions || c.allowed(p, name)
	}
	out.Contents = []Anchor{{"identity", "Identity"}, {"certificate", "Certificate"}}
	if out.HasActions {
		out.Contents = append(out.Contents, Anchor{"actions", "Actions"})
	}
	if out.HasAttestations {
		out.Contents = append(out.Contents, Anchor{"attestations", "Attestations"})
	}
	if out.HasSecrets {
		out.Contents = append(out.Contents, Anchor{"secrets", "Secrets"})
	}
	for _, s := range out.Sections {
		out.Contents = append(out.Contents, Anchor{s.Name, s.Title})
	}
	out.Contents = append(out.Contents, Anchor{"events", "Events"})
	return out, nil
}

// loadAttestations reads a page of the attestation history: the verdicts
// older than ?attestations=<seq> (the newest without it).
func (c *Console) loadAttestations(r *http.Request, deviceID string, out *DevicePage) error {
	var before uint64
	if s := r.URL.Query().Get("attestations"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			return badRequestf("attestations is a verdict's sequence number")
		}
		before = n
	}
	recs, err := c.cfg.Attestations.HistoryBefore(r.Context(), deviceID, before, historyShown+1)
	if err != nil {
		return err
	}
	more := len(recs) > historyShown
	out.Attestations = recs[:min(len(recs), historyShown)]
	out.AttestationsPage.Name = "attestation history"
	if more {
		out.AttestationsPage.Older = historyLink(r, deviceID, "attestations", strconv.FormatUint(out.Attestations[len(out.Attestations)-1].Seq, 10), "attestations")
	}
	if before > 0 {
		out.AttestationsPage.Newer = historyLink(r, deviceID, "attestations", "", "attestations")
	}
	return nil
}

// justification reads the required justification field.
func justification(form url.Values) (string, error) {
	j := strings.TrimSpace(form.Get("justification"))
	if len(j) < 3 {
		return "", errUser("write a justification (at least 3 characters): it goes into the device's history and the audit log")
	}
	if len(j) > 500 {
		return "", errUser("the justification is at most 500 characters")
	}
	return j, nil
}

// deviceActions are the device page's forms, each one API route.
func deviceActions() []Action {
	just := func(form url.Values) (any, error) {
		j, err := justification(form)
		return map[string]string{"justification": j}, err
	}
	return []Action{
		{Name: "device.approve", Path: "/devices/{id}/approve", API: "POST /api/v1/devices/{id}/approve",
			Then: "/devices/{id}", OK: "Approved: the device receives its certificate when it asks again (within its retry interval)."},
		{Name: "device.quarantine", Path: "/devices/{id}/quarantine", API: "POST /api/v1/devices/{id}/quarantine", Body: just,
			Then: "/devices/{id}", OK: "Quarantined: its certificate is revoked and it may only prove itself again."},
		{Name: "device.release", Path: "/devices/{id}/release", API: "POST /api/v1/devices/{id}/release", Body: just,
			Then: "/devices/{id}", OK: "Released: the device re-enrolls from its EK and returns to active."},
		{Name: "device.revoke", Path: "/devices/{id}/revoke", API: "POST /api/v1/devices/{id}/revoke",
			Body: func(form url.Values) (any, error) {
				return map[string]string{"reason": form.Get("reason"), "comment": strings.TrimSpace(form.Get("comment"))}, nil
			},
			Then: "/devices/{id}", OK: "Certificate revoked: the device was disconnected and re-enrolls from its EK."},
		{Name: "device.rotate", Path: "/devices/{id}/rotate", API: "POST /api/v1/devices/{id}/rotate",
			Then: "/devices/{id}", OK: "Rotation started: the device is asked to renew its credentials with a fresh attestation."},
		{Name: "device.attest", Path: "/devices/{id}/attest", API: "POST /api/v1/devices/{id}/attest",
			Then: "/devices/{id}", OK: "Challenge sent: the verdict appears below once the device answers."},
		{Name: "device.edit", Path: "/devices/{id}/edit", API: "PATCH /api/v1/devices/{id}",
			Body: func(form url.Values) (any, error) {
				// Model and group only when the form has them: they need
				// secrets.write, and the form shows them only then.
				body := map[string]string{"owner": strings.TrimSpace(form.Get("owner"))}
				for _, k := range []string{"model", "group"} {
					if _, ok := form[k]; ok {
						body[k] = strings.TrimSpace(form.Get(k))
					}
				}
				return body, nil
			},
			Then: "/devices/{id}", OK: "Saved."},
		{Name: "device.decommission", Path: "/devices/{id}/decommission", API: "POST /api/v1/devices/{id}/decommission",
			Body: func(form url.Values) (any, error) {
				j, err := justification(form)
				return map[string]string{"comment": j}, err
			},
			Then: "/devices/{id}", OK: "Decommissioned: its certificate is revoked and its EK refused from now on."},
	}
}
