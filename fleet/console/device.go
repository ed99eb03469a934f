package console

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// historyShown is how many attestation verdicts and events the device page
// lists.
const historyShown = 20

// DevicePage is the device page's data.
type DevicePage struct {
	Device inventory.Device
	Online bool
	// CertRevoked says the current certificate is revoked.
	CertRevoked bool
	Events      []inventory.Event
	// Attestations is nil when the operator may not read them or they are
	// not configured; HasAttestations tells which.
	Attestations    []attest.Record
	HasAttestations bool
	Secrets         []api.DeviceSecret
	HasSecrets      bool
	SecretsError    string
	Sections        []renderedSection
	// RevokeReasons are the reasons the revoke form offers.
	RevokeReasons []string
}

// PageTitle names the page after the device.
func (d DevicePage) PageTitle() string { return "Device " + short(d.Device.ID) }

func (c *Console) loadDevice(r *http.Request, p auth.Principal) (any, error) {
	d, err := c.cfg.Inventory.Device(r.PathValue("id"))
	if errors.Is(err, inventory.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	out := DevicePage{Device: *d, Online: c.connected(d), CertRevoked: d.CertSerial != "" && d.IsRevoked(d.CertSerial),
		RevokeReasons: []string{"unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "certificateHold"}}
	if out.Events, err = c.cfg.Inventory.Events(d.ID, historyShown); err != nil {
		return nil, err
	}
	if c.cfg.Attestations != nil {
		out.HasAttestations = true
		if out.Attestations, err = c.cfg.Attestations.History(d.ID, historyShown); err != nil {
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
	return out, nil
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
