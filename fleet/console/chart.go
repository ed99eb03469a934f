package console

import (
	"fmt"
	"strconv"
)

// Chart is a server-rendered SVG bar chart: the template draws its
// rectangles and labels, so the page needs neither script nor inline
// style.
type Chart struct {
	Width, Height int
	Bars          []Bar
	Labels        []Label
	// Rows repeat the data as a table for screen readers and copying.
	Rows [][3]string
	// Empty says there is nothing to draw yet.
	Empty bool
}

// Bar is one rectangle; Class picks its colour in the style sheet.
type Bar struct {
	X, Y, W, H int
	Class      string
	Title      string
}

// Label is a text on the chart.
type Label struct {
	X, Y   int
	Text   string
	Anchor string // start, middle, end
}

// verdictChart draws pass and fail verdicts per hour, stacked.
func verdictChart(hours []hourCount) Chart {
	const (
		w, h                  = 720, 180
		left, right, top, bot = 40, 8, 12, 24
	)
	c := Chart{Width: w, Height: h, Empty: true}
	peak := 0
	for _, x := range hours {
		peak = max(peak, x.Pass+x.Fail)
		if x.Pass+x.Fail > 0 {
			c.Empty = false
		}
	}
	scale := niceCeil(max(peak, 1))
	plotW, plotH := w-left-right, h-top-bot
	slot := plotW / max(len(hours), 1)
	barW := max(slot-4, 2)
	for i, x := range hours {
		bx := left + i*slot + (slot-barW)/2
		ph := x.Pass * plotH / scale
		fh := x.Fail * plotH / scale
		base := top + plotH
		label := x.Hour.Format("15:04") + " UTC"
		if x.Pass > 0 {
			c.Bars = append(c.Bars, Bar{X: bx, Y: base - ph, W: barW, H: max(ph, 1), Class: "pass",
				Title: fmt.Sprintf("%s: %d passed", label, x.Pass)})
		}
		if x.Fail > 0 {
			c.Bars = append(c.Bars, Bar{X: bx, Y: base - ph - fh, W: barW, H: max(fh, 1), Class: "fail",
				Title: fmt.Sprintf("%s: %d failed", label, x.Fail)})
		}
		if i%6 == 0 || i == len(hours)-1 {
			c.Labels = append(c.Labels, Label{X: bx + barW/2, Y: h - 6, Text: x.Hour.Format("15:04"), Anchor: "middle"})
		}
		c.Rows = append(c.Rows, [3]string{label, strconv.Itoa(x.Pass), strconv.Itoa(x.Fail)})
	}
	c.Labels = append(c.Labels,
		Label{X: left - 6, Y: top + 4, Text: strconv.Itoa(scale), Anchor: "end"},
		Label{X: left - 6, Y: top + plotH, Text: "0", Anchor: "end"})
	return c
}

// niceCeil rounds n up to 1, 2 or 5 times a power of ten.
func niceCeil(n int) int {
	p := 1
	for {
		for _, m := range []int{1, 2, 5} {
			if m*p >= n {
				return m * p
			}
		}
		p *= 10
	}
}
