package alert

import (
	"bufio"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// noise generators: each returns the i-th value of a metric that is normal
// for its device.
var noises = map[string]func(r *rand.Rand, i int) float64{
	// CPU percent around 20 with Gaussian noise.
	"gaussian": func(r *rand.Rand, _ int) float64 { return 20 + 2*r.NormFloat64() },
	// Uniform between 10 and 30.
	"uniform": func(r *rand.Rand, _ int) float64 { return 10 + 20*r.Float64() },
	// A daily cycle (one sample a minute) with noise on top.
	"diurnal": func(r *rand.Rand, i int) float64 {
		return 40 + 15*math.Sin(2*math.Pi*float64(i)/1440) + 3*r.NormFloat64()
	},
	// Heavier tails than Gaussian: Laplace noise with σ 2.
	"laplace": func(r *rand.Rand, _ int) float64 {
		u := r.Float64() - 0.5
		return 20 - 2/math.Sqrt2*math.Copysign(math.Log(1-2*math.Abs(u)), u)
	},
	// An integer count (processes) that wanders by a few.
	"count": func(r *rand.Rand, _ int) float64 { return 120 + math.Round(2*r.NormFloat64()) },
	// A flat metric (memory total) with a rare one-unit step: σ is ~0, only
	// the floor keeps it quiet.
	"flat": func(_ *rand.Rand, i int) float64 { return 1024 + float64((i/500)%2) },
}

const noisePoints = 5000

// feed observes n points of gen for device id, one a minute, and returns
// the time after the last.
func feed(t *testing.T, e *Engine, id string, start time.Time, n int, gen func(int) float64) time.Time {
	t.Helper()
	at := start
	for i := range n {
		must(t, e.Observe(id, at, map[string]float64{"cpu": gen(i)}, nil))
		at = at.Add(time.Minute)
	}
	return at
}

func TestBaselineQuietOnNoise(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "cpu-anomaly", Severity: SeverityWarning, Baseline: &Baseline{Metric: "cpu"}})
	start := f.clock.Now()
	for name, gen := range noises {
		for seed := range uint64(3) {
			r := rand.New(rand.NewPCG(seed, 0x5161))
			id := fmt.Sprintf("%s-%d", name, seed)
			feed(t, f.e, id, start, noisePoints, func(i int) float64 { return gen(r, i) })
			if as := f.all(t, id); len(as) != 0 {
				t.Errorf("%s: %d alerts on %d points of normal noise; first: %s", id, len(as), noisePoints, as[0].Summary)
			}
		}
	}

	// The same noise does fire a rule that is too tight, or has no σ
	// floor for the flat metric: the quiet above is the defaults' doing,
	// not a rule that cannot fire.
	g := newFixture(t, Config{})
	g.put(t, Rule{ID: "tight", Severity: SeverityWarning, Baseline: &Baseline{Metric: "cpu", K: 1.5, Consecutive: 1}})
	r := rand.New(rand.NewPCG(0, 0x5161))
	feed(t, g.e, "gaussian", start, noisePoints, func(i int) float64 { return noises["gaussian"](r, i) })
	if len(g.all(t, "gaussian")) == 0 {
		t.Fatal("a 1.5σ band never fired on Gaussian noise")
	}
	s := ewma{}
	b := &Baseline{K: 4, Alpha: 0.02, Warmup: 50, Consecutive: 1}
	fired := false
	for i := range noisePoints {
		x := noises["flat"](nil, i)
		if i > 0 && math.Sqrt(s.Var) > 0 && math.Abs(x-s.Mean) > b.K*math.Sqrt(s.Var) && s.warm(b) {
			fired = true
		}
		s.learn(b, x)
	}
	if !fired {
		t.Fatal("without the floor the flat metric's step would not fire; the floor test proves nothing")
	}
}

