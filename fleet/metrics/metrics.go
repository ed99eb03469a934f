// Package metrics is a small registry of counters, gauges and histograms
// that writes the Prometheus text exposition format (version 0.0.4) for a
// /metrics endpoint.
//
// The fleet shares one Registry: each component registers its own
// control-plane metrics in it (telemetry ingestion, the broker, alerting,
// …). Metrics are fleet-level: labels are for small fixed sets such as a
// result or a severity, never for device IDs, so the number of series
// stays bounded however large the fleet is.
package metrics

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
)

// Errors of registration.
var (
	// ErrName is returned for a metric or label name Prometheus does not
	// accept.
	ErrName = errors.New("metrics: invalid name")
	// ErrDuplicate is returned when a name is registered again as another
	// kind, with other labels or other buckets, or again as a function.
	ErrDuplicate = errors.New("metrics: name already registered differently")
	// ErrBuckets is returned for histogram buckets that are empty, not
	// finite or not strictly increasing.
	ErrBuckets = errors.New("metrics: invalid histogram buckets")
	// ErrLabels is returned by a Vec's With for the wrong number of label
	// values or a value that is not valid UTF-8.
	ErrLabels = errors.New("metrics: wrong label values")
)

// ContentType is the media type Registry serves.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Registry holds metric families and writes them. Its zero value is not
// usable; call NewRegistry. It is safe for concurrent use.
type Registry struct {
	mu       sync.Mutex
	families map[string]*family
}

var _ http.Handler = (*Registry)(nil)

type kind string

const (
	kindCounter   kind = "counter"
	kindGauge     kind = "gauge"
	kindHistogram kind = "histogram"
)

// family is one metric name: its metadata and how to write its samples.
type family struct {
	name, help string
	kind       kind
	labels     []string  // label names of a vec
	buckets    []float64 // of a histogram
	fn         bool      // a function family, registered once
	write      func(w *bufio.Writer)
	value      any // the *Counter, *Gauge, *Histogram or vec, returned on re-registration
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{families: make(map[string]*family)} }

