package exposure

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// csvHeader is the first line of WriteCSV.
var csvHeader = []string{"advisory", "aliases", "device_id", "group", "model", "owner", "release", "release_version",
	"component_purl", "component_version", "fixed_version", "fix_release", "first_seen", "attested", "campaign", "campaign_step"}

// WriteCSV writes the report's exposed devices as CSV with a header line,
// one line per device and affected component; times are RFC 3339 in UTC.
// Cells that a spreadsheet would run as a formula (starting with = + - @)
// are prefixed with a single quote.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return fmt.Errorf("exposure: %w", err)
	}
	for _, f := range r.Devices {
		row := []string{r.Advisory.ID, strings.Join(r.Advisory.Aliases, " "), f.DeviceID, f.Group, f.Model, f.Owner, f.Release, f.Version,
			f.Component.PURL, f.Component.Version, f.Fixed, f.FixRelease, stamp(f.FirstSeen), stamp(f.Attested), f.Campaign, f.CampaignStep}
		for i, c := range row {
			if c != "" && strings.ContainsRune("=+-@", rune(c[0])) {
				row[i] = "'" + c
			}
		}
		if err := cw.Write(row); err != nil {
			return fmt.Errorf("exposure: %w", err)
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("exposure: %w", err)
	}
	return nil
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("exposure: %w", err)
	}
	return nil
}
