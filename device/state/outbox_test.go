package state

// The outbox's behaviour is tested over every engine in package statetest;
// this is bbolt's crash safety.

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/crashtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

func point(i int) wire.TelemetryPoint {
	p := wire.TelemetryPoint{Time: int64(1_700_000_000_000 + i*1000)}
	p.SetMetric("seq", float64(i))
	return p
}

// values returns the "seq" metric of each point of b.
func values(b *wire.TelemetryBatch) []int {
	var out []int
	for _, p := range b.Points {
		out = append(out, int(p.Metrics["seq"]))
	}
	return out
}

const outboxCrashEnv = "SIGIL_OUTBOX_CRASH_WRITER"

// TestOutboxCrashWriter is the helper process of TestOutboxCrash: it
// appends and acknowledges until killed, reporting each commit.
func TestOutboxCrashWriter(t *testing.T) {
	path, ok := crashtest.Arg(outboxCrashEnv)
	if !ok {
		t.Skip("helper process for TestOutboxCrash")
	}
	s, err := Open(path, Options{Timeout: 5 * time.Second})
	crashtest.Check(err)
	o := s.Outbox(OutboxOptions{MaxPoints: 50})
	st, err := o.Stats()
	crashtest.Check(err)
	// The metric "seq" of each point is its sequence number.
	for i := int(st.Next); ; i++ {
		_, err := o.Append(point(i))
		crashtest.Check(err)
		fmt.Println("appended", i)
		if i%7 == 0 {
			b, err := o.Pending(3, 1<<20)
			if err == nil && b != nil {
				_, err = o.Ack(b.Stream, b.Last())
			}
			crashtest.Check(err)
		}
	}
}

// TestOutboxCrash kills a process appending to the outbox and checks that
// every reported point is held, acknowledged or counted as dropped, and
// that the bookkeeping matches the points held.
func TestOutboxCrash(t *testing.T) {
	if _, ok := crashtest.Arg(outboxCrashEnv); ok {
		t.Skip("in helper")
	}
	path := filepath.Join(t.TempDir(), "state.db")
	for round := range 2 {
		last, lines := 0, 0
		crashtest.Kill(t, "TestOutboxCrashWriter", outboxCrashEnv, path, func(line string) bool {
			if n, ok := strings.CutPrefix(line, "appended "); ok {
				last, _ = strconv.Atoi(n)
				lines++
			}
			return lines >= 80
		})
		if last == 0 {
			t.Fatal("writer committed nothing")
		}
		reported := last // the sequence number of the last reported point

		s, err := Open(path, Options{Timeout: 2 * time.Second})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		o := s.Outbox(OutboxOptions{MaxPoints: 50})
		st, err := o.Stats()
		if err != nil {
			t.Fatal(err)
		}
		// Every reported point got a sequence; the bound holds.
		if st.Next-1 < uint64(reported) || st.Points > 50 || st.Points == 0 {
			t.Fatalf("round %d: %d reported, stats %+v", round, reported, st)
		}
		// The points held are the newest, contiguous, each under its own
		// sequence; everything older was acknowledged or counted dropped.
		b, err := o.Pending(wire.MaxTelemetryPoints, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Points) != st.Points || b.Last() != st.Next-1 || b.Acked >= b.First || b.Acked+b.Dropped < b.First-1 {
			t.Fatalf("round %d: held %d points from %d, stats %+v", round, len(b.Points), b.First, st)
		}
		for j, v := range values(b) {
			if uint64(v) != b.First+uint64(j) {
				t.Fatalf("round %d: point %d under sequence %d", round, v, b.First+uint64(j))
			}
		}
		var size int64
		for i := range b.Points {
			v, _ := wire.Marshal(&b.Points[i])
			size += int64(len(v))
		}
		if size != st.Bytes {
			t.Fatalf("round %d: held %d bytes, bookkeeping says %d", round, size, st.Bytes)
		}
		s.Close()
	}
}
