package metrics_test

import (
	"bytes"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/metrics/metricstest"
)

// must fails the test (by panicking, which the testing package reports)
// when registration fails.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func scrape(t *testing.T, r *metrics.Registry) map[string]*metricstest.Family {
	t.Helper()
	var buf bytes.Buffer
	if _, err := r.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	fams, err := metricstest.Parse(&buf)
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, buf.String())
	}
	return fams
}

func TestExposition(t *testing.T) {
	r := metrics.NewRegistry()
	c := must(r.Counter("sigil_points_total", "Points ingested.\nSecond line with a \\ backslash."))
	c.Inc()
	c.Add(2.5)
	c.Add(-7) // ignored: counters never go down
	c.Add(math.Inf(1))
	g := must(r.Gauge("sigil_devices", "Devices reporting."))
	g.Set(10)
	g.Add(-3)
	v := must(r.CounterVec("sigil_batches_total", "Batches by result.", "result"))
	must(v.With("ok")).Add(4)
	must(v.With(`we"ird\value` + "\n")).Inc()
	h := must(r.Histogram("sigil_cpu_ratio", "CPU.", []float64{0.25, 0.5, 1}))
	for _, x := range []float64{0.1, 0.25, 0.3, 0.5, 0.9, 2, math.NaN()} {
		h.Observe(x)
	}
	if err := r.GaugeFunc("sigil_answer", "", func() float64 { return 42 }); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, r)

	if f := fams["sigil_points_total"]; f == nil || f.Type != "counter" || f.Help != "Points ingested.\nSecond line with a \\ backslash." {
		t.Fatalf("counter family %+v", f)
	}
	for _, c := range []struct {
		fam, name string
		labels    []string
		want      float64
	}{
		{"sigil_points_total", "sigil_points_total", nil, 3.5},
		{"sigil_devices", "sigil_devices", nil, 7},
		{"sigil_batches_total", "sigil_batches_total", []string{"result", "ok"}, 4},
		{"sigil_batches_total", "sigil_batches_total", []string{"result", `we"ird\value` + "\n"}, 1},
		{"sigil_cpu_ratio", "sigil_cpu_ratio_bucket", []string{"le", "0.25"}, 2}, // bounds are inclusive
		{"sigil_cpu_ratio", "sigil_cpu_ratio_bucket", []string{"le", "0.5"}, 4},
		{"sigil_cpu_ratio", "sigil_cpu_ratio_bucket", []string{"le", "1"}, 5},
		{"sigil_cpu_ratio", "sigil_cpu_ratio_bucket", []string{"le", "+Inf"}, 6},
		{"sigil_cpu_ratio", "sigil_cpu_ratio_count", nil, 6},
		{"sigil_cpu_ratio", "sigil_cpu_ratio_sum", nil, 4.05},
		{"sigil_answer", "sigil_answer", nil, 42},
	} {
		f := fams[c.fam]
		if f == nil {
			t.Fatalf("family %s missing", c.fam)
		}
		got, ok := f.Value(c.name, c.labels...)
		if !ok || math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if got := fams["sigil_cpu_ratio"].Type; got != "histogram" {
		t.Errorf("histogram type %q", got)
	}
}

