package console

import (
	"fmt"
	"html/template"
	"net/url"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// funcs are the helpers every template may use:
//
//	when t      "2026-03-01 09:00 UTC", or "—" for the zero time
//	ago t       "5 min ago", "in 3 h", or "never"
//	short s     the first 12 characters and "…"
//	pathseg s   s escaped as one URL path segment
//	tone s      a CSS tone for a state or verdict: ok, warn, bad, muted
//	groups s    a long hex string in groups of 8, for reading aloud
//	pct a b     a as a whole percentage of b
func (c *Console) funcs() template.FuncMap {
	return template.FuncMap{
		"when":    when,
		"ago":     func(t time.Time) string { return ago(t, c.cfg.Now()) },
		"short":   short,
		"pathseg": url.PathEscape,
		"tone":    tone,
		"groups":  groups,
		"pct":     pct,
	}
}

func when(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < time.Minute:
		if !future {
			return "just now"
		}
		s = "under a minute"
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", int(d/time.Hour))
	default:
		s = fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

func short(s string) string {
	if len(s) <= 12 {
		return s
	}
	return s[:12] + "…"
}

func tone(s string) string {
	switch s {
	case string(inventory.StateActive), "pass", "ok", "active-gen":
		return "ok"
	case string(inventory.StatePending), "warn", "prepared", "stale":
		return "warn"
	case string(inventory.StateQuarantined), "fail", "bad", "error", "clone-suspect":
		return "bad"
	case string(inventory.StateDecommissioned), "retired", "never", "":
		return "muted"
	}
	return ""
}

func groups(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i += 8 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s[i:min(i+8, len(s))])
	}
	return b.String()
}

func pct(a, b int) int {
	if b <= 0 {
		return 0
	}
	return min(100, max(0, a*100/b))
}
