package fleetbench

import (
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
)

// The plot: what the fleet costs and how fast it answers against the
// number of devices it holds, one panel each for memory per device, CPU
// per device and latency, a point per size of the run. It is SVG written
// here, so that no plotting tool is needed.

// series is one line of a panel.
type series struct {
	name   string
	color  string
	points [][2]float64 // device count, value
}

// panel is one chart.
type panel struct {
	title  string
	unit   string
	log    bool // a logarithmic value axis (latencies span decades)
	series []series
}

// plotPanels are the result's panels.
func (r *Result) plotPanels() []panel {
	mem := panel{title: "Fleet memory per connected device", unit: "KB"}
	cpu := panel{title: "Fleet CPU per device per minute", unit: "ms"}
	lat := panel{title: "Latency under load (p99)", unit: "ms, log scale", log: true}
	add := func(p *panel, name, color string, x int, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return
		}
		for i := range p.series {
			if p.series[i].name == name {
				p.series[i].points = append(p.series[i].points, [2]float64{float64(x), v})
				return
			}
		}
		p.series = append(p.series, series{name: name, color: color, points: [][2]float64{{float64(x), v}}})
	}
	for _, s := range r.Sizes {
		if so := s.Soak; so != nil {
			add(&mem, "RSS / devices", "#1f77b4", s.Devices, so.RSSPerDeviceKB)
			if so.MarginalRSSPerDeviceKB != 0 {
				add(&mem, "RSS added per device since the last size", "#17becf", s.Devices, so.MarginalRSSPerDeviceKB)
			}
			add(&mem, "Go heap in use / devices", "#ff7f0e", s.Devices, so.HeapPerDeviceKB)
			add(&cpu, "soak (attestation and telemetry every interval)", "#2ca02c", s.Devices, so.CPUPerDevicePerMinMS)
		}
		if a := s.API; a != nil {
			if a.DeviceList.N > 0 {
				add(&lat, "API device list", "#9467bd", s.Devices, a.DeviceList.P99)
			}
			if a.DevicePage.N > 0 {
				add(&lat, "API device page", "#8c564b", s.Devices, a.DevicePage.P99)
			}
			if a.ConsoleList.N > 0 {
				add(&lat, "console device list", "#e377c2", s.Devices, a.ConsoleList.P99)
			}
			if a.ConsolePage.N > 0 {
				add(&lat, "console device page", "#7f7f7f", s.Devices, a.ConsolePage.P99)
			}
		}
	}
	if q := r.Quarantine; q != nil && q.Total.N > 0 && len(r.Sizes) > 0 {
		add(&lat, "quarantine (tamper to closed, revoked, alerted)", "#d62728", r.Sizes[len(r.Sizes)-1].Devices, q.Total.P99)
	}
	return []panel{mem, cpu, lat}
}

// Plot geometry.
const (
	panelW, panelH         = 420, 330
	marginL, marginR       = 60, 16
	marginT, marginB       = 40, 130
	plotW                  = panelW - marginL - marginR
	plotH                  = panelH - marginT - marginB
	legendLine, legendFont = 15, 11
)

// writeSVG draws the panels side by side.
func (r *Result) writeSVG(w io.Writer) error {
	panels := r.plotPanels()
	var b strings.Builder
	width := panelW * len(panels)
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, panelH+24, width, panelH+24)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="8" y="16" font-size="13" font-weight="bold">%s</text>`+"\n",
		esc(fmt.Sprintf("sigil-sim bench fleet, %s: cost and latency against device count", r.Started.Format("2006-01-02"))))
	xmax := 0.0
	for _, s := range r.Sizes {
		xmax = math.Max(xmax, float64(s.Devices))
	}
	for i, p := range panels {
		drawPanel(&b, p, float64(i*panelW), 24, xmax)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func drawPanel(b *strings.Builder, p panel, ox, oy, xmax float64) {
	ymax := 0.0
	for _, s := range p.series {
		for _, pt := range s.points {
			ymax = math.Max(ymax, pt[1])
		}
	}
	xTicks, xTop := ticks(xmax)
	yTicks, yTop := ticks(ymax)
	x0, y0 := ox+marginL, oy+marginT
	px := func(x float64) float64 { return x0 + x/xTop*plotW }
	py := func(y float64) float64 { return y0 + plotH - y/yTop*plotH }
	if p.log {
		yTicks = logTicks(ymax)
		lo, hi := math.Log10(yTicks[0]), math.Log10(yTicks[len(yTicks)-1])
		py = func(y float64) float64 {
			return y0 + plotH - (math.Log10(math.Max(y, yTicks[0]))-lo)/(hi-lo)*plotH
		}
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-weight="bold">%s (%s)</text>`+"\n", x0, y0-12, esc(p.title), esc(p.unit))
	fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", x0, y0, plotW, plotH)
	for _, t := range xTicks {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", px(t), y0, px(t), y0+plotH)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(t), y0+plotH+15, num(t))
	}
	for _, t := range yTicks {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, py(t), x0+plotW, py(t))
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-5, py(t)+4, num(t))
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">devices</text>`+"\n", x0+plotW/2, y0+plotH+32)
	for i, s := range p.series {
		if len(s.points) > 1 {
			var pts []string
			for _, pt := range s.points {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(pt[0]), py(pt[1])))
			}
			fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", s.color, strings.Join(pts, " "))
		}
		for _, pt := range s.points {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s: %s at %s devices</title></circle>`+"\n",
				px(pt[0]), py(pt[1]), s.color, esc(s.name), num(pt[1]), num(pt[0]))
		}
		ly := y0 + plotH + 50 + float64(i*legendLine)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", x0, ly-4, x0+18, ly-4, s.color)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="%d">%s</text>`+"\n", x0+24, ly, legendFont, esc(s.name))
	}
	if len(p.series) == 0 {
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#888">not measured</text>`+"\n", x0+plotW/2, y0+plotH/2)
	}
}

// logTicks returns decades from 1 covering max (at least 1 to 100).
func logTicks(max float64) []float64 {
	out := []float64{1}
	for v := 10.0; ; v *= 10 {
		out = append(out, v)
		if v >= max && v >= 100 {
			return out
		}
	}
}

// ticks returns round tick values from 0 covering max, and the top of
// the axis (the last tick).
func ticks(max float64) ([]float64, float64) {
	if !(max > 0) {
		return []float64{0, 1}, 1
	}
	raw := max / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for v := 0.0; ; v += step {
		out = append(out, v)
		if v >= max {
			return out, v
		}
	}
}

// num prints a tick or value briefly: 20000 as 20k, 2.5 as 2.5.
func num(v float64) string {
	switch {
	case v >= 1000 && math.Mod(v, 1000) == 0:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 100 || v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
