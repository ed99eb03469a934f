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

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
)

// Software inventory and vulnerability exposure (fleet/exposure), under
// the firmware permissions: what a release contains is part of the release.
//
//	POST /api/v1/firmware/{id}/sbom        the release's SBOM (CycloneDX or SPDX JSON), as its signed manifest binds it
//	GET  /api/v1/firmware/{id}/components  the release's components
//	GET  /api/v1/exposure?purl=&range=     devices running a component (package URL, version range) as attested
//	POST /api/v1/advisories                import an OSV JSON advisory; its exposure report
//	GET  /api/v1/advisories                the imported advisories' IDs
//	GET  /api/v1/advisories/{id}/report    exposure report, JSON or CSV (?format=csv, or Accept: text/csv)

// ComponentList is a release's components.
type ComponentList struct {
	Release    string               `json:"release"`
	Components []exposure.Component `json:"components"`
}

// ExposureList is the answer to an exposure query.
type ExposureList struct {
	Devices []exposure.Finding `json:"devices"`
}

// AdvisoryList lists the imported advisories.
type AdvisoryList struct {
	Advisories []string `json:"advisories"`
}

func (h *handler) routesExposure() {
	h.route("POST /api/v1/firmware/{id}/sbom", auth.PermFirmwareWrite, h.withExposure(h.putSBOM))
	h.route("GET /api/v1/firmware/{id}/components", auth.PermFirmwareRead, h.withExposure(h.components))
	h.route("GET /api/v1/exposure", auth.PermFirmwareRead, h.withExposure(h.queryExposure))
	h.route("POST /api/v1/advisories", auth.PermFirmwareWrite, h.withExposure(h.importAdvisory))
	h.route("GET /api/v1/advisories", auth.PermFirmwareRead, h.withExposure(h.listAdvisories))
	h.route("GET /api/v1/advisories/{id}/report", auth.PermFirmwareRead, h.withExposure(h.advisoryReport))

	h.describe("POST /api/v1/firmware/{id}/sbom", "Attach a release's SBOM, CycloneDX or SPDX JSON (its digest must be the one its signed manifest binds)", json.RawMessage{}, ComponentList{})
	h.describe("GET /api/v1/firmware/{id}/components", "A release's components, from its SBOM", nil, ComponentList{})
	h.describe("GET /api/v1/exposure", "Devices whose attested release holds a component (?purl= package URL, ?range= version range)", nil, ExposureList{})
	h.describe("POST /api/v1/advisories", "Import an OSV JSON advisory and get its exposure report", json.RawMessage{}, exposure.Report{}, 201)
	h.describe("GET /api/v1/advisories", "List the imported advisories", nil, AdvisoryList{})
	h.describe("GET /api/v1/advisories/{id}/report", "Exposure to an advisory now: devices, groups, models, owners (JSON, or CSV with ?format=csv)", nil, exposure.Report{})
	h.alsoServes("GET /api/v1/advisories/{id}/report", "text/csv")
}

// withExposure answers 501 when the fleet has no exposure service.
func (h *handler) withExposure(fn func(w http.ResponseWriter, r *http.Request, who string, fw Firmware, x *exposure.Service)) func(http.ResponseWriter, *http.Request, string) {
	return h.withFirmware(func(w http.ResponseWriter, r *http.Request, who string, fw Firmware) {
		x := fw.Exposure()
		if x == nil {
			problem(w, http.StatusNotImplemented, "not implemented", "vulnerability exposure is not available on this fleet")
			return
		}
		fn(w, r, who, fw, x)
	})
}

// readRaw reads a raw body of at most limit bytes; false when it answered.
func readRaw(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		problem(w, http.StatusBadRequest, "bad request", "the body could not be read")
		return nil, false
	}
	if int64(len(b)) > limit {
		problem(w, http.StatusRequestEntityTooLarge, "too large", fmt.Sprintf("the body exceeds %d bytes", limit))
		return nil, false
	}
	return b, true
}

func (h *handler) putSBOM(w http.ResponseWriter, r *http.Request, _ string, fw Firmware, x *exposure.Service) {
	rel, err := fw.Releases().Release(r.Context(), r.PathValue("id"))
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	b, ok := readRaw(w, r, exposure.MaxSBOMSize)
	if !ok {
		return
	}
	cs, err := x.SetSBOM(r.Context(), rel, b)
	if err != nil && cs == nil {
		h.exposureError(w, err)
		return
	}
	if err != nil { // stored; only the alert for devices running it failed
		h.log.Error("exposure alert failed", "err", err)
	}
	writeJSON(w, http.StatusOK, ComponentList{Release: rel.ID, Components: nonNil(cs)})
}

func (h *handler) components(w http.ResponseWriter, r *http.Request, _ string, fw Firmware, x *exposure.Service) {
	rel, err := fw.Releases().Release(r.Context(), r.PathValue("id"))
	if err != nil {
		h.firmwareError(w, err)
		return
	}
	cs, err := x.Components(r.Context(), rel.ID)
	if err != nil {
		h.exposureError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ComponentList{Release: rel.ID, Components: nonNil(cs)})
}

