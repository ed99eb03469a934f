package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
)

// ServerBenchmarks is the -bench pattern Server runs in fleet/enroll.
const ServerBenchmarks = `^(BenchmarkHandle|BenchmarkCryptoFloor|BenchmarkFloorShare)$`

// ServerOptions configures Server.
type ServerOptions struct {
	// Benchtime is go test's -benchtime. Default "1s".
	Benchtime string
	// Logger receives the go test command line; nil discards it.
	Logger *slog.Logger
}

// BenchLine is one result line of `go test -bench`.
type BenchLine struct {
	Name    string             // without the "Benchmark" prefix and the -GOMAXPROCS suffix
	N       int                // iterations
	Metrics map[string]float64 // by unit: "ns/op", "ops/s", "floor-%", …
}

// ServerResult is the outcome of Server.
type ServerResult struct {
	Command string // the go test command line
	Lines   []BenchLine
}

// Server runs the server-side enrollment benchmarks of fleet/enroll with
// `go test` (they record genuine evidence once with the in-process TPM
// simulator, then time (*enroll.Service).Handle and the crypto floor with
// no TPM in the loop; see docs/BENCHMARKS.md) and parses their results. It
// needs the Go toolchain and the source tree.
func Server(ctx context.Context, o ServerOptions) (*ServerResult, error) {
	return goBench(ctx, o, "./fleet/enroll", ServerBenchmarks)
}

// goBench runs the benchmarks of one package matching pattern with
// `go test` in the source tree and parses their results.
func goBench(ctx context.Context, o ServerOptions, pkg, pattern string) (*ServerResult, error) {
	if o.Benchtime == "" {
		o.Benchtime = "1s"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	src, err := moduleDir(ctx)
	if err != nil {
		return nil, err
	}
	gobin, _ := goTool()
	args := []string{"test", "-run", "^$", "-bench", pattern, "-benchtime", o.Benchtime, pkg}
	res := &ServerResult{Command: "go " + strings.Join(args, " ")}
	o.Logger.Info("running", "cmd", res.Command, "dir", src)
	cmd := exec.CommandContext(ctx, gobin, args...)
	cmd.Dir = src
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("bench: %s: %v\n%s", res.Command, err, out.Bytes())
	}
	if res.Lines, err = ParseBench(&out); err != nil {
		return nil, err
	}
	if len(res.Lines) == 0 {
		return nil, fmt.Errorf("bench: %s printed no benchmark results\n%s", res.Command, out.Bytes())
	}
	return res, nil
}

// ParseBench reads the result lines of `go test -bench` output and ignores
// everything else.
func ParseBench(r io.Reader) ([]BenchLine, error) {
	var out []BenchLine
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		l := BenchLine{Name: name, N: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("bench: parse %q: %w", sc.Text(), err)
			}
			l.Metrics[f[i+1]] = v
		}
		out = append(out, l)
	}
	return out, sc.Err()
}

// Line returns the result named name, or nil.
func (r *ServerResult) Line(name string) *BenchLine {
	for i := range r.Lines {
		if r.Lines[i].Name == name {
			return &r.Lines[i]
		}
	}
	return nil
}

// Print writes the rates and the ratio of the crypto floor to the whole
// server-side enrollment.
func (r *ServerResult) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "benchmark\tµs/op\tops/s")
	for _, l := range r.Lines {
		if ns, ok := l.Metrics["ns/op"]; ok && l.Name != "FloorShare" {
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\n", l.Name, ns/1e3, 1e9/ns)
		}
	}
	tw.Flush()
	if l := r.Line("FloorShare"); l != nil {
		fmt.Fprintf(w, "interleaved in one loop: enrollment %.0f/s, crypto floor %.0f/s: the floor is %.0f%% of the server-side work\n",
			l.Metrics["enroll/s"], l.Metrics["floor/s"], l.Metrics["floor-%"])
	}
	fmt.Fprintf(w, "(one goroutine; command: %s)\n", r.Command)
}

func numCPU() int { return runtime.NumCPU() }