func TestRegistration(t *testing.T) {
	r := metrics.NewRegistry()
	a := must(r.Counter("x_total", "x"))
	b := must(r.Counter("x_total", "x"))
	if a != b {
		t.Fatal("registering the same counter twice gave two counters")
	}
	vec1 := must(r.CounterVec("y_total", "", "kind"))
	vec2 := must(r.CounterVec("y_total", "", "kind"))
	c1, _ := vec1.With("a")
	c2, _ := vec2.With("a")
	if c1 != c2 {
		t.Fatal("same vec and labels gave two counters")
	}
	cases := map[string]error{}
	_, cases["bad name"] = r.Counter("1x", "")
	_, cases["name with dash"] = r.Gauge("a-b", "")
	_, cases["other kind"] = r.Gauge("x_total", "")
	_, cases["other labels"] = r.CounterVec("y_total", "", "other")
	_, cases["reserved label"] = r.CounterVec("z_total", "", "__name")
	_, cases["le label"] = r.GaugeVec("w", "", "le")
	_, cases["no buckets"] = r.Histogram("h", "", nil)
	_, cases["unsorted buckets"] = r.Histogram("h", "", []float64{1, 0.5})
	_, cases["inf bucket"] = r.Histogram("h", "", []float64{1, math.Inf(1)})
	cases["func twice"] = errors.Join(r.GaugeFunc("f", "", func() float64 { return 1 }), r.GaugeFunc("f", "", func() float64 { return 1 }))
	_, cases["wrong label count"] = vec1.With("a", "b")
	_, cases["label not UTF-8"] = vec1.With("\xff")
	want := map[string]error{
		"bad name": metrics.ErrName, "name with dash": metrics.ErrName, "other kind": metrics.ErrDuplicate,
		"other labels": metrics.ErrDuplicate, "reserved label": metrics.ErrName, "le label": metrics.ErrName,
		"no buckets": metrics.ErrBuckets, "unsorted buckets": metrics.ErrBuckets, "inf bucket": metrics.ErrBuckets,
		"func twice": metrics.ErrDuplicate, "wrong label count": metrics.ErrLabels, "label not UTF-8": metrics.ErrLabels,
	}
	for name, err := range cases {
		if !errors.Is(err, want[name]) {
			t.Errorf("%s: got %v, want %v", name, err, want[name])
		}
	}
	// Whatever was refused, the registry still writes a valid exposition.
	scrape(t, r)
}

// TestConcurrentScrapes updates metrics from several goroutines while
// scraping: every scrape parses (histogram counts consistent) and the
// final values are exact.
func TestConcurrentScrapes(t *testing.T) {
	r := metrics.NewRegistry()
	c := must(r.Counter("ops_total", ""))
	h := must(r.Histogram("lat", "", []float64{1, 2, 3}))
	var wg sync.WaitGroup
	const workers, each = 4, 500
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				c.Inc()
				h.Observe(float64((w + i) % 5))
			}
		})
	}
	for range 20 {
		scrape(t, r)
	}
	wg.Wait()
	fams := scrape(t, r)
	if v, _ := fams["ops_total"].Value("ops_total"); v != workers*each {
		t.Fatalf("counter %v", v)
	}
	if v, _ := fams["lat"].Value("lat_count"); v != workers*each {
		t.Fatalf("histogram count %v", v)
	}
}

func TestHandler(t *testing.T) {
	r := metrics.NewRegistry()
	must(r.Counter("a_total", "a")).Inc()
	srv := httptest.NewServer(r)
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != metrics.ContentType {
		t.Fatalf("status %d, content type %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	fams, err := metricstest.Parse(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := fams["a_total"].Value("a_total"); v != 1 {
		t.Fatalf("a_total = %v", v)
	}
	res, err = http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", res.StatusCode)
	}
}

// TestParserRefuses shows the strict parser catches what Prometheus would
// refuse or misread, so a passing parse means something.
func TestParserRefuses(t *testing.T) {
	good := "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n"
	if _, err := metricstest.Parse(strings.NewReader(good)); err != nil {
		t.Fatalf("good exposition refused: %v", err)
	}
	for name, in := range map[string]string{
		"no final newline":    "# TYPE a gauge\na 1",
		"bad name":            "1a 1\n",
		"bad value":           "a one\n",
		"hex value":           "a 0x10\n",
		"unquoted label":      "a{x=1} 1\n",
		"unterminated label":  "a{x=\"1} 1\n",
		"bad escape":          "a{x=\"\\t\"} 1\n",
		"repeated label":      "a{x=\"1\",x=\"2\"} 1\n",
		"repeated series":     "a 1\na 2\n",
		"type after sample":   "a 1\n# TYPE a gauge\n",
		"two types":           "# TYPE a gauge\n# TYPE a gauge\na 1\n",
		"two helps":           "# HELP a x\n# HELP a y\na 1\n",
		"unknown type":        "# TYPE a meter\na 1\n",
		"split family":        "# TYPE a gauge\na{x=\"1\"} 1\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n",
		"negative counter":    "# TYPE a_total counter\na_total -1\n",
		"bucket without le":   "# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n",
		"no +Inf bucket":      "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
		"not cumulative":      "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
		"le not increasing":   "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
		"count differs":       "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
		"no sum":              "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
		"extra field":         "a 1 2 3\n",
		"bad timestamp":       "a 1 soon\n",
		"label name with dot": "a{x.y=\"1\"} 1\n",
	} {
		if _, err := metricstest.Parse(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted %q", name, in)
		}
	}
}
