package alert

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkObserve measures the inputs' hot path when nothing fires: one
// sample of 1000 devices in turn, with the default rules (absence, baseline
// on cpu, new listening ports and processes, events) plus a threshold and a
// rate rule. Learned state is only kept in memory here (no flush).
func BenchmarkObserve(b *testing.B) {
	f := &fixture{clock: newClock()}
	e, err := Open(Config{Path: b.TempDir() + "/alerts.db", NoSync: true, Now: f.clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	for _, r := range append(DefaultRules(),
		Rule{ID: "hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "temp", Op: OpGT, Value: 90, For: dur(time.Minute)}},
		Rule{ID: "rx", Severity: SeverityWarning, Rate: &Rate{Metric: "rx", Op: OpGT, Value: 1e12}}) {
		if _, err := e.PutRule(r); err != nil {
			b.Fatal(err)
		}
	}
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
	}
	ports := []string{"tcp/22", "tcp/443", "udp/123"}
	procs := []string{"init", "sigild", "sshd", "dropbear", "app", "crond", "udhcpc", "ntpd"}
	r := rand.New(rand.NewPCG(1, 1))
	at := f.clock.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i%len(ids) == 0 {
			at = at.Add(time.Minute)
		}
		m := map[string]float64{"cpu": 20 + 2*r.NormFloat64(), "temp": 50, "rx": float64(i) * 1000}
		if err := e.Observe(ids[i%len(ids)], at, m, map[string][]string{SetPorts: ports, SetProcesses: procs}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if s := e.Stats(); s.Fired != 0 {
		b.Fatalf("%d alerts fired on normal samples", s.Fired)
	}
}
