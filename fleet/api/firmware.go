package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Firmware releases and campaigns:
//
//	PUT  /api/v1/firmware/images/{sha256}   raw image body, streamed (step 1 of 2)
//	POST /api/v1/firmware                   manifest + bundles (+ an inline image), JSON
//	GET  /api/v1/firmware                   releases, newest first
//	GET  /api/v1/firmware/{id}
//	POST /api/v1/firmware/{id}/approve      firmware.approve; never the uploader
//	POST /api/v1/firmware/{id}/withdraw
//	POST /api/v1/campaigns                  create a draft
//	GET  /api/v1/campaigns
//	GET  /api/v1/campaigns/{id}             with every wave's progress
//	GET  /api/v1/campaigns/{id}/devices     paged: ?step=&wave=&after=&limit=
//	POST /api/v1/campaigns/{id}/{start,pause,resume,abort,rollback}

// Firmware is the fleet's firmware service as the API uses it (fleet/server
// composes it from fleet/firmware and fleet/campaign).
type Firmware interface {
	// Releases is the release store.
	Releases() *firmware.Store
	// Campaigns is the campaign manager.
	Campaigns() *campaign.Manager
	// StageImage streams an image whose SHA-256 must be digest into the
	// server, for an Upload of its release without an image.
	StageImage(ctx context.Context, digest string, body io.Reader) (int64, error)
	// Upload verifies and stores a release that who uploads; a nil image
	// takes the staged one (or the store's, for a re-signed release).
	Upload(ctx context.Context, who string, manifest []byte, bundles [][]byte, image io.Reader) (*firmware.Release, error)
	// StartCampaign starts a draft campaign at at (zero: now) once its
	// release may be offered.
	StartCampaign(id string, at time.Time, who, why string) error
	// Exposure is the software inventory and vulnerability exposure
	// service; nil when off (its routes answer 501).
	Exposure() *exposure.Service
}

// Body limits of the firmware routes: an image is streamed without the
// API's limit (the service bounds it); a release with an inline image may
// be larger than other bodies.
const (
	// MaxInlineImage bounds an image sent inside POST /api/v1/firmware;
	// larger ones go first to PUT /api/v1/firmware/images/{sha256}.
	MaxInlineImage = 16 << 20
	maxUploadBody  = (MaxInlineImage+wire.MaxFirmwareManifest+wire.MaxFirmwareBundlesTotal)*4/3 + 4096
	// imageReadTime bounds the upload of one image, which the listener's
	// read timeout (made for API calls) would cut.
	imageReadTime = time.Hour
)

// bodyLimit is the most bytes a request body may have; 0 means no limit
// at this layer (the handler bounds what it reads).
func bodyLimit(r *http.Request) int64 {
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/api/v1/firmware/images/"):
		return 0
	case r.Method == http.MethodPost && r.URL.Path == "/api/v1/firmware":
		return maxUploadBody
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/api/v1/firmware/") && strings.HasSuffix(r.URL.Path, "/sbom"):
		return exposure.MaxSBOMSize + 1
	case r.Method == http.MethodPost && r.URL.Path == "/api/v1/advisories":
		return exposure.MaxAdvisorySize + 1
	}
	return maxBody
}

