package bench

import (
	"context"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// TestAttest runs the attest figures with two swtpm devices and checks
// their bookkeeping (not their timings).
func TestAttest(t *testing.T) {
	swtpmtest.Require(t)
	r, err := Attest(context.Background(), AttestOptions{Devices: 2, Rounds: 3, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if r.Devices != 2 || r.Rounds != 3 || r.Verdicts != 6 || len(r.Latency) != 6 || r.LatencyDist.N != 6 || r.Wall <= 0 || r.PerSecond <= 0 || r.Policy == "" {
		t.Fatalf("throughput result %+v", r)
	}
	for _, d := range r.Latency {
		if d <= 0 || d < r.LatencyDist.Min || d > r.LatencyDist.Max {
			t.Fatalf("verdict latency %v outside (0, %v]", d, r.LatencyDist.Max)
		}
	}
	if r.Quarantined != 2 || len(r.Quarantine) != 2 || len(r.Disconnect) != 2 || r.QuarantineDist.N != 2 || r.DisconnectDist.N != 2 {
		t.Fatalf("quarantine result %+v", r)
	}
	for i := range r.Quarantine {
		if r.Quarantine[i] <= 0 || r.Disconnect[i] <= 0 {
			t.Fatalf("quarantine %v, disconnect %v", r.Quarantine[i], r.Disconnect[i])
		}
	}
	var b strings.Builder
	r.Print(&b)
	if !strings.Contains(b.String(), "all 6 passed") || !strings.Contains(b.String(), "2/2 quarantined") {
		t.Errorf("Print:\n%s", b.String())
	}
	t.Logf("\n%s", b.String())
}
