package console

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// Telemetry reads devices' telemetry. *telemetry.Ingester implements it.
type Telemetry interface {
	Device(deviceID string) (telemetry.DeviceStatus, error)
	Series(deviceID, metric string, since time.Time) ([]telemetry.Sample, error)
}

var _ Telemetry = (*telemetry.Ingester)(nil)

// TelemetryCharts is the device page's telemetry section: the latest
// values and server-rendered SVG line charts of the CPU and memory series.
type TelemetryCharts struct {
	// Telemetry is the ingester; nil makes an empty Extension.
	Telemetry Telemetry
	// Now is the clock the charts end at. Nil means time.Now.
	Now func() time.Time
}

// ChartedMetric is a series the section draws.
type ChartedMetric struct {
	Name  string // the metric, e.g. "cpu.busy"
	Label string // for people
}

// chartedMetrics are the series drawn, ratios from 0 to 1 shown as
// percentages.
func chartedMetrics() []ChartedMetric {
	return []ChartedMetric{{"cpu.busy", "CPU busy"}, {"mem.used_ratio", "Memory used"}}
}

// chartWindows are the periods a chart may show; the first is the default
// (the ingester keeps raw points for 15 minutes, coarser buckets beyond).
func chartWindows() []string { return []string{"15m", "1h", "6h"} }

// Extension returns the device section.
func (tc TelemetryCharts) Extension() Extension {
	if tc.Telemetry == nil {
		return Extension{}
	}
	tc.Now = clockOr(tc.Now)
	return Extension{Sections: []Section{{Name: "telemetry", Title: "Telemetry", Perm: auth.PermDevicesRead,
		Template: source("section-telemetry.html"), Load: tc.load}}}
}

// TelemetrySection is the section's data.
type TelemetrySection struct {
	// Known says the fleet has telemetry from the device since it started.
	Known    bool
	LastSeen time.Time
	// Latest are the newest values worth a glance, as label and text.
	Latest [][2]string
	Counts telemetry.Counts
	Charts []LineChart
	// Window is the period shown; Windows the choices, with their links.
	Window  string
	Windows [][2]string
}

func (tc TelemetryCharts) load(r *http.Request, _ auth.Principal, d *inventory.Device) (any, error) {
	window := r.URL.Query().Get("telemetry")
	out := TelemetrySection{Window: chartWindows()[0]}
	for _, w := range chartWindows() {
		if w == window {
			out.Window = w
		}
		out.Windows = append(out.Windows, [2]string{w, pageLink("/devices/"+url.PathEscape(d.ID), "telemetry", w)})
	}
	st, err := tc.Telemetry.Device(d.ID)
	if errors.Is(err, telemetry.ErrUnknownDevice) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	out.Known, out.LastSeen, out.Counts = true, st.LastSeen, st.Counts
	for _, m := range []struct {
		name, label string
		format      func(float64) string
	}{
		{"cpu.busy", "CPU busy", percentText},
		{"load.1", "Load (1 min)", func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }},
		{"mem.used_ratio", "Memory used", percentText},
		{"disk.root.used_ratio", "Root disk used", percentText},
		{"proc.count", "Processes", func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }},
		{"listen.tcp.count", "Listening TCP ports", func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }},
		{"uptime.seconds", "Up for", func(v float64) string { return (time.Duration(v) * time.Second).String() }},
	} {
		if v, ok := st.Metrics[m.name]; ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
			out.Latest = append(out.Latest, [2]string{m.label, m.format(v)})
		}
	}
	span, _ := time.ParseDuration(out.Window)
	now := tc.Now()
	for _, m := range chartedMetrics() {
		samples, err := tc.Telemetry.Series(d.ID, m.Name, now.Add(-span))
		if err != nil && !errors.Is(err, telemetry.ErrUnknownSeries) {
			return nil, err
		}
		out.Charts = append(out.Charts, ratioChart(m, samples, now.Add(-span), now))
	}
	return out, nil
}

// LineChart is a server-rendered SVG line chart of a ratio series: the
// template writes the polyline's points, so the page needs neither script
// nor inline style.
type LineChart struct {
	ID, Title     string
	Width, Height int
	// Line is the values' polyline; Band the polygon of the min–max range
	// of downsampled buckets (empty without them).
	Line, Band string
	Grid       []GridLine
	Labels     []Label
	// Rows repeat the data as a table: time, value, range.
	Rows [][3]string
	// Empty says there are no points in the window; Latest is the newest
	// value's text.
	Empty  bool
	Latest string
}

// GridLine is a horizontal line of the chart's grid.
type GridLine struct{ X1, X2, Y int }

// Chart geometry (view box units).
const (
	lineW, lineH                             = 720, 160
	lineLeft, lineRight, lineTop, lineBottom = 44, 8, 10, 22
)

// ratioChart draws samples of a 0..1 metric between from and to, as
// percentages on a fixed 0–100 % scale.
func ratioChart(m ChartedMetric, samples []telemetry.Sample, from, to time.Time) LineChart {
	c := LineChart{ID: "chart-" + strings.ReplaceAll(m.Name, ".", "-"), Title: m.Label, Width: lineW, Height: lineH, Empty: true}
	plotW, plotH := float64(lineW-lineLeft-lineRight), float64(lineH-lineTop-lineBottom)
	span := to.Sub(from)
	if span <= 0 {
		span = time.Hour
	}
	x := func(t time.Time) float64 { return float64(lineLeft) + plotW*float64(t.Sub(from))/float64(span) }
	y := func(v float64) float64 { return float64(lineTop) + plotH*(1-min(max(v, 0), 1)) }
	var line, top, bottom []string
	for _, s := range samples {
		if s.Time.Before(from) || s.Time.After(to) || !finite(s.Value) || !finite(s.Min) || !finite(s.Max) {
			continue
		}
		c.Empty = false
		px := x(s.Time)
		line = append(line, point(px, y(s.Value)))
		if s.Downsample && s.Count > 1 {
			top = append(top, point(px, y(s.Max)))
			bottom = append([]string{point(px, y(s.Min))}, bottom...)
		}
		rng := ""
		if s.Count > 1 {
			rng = fmt.Sprintf("%s–%s of %s", percentText(s.Min), percentText(s.Max), mustPlural(s.Count, "point"))
		}
		c.Rows = append(c.Rows, [3]string{s.Time.UTC().Format("15:04:05 UTC"), percentText(s.Value), rng})
		c.Latest = percentText(s.Value)
	}
	c.Line = strings.Join(line, " ")
	if len(top) > 1 {
		c.Band = strings.Join(append(top, bottom...), " ")
	}
	for _, v := range []float64{0, 0.5, 1} {
		gy := int(math.Round(y(v)))
		c.Grid = append(c.Grid, GridLine{X1: lineLeft, X2: lineW - lineRight, Y: gy})
		c.Labels = append(c.Labels, Label{X: lineLeft - 6, Y: gy + 4, Text: percentText(v), Anchor: "end"})
	}
	c.Labels = append(c.Labels,
		Label{X: lineLeft, Y: lineH - 5, Text: from.UTC().Format("15:04"), Anchor: "start"},
		Label{X: lineW - lineRight, Y: lineH - 5, Text: to.UTC().Format("15:04 UTC"), Anchor: "end"})
	return c
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func point(x, y float64) string {
	return strconv.FormatFloat(x, 'f', 1, 64) + "," + strconv.FormatFloat(y, 'f', 1, 64)
}