func (h *handler) routesFirmware() {
	h.route("PUT /api/v1/firmware/images/{sha256}", auth.PermFirmwareWrite, h.withFirmware(h.stageImage))
	h.route("POST /api/v1/firmware", auth.PermFirmwareWrite, h.withFirmware(h.uploadRelease))
	h.route("GET /api/v1/firmware", auth.PermFirmwareRead, h.withFirmware(h.listReleases))
	h.route("GET /api/v1/firmware/{id}", auth.PermFirmwareRead, h.withFirmware(h.getRelease))
	h.route("POST /api/v1/firmware/{id}/approve", auth.PermFirmwareApprove, h.withFirmware(h.approveRelease))
	h.route("POST /api/v1/firmware/{id}/withdraw", auth.PermFirmwareWrite, h.withFirmware(h.withdrawRelease))
	h.route("POST /api/v1/campaigns", auth.PermFirmwareWrite, h.withFirmware(h.createCampaign))
	h.route("GET /api/v1/campaigns", auth.PermFirmwareRead, h.withFirmware(h.listCampaigns))
	h.route("GET /api/v1/campaigns/{id}", auth.PermFirmwareRead, h.withFirmware(h.getCampaign))
	h.route("GET /api/v1/campaigns/{id}/devices", auth.PermFirmwareRead, h.withFirmware(h.campaignDevices))
	for _, action := range []string{"start", "pause", "resume", "abort"} {
		h.route("POST /api/v1/campaigns/{id}/"+action, auth.PermFirmwareWrite, h.withFirmware(h.campaignAction(action)))
	}
	h.route("POST /api/v1/campaigns/{id}/rollback", auth.PermFirmwareWrite, h.withFirmware(h.rollbackCampaign))

	h.describe("PUT /api/v1/firmware/images/{sha256}", "Upload a release's image (raw body, streamed) before its manifest", nil, ImageStaged{}, 201)
	h.describe("POST /api/v1/firmware", "Upload a signed release: manifest and bundles (base64), image inline or staged", ReleaseUpload{}, Release{}, 201)
	h.describe("GET /api/v1/firmware", "List releases, newest first", nil, ReleaseList{})
	h.describe("GET /api/v1/firmware/{id}", "A release with its approvals and whether it may be offered", nil, Release{})
	h.describe("POST /api/v1/firmware/{id}/approve", "Approve a release (two-person rule: never its uploader)", nil, Release{})
	h.describe("POST /api/v1/firmware/{id}/withdraw", "Withdraw a release for good", Justification{}, Release{})
	h.describe("POST /api/v1/campaigns", "Create a draft campaign (targets resolved, waves planned)", CampaignRequest{}, campaign.Campaign{}, 201)
	h.describe("GET /api/v1/campaigns", "List campaigns", nil, CampaignList{})
	h.describe("GET /api/v1/campaigns/{id}", "A campaign with every wave's progress", nil, campaign.Campaign{})
	h.describe("GET /api/v1/campaigns/{id}/devices", "A page of a campaign's devices (filter by step, wave; page with after)", nil, CampaignDevices{})
	h.describe("POST /api/v1/campaigns/{id}/start", "Start a draft campaign now or at a time", Justification{}, campaign.Campaign{})
	h.describe("POST /api/v1/campaigns/{id}/pause", "Pause a campaign (justification required)", Justification{}, campaign.Campaign{})
	h.describe("POST /api/v1/campaigns/{id}/resume", "Resume a paused campaign (justification required)", Justification{}, campaign.Campaign{})
	h.describe("POST /api/v1/campaigns/{id}/abort", "Abort a campaign (justification required)", Justification{}, campaign.Campaign{})
	h.describe("POST /api/v1/campaigns/{id}/rollback", "Roll back the devices that committed a campaign to another release", CampaignRequest{}, campaign.Campaign{}, 201)
}

type firmwareHandler func(w http.ResponseWriter, r *http.Request, who string, fw Firmware)

// withFirmware answers 501 when the fleet has no firmware service.
func (h *handler) withFirmware(fn firmwareHandler) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, who string) {
		if h.cfg.Firmware == nil {
			problem(w, http.StatusNotImplemented, "not implemented", "firmware releases are not configured on this fleet (release_trust)")
			return
		}
		fn(w, r, who, h.cfg.Firmware)
	}
}

