package governance_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Observe on the broker's connection path: one identity repeating, and a
// flood of distinct identities (bounded by MaxPending, flushed every 1000).
func BenchmarkObserve(b *testing.B) {
	b.Run("repeat", func(b *testing.B) {
		f := newFleet(b, nil)
		a := governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: "hammer", Remote: "192.0.2.1:4000", Reason: "bad token"}
		for b.Loop() {
			_ = f.svc.Observe(a)
		}
	})
	b.Run("distinct+flush", func(b *testing.B) {
		f := newFleet(b, nil)
		i := 0
		for b.Loop() {
			_ = f.svc.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: fmt.Sprint("id-", i), Remote: "192.0.2.1:4000"})
			i++
			if i%1000 == 0 {
				if err := f.svc.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

func BenchmarkIsBlocked(b *testing.B) {
	f := newFleet(b, nil)
	for i := range 1000 {
		if err := f.svc.Block(governance.Block{Kind: governance.BlockClientID, Value: fmt.Sprint("c", i)}); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 16 {
		if err := f.svc.Block(governance.Block{Kind: governance.BlockAddress, Value: fmt.Sprintf("10.%d.0.0/16", i)}); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if f.svc.IsBlocked("gw-ok", "192.0.2.1:4000", "") {
			b.Fatal("blocked")
		}
	}
}

// A sweep of 1000 devices with every risk input set.
func BenchmarkSweep1000(b *testing.B) {
	rf := newRiskFleet(b, nil)
	for n := 2; n <= 1000; n++ {
		d := rf.device(n, func(d *inventory.Device) {
			if n%7 == 0 {
				d.Connected, d.LastSeen = false, rf.clock.Now().Add(-40*24*time.Hour)
			}
			if n%5 == 0 {
				d.Attestation = "fail"
			}
		})
		rf.targets[d.ID] = "1.0.0"
	}
	b.ResetTimer()
	for b.Loop() {
		rep, err := rf.svc.Sweep(b.Context())
		if err != nil || rep.Scored != 1000 {
			b.Fatalf("%+v %v", rep, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "µs/device")
}

func BenchmarkScore(b *testing.B) {
	rf := newRiskFleet(b, nil)
	for b.Loop() {
		if _, err := rf.svc.Score(rf.dev.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScoreHistory scores a device whose attestation history holds
// verdicts as the fleet records them (the quote's PCR values, counters,
// policy, a failure among them): the risk score reads the outcomes of the
// newest Config.AttestWindow (10) on every rescore, once per verdict.
func BenchmarkScoreHistory(b *testing.B) {
	rf := newRiskFleet(b, nil)
	for i := range 40 {
		r := &attest.Record{DeviceID: rf.dev.ID, Time: rf.clock.Now().Add(-time.Duration(40-i) * time.Minute),
			Result: "pass", Reason: "ok", Message: "evidence verified and matches policy gw-1", PolicyID: "gw-1", PolicyVersion: 3,
			EvidenceDigest: strings.Repeat("ab", 32), Firmware: "1.0.0", PCRs: map[string]map[int]string{"sha256": {}},
			ResetCount: 3, Clock: uint64(1000 * i), PolicyAction: "quarantine"}
		for _, p := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14} {
			r.PCRs["sha256"][p] = strings.Repeat(fmt.Sprintf("%02x", p+i), 32)
		}
		if i == 35 {
			r.Result, r.Reason = "fail", "policy_violation"
		}
		if err := rf.history.Add(b.Context(), r); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, err := rf.svc.Score(rf.dev.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSessionMemory reports the heap the clone detector keeps per
// open device session (B/session): one connection per device, as a
// connected fleet has.
func BenchmarkSessionMemory(b *testing.B) {
	const sessions = 10000
	ids := make([]governance.Session, sessions)
	for i := range ids {
		ids[i] = governance.Session{DeviceID: fmt.Sprintf("%032x", i), CertSerial: fmt.Sprintf("%040x", i),
			Remote: fmt.Sprintf("127.0.%d.%d:%d", 2+i/60000, i%250, 1024+i%60000)}
	}
	var per float64
	for b.Loop() {
		f := newFleet(b, nil)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, x := range ids {
			f.svc.SessionOpened(x)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if st := f.svc.SessionStats(); st.Open != sessions {
			b.Fatalf("%+v", st)
		}
		per = float64(after.HeapAlloc-before.HeapAlloc) / sessions
	}
	b.ReportMetric(per, "B/session")
}
