package state

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func point(i int) wire.TelemetryPoint {
	p := wire.TelemetryPoint{Time: int64(1_700_000_000_000 + i*1000)}
	p.SetMetric("seq", float64(i))
	return p
}

func openOutbox(t *testing.T, path string, opts OutboxOptions) (*Store, *Outbox) {
	t.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s, s.Outbox(opts)
}

// values returns the "seq" metric of each point of b.
func values(b *wire.TelemetryBatch) []int {
	var out []int
	for _, p := range b.Points {
		out = append(out, int(p.Metrics["seq"]))
	}
	return out
}

func TestOutboxSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, o := openOutbox(t, path, OutboxOptions{})
	if b, err := o.Pending(0, 1<<20); err != nil || b != nil {
		t.Fatalf("empty outbox: %v, %v", b, err)
	}
	if st, err := o.Stats(); err != nil || st.Next != 1 || st.Points != 0 || len(st.Stream) != 0 {
		t.Fatalf("empty stats: %+v, %v", st, err)
	}
	for i := 1; i <= 10; i++ {
		if n, err := o.Append(point(i)); err != nil || n != 0 {
			t.Fatalf("append %d: dropped %d, %v", i, n, err)
		}
	}
	b, err := o.Pending(4, 1<<20)
	if err != nil || b.First != 1 || fmt.Sprint(values(b)) != "[1 2 3 4]" || b.Acked != 0 || b.Dropped != 0 {
		t.Fatalf("first batch: %+v, %v", b, err)
	}
	if n, err := o.Ack(b.Stream, b.Last()); err != nil || n != 4 {
		t.Fatalf("ack: %d, %v", n, err)
	}
	stream := b.Stream
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, o = openOutbox(t, path, OutboxOptions{})
	defer s.Close()
	st, err := o.Stats()
	if err != nil || !bytes.Equal(st.Stream, stream) || st.Next != 11 || st.Acked != 4 || st.Points != 6 || st.Bytes <= 0 {
		t.Fatalf("stats after reopen: %+v, %v", st, err)
	}
	if _, err := o.Append(point(11)); err != nil {
		t.Fatal(err)
	}
	b, err = o.Pending(0, 1<<20)
	if err != nil || b.First != 5 || fmt.Sprint(values(b)) != "[5 6 7 8 9 10 11]" || b.Acked != 4 || !bytes.Equal(b.Stream, stream) {
		t.Fatalf("batch after reopen: %+v, %v", b, err)
	}
	if err := b.Validate(); err != nil {
		t.Fatalf("outbox built an invalid batch: %v", err)
	}
	// Acks are cumulative and idempotent.
	if n, err := o.Ack(stream, 7); err != nil || n != 3 {
		t.Fatalf("ack 7: %d, %v", n, err)
	}
	if n, err := o.Ack(stream, 6); err != nil || n != 0 {
		t.Fatalf("older ack: %d, %v", n, err)
	}
	if n, err := o.Ack(stream, 7); err != nil || n != 0 {
		t.Fatalf("repeated ack: %d, %v", n, err)
	}
	if st, _ := o.Stats(); st.Points != 4 || st.Acked != 7 {
		t.Fatalf("stats after acks: %+v", st)
	}
}

func TestOutboxBoundDropsOldestAndCounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, o := openOutbox(t, path, OutboxOptions{MaxPoints: 5})
	total := 0
	for i := 1; i <= 8; i++ {
		n, err := o.Append(point(i))
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	if total != 3 {
		t.Fatalf("dropped %d, want 3", total)
	}
	s.Close()

	// The count is persisted and rides on the next batch.
	s, o = openOutbox(t, path, OutboxOptions{MaxPoints: 5})
	b, err := o.Pending(0, 1<<20)
	if err != nil || b.First != 4 || b.Dropped != 3 || fmt.Sprint(values(b)) != "[4 5 6 7 8]" {
		t.Fatalf("batch: %+v, %v", b, err)
	}
	// Several points in one Append past the bound: the oldest go first,
	// even new ones.
	n, err := o.Append(point(9), point(10), point(11), point(12), point(13), point(14))
	if err != nil || n != 6 {
		t.Fatalf("bulk append dropped %d, %v", n, err)
	}
	b, _ = o.Pending(0, 1<<20)
	if b.First != 10 || b.Dropped != 9 || fmt.Sprint(values(b)) != "[10 11 12 13 14]" {
		t.Fatalf("after bulk append: first %d dropped %d %v", b.First, b.Dropped, values(b))
	}
	s.Close()

	// The byte bound: each point is the same size; room for three.
	p1 := point(1)
	one, _ := wire.Marshal(&p1)
	s, o = openOutbox(t, filepath.Join(t.TempDir(), "bytes2.db"), OutboxOptions{MaxBytes: int64(3*len(one) + len(one)/2)})
	defer s.Close()
	for i := 1; i <= 5; i++ {
		if _, err := o.Append(point(i)); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := o.Stats()
	if st.Points != 3 || st.Dropped != 2 || st.Bytes != int64(3*len(one)) {
		t.Fatalf("byte bound: %+v (one point is %d bytes)", st, len(one))
	}
	// A batch limited by bytes still carries at least one point.
	if b, _ := o.Pending(0, 1); len(b.Points) != 1 || b.First != 3 {
		t.Fatalf("tiny byte budget: %+v", b)
	}
	if b, _ := o.Pending(0, 2*len(one)); len(b.Points) != 2 {
		t.Fatalf("two-point byte budget: %d points", len(b.Points))
	}
}

func TestOutboxRefusals(t *testing.T) {
	s, o := openOutbox(t, filepath.Join(t.TempDir(), "state.db"), OutboxOptions{MaxBytes: 1024})
	defer s.Close()
	if _, err := o.Ack(make([]byte, 16), 1); !errors.Is(err, ErrOutboxStream) {
		t.Fatalf("ack before any point: %v", err)
	}
	bad := point(1)
	bad.Metrics["seq"] = math.NaN()
	if _, err := o.Append(point(1), bad); err == nil {
		t.Fatal("invalid point stored")
	}
	big := point(2)
	big.SetInfo("blob", strings.Repeat("x", 100))
	for i := range wire.MaxPointMetrics - 1 {
		big.SetMetric(fmt.Sprintf("metric_with_a_rather_long_name_%03d", i), 1)
	}
	if _, err := o.Append(big); !errors.Is(err, ErrPointTooLarge) {
		t.Fatalf("point over the byte bound: %v", err)
	}
	if st, _ := o.Stats(); st.Points != 0 {
		t.Fatalf("refused appends stored %d points", st.Points)
	}
	if _, err := o.Append(point(3)); err != nil {
		t.Fatal(err)
	}
	b, _ := o.Pending(0, 1<<20)
	if _, err := o.Ack(bytes.Repeat([]byte{9}, 16), 1); !errors.Is(err, ErrOutboxStream) {
		t.Fatalf("ack of another stream: %v", err)
	}
	if _, err := o.Ack(b.Stream, 2); !errors.Is(err, ErrOutboxAck) {
		t.Fatalf("ack beyond the last point: %v", err)
	}
	if st, _ := o.Stats(); st.Points != 1 || st.Acked != 0 {
		t.Fatalf("refused acks changed the outbox: %+v", st)
	}
}

func TestOutboxStreamIsNewForANewStore(t *testing.T) {
	dir := t.TempDir()
	s1, o1 := openOutbox(t, filepath.Join(dir, "a.db"), OutboxOptions{})
	defer s1.Close()
	s2, o2 := openOutbox(t, filepath.Join(dir, "b.db"), OutboxOptions{})
	defer s2.Close()
	o1.Append(point(1))
	o2.Append(point(1))
	a, _ := o1.Stats()
	b, _ := o2.Stats()
	if bytes.Equal(a.Stream, b.Stream) || len(a.Stream) != wire.TelemetryStreamLen {
		t.Fatalf("streams %x and %x", a.Stream, b.Stream)
	}
}

const outboxCrashEnv = "SIGIL_OUTBOX_CRASH_WRITER"

// TestOutboxCrashWriter is the helper process of TestOutboxCrash: it
// appends and acknowledges until killed, reporting each commit.
func TestOutboxCrashWriter(t *testing.T) {
	path := os.Getenv(outboxCrashEnv)
	if path == "" {
		t.Skip("helper process for TestOutboxCrash")
	}
	s, err := Open(path, Options{Timeout: 5 * time.Second})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	o := s.Outbox(OutboxOptions{MaxPoints: 50})
	st, err := o.Stats()
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	// The metric "seq" of each point is its sequence number.
	for i := int(st.Next); ; i++ {
		if _, err := o.Append(point(i)); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Println("appended", i)
		if i%7 == 0 {
			b, err := o.Pending(3, 1<<20)
			if err == nil && b != nil {
				_, err = o.Ack(b.Stream, b.Last())
			}
			if err != nil {
				fmt.Println("error", err)
				os.Exit(2)
			}
		}
	}
}

// TestOutboxCrash kills a process appending to the outbox and checks that
// every reported point is held, acknowledged or counted as dropped, and
// that the bookkeeping matches the points held.
func TestOutboxCrash(t *testing.T) {
	if os.Getenv(outboxCrashEnv) != "" {
		t.Skip("in helper")
	}
	path := filepath.Join(t.TempDir(), "state.db")
	for round := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestOutboxCrashWriter$", "-test.count=1")
		cmd.Env = append(os.Environ(), outboxCrashEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		last, lines := 0, 0
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "error") {
				t.Fatalf("writer: %s", line)
			}
			if n, ok := strings.CutPrefix(line, "appended "); ok {
				last, _ = strconv.Atoi(n)
				lines++
			}
			if lines >= 80 {
				break
			}
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
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