// Release is a release in the API: the manifest's fields, its state and
// approvals, and the signed bytes for whoever wants to verify them.
type Release struct {
	ID              string                 `json:"id"`
	Name            string                 `json:"name"`
	Version         string                 `json:"version"`
	SecurityVersion uint64                 `json:"security_version"`
	Models          []string               `json:"models"`
	Size            int64                  `json:"size"`
	SHA256          string                 `json:"sha256"`
	Expires         time.Time              `json:"expires"`
	Measurements    *manifest.Measurements `json:"measurements,omitempty"`
	State           firmware.State         `json:"state"`
	Signers         []string               `json:"signers"`
	UploadedBy      string                 `json:"uploaded_by"`
	UploadedAt      time.Time              `json:"uploaded_at"`
	Approvals       []firmware.Approval    `json:"approvals,omitempty"`
	ApprovedAt      time.Time              `json:"approved_at,omitzero"`
	WithdrawnBy     string                 `json:"withdrawn_by,omitempty"`
	WithdrawnAt     time.Time              `json:"withdrawn_at,omitzero"`
	WithdrawReason  string                 `json:"withdraw_reason,omitempty"`
	// Offerable says whether campaigns may offer the release now;
	// NotOfferable says why not.
	Offerable    bool   `json:"offerable"`
	NotOfferable string `json:"not_offerable,omitempty"`
	// Manifest is the signed manifest (base64 in JSON, so that its bytes
	// come back exactly) and Bundles the signatures over it.
	Manifest []byte   `json:"manifest"`
	Bundles  [][]byte `json:"bundles"`
}

func (h *handler) releaseView(fw Firmware, r *firmware.Release) Release {
	m := r.Manifest
	v := Release{
		ID: r.ID, Name: m.Name, Version: m.Version, SecurityVersion: m.SecurityVersion, Models: m.Models, Size: m.Size,
		SHA256: r.ImageDigest(), Expires: m.Expires, Measurements: m.Measurements, State: r.State, Signers: r.Signers,
		UploadedBy: r.UploadedBy, UploadedAt: r.UploadedAt, Approvals: r.Approvals, ApprovedAt: r.ApprovedAt,
		WithdrawnBy: r.WithdrawnBy, WithdrawnAt: r.WithdrawnAt, WithdrawReason: r.WithdrawReason,
		Manifest: r.ManifestJSON, Bundles: r.Bundles,
	}
	if _, err := fw.Releases().Offerable(context.TODO(), r.ID, h.cfg.Now()); err != nil {
		v.NotOfferable = publicFirmwareError(err)
	} else {
		v.Offerable = true
	}
	return v
}

// ReleaseUpload is the body of POST /api/v1/firmware. Manifest, every
// bundle and Image are base64 (standard, padded): the manifest's exact
// bytes are what was signed. Without Image the server takes the image
// uploaded before with PUT /api/v1/firmware/images/{sha256}, or the one it
// already holds for a re-signed release.
type ReleaseUpload struct {
	Manifest []byte   `json:"manifest"`
	Bundles  [][]byte `json:"bundles"`
	Image    []byte   `json:"image,omitempty"`
}

// ImageStaged answers PUT /api/v1/firmware/images/{sha256}.
type ImageStaged struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

func (h *handler) stageImage(w http.ResponseWriter, r *http.Request, who string, fw Firmware) {
	digest := r.PathValue("sha256")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(imageReadTime))
	n, err := fw.StageImage(r.Context(), digest, r.Body)
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	h.log.Info("firmware image staged", "image", digest, "bytes", n, "by", who)
	writeJSON(w, http.StatusCreated, ImageStaged{SHA256: digest, Size: n})
}

func (h *handler) uploadRelease(w http.ResponseWriter, r *http.Request, who string, fw Firmware) {
	var req ReleaseUpload
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			problem(w, http.StatusRequestEntityTooLarge, "request too large",
				fmt.Sprintf("images above %d bytes go to PUT /api/v1/firmware/images/{sha256} first", MaxInlineImage))
			return
		}
		problem(w, http.StatusBadRequest, "bad request", "malformed JSON body: "+publicJSONError(err))
		return
	}
	if len(req.Manifest) == 0 || len(req.Bundles) == 0 {
		problem(w, http.StatusBadRequest, "bad request", "manifest and at least one signature bundle are required")
		return
	}
	if len(req.Image) > MaxInlineImage {
		problem(w, http.StatusRequestEntityTooLarge, "request too large",
			fmt.Sprintf("images above %d bytes go to PUT /api/v1/firmware/images/{sha256} first", MaxInlineImage))
		return
	}
	var image io.Reader
	if req.Image != nil {
		image = bytes.NewReader(req.Image)
	}
	rel, err := fw.Upload(r.Context(), who, req.Manifest, req.Bundles, image)
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, h.releaseView(fw, rel))
}

