package console

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/exposure"
)

// exposurePage is the vulnerability exposure page: the imported
// advisories, and for the one chosen (?advisory=ID) the devices whose
// attested release holds an affected component, with counts by group,
// model and owner and the CSV report's link.
func (f FirmwarePages) exposurePage() Page {
	return Page{Name: "exposure", Path: "/exposure", Nav: "Exposure", Title: "Vulnerability exposure", Perm: auth.PermFirmwareRead,
		Template: source("exposure.html"), Load: f.loadExposure}
}

// ExposurePage is the exposure page's data.
type ExposurePage struct {
	Advisories []string
	// Chosen is the advisory shown; Report its exposure now (nil when
	// none is chosen).
	Chosen string
	Report *exposure.Report
	// CSV links to the chosen report as CSV (the API's export).
	CSV string
}

func (f FirmwarePages) loadExposure(r *http.Request, _ auth.Principal) (any, error) {
	ids, err := f.Exposure.Advisories(r.Context())
	if err != nil {
		return nil, err
	}
	out := ExposurePage{Advisories: ids, Chosen: r.URL.Query().Get("advisory")}
	if out.Chosen == "" {
		return out, nil
	}
	rep, err := f.Exposure.Report(r.Context(), out.Chosen)
	if errors.Is(err, exposure.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	out.Report = rep
	out.CSV = pageLink("/api/v1/advisories/"+url.PathEscape(out.Chosen)+"/report", "format", "csv")
	return out, nil
}