// register adds f, or returns the family already registered under its
// name if it is the same kind with the same labels and buckets.
func (r *Registry) register(f *family) (*family, error) {
	if !validName(f.name) {
		return nil, fmt.Errorf("%w: %q", ErrName, f.name)
	}
	for _, l := range f.labels {
		if !validLabel(l) || l == "le" {
			return nil, fmt.Errorf("%w: label %q of %s", ErrName, l, f.name)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.families[f.name]; ok {
		if old.fn || f.fn || old.kind != f.kind || !slices.Equal(old.labels, f.labels) || !slices.Equal(old.buckets, f.buckets) {
			return nil, fmt.Errorf("%w: %s", ErrDuplicate, f.name)
		}
		return old, nil
	}
	r.families[f.name] = f
	return f, nil
}

// Counter returns the counter registered as name, registering it first if
// needed.
func (r *Registry) Counter(name, help string) (*Counter, error) {
	c := &Counter{}
	f, err := r.register(&family{name: name, help: help, kind: kindCounter, value: c,
		write: func(w *bufio.Writer) { sample(w, name, "", c.Value()) }})
	if err != nil {
		return nil, err
	}
	return f.value.(*Counter), nil
}

// Gauge returns the gauge registered as name, registering it first if
// needed.
func (r *Registry) Gauge(name, help string) (*Gauge, error) {
	g := &Gauge{}
	f, err := r.register(&family{name: name, help: help, kind: kindGauge, value: g,
		write: func(w *bufio.Writer) { sample(w, name, "", g.Value()) }})
	if err != nil {
		return nil, err
	}
	return f.value.(*Gauge), nil
}

// CounterFunc registers a counter whose value fn returns at each scrape,
// for a total another component already keeps. fn must be cheap, safe for
// concurrent use and never decrease.
func (r *Registry) CounterFunc(name, help string, fn func() float64) error {
	_, err := r.register(&family{name: name, help: help, kind: kindCounter, fn: true,
		write: func(w *bufio.Writer) { sample(w, name, "", fn()) }})
	return err
}

// GaugeFunc registers a gauge whose value fn returns at each scrape. fn
// must be cheap and safe for concurrent use.
func (r *Registry) GaugeFunc(name, help string, fn func() float64) error {
	_, err := r.register(&family{name: name, help: help, kind: kindGauge, fn: true,
		write: func(w *bufio.Writer) { sample(w, name, "", fn()) }})
	return err
}

// CounterVec returns the counters registered as name with the given label
// names, registering them first if needed.
func (r *Registry) CounterVec(name, help string, labels ...string) (*CounterVec, error) {
	v := &CounterVec{vec: newVec(labels, func() *Counter { return &Counter{} })}
	f, err := r.register(&family{name: name, help: help, kind: kindCounter, labels: slices.Clone(labels), value: v,
		write: func(w *bufio.Writer) { v.each(func(ls string, c *Counter) { sample(w, name, ls, c.Value()) }) }})
	if err != nil {
		return nil, err
	}
	return f.value.(*CounterVec), nil
}

// GaugeVec returns the gauges registered as name with the given label
// names, registering them first if needed.
func (r *Registry) GaugeVec(name, help string, labels ...string) (*GaugeVec, error) {
	v := &GaugeVec{vec: newVec(labels, func() *Gauge { return &Gauge{} })}
	f, err := r.register(&family{name: name, help: help, kind: kindGauge, labels: slices.Clone(labels), value: v,
		write: func(w *bufio.Writer) { v.each(func(ls string, g *Gauge) { sample(w, name, ls, g.Value()) }) }})
	if err != nil {
		return nil, err
	}
	return f.value.(*GaugeVec), nil
}

// Histogram returns the histogram registered as name with the given
// bucket upper bounds (finite, strictly increasing; +Inf is implied),
// registering it first if needed.
func (r *Registry) Histogram(name, help string, buckets []float64) (*Histogram, error) {
	if len(buckets) == 0 {
		return nil, fmt.Errorf("%w: %s has none", ErrBuckets, name)
	}
	for i, b := range buckets {
		if math.IsNaN(b) || math.IsInf(b, 0) || i > 0 && b <= buckets[i-1] {
			return nil, fmt.Errorf("%w: %s", ErrBuckets, name)
		}
	}
	h := &Histogram{upper: slices.Clone(buckets), counts: make([]atomic.Uint64, len(buckets)+1)}
	f, err := r.register(&family{name: name, help: help, kind: kindHistogram, buckets: h.upper, value: h,
		write: func(w *bufio.Writer) { h.write(w, name) }})
	if err != nil {
		return nil, err
	}
	return f.value.(*Histogram), nil
}

// WriteTo writes every family in the text exposition format, sorted by
// name.
func (r *Registry) WriteTo(out io.Writer) (int64, error) {
	r.mu.Lock()
	fams := make([]*family, 0, len(r.families))
	for _, f := range r.families {
		fams = append(fams, f)
	}
	r.mu.Unlock()
	slices.SortFunc(fams, func(a, b *family) int { return strings.Compare(a.name, b.name) })
	cw := &countWriter{w: out}
	w := bufio.NewWriter(cw)
	for _, f := range fams {
		if f.help != "" {
			w.WriteString("# HELP " + f.name + " " + escapeHelp(f.help) + "\n")
		}
		w.WriteString("# TYPE " + f.name + " " + string(f.kind) + "\n")
		f.write(w)
	}
	err := w.Flush()
	return cw.n, err
}

// ServeHTTP writes the registry for a scrape.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "metrics: method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", ContentType)
	if req.Method == http.MethodHead {
		return
	}
	r.WriteTo(w) // a failed write means the scraper went away
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Counter is a value that only goes up. It is safe for concurrent use.
type Counter struct{ bits atomic.Uint64 }

// Inc adds one.
func (c *Counter) Inc() { c.Add(1) }

// Add adds v. Negative and non-finite values are ignored: a counter never
// goes down.
func (c *Counter) Add(v float64) {
	if !(v > 0) || math.IsInf(v, 0) {
		return
	}
	addFloat(&c.bits, v)
}

// Value returns the current value.
func (c *Counter) Value() float64 { return math.Float64frombits(c.bits.Load()) }

// Gauge is a value that goes up and down. It is safe for concurrent use.
type Gauge struct{ bits atomic.Uint64 }

// Set sets the value.
func (g *Gauge) Set(v float64) { g.bits.Store(math.Float64bits(v)) }

// Add adds v, which may be negative.
func (g *Gauge) Add(v float64) { addFloat(&g.bits, v) }

// Value returns the current value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

func addFloat(bits *atomic.Uint64, v float64) {
	for {
		old := bits.Load()
		if bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Histogram counts observations in buckets. It is safe for concurrent use.
type Histogram struct {
	upper  []float64
	counts []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sum    atomic.Uint64
}

// Observe records v. NaN is ignored.
func (h *Histogram) Observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	i, _ := slices.BinarySearch(h.upper, v) // first bucket whose bound is >= v
	h.counts[i].Add(1)
	addFloat(&h.sum, v)
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

func (h *Histogram) write(w *bufio.Writer, name string) {
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		le := "+Inf"
		if i < len(h.upper) {
			le = formatFloat(h.upper[i])
		}
		sample(w, name+"_bucket", `le="`+le+`"`, float64(cum))
	}
	sample(w, name+"_sum", "", math.Float64frombits(h.sum.Load()))
	sample(w, name+"_count", "", float64(cum)) // the +Inf bucket: consistent within one scrape
}

// vec is a set of metrics told apart by label values.
type vec[M any] struct {
	labels []string
	make   func() *M
	mu     sync.Mutex
	series map[string]*M // rendered label set -> metric
}

func newVec[M any](labels []string, mk func() *M) vec[M] {
	return vec[M]{labels: slices.Clone(labels), make: mk, series: make(map[string]*M)}
}

func (v *vec[M]) with(values []string) (*M, error) {
	if len(values) != len(v.labels) {
		return nil, fmt.Errorf("%w: %d values for %d labels", ErrLabels, len(values), len(v.labels))
	}
	var b strings.Builder
	for i, val := range values {
		if !utf8.ValidString(val) {
			return nil, fmt.Errorf("%w: value of %s is not UTF-8", ErrLabels, v.labels[i])
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(v.labels[i] + `="` + escapeLabel(val) + `"`)
	}
	key := b.String()
	v.mu.Lock()
	defer v.mu.Unlock()
	m, ok := v.series[key]
	if !ok {
		m = v.make()
		v.series[key] = m
	}
	return m, nil
}

func (v *vec[M]) each(fn func(labels string, m *M)) {
	type entry struct {
		key string
		m   *M
	}
	v.mu.Lock()
	all := make([]entry, 0, len(v.series))
	for k, m := range v.series {
		all = append(all, entry{k, m})
	}
	v.mu.Unlock()
	slices.SortFunc(all, func(a, b entry) int { return strings.Compare(a.key, b.key) })
	for _, e := range all {
		fn(e.key, e.m)
	}
}

// CounterVec is a family of counters told apart by label values.
type CounterVec struct{ vec[Counter] }

// With returns the counter for the label values, in the order of the
// label names given at registration.
func (v *CounterVec) With(values ...string) (*Counter, error) { return v.with(values) }

// GaugeVec is a family of gauges told apart by label values.
type GaugeVec struct{ vec[Gauge] }

// With returns the gauge for the label values, in the order of the label
// names given at registration.
func (v *GaugeVec) With(values ...string) (*Gauge, error) { return v.with(values) }

func sample(w *bufio.Writer, name, labels string, v float64) {
	w.WriteString(name)
	if labels != "" {
		w.WriteString("{" + labels + "}")
	}
	w.WriteByte(' ')
	w.WriteString(formatFloat(v))
	w.WriteByte('\n')
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// validName reports whether s is a metric name: [a-zA-Z_:][a-zA-Z0-9_:]*.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == ':' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// validLabel reports whether s is a label name: [a-zA-Z_][a-zA-Z0-9_]*,
// not starting with "__" (reserved).
func validLabel(s string) bool {
	if s == "" || strings.HasPrefix(s, "__") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