// ReleaseList is GET /api/v1/firmware.
type ReleaseList struct {
	Releases []Release `json:"releases"`
}

func (h *handler) listReleases(w http.ResponseWriter, r *http.Request, _ string, fw Firmware) {
	rs, err := fw.Releases().List(r.Context())
	if err != nil {
		h.internal(w, err)
		return
	}
	out := ReleaseList{Releases: make([]Release, 0, len(rs))}
	for _, rel := range rs {
		out.Releases = append(out.Releases, h.releaseView(fw, rel))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) getRelease(w http.ResponseWriter, r *http.Request, _ string, fw Firmware) {
	rel, err := fw.Releases().Release(r.Context(), r.PathValue("id"))
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.releaseView(fw, rel))
}

func (h *handler) approveRelease(w http.ResponseWriter, r *http.Request, who string, fw Firmware) {
	// The two-person rule: an account created or changed after the
	// release was uploaded cannot approve it (one person must not make a
	// second account to approve their own upload).
	cur, err := fw.Releases().Release(r.Context(), r.PathValue("id"))
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	if since := principal(r).Since(); !since.IsZero() && !since.Before(cur.UploadedAt) {
		problem(w, http.StatusForbidden, "two-person rule", "an account created or changed after the release was uploaded cannot approve it")
		return
	}
	rel, err := fw.Releases().Approve(r.Context(), who, r.PathValue("id"))
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.releaseView(fw, rel))
}

// Justification is the body of the operator actions that need a reason:
// withdraw, and the campaign actions. At is the start time of a start
// (zero: now).
type Justification struct {
	Justification string    `json:"justification"`
	At            time.Time `json:"at,omitzero"`
}

func (h *handler) withdrawRelease(w http.ResponseWriter, r *http.Request, who string, fw Firmware) {
	var req Justification
	if !decode(w, r, &req) {
		return
	}
	rel, err := fw.Releases().Withdraw(r.Context(), who, r.PathValue("id"), req.Justification)
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.releaseView(fw, rel))
}

// CampaignRequest is the body of POST /api/v1/campaigns and of
// POST /api/v1/campaigns/{id}/rollback (whose definition names the
// release to go back to and no targets).
type CampaignRequest struct {
	Definition    campaign.Definition `json:"definition"`
	Justification string              `json:"justification"`
}

func (h *handler) createCampaign(w http.ResponseWriter, r *http.Request, who string, fw Firmware) {
	var req CampaignRequest
	if !decode(w, r, &req) {
		return
	}
	if _, err := fw.Releases().Release(r.Context(), req.Definition.Release); err != nil {
		h.firmwareError(w, err)
		return
	}
	c, err := fw.Campaigns().Create(r.Context(), req.Definition, who, req.Justification)
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, c)
}

// CampaignList is GET /api/v1/campaigns.
type CampaignList struct {
	Campaigns []campaign.Campaign `json:"campaigns"`
}

func (h *handler) listCampaigns(w http.ResponseWriter, _ *http.Request, _ string, fw Firmware) {
	cs, err := fw.Campaigns().List()
	if err != nil {
		h.internal(w, err)
		return
	}
	if cs == nil {
		cs = []campaign.Campaign{}
	}
	writeJSON(w, http.StatusOK, CampaignList{Campaigns: cs})
}

