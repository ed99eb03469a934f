package audit

import (
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// TestHelpersFitOverlongFields: an entry built with New and With whose
// target or detail is too long (or holds control characters) is recorded,
// shortened with a marker, never refused: the request it records goes on
// either way, and dropping its entry would lose it.
func TestHelpersFitOverlongFields(t *testing.T) {
	l := openLog(t, filepath.Join(t.TempDir(), File), nil, nil)
	long := strings.Repeat("x", 300)
	e := record(t, l, New(User("alice"), "api.devices.patch", long).With("path", "/api/v1/devices/"+strings.Repeat("é", MaxValue)))
	if len(e.Target) > MaxID || !strings.HasPrefix(e.Target, strings.Repeat("x", 200)) || !strings.Contains(e.Target, "truncated") {
		t.Fatalf("target %q (%d bytes)", e.Target, len(e.Target))
	}
	if v := e.Details["path"]; len(v) > MaxValue || !utf8.ValidString(v) || !strings.Contains(v, "truncated") {
		t.Fatalf("detail %q (%d bytes)", v, len(v))
	}
	// Exactly at the limit: kept as it is.
	exact := strings.Repeat("y", MaxID)
	if e := record(t, l, New(User("alice"), "api.devices.patch", exact)); e.Target != exact {
		t.Fatalf("a %d-byte target was changed to %q", MaxID, e.Target)
	}
	// Control characters are escaped, and the result still fits.
	e = record(t, l, New(User("alice"), "api.devices.patch", "a\nb\x00"+strings.Repeat("\x7f", 200)))
	if strings.ContainsFunc(e.Target, func(r rune) bool { return r < 0x20 || r == 0x7f }) || !strings.HasPrefix(e.Target, `a\nb\x00`) || len(e.Target) > MaxID {
		t.Fatalf("target with control characters: %q", e.Target)
	}
	if e := record(t, l, New(User("alice"), "api.devices.patch", "\xff\xfe")); !utf8.ValidString(e.Target) {
		t.Fatalf("invalid UTF-8 target kept: %q", e.Target)
	}
}

// FuzzFit: whatever a request carries, Fit's result fits (at most max
// bytes, valid UTF-8, no control characters), passes Append's checks, and
// is s itself when s already fit.
func FuzzFit(f *testing.F) {
	for _, s := range []string{"", "dev-1", strings.Repeat("x", 300), "a\nb\x00\x7f", "\xff\xfe", strings.Repeat("é", 200), "\u0085\u2028"} {
		f.Add(s, MaxID)
		f.Add(s, 30)
	}
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 4096 {
			return
		}
		got := Fit(s, max)
		if len(got) > max || !utf8.ValidString(got) || strings.ContainsFunc(got, unicode.IsControl) {
			t.Fatalf("Fit(%q, %d) = %q", s, max, got)
		}
		if len(s) <= max && utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl) && got != s {
			t.Fatalf("Fit changed a fitting %q to %q", s, got)
		}
		if max == MaxID {
			e := New(User("alice"), "api.devices.patch", s)
			if err := e.validate(); err != nil {
				t.Fatalf("New(%q) is refused: %v", s, err)
			}
		}
	})
}
