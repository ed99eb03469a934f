//go:build unix

package attest

// Benchmarks of the evidence path (docs/BENCHMARKS.md, "Fleet CPU per
// attestation and memory per device"):
//
//	go test -run '^$' -bench Evidence -benchtime 4000x ./fleet/attest/

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// BenchmarkEvidence measures the fleet's work per attestation — the
// challenge, then the evidence judged, recorded and answered — on files
// that fsync, and sets its CPU time (the whole process's: the benchmark's
// own share is small) against the crypto floor of an attestation (one
// ECDSA P-256 verification) measured in the same run: cpu-µs/op and
// ×floor. The evidence arrives as from a fleet: quiet (40 a second, the
// fleet's rate with 2,400 devices attesting every minute), steady (400 a
// second: 24,000 devices) or in bursts of 256 (devices reconnecting).
func BenchmarkEvidence(b *testing.B) {
	for _, c := range []struct {
		name    string
		devices int
		every   time.Duration // between attestations; 0: bursts of devices
	}{{"quiet", 8, 25 * time.Millisecond}, {"steady", 256, 2500 * time.Microsecond}, {"burst", 256, 0}} {
		b.Run(c.name, func(b *testing.B) {
			f := newSoftFleet(b, c.devices, nil)
			ctx, stop := context.WithCancel(b.Context())
			done := make(chan error, 1)
			go func() { done <- f.svc.Run(ctx) }()
			defer func() { stop(); <-done }()
			raws := f.prepare(b, roundRobin(b.N, c.devices))
			floor := verifyFloor()
			runtime.GC()
			b.ResetTimer()
			c0 := cpuTime()
			if c.every > 0 {
				go func() {
					next := time.Now()
					for i := range b.N {
						time.Sleep(time.Until(next)) // sleep: paces arrivals at the benchmark's rate, not a wait for a condition
						f.attest(b, i%c.devices, raws[i])
						next = next.Add(c.every)
					}
				}()
				for range b.N {
					<-f.verdict
				}
			} else {
				for i := 0; i < b.N; i += c.devices {
					n := min(c.devices, b.N-i)
					for k := range n {
						f.attest(b, (i+k)%c.devices, raws[i+k])
					}
					for range n {
						<-f.verdict
					}
				}
			}
			cpu := cpuTime() - c0
			b.StopTimer()
			us := float64(cpu.Microseconds()) / float64(b.N)
			b.ReportMetric(us, "cpu-µs/op")
			b.ReportMetric(floor, "floor-µs")
			b.ReportMetric(us/floor, "×floor")
		})
	}
}

// verifyFloor is the CPU time of one ECDSA P-256 verification, µs.
func verifyFloor() float64 {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("floor"))
	sig, _ := ecdsa.SignASN1(rand.Reader, key, digest[:])
	const n = 2000
	c0 := cpuTime()
	for range n {
		ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig)
	}
	return float64((cpuTime() - c0).Microseconds()) / n
}

// cpuTime is the process's CPU time, user and system.
func cpuTime() time.Duration {
	var r syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &r); err != nil {
		return 0
	}
	return time.Duration(r.Utime.Nano() + r.Stime.Nano())
}
