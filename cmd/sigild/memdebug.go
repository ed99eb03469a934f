//go:build memdebug && linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"syscall"
)

// A memdebug build (go build -tags memdebug ./cmd/sigild) is how the
// breakdown of sigild's memory in docs/BENCHMARKS.md section 3 was taken.
// Release builds carry none of it (it adds about 380 KB to the amd64
// binary, mostly runtime/pprof); TestMemdebugOnlyByTag keeps it so.
//
// On SIGUSR1 it collects garbage and writes, into the directory
// $SIGILD_MEMDEBUG (default: the working directory), heap.pprof (the
// live heap; GODEBUG=memprofilerate=1 records every allocation),
// goroutines.txt, and metrics.txt (every runtime/metrics value and the
// MemStats the breakdown uses).
//
// On SIGUSR2 it asks the kernel to page out its executable's mappings
// (MADV_PAGEOUT), after turning their read-ahead off (MADV_RANDOM) so that
// a page touched again maps that page alone, not the large folio around
// it: the pages mapped again afterwards show the daemon's working set in
// /proc/PID/smaps, what its steady state touches, apart from what start-up
// and enrollment touched once. (It is a measurement: it changes how the
// daemon's code is paged for the rest of the process's life.)
func init() {
	dir := os.Getenv("SIGILD_MEMDEBUG")
	if dir == "" {
		dir = "."
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		for sig := range c {
			var err error
			if sig == syscall.SIGUSR1 {
				err = dumpMemory(dir)
			} else {
				err = pageOutExecutable()
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "sigild memdebug:", err)
			}
		}
	}()
}

func dumpMemory(dir string) error {
	runtime.GC() // the heap profile shows the heap as of the last collection
	write := func(name string, fn func(f *os.File) error) error {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		err = fn(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms) // before the profiles below allocate
	descs := metrics.All()
	samples := make([]metrics.Sample, len(descs))
	for i := range descs {
		samples[i].Name = descs[i].Name
	}
	metrics.Read(samples)
	return errors.Join(
		write("heap.pprof", func(f *os.File) error { return pprof.Lookup("heap").WriteTo(f, 0) }),
		write("goroutines.txt", func(f *os.File) error { return pprof.Lookup("goroutine").WriteTo(f, 2) }),
		write("metrics.txt", func(f *os.File) error {
			var b bytes.Buffer
			for _, s := range samples {
				switch s.Value.Kind() {
				case metrics.KindUint64:
					fmt.Fprintf(&b, "%s %d\n", s.Name, s.Value.Uint64())
				case metrics.KindFloat64:
					fmt.Fprintf(&b, "%s %g\n", s.Name, s.Value.Float64())
				}
			}
			gogc := debug.SetGCPercent(100)
			debug.SetGCPercent(gogc)
			fmt.Fprintf(&b, "memstats Sys %d HeapSys %d HeapInuse %d HeapIdle %d HeapReleased %d HeapAlloc %d StackInuse %d MSpanSys %d GCSys %d OtherSys %d NumGC %d GOGC %d NumGoroutine %d\n",
				ms.Sys, ms.HeapSys, ms.HeapInuse, ms.HeapIdle, ms.HeapReleased, ms.HeapAlloc, ms.StackInuse, ms.MSpanSys, ms.GCSys, ms.OtherSys,
				ms.NumGC, gogc, runtime.NumGoroutine())
			_, err := f.Write(b.Bytes())
			return err
		}),
	)
}

// pageOutExecutable advises MADV_RANDOM, then MADV_PAGEOUT, on every
// mapping of the executable (listed in /proc/self/maps).
func pageOutExecutable() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return err
	}
	const madvPageout = 21
	for _, line := range bytes.Split(maps, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) < 6 || string(f[5]) != exe {
			continue
		}
		var lo, hi uintptr
		if _, err := fmt.Sscanf(string(f[0]), "%x-%x", &lo, &hi); err != nil {
			return err
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, lo, hi-lo, syscall.MADV_RANDOM); e != 0 {
			return fmt.Errorf("madvise %s: %w", f[0], e)
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, lo, hi-lo, madvPageout); e != 0 {
			return fmt.Errorf("madvise %s: %w", f[0], e)
		}
	}
	return nil
}