func (h *handler) getCampaign(w http.ResponseWriter, r *http.Request, _ string, fw Firmware) {
	c, err := fw.Campaigns().Get(r.PathValue("id"))
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// CampaignDevices is GET /api/v1/campaigns/{id}/devices: a page of the
// campaign's devices in ID order; Next is the "after" of the next page.
type CampaignDevices struct {
	Devices []campaign.Device `json:"devices"`
	Next    string            `json:"next,omitempty"`
}

func (h *handler) campaignDevices(w http.ResponseWriter, r *http.Request, _ string, fw Firmware) {
	q := r.URL.Query()
	f := campaign.DeviceFilter{Step: campaign.Step(q.Get("step")), After: q.Get("after")}
	for name, dst := range map[string]*int{"wave": &f.Wave, "limit": &f.Limit} {
		if s := q.Get(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 || n > 1000 && name == "limit" {
				problem(w, http.StatusBadRequest, "bad request", name+" must be a small non-negative integer (limit at most 1000)")
				return
			}
			*dst = n
		}
	}
	devs, next, err := fw.Campaigns().Devices(r.PathValue("id"), f)
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	if devs == nil {
		devs = []campaign.Device{}
	}
	writeJSON(w, http.StatusOK, CampaignDevices{Devices: devs, Next: next})
}

func (h *handler) campaignAction(action string) firmwareHandler {
	return func(w http.ResponseWriter, r *http.Request, who string, fw Firmware) {
		var req Justification
		if !decode(w, r, &req) {
			return
		}
		id, cm := r.PathValue("id"), fw.Campaigns()
		var err error
		switch action {
		case "start":
			err = fw.StartCampaign(id, req.At, who, req.Justification)
		case "pause":
			err = cm.Pause(id, who, req.Justification)
		case "resume":
			err = cm.Resume(id, who, req.Justification)
		case "abort":
			err = cm.Abort(id, who, req.Justification)
		}
		if err != nil {
			h.firmwareError(w, err)
			return
		}
		c, err := cm.Get(id)
		if err != nil {
			h.internal(w, err)
			return
		}
		writeJSON(w, http.StatusOK, c)
	}
}

func (h *handler) rollbackCampaign(w http.ResponseWriter, r *http.Request, who string, fw Firmware) {
	var req CampaignRequest
	if !decode(w, r, &req) {
		return
	}
	if _, err := fw.Releases().Release(r.Context(), req.Definition.Release); err != nil {
		h.firmwareError(w, err)
		return
	}
	c, err := fw.Campaigns().Rollback(r.Context(), r.PathValue("id"), req.Definition, who, req.Justification)
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, c)
}

// firmwareError answers a release or campaign error: refusals with their
// status and public text, anything else as an internal error.
func (h *handler) firmwareError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, firmware.ErrNotFound), errors.Is(err, campaign.ErrNotFound), errors.Is(err, campaign.ErrNotTarget):
		status = http.StatusNotFound
	case errors.Is(err, firmware.ErrSelfApproval):
		problem(w, http.StatusForbidden, "two-person rule", "the uploader of a release cannot approve it; another person with firmware.approve must")
		return
	case errors.Is(err, firmware.ErrExists), errors.Is(err, firmware.ErrAlreadyApproved), errors.Is(err, firmware.ErrWithdrawn),
		errors.Is(err, firmware.ErrNotApproved), errors.Is(err, campaign.ErrState):
		status = http.StatusConflict
	case errors.Is(err, firmware.ErrTooLarge):
		status = http.StatusRequestEntityTooLarge
	case errors.Is(err, firmware.ErrInvalid), errors.Is(err, firmware.ErrNoImage), errors.Is(err, campaign.ErrInvalid),
		errors.Is(err, campaign.ErrAccountability), errors.Is(err, manifest.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, campaign.ErrNoTargets):
		status = http.StatusUnprocessableEntity
	default:
		if _, ok := errors.AsType[*wire.Error](err); ok {
			status = http.StatusUnprocessableEntity // signature, expiry or image refused
		}
	}
	if status == http.StatusInternalServerError {
		h.internal(w, err)
		return
	}
	problem(w, status, http.StatusText(status), publicFirmwareError(err))
}

// publicFirmwareError is the text of a refusal: the wire reason's public
// message when there is one, else the error's own text (the packages'
// refusals name only what the caller sent).
func publicFirmwareError(err error) string {
	if we, ok := errors.AsType[*wire.Error](err); ok {
		return we.Reason.String() + ": " + we.Message
	}
	s := err.Error()
	if len(s) > 1024 {
		s = s[:1024]
	}
	return s
}