func TestBaselineCatchesCPUJump(t *testing.T) {
	rec := newRecorder()
	f := newFixture(t, Config{Routes: []Route{{Name: "rec", Notifier: rec}}})
	f.run(t)
	f.put(t, Rule{ID: "cpu-anomaly", Severity: SeverityWarning, Baseline: &Baseline{Metric: "cpu"}})
	r := rand.New(rand.NewPCG(7, 7))
	normal := func(int) float64 { return 20 + 2*r.NormFloat64() }
	at := feed(t, f.e, "d1", f.clock.Now(), 2000, normal)
	if n := len(f.all(t, "d1")); n != 0 {
		t.Fatalf("%d alerts before the jump", n)
	}
	// A miner starts: CPU jumps to 45%.
	for i := range 3 {
		if i == 2 && len(f.open(t, "d1")) != 0 {
			t.Fatal("fired before 3 consecutive observations")
		}
		must(t, f.e.Observe("d1", at, map[string]float64{"cpu": 45 + r.Float64()}, nil))
		at = at.Add(time.Minute)
	}
	open := f.open(t, "d1")
	if len(open) != 1 {
		t.Fatalf("the jump did not fire: %+v", open)
	}
	ev := open[0].Evidence
	mean, _ := strconv.ParseFloat(ev["mean"], 64)
	sigma, _ := strconv.ParseFloat(ev["sigma"], 64)
	hi, _ := strconv.ParseFloat(ev["band_high"], 64)
	val, _ := strconv.ParseFloat(ev["value"], 64)
	if math.Abs(mean-20) > 1 || sigma < 1.5 || sigma > 2.6 || hi > 30 || val < 45 || ev["consecutive"] != "3" {
		t.Fatalf("evidence does not show the learned baseline and the jump: %v", ev)
	}
	if n := rec.next(t); n.Transition != TransitionFiring || n.Alert.Evidence["value"] != ev["value"] {
		t.Fatalf("notification: %+v", n)
	}
	// Sustained for a while: still one alert, the baseline is not taught
	// the anomaly quickly.
	for range 20 {
		must(t, f.e.Observe("d1", at, map[string]float64{"cpu": 45}, nil))
		at = at.Add(time.Minute)
	}
	if open := f.open(t, "d1"); len(open) != 1 || open[0].ID != f.all(t, "d1")[0].ID {
		t.Fatalf("sustained anomaly: %+v", open)
	}
	// Back to normal: resolved.
	feed(t, f.e, "d1", at, 5, normal)
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatal("not resolved after returning to normal")
	}
	if n := rec.next(t); n.Transition != TransitionResolved {
		t.Fatalf("notification: %+v", n)
	}
}

func TestBaselineDirection(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "drop", Severity: SeverityWarning, Baseline: &Baseline{Metric: "cpu", Direction: DirectionAbove, Consecutive: 1}})
	r := rand.New(rand.NewPCG(1, 2))
	at := feed(t, f.e, "d1", f.clock.Now(), 500, func(int) float64 { return 50 + r.NormFloat64() })
	must(t, f.e.Observe("d1", at, map[string]float64{"cpu": 0}, nil))
	if n := len(f.open(t, "d1")); n != 0 {
		t.Fatal("an above-only baseline fired on a drop")
	}
	must(t, f.e.Observe("d1", at.Add(time.Minute), map[string]float64{"cpu": 100}, nil))
	if n := len(f.open(t, "d1")); n != 1 {
		t.Fatal("an above-only baseline missed a rise")
	}
}

func TestBaselineWarmup(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "cpu", Severity: SeverityWarning, Baseline: &Baseline{Metric: "cpu", Warmup: 50, Consecutive: 1}})
	at := feed(t, f.e, "d1", f.clock.Now(), 49, func(i int) float64 { return 20 + float64(i%2) })
	must(t, f.e.Observe("d1", at, map[string]float64{"cpu": 90}, nil)) // the 50th: still learning
	if n := len(f.all(t, "d1")); n != 0 {
		t.Fatal("fired during warm-up")
	}
	at = feed(t, f.e, "d2", at, 50, func(i int) float64 { return 20 + float64(i%2) })
	must(t, f.e.Observe("d2", at, map[string]float64{"cpu": 90}, nil))
	if n := len(f.all(t, "d2")); n != 1 {
		t.Fatal("did not fire once warm")
	}
}

// listeningPorts reads the host's listening TCP ports from /proc, as the
// device telemetry collector does, as "tcp/<port>".
func listeningPorts(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 4 || f[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(f[1], ":")
			if !ok {
				continue
			}
			p, err := strconv.ParseUint(hexPort, 16, 16)
			if err == nil {
				out = append(out, "tcp/"+strconv.FormatUint(p, 10))
			}
		}
		fh.Close()
	}
	return out
}

func TestNewListeningPortOpenedInTest(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/net/tcp")
	}
	f := newFixture(t, Config{})
	f.put(t, Rule{ID: "new-port", Severity: SeverityWarning, NewMember: &NewMember{Set: SetPorts, Learn: dur(time.Hour)}})
	at := f.clock.Now()
	for range 4 {
		must(t, f.e.Observe("host", at, nil, map[string][]string{SetPorts: listeningPorts(t)}))
		at = at.Add(20 * time.Minute)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	port := "tcp/" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	must(t, f.e.Observe("host", at, nil, map[string][]string{SetPorts: listeningPorts(t)}))
	var mine *Alert
	for _, a := range f.open(t, "host") {
		if a.Key == port {
			mine = &a
		}
	}
	if mine == nil || mine.Evidence["member"] != port {
		t.Fatalf("no alert for the port opened in the test (%s): %+v", port, f.open(t, "host"))
	}
	l.Close()
	must(t, f.e.Observe("host", at.Add(time.Minute), nil, map[string][]string{SetPorts: listeningPorts(t)}))
	a, err := f.e.Alert(mine.ID)
	must(t, err)
	if a.State != StateResolved {
		t.Fatalf("alert for the closed port: %s", a.State)
	}
}
