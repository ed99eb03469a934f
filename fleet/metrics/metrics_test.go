package metrics_test

import (
	"compress/gzip"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/metrics/metricstest"
)

// prometheusAccept is the Accept header Prometheus 3 sends when it scrapes:
// OpenMetrics first, then the text formats.
const prometheusAccept = "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5," +
	"application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=underscores;q=0.3," +
	"text/plain;version=0.0.4;q=0.2,*/*;q=0.1"

// TestExposition: what client_golang writes through Handler, read back by
// expfmt, has the values, types and escaped texts that were registered.
func TestExposition(t *testing.T) {
	r := prometheus.NewPedanticRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "sigil_points_total", Help: "Points ingested.\nSecond line with a \\ backslash."})
	c.Add(3.5)
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "sigil_devices", Help: "Devices reporting."})
	g.Set(7)
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sigil_batches_total", Help: "Batches by result."}, []string{"result"})
	v.WithLabelValues("ok").Add(4)
	v.WithLabelValues(`we"ird\value` + "\n").Inc()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sigil_cpu_ratio", Help: "CPU.", Buckets: []float64{0.25, 0.5, 1}})
	for _, x := range []float64{0.1, 0.25, 0.3, 0.5, 0.9, 2} {
		h.Observe(x)
	}
	f := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sigil_answer", Help: "The answer."}, func() float64 { return 42 })
	r.MustRegister(c, g, v, h, f)
	fams, _ := metricstest.Scrape(t, metrics.Handler(r, nil))

	if f := fams["sigil_points_total"]; f == nil || f.GetType() != dto.MetricType_COUNTER || f.GetHelp() != "Points ingested.\nSecond line with a \\ backslash." {
		t.Fatalf("counter family %v", f)
	}
	if f := fams["sigil_cpu_ratio"]; f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("histogram family %v", f)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sigil_points_total", nil, 3.5},
		{"sigil_devices", nil, 7},
		{"sigil_batches_total", []string{"result", "ok"}, 4},
		{"sigil_batches_total", []string{"result", `we"ird\value` + "\n"}, 1},
		{"sigil_cpu_ratio_bucket", []string{"le", "0.25"}, 2}, // bounds are inclusive
		{"sigil_cpu_ratio_bucket", []string{"le", "0.5"}, 4},
		{"sigil_cpu_ratio_bucket", []string{"le", "1"}, 5},
		{"sigil_cpu_ratio_bucket", []string{"le", "+Inf"}, 6},
		{"sigil_cpu_ratio_count", nil, 6},
		{"sigil_cpu_ratio_sum", nil, 4.05},
		{"sigil_answer", nil, 42},
	} {
		got, ok := fams.Value(c.name, c.labels...)
		if !ok || math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
}

// TestHandler: the text format 0.0.4 whatever a scraper's Accept header
// asks for, gzip when the scraper accepts it (Prometheus always does),
// HEAD without a body, and other methods refused.
func TestHandler(t *testing.T) {
	r := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "a_total", Help: "a"})
	c.Inc()
	r.MustRegister(c)
	srv := httptest.NewServer(metrics.Handler(r, nil))
	defer srv.Close()
	// No automatic decompression by the client: the test sees what was sent.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	do := func(method string, header ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { res.Body.Close() })
		return res
	}
	for _, accept := range []string{"", prometheusAccept, "application/openmetrics-text;version=1.0.0", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"} {
		res := do(http.MethodGet, "Accept", accept)
		if f := expfmt.ResponseFormat(res.Header); res.StatusCode != 200 || f.FormatType() != expfmt.TypeTextPlain ||
			!strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain; version=0.0.4") || res.Header.Get("Content-Encoding") != "" {
			t.Fatalf("Accept %q: status %d, content type %q, encoding %q", accept, res.StatusCode, res.Header.Get("Content-Type"), res.Header.Get("Content-Encoding"))
		}
		fams, err := metricstest.Parse(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := fams.Value("a_total"); v != 1 {
			t.Fatalf("a_total = %v", v)
		}
	}

	res := do(http.MethodGet, "Accept", prometheusAccept, "Accept-Encoding", "gzip")
	if res.StatusCode != 200 || res.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("a scrape accepting gzip: %d, Content-Encoding %q", res.StatusCode, res.Header.Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	fams, err := metricstest.Parse(zr)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := fams.Value("a_total"); v != 1 {
		t.Fatalf("a_total in the gzip answer = %v", v)
	}

	res = do(http.MethodHead)
	if body, _ := io.ReadAll(res.Body); res.StatusCode != 200 || len(body) > 0 {
		t.Fatalf("HEAD: %d, %d bytes", res.StatusCode, len(body))
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		if res := do(m); res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
			t.Fatalf("%s: %d, Allow %q", m, res.StatusCode, res.Header.Get("Allow"))
		}
	}
}