// UploadRelease uploads a release in two steps: the image, streamed from
// image (size bytes, or -1 when unknown), then the manifest and bundles.
// A nil image uploads the manifest alone (re-signed releases of an image
// the fleet holds).
func (c *Client) UploadRelease(ctx context.Context, manifestJSON []byte, bundles [][]byte, image io.Reader, size int64) (*Release, error) {
	if image != nil {
		m, err := manifest.Parse(manifestJSON)
		if err != nil {
			return nil, err
		}
		if err := c.PutImage(ctx, fmt.Sprintf("%x", m.SHA256), image, size); err != nil {
			return nil, err
		}
	}
	var out Release
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/firmware", ReleaseUpload{Manifest: manifestJSON, Bundles: bundles}, &out)
}

// PutImage streams an image to PUT /api/v1/firmware/images/{sha256}. It
// is bounded by ctx, not by the client's timeout.
func (c *Client) PutImage(ctx context.Context, digest string, image io.Reader, size int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.BaseURL+"/api/v1/firmware/images/"+url.PathEscape(digest), image)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/octet-stream")
	hc := *c.HTTP
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Status: resp.StatusCode}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&se.Problem)
		return se
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	return nil
}

// Releases lists the releases.
func (c *Client) Releases(ctx context.Context) (*ReleaseList, error) {
	var out ReleaseList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/firmware", nil, &out)
}

// FirmwareRelease fetches one release.
func (c *Client) FirmwareRelease(ctx context.Context, id string) (*Release, error) {
	var out Release
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/firmware/"+url.PathEscape(id), nil, &out)
}

// ApproveRelease approves a release as the client's user.
func (c *Client) ApproveRelease(ctx context.Context, id string) (*Release, error) {
	var out Release
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/firmware/"+url.PathEscape(id)+"/approve", nil, &out)
}

// WithdrawRelease withdraws a release for good.
func (c *Client) WithdrawRelease(ctx context.Context, id, reason string) (*Release, error) {
	var out Release
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/firmware/"+url.PathEscape(id)+"/withdraw", Justification{Justification: reason}, &out)
}

// CreateCampaign creates a draft campaign.
func (c *Client) CreateCampaign(ctx context.Context, def campaign.Definition, why string) (*campaign.Campaign, error) {
	var out campaign.Campaign
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/campaigns", CampaignRequest{Definition: def, Justification: why}, &out)
}

// CampaignAction starts, pauses, resumes or aborts a campaign; at is the
// start time of a start (zero: now).
func (c *Client) CampaignAction(ctx context.Context, id, action, why string, at time.Time) (*campaign.Campaign, error) {
	var out campaign.Campaign
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/campaigns/"+url.PathEscape(id)+"/"+url.PathEscape(action), Justification{Justification: why, At: at}, &out)
}

// RollbackCampaign creates a draft campaign that takes the devices that
// committed campaign id to def.Release.
func (c *Client) RollbackCampaign(ctx context.Context, id string, def campaign.Definition, why string) (*campaign.Campaign, error) {
	var out campaign.Campaign
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/campaigns/"+url.PathEscape(id)+"/rollback", CampaignRequest{Definition: def, Justification: why}, &out)
}

// Campaigns lists the campaigns.
func (c *Client) Campaigns(ctx context.Context) (*CampaignList, error) {
	var out CampaignList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/campaigns", nil, &out)
}

// Campaign fetches a campaign with its waves.
func (c *Client) Campaign(ctx context.Context, id string) (*campaign.Campaign, error) {
	var out campaign.Campaign
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/campaigns/"+url.PathEscape(id), nil, &out)
}

// CampaignDevices fetches a page of a campaign's devices.
func (c *Client) CampaignDevices(ctx context.Context, id string, f campaign.DeviceFilter) (*CampaignDevices, error) {
	q := url.Values{}
	if f.Step != "" {
		q.Set("step", string(f.Step))
	}
	if f.Wave > 0 {
		q.Set("wave", strconv.Itoa(f.Wave))
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	path := "/api/v1/campaigns/" + url.PathEscape(id) + "/devices"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out CampaignDevices
	return &out, c.Do(ctx, http.MethodGet, path, nil, &out)
}
