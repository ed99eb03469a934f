package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// TestRotate runs the rotate figure with two swtpm devices, two rounds,
// and checks its bookkeeping (not its timings).
func TestRotate(t *testing.T) {
	swtpmtest.Require(t)
	r, err := Rotate(context.Background(), RotateOptions{Devices: 2, Rounds: 2, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if r.Devices != 2 || len(r.Rounds) != 2 || r.Renewals != 4 || r.Wall <= 0 || r.PerSecond <= 0 || r.Active <= 0 || r.Active > r.Wall || r.ActivePerSec < r.PerSecond {
		t.Fatalf("result %+v", r)
	}
	for _, d := range []Dist{r.ToConnected, r.FromSent, r.SentToIssued, r.IssuedToOn} {
		if d.N != 4 {
			t.Fatalf("distribution over %d devices, want 4: %+v", d.N, d)
		}
	}
	for _, rd := range r.Rounds {
		if rd.Renewed != 2 || rd.Revoked != 2 || len(rd.ToConnected) != 2 || len(rd.FromSent) != 2 || rd.Job == "" {
			t.Fatalf("round %+v", rd)
		}
	}
	if r.Rounds[0].Job == r.Rounds[1].Job {
		t.Fatal("both rounds ran the same job")
	}
	var b strings.Builder
	r.Print(&b)
	if !strings.Contains(b.String(), "4/4 renewed by the job record; 4/4 previous certificates revoked") {
		t.Errorf("Print:\n%s", b.String())
	}
	t.Logf("\n%s", b.String())
}

func TestRenewPrint(t *testing.T) {
	out := `BenchmarkRenew/renewal-2     	     759	   1684718 ns/op	       593.6 ops/s
BenchmarkRenewFloor-2                   	    4362	    290780 ns/op	      3439 ops/s
BenchmarkRenewFloorShare-2              	     615	   2121651 ns/op	        19.01 floor-%	      2950 floor/s	       561.0 renew/s
`
	lines, err := ParseBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	r := &RenewResult{ServerResult{Command: "go test", Lines: lines}}
	var b strings.Builder
	r.Print(&b)
	for _, want := range []string{"Renew/renewal", "the floor is 19% of the fleet-side renewal", "renewal 561/s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("Print lacks %q:\n%s", want, b.String())
		}
	}
}

func TestParseSizes(t *testing.T) {
	n, err := parseSizes("20, 50,100")
	if err != nil || len(n) != 3 || n[0] != 20 || n[2] != 100 {
		t.Fatalf("%v %v", n, err)
	}
	for _, bad := range []string{"", "20,,50", "0", "x"} {
		if _, err := parseSizes(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestProcCPU(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stat")
	line := "4242 (swtpm) S 77 4242 4242 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 1 0 1234 10000000 1500\n"
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	cpu, ppid, comm := procCPU(path)
	if cpu != 1750*time.Millisecond || ppid != 77 || comm != "swtpm" {
		t.Fatalf("cpu %v ppid %d comm %q", cpu, ppid, comm)
	}
	if self, _ := cpuTimes(); self < 0 {
		t.Fatalf("own CPU %v", self)
	}
}
