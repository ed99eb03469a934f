package bench

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	d := ms(50, 10, 40, 20, 30) // unsorted on purpose
	for _, tc := range []struct {
		p    float64
		want int
	}{{50, 30}, {99, 50}, {100, 50}, {20, 10}, {21, 20}, {1, 10}} {
		if got := percentile(d, tc.p); got != time.Duration(tc.want)*time.Millisecond {
			t.Errorf("percentile(%v) = %v, want %dms", tc.p, got, tc.want)
		}
	}
	if d[0] != 50*time.Millisecond {
		t.Error("percentile sorted its argument")
	}
	if got := percentile(ms(10, 20), 50); got != 10*time.Millisecond {
		t.Errorf("median of two = %v, want the lower (nearest rank)", got)
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestParseBench(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/sigil-iot/sigil/fleet/enroll
BenchmarkHandle/request-2         	    3990	    321224 ns/op	      3113 ops/s
BenchmarkFloorShare-2                       	     584	   2061400 ns/op	       694.8 enroll/s	        43.21 floor-%	      1608 floor/s
BenchmarkOdd-x 	 1	 5 ns/op
--- FAIL: something
PASS
ok  	github.com/sigil-iot/sigil/fleet/enroll	12.378s
`
	lines, err := ParseBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3: %+v", len(lines), lines)
	}
	r := &ServerResult{Lines: lines}
	if l := r.Line("Handle/request"); l == nil || l.N != 3990 || l.Metrics["ns/op"] != 321224 || l.Metrics["ops/s"] != 3113 {
		t.Errorf("Handle/request = %+v", l)
	}
	if l := r.Line("FloorShare"); l == nil || l.Metrics["floor-%"] != 43.21 || l.Metrics["enroll/s"] != 694.8 {
		t.Errorf("FloorShare = %+v", l)
	}
	if r.Line("Odd-x") == nil {
		t.Error("a name whose suffix is not GOMAXPROCS lost it")
	}
	var b strings.Builder
	r.Print(&b)
	if !strings.Contains(b.String(), "the floor is 43% of the server-side work") {
		t.Errorf("Print:\n%s", b.String())
	}
	if _, err := ParseBench(strings.NewReader("BenchmarkX-2 10 abc ns/op\n")); err == nil {
		t.Error("a malformed value was accepted")
	}
}

func TestParseStatus(t *testing.T) {
	m, err := parseStatus(strings.NewReader("Name:\tsigild\nVmHWM:\t   10240 kB\nVmRSS:\t    9000 kB\nRssAnon:\t    2500 kB\nRssFile:\t    6400 kB\nRssShmem:\t 100 kB\nThreads:\t7\n"))
	if want := (Memory{RSS: 9000 << 10, Peak: 10240 << 10, Anon: 2500 << 10, File: 6400 << 10}); err != nil || m != want {
		t.Fatalf("parsed %+v, %v; want %+v", m, err, want)
	}
	for _, bad := range []string{
		"Name:\tx\n",
		"VmRSS:\t9 MB\nVmHWM:\t1 kB\nRssAnon:\t1 kB\nRssFile:\t1 kB\n",
		"VmRSS:\t9 kB\nVmHWM:\t9 kB\n", // no split into anonymous and file-backed
	} {
		if m, err := parseStatus(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed as %+v", bad, m)
		}
	}
	// This process's own status parses.
	m, err = memory(os.Getpid())
	if err != nil || m.RSS <= 0 || m.Peak < m.RSS || m.Anon <= 0 || m.File <= 0 || m.Anon+m.File > m.RSS {
		t.Fatalf("own memory: %+v, %v", m, err)
	}
}

// TestEnroll runs the enroll figure with two swtpm devices and checks its
// bookkeeping (not its timings).
func TestEnroll(t *testing.T) {
	swtpmtest.Require(t)
	r, err := Enroll(context.Background(), EnrollOptions{Devices: 2, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if r.Enrolled != 2 || len(r.ToActive) != 2 || r.Wall <= 0 || r.PerSecond <= 0 {
		t.Fatalf("result %+v", r)
	}
	for _, d := range r.ToActive {
		if d <= 0 || d > r.Max || d < r.Min {
			t.Fatalf("time to active %v outside [%v, %v]", d, r.Min, r.Max)
		}
	}
	var b strings.Builder
	r.Print(&b)
	if !strings.Contains(b.String(), "2/2 active") {
		t.Errorf("Print:\n%s", b.String())
	}
}

// TestSigild builds sigild, runs it as a process until connected, and
// restarts it once.
func TestSigild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sigild twice")
	}
	swtpmtest.Require(t)
	swtpmtest.RequireBinaries(t, "go")
	r, err := Sigild(context.Background(), SigildOptions{Dir: t.TempDir(), Idle: 100 * time.Millisecond, Restarts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusExit != 0 || r.Idle.RSS <= 0 || r.Idle.Peak < r.Idle.RSS || r.Size <= 0 || r.Arm64Size <= 0 || len(r.Restarts) != 1 || r.FirstConnect <= 0 {
		t.Fatalf("result %+v", r)
	}
	if r.Idle.Anon <= 0 || r.Idle.File <= 0 || r.Restarted.RSS <= 0 || r.Restarted.Anon+r.Restarted.File > r.Restarted.RSS {
		t.Fatalf("memory after connecting %+v, after the restart %+v", r.Idle, r.Restarted)
	}
	var b strings.Builder
	r.Print(&b)
	t.Logf("\n%s", b.String())
}

// TestSigildFlagsMatchMakefile keeps the flags and GOEXPERIMENT `sigil-sim
// bench` builds sigild with equal to those `make cross` uses, so the size it
// reports is the one the size gate checks.
func TestSigildFlagsMatchMakefile(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	var flags, experiment bool
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SIGILD_GCFLAGS :="); ok {
			flags = true
			if got, want := strings.Fields(v), sigildGCFlags; !slices.Equal(got, want) {
				t.Errorf("Makefile SIGILD_GCFLAGS = %q, sim/bench sigildGCFlags = %q", got, want)
			}
		}
		if v, ok := strings.CutPrefix(line, "SIGILD_GOEXPERIMENT :="); ok {
			experiment = true
			if got := strings.TrimSpace(v); got != sigildGOEXPERIMENT {
				t.Errorf("Makefile SIGILD_GOEXPERIMENT = %q, sim/bench sigildGOEXPERIMENT = %q", got, sigildGOEXPERIMENT)
			}
		}
	}
	if !flags || !experiment {
		t.Fatalf("Makefile: SIGILD_GCFLAGS line %v, SIGILD_GOEXPERIMENT line %v", flags, experiment)
	}
}
