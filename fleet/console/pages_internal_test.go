package console

import (
	"math"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// TestRatioChart: values map onto the plot from 0 % at the bottom to
// 100 % at the top and times from the window's start to its end; points
// outside the window or not finite are left out; downsampled buckets draw
// their min–max band.
func TestRatioChart(t *testing.T) {
	to := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	from := to.Add(-time.Hour)
	samples := []telemetry.Sample{
		{Time: from.Add(-time.Minute), Value: 0.5, Min: 0.5, Max: 0.5, Count: 1}, // before the window
		{Time: from, Value: 1, Min: 1, Max: 1, Count: 1},
		{Time: from.Add(30 * time.Minute), Value: 0.4, Min: 0.2, Max: 0.9, Count: 5, Downsample: true},
		{Time: from.Add(40 * time.Minute), Value: math.NaN(), Count: 1},
		{Time: from.Add(45 * time.Minute), Value: 0.3, Min: 0.1, Max: 0.8, Count: 4, Downsample: true},
		{Time: to, Value: 0, Min: 0, Max: 0, Count: 1},
	}
	c := ratioChart(ChartedMetric{Name: "cpu.busy", Label: "CPU busy"}, samples, from, to)
	left, right := float64(lineLeft), float64(lineW-lineRight)
	top, bottom := float64(lineTop), float64(lineH-lineBottom)
	mid := (left + right) / 2
	want := []string{point(left, top), point(mid, top+(bottom-top)*0.6), point(left+(right-left)*0.75, top+(bottom-top)*0.7), point(right, bottom)}
	if c.Line != strings.Join(want, " ") {
		t.Errorf("line %q, want %q", c.Line, strings.Join(want, " "))
	}
	if c.Empty || c.Latest != "0%" || len(c.Rows) != 4 || c.ID != "chart-cpu-busy" {
		t.Errorf("chart %+v", c)
	}
	band := strings.Fields(c.Band)
	if len(band) != 4 || band[0] != point(mid, top+(bottom-top)*0.1) || band[3] != point(mid, top+(bottom-top)*0.8) {
		t.Errorf("band %q", c.Band)
	}
	if e := ratioChart(ChartedMetric{Name: "m"}, nil, from, to); !e.Empty || e.Line != "" {
		t.Errorf("no samples: %+v", e)
	}
	// Values beyond 0..1 stay on the plot.
	if c := ratioChart(ChartedMetric{Name: "m"}, []telemetry.Sample{{Time: to, Value: 7, Min: 7, Max: 7, Count: 1}}, from, to); c.Line != point(right, top) {
		t.Errorf("clamped line %q", c.Line)
	}
}

// TestProgressBar: segments are proportional, ordered committed, failed,
// in flight, and never overflow the bar.
func TestProgressBar(t *testing.T) {
	b := progressBar(campaign.Counts{Committed: 5, Failed: 1, RolledBack: 1, Downloading: 2, Pending: 1}, 10, "Wave 1")
	if len(b.Segments) != 3 || b.Segments[0] != (Segment{X: 0, W: 500, Class: "committed", Title: "5 committed"}) ||
		b.Segments[1].X != 500 || b.Segments[1].W != 200 || b.Segments[2].X != 700 || b.Segments[2].W != 200 {
		t.Fatalf("segments %+v", b.Segments)
	}
	if b.Label != "Wave 1: 5 of 10 committed, 2 failed, 2 in flight" {
		t.Errorf("label %q", b.Label)
	}
	// Counts larger than the total (a report raced the read) stay inside.
	b = progressBar(campaign.Counts{Committed: 3, Failed: 3}, 4, "x")
	for _, s := range b.Segments {
		if s.X+s.W > 1000+4 {
			t.Errorf("segment past the end: %+v", s)
		}
	}
	if len(progressBar(campaign.Counts{}, 0, "x").Segments) != 0 {
		t.Error("an empty campaign has segments")
	}
}

// FuzzCampaignForm: any posted form is read without panicking; a form
// that is accepted names a release, some devices, valid device IDs and
// thresholds within 0..1.
func FuzzCampaignForm(f *testing.F) {
	for _, s := range []string{
		"release=abc&group=kiosks&canary=1&growth=2&success_threshold=50&failure_threshold=10&on_failure=pause&device_timeout=30m",
		"release=abc&devices=" + strings.Repeat("ab", 32) + "%0A" + strings.Repeat("cd", 32) + "&sizes=1,10,100",
		"release=&group=&canary=-1&growth=NaN&success_threshold=101&on_failure=explode&device_timeout=-5s&retries=x",
		"release=r&model=gw-1&failure_threshold=100%25&max_in_flight=3",
	} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, raw string, targets bool) {
		form, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		def, err := parseDefinition(form, targets)
		if err != nil {
			if def.Release != "" {
				t.Fatalf("a refused form returned a definition: %+v", def)
			}
			return
		}
		if def.Release == "" || def.SuccessThreshold < 0 || def.SuccessThreshold > 1 || def.FailureThreshold < 0 || def.FailureThreshold > 1 ||
			math.IsNaN(def.SuccessThreshold) || math.IsNaN(def.FailureThreshold) || math.IsNaN(def.Waves.Growth) {
			t.Fatalf("accepted %q as %+v", raw, def)
		}
		if targets && def.Targets.Group == "" && def.Targets.Model == "" && len(def.Targets.DeviceIDs) == 0 {
			t.Fatalf("accepted %q without devices", raw)
		}
		if !targets && (len(def.Targets.DeviceIDs) > 0 || def.Targets.Group != "") {
			t.Fatalf("a rollback form took targets: %+v", def.Targets)
		}
		for _, id := range def.Targets.DeviceIDs {
			if !isDeviceID(id) {
				t.Fatalf("accepted device ID %q", id)
			}
		}
	})
}

