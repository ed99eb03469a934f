package console

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Extension is one subsystem's part of the console: its pages, its tiles
// on the overview and its sections of the device page. The page sets of
// this package (FirmwarePages, AlertPages, ApprovalPages, AuditPages,
// TelemetryCharts, RiskPages) each make one with their Extension method,
// and Config.With adds them to a configuration.
type Extension struct {
	Pages    []Page
	Cards    []CardFunc
	Sections []Section
}

// With returns a copy of c with the extensions' pages, overview cards and
// device sections appended, in order: pages appear in the menu in that
// order after the built-in ones.
func (c Config) With(exts ...Extension) Config {
	c.Pages, c.Cards, c.DeviceSections = slices.Clone(c.Pages), slices.Clone(c.Cards), slices.Clone(c.DeviceSections)
	for _, e := range exts {
		c.Pages = append(c.Pages, e.Pages...)
		c.Cards = append(c.Cards, e.Cards...)
		c.DeviceSections = append(c.DeviceSections, e.Sections...)
	}
	return c
}

// clockOr returns now, or time.Now when it is nil.
func clockOr(now func() time.Time) func() time.Time {
	if now == nil {
		return time.Now
	}
	return now
}

// badRequestf is a Load error shown to the operator as a 400.
func badRequestf(format string, args ...any) error {
	return badRequest{msg: fmt.Sprintf(format, args...)}
}

// pageLink builds path?query from the non-empty values, in key order.
func pageLink(path string, kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Set(kv[i], kv[i+1])
		}
	}
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

// isDeviceID reports whether s may be a device ID: what the wire protocol
// accepts as one (1 to 64 of [a-z0-9._-]).
func isDeviceID(s string) bool { return wire.ValidID(s) }

// sizeText writes a byte count for people: "812 B", "1.5 KiB", "3.2 MiB".
func sizeText(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// percentText writes a fraction in [0, 1] as a whole percentage.
func percentText(f float64) string {
	return strconv.FormatFloat(f*100, 'f', 0, 64) + "%"
}

// splitList splits a form field on commas and white space, dropping empty
// items.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ';' || r == ' ' || r == '\n' || r == '\r' || r == '\t' })
}

// optionalNote reads an optional free-text field of at most max bytes.
func optionalNote(form url.Values, name string, max int) (string, error) {
	s := strings.TrimSpace(form.Get(name))
	if len(s) > max {
		return "", errUser(fmt.Sprintf("the %s is at most %d characters", strings.ReplaceAll(name, "_", " "), max))
	}
	return s, nil
}