// TestHandlerGatherError: a collector that fails makes the scrape fail
// (500) rather than answer without its series, and the failure is logged.
func TestHandlerGatherError(t *testing.T) {
	r := prometheus.NewRegistry()
	r.MustRegister(failing{prometheus.NewDesc("broken", "A collector that fails.", nil, nil)})
	var logged strings.Builder
	h := metrics.Handler(r, slogTo(&logged))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusInternalServerError || !strings.Contains(logged.String(), "level=ERROR") {
		t.Fatalf("status %d, log %q", rec.Code, logged.String())
	}
}

type failing struct{ d *prometheus.Desc }

func (f failing) Describe(ch chan<- *prometheus.Desc) { ch <- f.d }
func (f failing) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(f.d, errors.New("cannot read"))
}

// TestProcessMetrics: the process and Go runtime figures a fleet's memory
// and CPU per device are read from, under the names Prometheus' client
// libraries use, with values that follow the process.
func TestProcessMetrics(t *testing.T) {
	r := prometheus.NewPedanticRegistry()
	if err := metrics.RegisterProcess(r); err != nil {
		t.Fatal(err)
	}
	var are prometheus.AlreadyRegisteredError
	if err := metrics.RegisterProcess(r); !errors.As(err, &are) {
		t.Fatalf("registered twice: %v", err)
	}
	h := metrics.Handler(r, nil)
	value := func(name string, typ dto.MetricType) float64 {
		t.Helper()
		fams, _ := metricstest.Scrape(t, h)
		f := fams[name]
		if f == nil {
			t.Fatalf("no %s", name)
		}
		if f.GetType() != typ || f.GetHelp() == "" {
			t.Fatalf("%s: type %v help %q", name, f.GetType(), f.GetHelp())
		}
		v, ok := fams.Value(name)
		if !ok {
			t.Fatalf("%s has no sample", name)
		}
		return v
	}
	gauge, counter := dto.MetricType_GAUGE, dto.MetricType_COUNTER
	if runtime.GOOS == "linux" {
		if rss := value("process_resident_memory_bytes", gauge); rss < 1<<20 {
			t.Errorf("RSS %v bytes", rss)
		}
		// A file held open is counted.
		before := value("process_open_fds", gauge)
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		if after := value("process_open_fds", gauge); after != before+1 {
			t.Errorf("open fds %v, then %v with one more file open", before, after)
		}
		f.Close()
		if max := value("process_max_fds", gauge); max < before {
			t.Errorf("max fds %v below open fds %v", max, before)
		}
		// CPU time grows with work done.
		cpu0 := value("process_cpu_seconds_total", counter)
		deadline := time.Now().Add(30 * time.Second)
		for x := uint64(1); value("process_cpu_seconds_total", counter) <= cpu0; x = x*6364136223846793005 + 1 {
			if time.Now().After(deadline) {
				t.Fatalf("process_cpu_seconds_total stayed at %v", cpu0)
			}
		}
		// The kernel counts from a boot time in whole seconds.
		now := float64(time.Now().UnixMilli()) / 1e3
		if start := value("process_start_time_seconds", gauge); start > now+1 || start < now-3600 {
			t.Errorf("start time %v", start)
		}
	}
	// Heap in use follows what the program holds.
	runtime.GC()
	heap0 := value("go_memstats_heap_inuse_bytes", gauge)
	hold := make([][]byte, 64)
	for i := range hold {
		hold[i] = make([]byte, 256<<10)
	}
	if heap := value("go_memstats_heap_inuse_bytes", gauge); heap < heap0+float64(len(hold)*256<<10)/2 {
		t.Errorf("heap in use %v, then %v while holding 16 MiB more", heap0, heap)
	}
	if alloc := value("go_memstats_heap_alloc_bytes", gauge); alloc < 16<<20 {
		t.Errorf("heap alloc %v while holding 16 MiB", alloc)
	}
	runtime.KeepAlive(hold)
	// Goroutines are counted (give or take the few a scrape itself runs
	// to gather its collectors).
	g0 := value("go_goroutines", gauge)
	stop := make(chan struct{})
	for range 100 {
		go func() { <-stop }()
	}
	if g := value("go_goroutines", gauge); g < g0+90 {
		t.Errorf("goroutines %v, then %v with 100 more", g0, g)
	}
	close(stop)
	if v := value("go_memstats_stack_inuse_bytes", gauge); v <= 0 {
		t.Errorf("stack in use %v", v)
	}
	if sys := value("go_memstats_sys_bytes", gauge); sys < 16<<20 {
		t.Errorf("sys %v", sys)
	}
}