// FuzzAuditTime: a filter's time either parses or is refused as a bad
// request; the end of a date is the next midnight.
func FuzzAuditTime(f *testing.F) {
	for _, s := range []string{"2026-03-01", "2026-03-01T09:30", "2026-03-01T09:30:00+02:00", "yesterday", "", "9999-99-99"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, end bool) {
		got, err := auditTime(s, end)
		if err != nil {
			if _, ok := err.(badRequest); !ok {
				t.Fatalf("auditTime(%q): %v is not a bad request", s, err)
			}
			return
		}
		if s == "" && !got.IsZero() {
			t.Fatalf("auditTime(\"\") = %v", got)
		}
		if d, err := time.Parse("2006-01-02", s); err == nil && end && !got.Equal(d.AddDate(0, 0, 1)) {
			t.Fatalf("end of %q = %v", s, got)
		}
	})
}

// TestRefusalDetail: the error page shows a problem's detail, or the
// "error" of an answer that reports one (a failed audit verification
// names the entry), or the status text.
func TestRefusalDetail(t *testing.T) {
	for body, want := range map[string]string{
		`{"title":"conflict","detail":"the alert is already resolved"}`:                                "the alert is already resolved",
		`{"ok":false,"error":"audit: verify: entry 5: entry edited: its hash does not match","seq":5}`: "audit: verify: entry 5: entry edited: its hash does not match",
		`not json`: "Conflict",
	} {
		r := newRecorder()
		r.WriteHeader(http.StatusConflict)
		_, _ = r.Write([]byte(body))
		if got := r.detail(); got != want {
			t.Errorf("detail of %s = %q, want %q", body, got, want)
		}
	}
}

// TestSizeText: byte counts for people.
func TestSizeText(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestConfigWith: extensions are appended in order, and the configuration
// they were added to keeps its own lists.
func TestConfigWith(t *testing.T) {
	base := Config{Pages: make([]Page, 1, 4), Cards: make([]CardFunc, 0, 4)}
	base.Pages[0].Name = "own"
	got := base.With(Extension{Pages: []Page{{Name: "a"}}, Sections: []Section{{Name: "s"}}}, Extension{Pages: []Page{{Name: "b"}}})
	if len(got.Pages) != 3 || got.Pages[1].Name != "a" || got.Pages[2].Name != "b" || len(got.DeviceSections) != 1 {
		t.Fatalf("with: %+v", got)
	}
	more := base.With(Extension{Pages: []Page{{Name: "c"}}})
	if got.Pages[1].Name != "a" || more.Pages[1].Name != "c" || len(base.Pages) != 1 {
		t.Fatalf("configurations share their lists: %v %v", got.Pages, more.Pages)
	}
	if (FirmwarePages{}).Extension().Pages != nil || (AlertPages{}).Extension().Cards != nil || (RiskPages{}).Extension().Sections != nil {
		t.Fatal("a page set without its reader is not empty")
	}
}
