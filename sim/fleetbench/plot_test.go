package fleetbench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

// TestPlot: the SVG is well-formed XML with a panel per figure and a point
// per size that measured it; values that are not numbers are left out;
// text is escaped.
func TestPlot(t *testing.T) {
	r := &Result{Started: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	for i, n := range []int{1000, 5000, 19900} {
		s := SizeResult{Devices: n, Soak: &SoakResult{RSSPerDeviceKB: 250, HeapPerDeviceKB: 120, CPUPerDevicePerMinMS: 2 - float64(i)/4},
			API: &APIResult{DeviceList: Dist{N: 10, P99: 3 * float64(i+1)}, ConsolePage: Dist{N: 10, P99: 2000}}}
		if i > 0 {
			s.Soak.MarginalRSSPerDeviceKB = 230
		}
		if i == 1 {
			s.Soak.HeapPerDeviceKB = math.NaN()
		}
		r.Sizes = append(r.Sizes, s)
	}
	r.Quarantine = &QuarantineResult{Total: Dist{N: 20, P99: 25}}
	var b bytes.Buffer
	if err := r.writeSVG(&b); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	circles, titles := 0, 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not XML: %v\n%s", err, b.String())
		}
		if se, ok := tok.(xml.StartElement); ok {
			switch se.Name.Local {
			case "circle":
				circles++
			case "text":
				titles++
			}
		}
	}
	// RSS 3, marginal 2, heap 2 (one NaN), CPU 3, API list 3, console page 3, quarantine 1.
	if circles != 17 {
		t.Errorf("%d points, want 17", circles)
	}
	for _, want := range []string{"Fleet memory per connected device", "Fleet CPU per device per minute", "Latency under load (p99)", "20k"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the plot lacks %q", want)
		}
	}
	if strings.Contains(b.String(), "NaN") {
		t.Error("the plot holds NaN")
	}

	// Nothing measured: still a plot, saying so.
	b.Reset()
	if err := (&Result{}).writeSVG(&b); err != nil || !strings.Contains(b.String(), "not measured") {
		t.Fatalf("empty result: %v\n%s", err, b.String())
	}
}

func TestTicks(t *testing.T) {
	for _, c := range []struct {
		max  float64
		top  float64
		step float64
	}{{19900, 20000, 5000}, {1000, 1000, 200}, {2.4, 2.5, 0.5}, {0, 1, 1}, {300, 300, 100}} {
		ts, top := ticks(c.max)
		if top != c.top || len(ts) < 2 || ts[1]-ts[0] != c.step || top < c.max {
			t.Errorf("ticks(%v) = %v, top %v; want top %v, step %v", c.max, ts, top, c.top, c.step)
		}
	}
	if lt := logTicks(2738); len(lt) != 5 || lt[4] != 10000 {
		t.Errorf("logTicks(2738) = %v", lt)
	}
}

func TestDist(t *testing.T) {
	d := dist([]float64{5, 1, 4, 2, 3})
	if d.N != 5 || d.P50 != 3 || d.P99 != 5 || d.Max != 5 {
		t.Fatalf("%+v", d)
	}
	if d := dist(nil); d.N != 0 || d.String() != "–" {
		t.Fatalf("%+v", d)
	}
	ms := make([]float64, 1000)
	for i := range ms {
		ms[i] = float64(1000 - i)
	}
	if d := dist(ms); d.P50 != 500 || d.P99 != 990 || d.Max != 1000 {
		t.Fatalf("%+v", d)
	}
}
