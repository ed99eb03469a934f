package metrics

import (
	"fmt"
	"runtime/metrics"
	"time"
)

// RegisterProcess registers the process and Go runtime metrics that
// Prometheus' client libraries export, under their standard names, so that
// dashboards and alerts written for any Go service read the fleet too:
//
//	process_cpu_seconds_total         user and system CPU time
//	process_resident_memory_bytes     resident set size (Linux)
//	process_open_fds, process_max_fds open file descriptors and their limit (Linux)
//	process_start_time_seconds        when the process started (registered), Unix time
//	go_goroutines                     goroutines that exist now
//	go_memstats_heap_inuse_bytes      bytes in in-use heap spans
//	go_memstats_heap_alloc_bytes      bytes of allocated heap objects
//	go_memstats_stack_inuse_bytes     bytes of goroutine stacks
//	go_memstats_sys_bytes             bytes obtained from the operating system
//
// The Go figures come from runtime/metrics, which does not stop the world
// (runtime.ReadMemStats does). A registry takes them once: a second call
// returns ErrDuplicate.
func (r *Registry) RegisterProcess() error {
	start := float64(time.Now().Unix()) // the fleet registers at start-up
	var errs []error
	gauge := func(name, help string, fn func() float64) {
		errs = append(errs, r.GaugeFunc(name, help, fn))
	}
	if _, ok := processCPU(); ok {
		errs = append(errs, r.CounterFunc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
			func() float64 { v, _ := processCPU(); return v }))
	}
	if _, ok := processRSS(); ok {
		gauge("process_resident_memory_bytes", "Resident memory size in bytes.", func() float64 { v, _ := processRSS(); return v })
	}
	if _, ok := processFDs(); ok {
		gauge("process_open_fds", "Number of open file descriptors.", func() float64 { v, _ := processFDs(); return v })
	}
	if _, ok := processMaxFDs(); ok {
		gauge("process_max_fds", "Maximum number of open file descriptors.", func() float64 { v, _ := processMaxFDs(); return v })
	}
	gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", func() float64 { return start })
	gauge("go_goroutines", "Number of goroutines that currently exist.", func() float64 {
		return runtimeValue("/sched/goroutines:goroutines")
	})
	gauge("go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use.", func() float64 {
		return runtimeValue("/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes")
	})
	gauge("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and still in use.", func() float64 {
		return runtimeValue("/memory/classes/heap/objects:bytes")
	})
	gauge("go_memstats_stack_inuse_bytes", "Number of bytes in use by the stack allocator.", func() float64 {
		return runtimeValue("/memory/classes/heap/stacks:bytes")
	})
	gauge("go_memstats_sys_bytes", "Number of bytes obtained from system.", func() float64 {
		return runtimeValue("/memory/classes/total:bytes")
	})
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("metrics: process metrics: %w", err)
		}
	}
	return nil
}

// runtimeValue reads runtime/metrics samples and adds them up (0 for a
// name this Go does not know).
func runtimeValue(names ...string) float64 {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	var sum float64
	for _, v := range s {
		switch v.Value.Kind() {
		case metrics.KindUint64:
			sum += float64(v.Value.Uint64())
		case metrics.KindFloat64:
			sum += v.Value.Float64()
		}
	}
	return sum
}
