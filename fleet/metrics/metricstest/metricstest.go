// Package metricstest reads a /metrics exposition the way a scraper does,
// with the text parser of prometheus/common (expfmt): an implementation
// independent of the one that writes it, so a test checks what Prometheus
// would get, not what the writer meant.
//
// Parse adds what expfmt leaves to its callers: a series (name and label
// set) that appears twice is an error. Families.Value and Families.Samples
// read the parsed families under the sample names of the text format
// (a histogram's x_bucket{le="…"}, x_sum and x_count).
package metricstest

import (
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are parsed metric families by name.
type Families map[string]*dto.MetricFamily

// Sample is one line of the text format: a sample name, its labels and
// its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Parse reads an exposition in the text format with expfmt, accepting only
// classic (not UTF-8) metric and label names, and refuses a repeated
// series.
func Parse(r io.Reader) (Families, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("metricstest: %w", err)
	}
	out := Families(fams)
	seen := map[string]bool{}
	for _, s := range out.Samples() {
		key := s.Name + "{" + labelString(s.Labels) + "}"
		if seen[key] {
			return nil, fmt.Errorf("metricstest: series %s appears twice", key)
		}
		seen[key] = true
	}
	return out, nil
}

// Scrape GETs h (a metrics.Handler) as a scraper would, checks the answer
// is 200 in the text format, and parses it. It returns the families and
// the exposition's text.
func Scrape(t testing.TB, h http.Handler) (Families, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("metricstest: scrape answered %d: %s", rec.Code, rec.Body)
	}
	if f := expfmt.ResponseFormat(rec.Header()); f.FormatType() != expfmt.TypeTextPlain {
		t.Fatalf("metricstest: scrape answered %q, not the text format", rec.Header().Get("Content-Type"))
	}
	text := rec.Body.String()
	fams, err := Parse(strings.NewReader(text))
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	return fams, text
}

// Value returns the value of the sample called name (a family's name, or
// a histogram's or summary's x_bucket, x_sum, x_count) with exactly the
// given labels (pairs of name, value), and whether there is one.
func (f Families) Value(name string, labels ...string) (float64, bool) {
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, fam := range []string{name, strings.TrimSuffix(name, "_bucket"), strings.TrimSuffix(name, "_sum"), strings.TrimSuffix(name, "_count")} {
		mf := f[fam]
		if mf == nil {
			continue
		}
		for _, s := range samples(mf) {
			if s.Name == name && maps.Equal(s.Labels, want) {
				return s.Value, true
			}
		}
	}
	return 0, false
}

// Samples returns every sample of every family, as lines of the text
// format would show them, ordered by family name.
func (f Families) Samples() []Sample {
	var out []Sample
	for _, name := range slices.Sorted(maps.Keys(f)) {
		out = append(out, samples(f[name])...)
	}
	return out
}

// samples flattens one family into the samples of the text format.
func samples(mf *dto.MetricFamily) []Sample {
	var out []Sample
	name := mf.GetName()
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		with := func(k, v string) map[string]string {
			l := maps.Clone(labels)
			l[k] = v
			return l
		}
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			out = append(out, Sample{name, labels, m.GetCounter().GetValue()})
		case dto.MetricType_GAUGE:
			out = append(out, Sample{name, labels, m.GetGauge().GetValue()})
		case dto.MetricType_UNTYPED:
			out = append(out, Sample{name, labels, m.GetUntyped().GetValue()})
		case dto.MetricType_SUMMARY:
			s := m.GetSummary()
			for _, q := range s.GetQuantile() {
				out = append(out, Sample{name, with("quantile", formatFloat(q.GetQuantile())), q.GetValue()})
			}
			out = append(out, Sample{name + "_sum", labels, s.GetSampleSum()}, Sample{name + "_count", labels, float64(s.GetSampleCount())})
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			h := m.GetHistogram()
			count := float64(h.GetSampleCount()) + h.GetSampleCountFloat()
			inf := false
			for _, b := range h.GetBucket() {
				inf = inf || math.IsInf(b.GetUpperBound(), 1)
				out = append(out, Sample{name + "_bucket", with("le", formatFloat(b.GetUpperBound())), float64(b.GetCumulativeCount()) + b.GetCumulativeCountFloat()})
			}
			if !inf {
				out = append(out, Sample{name + "_bucket", with("le", "+Inf"), count})
			}
			out = append(out, Sample{name + "_sum", labels, h.GetSampleSum()}, Sample{name + "_count", labels, count})
		}
	}
	return out
}

func formatFloat(v float64) string {
	if math.IsInf(v, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func labelString(l map[string]string) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(l)) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, l[k])
	}
	return b.String()
}
