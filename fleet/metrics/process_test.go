package metrics_test

import (
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/metrics"
)

// TestProcessMetrics: the process and Go runtime figures a fleet's memory
// and CPU per device are read from, under the names Prometheus' client
// libraries use, with values that follow the process.
func TestProcessMetrics(t *testing.T) {
	r := metrics.NewRegistry()
	if err := r.RegisterProcess(); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterProcess(); !errors.Is(err, metrics.ErrDuplicate) {
		t.Fatalf("registered twice: %v", err)
	}
	value := func(name, typ string) float64 {
		t.Helper()
		f := scrape(t, r)[name]
		if f == nil {
			t.Fatalf("no %s", name)
		}
		if f.Type != typ || f.Help == "" {
			t.Fatalf("%s: type %q help %q", name, f.Type, f.Help)
		}
		v, ok := f.Value(name)
		if !ok {
			t.Fatalf("%s has no sample", name)
		}
		return v
	}
	linux := runtime.GOOS == "linux"
	if linux {
		if rss := value("process_resident_memory_bytes", "gauge"); rss < 1<<20 {
			t.Errorf("RSS %v bytes", rss)
		}
		// A file held open is counted.
		before := value("process_open_fds", "gauge")
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		if after := value("process_open_fds", "gauge"); after != before+1 {
			t.Errorf("open fds %v, then %v with one more file open", before, after)
		}
		f.Close()
		if max := value("process_max_fds", "gauge"); max < before {
			t.Errorf("max fds %v below open fds %v", max, before)
		}
		// CPU time grows with work done.
		cpu0 := value("process_cpu_seconds_total", "counter")
		deadline := time.Now().Add(30 * time.Second)
		for x := uint64(1); value("process_cpu_seconds_total", "counter") <= cpu0; x = x*6364136223846793005 + 1 {
			if time.Now().After(deadline) {
				t.Fatalf("process_cpu_seconds_total stayed at %v", cpu0)
			}
		}
	}
	if start := value("process_start_time_seconds", "gauge"); start > float64(time.Now().Unix()) || start < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("start time %v", start)
	}
	// Heap in use follows what the program holds.
	runtime.GC()
	heap0 := value("go_memstats_heap_inuse_bytes", "gauge")
	hold := make([][]byte, 64)
	for i := range hold {
		hold[i] = make([]byte, 256<<10)
	}
	if heap := value("go_memstats_heap_inuse_bytes", "gauge"); heap < heap0+float64(len(hold)*256<<10)/2 {
		t.Errorf("heap in use %v, then %v while holding 16 MiB more", heap0, heap)
	}
	if alloc := value("go_memstats_heap_alloc_bytes", "gauge"); alloc < 16<<20 {
		t.Errorf("heap alloc %v while holding 16 MiB", alloc)
	}
	runtime.KeepAlive(hold)
	// Goroutines are counted.
	g0 := value("go_goroutines", "gauge")
	stop := make(chan struct{})
	for range 10 {
		go func() { <-stop }()
	}
	if g := value("go_goroutines", "gauge"); g < g0+10 {
		t.Errorf("goroutines %v, then %v with 10 more", g0, g)
	}
	close(stop)
	if v := value("go_memstats_stack_inuse_bytes", "gauge"); v <= 0 {
		t.Errorf("stack in use %v", v)
	}
	if sys := value("go_memstats_sys_bytes", "gauge"); sys < 16<<20 {
		t.Errorf("sys %v", sys)
	}
}

// TestProcessMetricsKeepNamesFree: the process family names are free in
// a new registry, and a component that registered one first makes the
// registration fail rather than export two families under one name.
func TestProcessMetricsKeepNamesFree(t *testing.T) {
	r := metrics.NewRegistry()
	if _, err := r.Gauge("go_goroutines", "mine"); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterProcess(); !errors.Is(err, metrics.ErrDuplicate) {
		t.Fatalf("RegisterProcess over a taken name: %v", err)
	}
}
