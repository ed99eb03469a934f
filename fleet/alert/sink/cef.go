package sink

import (
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// CEF header constants: the vendor and product that identify Sigil's events
// in a SIEM.
const (
	CEFVendor  = "Sigil"
	CEFProduct = "sigil"
)

// cefSeverity maps an alert's severity to CEF's 0-10 scale: info 3 (Low),
// warning 6 (Medium), critical 9 (Very-High).
func cefSeverity(s alert.Severity) int {
	switch s {
	case alert.SeverityCritical:
		return 9
	case alert.SeverityWarning:
		return 6
	}
	return 3
}

// cefHeader escapes a header field: backslash and pipe are escaped; line
// breaks are not allowed in the header and become spaces.
func cefHeader(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '\\':
			b.WriteString(`\\`)
		case '|':
			b.WriteString(`\|`)
		case '\r', '\n':
			b.WriteByte(' ')
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// cefValue escapes an extension value: backslash, equals sign and line
// breaks (\n, \r) are escaped; a pipe needs no escape there.
func cefValue(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '\\':
			b.WriteString(`\\`)
		case '=':
			b.WriteString(`\=`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// formatCEF renders n as one CEF event of at most max bytes:
//
//	CEF:0|Sigil|sigil|<version>|<rule ID>|<rule name>|<severity>|<extension>
//
// The extension uses the CEF dictionary where it fits — rt (notification
// time), start, end (resolution), cnt, cat (rule kind), act (transition),
// msg (summary), externalId (alert ID) — and labelled custom strings for
// the rest: cs1 device, cs2 fingerprint, cs3 key, cs4 state, cs5 evidence
// ("name: value; ..."), cs6 acknowledged by. Fields that would exceed max
// are left out whole (a label with its value).
func formatCEF(n *alert.Notification, version string, max int) string {
	a := &n.Alert
	var b strings.Builder
	b.WriteString("CEF:0|")
	for _, h := range []string{CEFVendor, CEFProduct, version, a.RuleID, a.RuleName} {
		b.WriteString(cefHeader(h))
		b.WriteByte('|')
	}
	b.WriteString(strconv.Itoa(cefSeverity(a.Severity)))
	b.WriteByte('|')

	type kv struct{ k, v string }
	groups := [][]kv{
		{{"rt", strconv.FormatInt(n.At.UnixMilli(), 10)}},
		{{"externalId", strconv.FormatUint(a.ID, 10)}},
		{{"act", string(n.Transition)}},
		{{"cat", string(a.Kind)}},
		{{"cs1Label", "deviceId"}, {"cs1", a.DeviceID}},
		{{"cs4Label", "state"}, {"cs4", string(a.State)}},
		{{"cnt", strconv.Itoa(a.Count)}},
		{{"start", strconv.FormatInt(a.StartsAt.UnixMilli(), 10)}},
	}
	if !a.ResolvedAt.IsZero() {
		groups = append(groups, []kv{{"end", strconv.FormatInt(a.ResolvedAt.UnixMilli(), 10)}})
	}
	groups = append(groups, []kv{{"cs2Label", "fingerprint"}, {"cs2", a.Fingerprint}}, []kv{{"msg", a.Summary}})
	if a.Key != "" {
		groups = append(groups, []kv{{"cs3Label", "key"}, {"cs3", a.Key}})
	}
	if a.AckedBy != "" {
		groups = append(groups, []kv{{"cs6Label", "acknowledgedBy"}, {"cs6", a.AckedBy}})
	}
	if len(a.Evidence) > 0 {
		var ev strings.Builder
		for i, k := range sortedKeys(a.Evidence) {
			if i > 0 {
				ev.WriteString("; ")
			}
			ev.WriteString(k + ": " + a.Evidence[k])
		}
		groups = append(groups, []kv{{"cs5Label", "evidence"}, {"cs5", ev.String()}})
	}
	first := true
	for _, g := range groups {
		var field strings.Builder
		for i, f := range g {
			if !first || i > 0 {
				field.WriteByte(' ')
			}
			field.WriteString(f.k + "=" + cefValue(f.v))
		}
		if b.Len()+field.Len() > max {
			continue
		}
		first = false
		b.WriteString(field.String())
	}
	return b.String()
}
