package console

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// FuzzSafeNext: whatever a login form's next field holds, the redirect
// stays on this site: an absolute path without a host.
func FuzzSafeNext(f *testing.F) {
	for _, s := range []string{"/", "/devices?state=active", "//evil.example", `/\evil`, "https://evil.example/", "javascript:x", "/a\r\nSet-Cookie: x", "/%2f%2fevil", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := safeNext(s)
		if !strings.HasPrefix(got, "/") || strings.HasPrefix(got, "//") || strings.HasPrefix(got, `/\`) || strings.ContainsAny(got, "\r\n") {
			t.Fatalf("safeNext(%q) = %q", s, got)
		}
		u, err := url.Parse(got)
		if err != nil || u.Host != "" || u.Scheme != "" {
			t.Fatalf("safeNext(%q) = %q leaves the site (%v)", s, got, err)
		}
		if got != "/" && got != s {
			t.Fatalf("safeNext(%q) = %q: changed instead of kept or replaced", s, got)
		}
	})
}

// FuzzDeviceQuery: any query string is parsed without panicking, and a
// query that parses matches devices the way a plain case-insensitive
// search would.
func FuzzDeviceQuery(f *testing.F) {
	for _, s := range []string{"q=SN-1&state=active", "state=bogus", "owner=%FF%FE&group=x", "q=" + strings.Repeat("a", 300), "after=zz&model=gw-1"} {
		f.Add(s, "SN-0001", "plant-a")
	}
	f.Fuzz(func(t *testing.T, raw, serial, owner string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := parseDeviceQuery(v)
		if err != nil {
			return
		}
		q.State, q.Model, q.Owner, q.Group = "", "", "", ""
		d := testDevice(serial, owner)
		want := q.Q == "" || strings.EqualFold(d.EKFingerprint, q.Q)
		for _, s := range []string{d.ID, d.Serial, d.Model, d.Owner, d.Group, d.Firmware} {
			want = want || strings.Contains(strings.ToLower(s), strings.ToLower(q.Q))
		}
		if d.MatchesText(q.Q) != want {
			t.Fatalf("query %q on %+v: matches %v, want %v", q.Q, d, d.MatchesText(q.Q), want)
		}
	})
}

// TestNiceCeil: chart scales round up to 1, 2 or 5 times a power of ten.
func TestNiceCeil(t *testing.T) {
	for n, want := range map[int]int{1: 1, 2: 2, 3: 5, 6: 10, 11: 20, 21: 50, 51: 100, 999: 1000, 1001: 2000} {
		if got := niceCeil(n); got != want {
			t.Errorf("niceCeil(%d) = %d, want %d", n, got, want)
		}
	}
}

// TestVerdictCounter: verdicts count in their hour; hours older than the
// window and device errors are not counted; a reused slot starts from
// zero.
func TestVerdictCounter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC)
	c := &Console{cfg: Config{Now: func() time.Time { return now }}}
	add := func(at time.Time, result string, deviceErr bool) {
		c.ObserveVerdict("d", &attest.Record{Time: at, Result: result, DeviceError: deviceErr}, 0)
	}
	add(now, "pass", false)
	add(now, "fail", false)
	add(now.Add(-time.Hour), "pass", false)
	add(now, "fail", true)                     // the device could not quote: not a verdict
	add(now.Add(-30*time.Hour), "pass", false) // outside the window
	hours := c.lastHours(now)
	if len(hours) != verdictHours {
		t.Fatalf("%d hours", len(hours))
	}
	last, prev := hours[len(hours)-1], hours[len(hours)-2]
	if last.Pass != 1 || last.Fail != 1 || prev.Pass != 1 || prev.Fail != 0 {
		t.Fatalf("last hours %+v %+v", prev, last)
	}
	total := 0
	for _, h := range hours {
		total += h.Pass + h.Fail
	}
	if total != 3 {
		t.Fatalf("%d verdicts counted, want 3", total)
	}
	// A day later the same slot holds the new hour only.
	later := now.Add(24 * time.Hour)
	add(later, "pass", false)
	hours = c.lastHours(later)
	if h := hours[len(hours)-1]; h.Pass != 1 || h.Fail != 0 {
		t.Fatalf("reused slot %+v", h)
	}
	ch := verdictChart(hours)
	if ch.Empty || len(ch.Bars) != 1 || ch.Bars[0].Class != "pass" || len(ch.Rows) != verdictHours {
		t.Fatalf("chart %+v", ch)
	}
}

func testDevice(serial, owner string) *inventory.Device {
	return &inventory.Device{ID: "d0a1", EKFingerprint: strings.Repeat("ab", 32), Serial: serial, Owner: owner, Model: "gw-1", Group: "kiosks", Firmware: "1.2"}
}
