package console

import (
	"fmt"
	"html/template"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// funcs are the helpers every template may use:
//
//	when t      "2026-03-01 09:00 UTC", or "—" for the zero time
//	ago t       "5 min ago", "in 3 h", or "never": a <time> element whose
//	            datetime and title hold the absolute time (UTC, ISO 8601)
//	plural n s  "1 device", "2 devices"; "plural n "entry" "entries"" for
//	            irregular plurals; n any integer, written with thousands
//	            separators
//	num n       n with thousands separators: "100,000"
//	short s     the first 12 characters and "…"
//	pathseg s   s escaped as one URL path segment
//	tone s      a CSS tone for a state or verdict: ok, warn, bad, muted
//	groups s    a long hex string in groups of 8, for reading aloud
//	pct a b     a as a whole percentage of b
func (c *Console) funcs() template.FuncMap {
	return template.FuncMap{
		"when":    when,
		"ago":     func(t time.Time) template.HTML { return agoHTML(t, c.cfg.Now()) },
		"plural":  plural,
		"num":     func(n any) string { return num(toInt(n)) },
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

// agoHTML writes ago(t) in a <time> element that carries the absolute
// time, for the tooltip and for assistive technology.
func agoHTML(t, now time.Time) template.HTML {
	if t.IsZero() {
		return "never"
	}
	iso := t.UTC().Format(time.RFC3339)
	return template.HTML(`<time datetime="` + iso + `" title="` + iso + `">` + template.HTMLEscapeString(ago(t, now)) + `</time>`)
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

// plural writes n with its noun: "1 device", "2 devices", "1,200
// devices". forms is the singular, optionally followed by an irregular
// plural ("entry", "entries"); the regular plural adds "s".
func plural(n any, forms ...string) (string, error) {
	if len(forms) == 0 || len(forms) > 2 {
		return "", fmt.Errorf("console: plural wants a noun and optionally its plural")
	}
	i := toInt(n)
	word := forms[0]
	if i != 1 && i != -1 {
		if len(forms) == 2 {
			word = forms[1]
		} else {
			word += "s"
		}
	}
	return num(i) + " " + word, nil
}

// toInt reads any integer type (template numbers come as int, int64,
// uint64, ...); anything else is 0.
func toInt(n any) int64 {
	switch v := n.(type) {
	case int:
		return int64(v)
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case int64:
		return v
	case uint:
		return int64(v)
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	case uint64:
		return int64(v)
	}
	return 0
}

// num writes n with a comma between each three digits.
func num(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