func (h *handler) queryExposure(w http.ResponseWriter, r *http.Request, _ string, _ Firmware, x *exposure.Service) {
	fs, err := x.Query(r.Context(), r.URL.Query().Get("purl"), r.URL.Query().Get("range"))
	if err != nil {
		h.exposureError(w, err)
		return
	}
	if fs == nil {
		fs = []exposure.Finding{}
	}
	writeJSON(w, http.StatusOK, ExposureList{Devices: fs})
}

func (h *handler) importAdvisory(w http.ResponseWriter, r *http.Request, _ string, _ Firmware, x *exposure.Service) {
	b, ok := readRaw(w, r, exposure.MaxAdvisorySize)
	if !ok {
		return
	}
	rep, err := x.ImportAdvisory(r.Context(), b)
	if err != nil && rep == nil {
		h.exposureError(w, err)
		return
	}
	if err != nil { // stored and computed; only the alert failed
		h.log.Error("exposure alert failed", "err", err)
	}
	writeJSON(w, http.StatusCreated, rep)
}

func (h *handler) listAdvisories(w http.ResponseWriter, r *http.Request, _ string, _ Firmware, x *exposure.Service) {
	ids, err := x.Advisories(r.Context())
	if err != nil {
		h.exposureError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, AdvisoryList{Advisories: nonNil(ids)})
}

func (h *handler) advisoryReport(w http.ResponseWriter, r *http.Request, _ string, _ Firmware, x *exposure.Service) {
	rep, err := x.Report(r.Context(), r.PathValue("id"))
	if err != nil {
		h.exposureError(w, err)
		return
	}
	if r.URL.Query().Get("format") == "csv" || r.Header.Get("Accept") == "text/csv" {
		var buf bytes.Buffer
		if err := rep.WriteCSV(&buf); err != nil {
			h.internal(w, err)
			return
		}
		w.Header().Set("Content-Type", "text/csv")
		w.Write(buf.Bytes())
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// exposureError answers an error of fleet/exposure: the caller's input
// refused with its reason, anything else as an internal error.
func (h *handler) exposureError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, exposure.ErrNotFound), errors.Is(err, firmware.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", publicFirmwareError(err))
	case errors.Is(err, exposure.ErrNoSBOM), errors.Is(err, exposure.ErrSBOMDigest):
		problem(w, http.StatusUnprocessableEntity, "SBOM refused", publicFirmwareError(err))
	case errors.Is(err, exposure.ErrSBOM), errors.Is(err, exposure.ErrAdvisory), errors.Is(err, exposure.ErrQuery):
		problem(w, http.StatusBadRequest, "bad request", publicFirmwareError(err))
	default:
		h.internal(w, err)
	}
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// rawDo sends body as it is (not re-encoded: an SBOM's digest is over its
// bytes) and decodes a JSON answer into out, or returns the raw answer
// when out is nil.
func (c *Client) rawDo(ctx context.Context, method, path string, body []byte, out any) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Status: resp.StatusCode}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&se.Problem)
		return nil, se
	}
	if out != nil {
		return nil, json.NewDecoder(resp.Body).Decode(out)
	}
	return io.ReadAll(resp.Body)
}

// PutSBOM attaches a release's SBOM file, byte for byte.
func (c *Client) PutSBOM(ctx context.Context, id string, sbom []byte) (*ComponentList, error) {
	var out ComponentList
	_, err := c.rawDo(ctx, http.MethodPost, "/api/v1/firmware/"+url.PathEscape(id)+"/sbom", sbom, &out)
	return &out, err
}

// Components returns a release's components.
func (c *Client) Components(ctx context.Context, id string) (*ComponentList, error) {
	var out ComponentList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/firmware/"+url.PathEscape(id)+"/components", nil, &out)
}

// Exposure returns the devices running a component (package URL) in a
// version range ("" for any) as attested.
func (c *Client) Exposure(ctx context.Context, purl, versionRange string) (*ExposureList, error) {
	var out ExposureList
	q := url.Values{"purl": {purl}}
	if versionRange != "" {
		q.Set("range", versionRange)
	}
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/exposure?"+q.Encode(), nil, &out)
}

// ImportAdvisory imports an OSV JSON advisory and returns its report.
func (c *Client) ImportAdvisory(ctx context.Context, osv []byte) (*exposure.Report, error) {
	var out exposure.Report
	_, err := c.rawDo(ctx, http.MethodPost, "/api/v1/advisories", osv, &out)
	return &out, err
}

// Advisories lists the imported advisories.
func (c *Client) Advisories(ctx context.Context) (*AdvisoryList, error) {
	var out AdvisoryList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/advisories", nil, &out)
}

// AdvisoryReport returns the exposure report of an imported advisory.
func (c *Client) AdvisoryReport(ctx context.Context, id string) (*exposure.Report, error) {
	var out exposure.Report
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/advisories/"+url.PathEscape(id)+"/report", nil, &out)
}

// AdvisoryReportCSV returns the exposure report of an imported advisory as
// CSV.
func (c *Client) AdvisoryReportCSV(ctx context.Context, id string) ([]byte, error) {
	return c.rawDo(ctx, http.MethodGet, "/api/v1/advisories/"+url.PathEscape(id)+"/report?format=csv", nil, nil)
}
