// Package metrics is how the fleet exposes Prometheus metrics: the
// registries and collectors are client_golang's, and Handler serves a
// registry with promhttp.
//
// Each server builds its own registry (prometheus.NewRegistry), never the
// library's global default one, and each component registers its
// control-plane metrics in it (telemetry ingestion, the broker, alerting,
// …). Metrics are fleet-level: labels are for small fixed sets such as a
// result or a severity, never for device IDs, so the number of series
// stays bounded however large the fleet is.
package metrics

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
)

// RegisterProcess registers client_golang's process and Go runtime
// collectors in r, so that the process's figures carry the names every
// Prometheus client library uses and dashboards and alerts written for any
// Go service read the fleet too. Among them:
//
//	process_cpu_seconds_total         user and system CPU time
//	process_resident_memory_bytes     resident set size
//	process_open_fds, process_max_fds open file descriptors and their limit
//	process_start_time_seconds        when the process started, Unix time
//	go_goroutines                     goroutines that exist now
//	go_memstats_heap_inuse_bytes      bytes in in-use heap spans
//	go_memstats_heap_alloc_bytes      bytes of allocated heap objects
//	go_memstats_stack_inuse_bytes     bytes of goroutine stacks
//	go_memstats_sys_bytes             bytes obtained from the operating system
//	go_gc_duration_seconds            garbage collection pauses
//
// The process figures are read from Linux's /proc (and on Windows); the Go
// figures from runtime/metrics, which does not stop the world. A registry
// takes them once: a second call returns a prometheus.AlreadyRegisteredError,
// and a name a component registered first makes it fail too.
func RegisterProcess(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
	} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("metrics: process metrics: %w", err)
		}
	}
	return nil
}

// Handler serves g's metrics for a scrape (GET or HEAD; other methods get
// 405) in the text exposition format, version 0.0.4, whatever the Accept
// header asks for, gzip-compressed when the scraper accepts it (Prometheus
// does). A failure to gather is logged on log (nil discards it) and
// answered 500, so that the scrape fails visibly rather than miss series.
func Handler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:        errorLog{log},
		ErrorHandling:   promhttp.HTTPErrorOnError,
		AcceptedFormats: []expfmt.Format{expfmt.FmtText},
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "metrics: method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// errorLog is promhttp's error logger on a slog.Logger.
type errorLog struct{ log *slog.Logger }

var _ promhttp.Logger = errorLog{}

func (l errorLog) Println(v ...any) {
	l.log.Error("metrics: serving a scrape failed", "err", fmt.Sprint(v...))
}