// TestProcessMetricsAsEveryGoService: the families the standard dashboards
// for Go services read (garbage collection pauses, threads, the Go
// version, virtual memory) are there too, with the types and labels those
// dashboards expect.
func TestProcessMetricsAsEveryGoService(t *testing.T) {
	r := prometheus.NewPedanticRegistry()
	if err := metrics.RegisterProcess(r); err != nil {
		t.Fatal(err)
	}
	runtime.GC() // at least one pause to summarize
	fams, _ := metricstest.Scrape(t, metrics.Handler(r, nil))
	want := map[string]dto.MetricType{
		"go_gc_duration_seconds":           dto.MetricType_SUMMARY,
		"go_threads":                       dto.MetricType_GAUGE,
		"go_info":                          dto.MetricType_GAUGE,
		"go_memstats_alloc_bytes_total":    dto.MetricType_COUNTER,
		"go_memstats_mallocs_total":        dto.MetricType_COUNTER,
		"go_memstats_next_gc_bytes":        dto.MetricType_GAUGE,
		"go_memstats_last_gc_time_seconds": dto.MetricType_GAUGE,
	}
	if runtime.GOOS == "linux" {
		want["process_virtual_memory_bytes"] = dto.MetricType_GAUGE
		want["process_virtual_memory_max_bytes"] = dto.MetricType_GAUGE
	}
	for name, typ := range want {
		if f := fams[name]; f == nil || f.GetType() != typ {
			t.Errorf("%s: %v, want a %v", name, f, typ)
		}
	}
	if n, ok := fams.Value("go_gc_duration_seconds_count"); !ok || n < 1 {
		t.Errorf("go_gc_duration_seconds_count = %v after a collection", n)
	}
	if v, ok := fams.Value("go_info", "version", runtime.Version()); !ok || v != 1 {
		t.Errorf("go_info{version=%q} = %v, %v", runtime.Version(), v, ok)
	}
}

// TestProcessMetricsKeepNamesFree: a component that registered one of the
// process families' names first makes the registration fail rather than
// export two families under one name.
func TestProcessMetricsKeepNamesFree(t *testing.T) {
	r := prometheus.NewRegistry()
	r.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "go_goroutines", Help: "mine"}))
	if err := metrics.RegisterProcess(r); err == nil {
		t.Fatal("RegisterProcess over a taken name succeeded")
	}
}

// TestParseRefuses: the parser the tests read /metrics with refuses what
// Prometheus would refuse or misread, so that a passing parse means
// something.
func TestParseRefuses(t *testing.T) {
	good := "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n"
	if _, err := metricstest.Parse(strings.NewReader(good)); err != nil {
		t.Fatalf("good exposition refused: %v", err)
	}
	for name, in := range map[string]string{
		"no final newline":    "# TYPE a gauge\na 1",
		"bad name":            "1a 1\n",
		"bad value":           "a one\n",
		"unquoted label":      "a{x=1} 1\n",
		"unterminated label":  "a{x=\"1} 1\n",
		"bad escape":          "a{x=\"\\t\"} 1\n",
		"repeated series":     "a 1\na 2\n",
		"repeated labels":     "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n",
		"type after sample":   "a 1\n# TYPE a gauge\n",
		"two types":           "# TYPE a gauge\n# TYPE a gauge\na 1\n",
		"two helps":           "# HELP a x\n# HELP a y\na 1\n",
		"unknown type":        "# TYPE a meter\na 1\n",
		"extra field":         "a 1 2 3\n",
		"bad timestamp":       "a 1 soon\n",
		"label name with dot": "a{x.y=\"1\"} 1\n",
	} {
		if _, err := metricstest.Parse(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted %q", name, in)
		}
	}
}

func slogTo(b *strings.Builder) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }
