package loglimit

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/clocktest"
)

func newLimiter(level slog.Level, cfg Config) (*Limiter, *bytes.Buffer, *clocktest.Clock) {
	var buf bytes.Buffer
	c := clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	cfg.Now = c.Now
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level}))
	return New(log, cfg), &buf, c
}

func lines(buf *bytes.Buffer, sub string) int {
	n := 0
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// TestBurstThenSummary: a key writes Burst lines per interval; the rest
// are counted and reported in one summary line after the interval.
func TestBurstThenSummary(t *testing.T) {
	l, buf, c := newLimiter(slog.LevelInfo, Config{Interval: 10 * time.Second, Burst: 2})
	ctx := context.Background()
	for i := range 1000 {
		l.Log(ctx, slog.LevelWarn, "src-a", "malformed message", "n", i)
	}
	l.Log(ctx, slog.LevelWarn, "src-b", "malformed message", "n", -1)
	if n := lines(buf, `msg="malformed message"`); n != 3 {
		t.Fatalf("%d lines written, want 2 of src-a and 1 of src-b:\n%s", n, buf)
	}
	if got := l.Suppressed(); got != 998 {
		t.Fatalf("suppressed = %d, want 998", got)
	}
	l.Flush() // the interval is not over: no summary yet
	if lines(buf, "suppressed") != 0 {
		t.Fatalf("summary before the interval ended:\n%s", buf)
	}
	c.Advance(10 * time.Second)
	l.Flush()
	if n := lines(buf, `msg="log lines suppressed" line="malformed message" key=src-a count=998`); n != 1 {
		t.Fatalf("want one summary for src-a:\n%s", buf)
	}
	if lines(buf, "key=src-b") != 0 {
		t.Fatalf("summary for a key that dropped nothing:\n%s", buf)
	}
	// A new interval has a fresh burst.
	buf.Reset()
	l.Log(ctx, slog.LevelWarn, "src-a", "malformed message")
	if lines(buf, `msg="malformed message"`) != 1 {
		t.Fatalf("new interval refused:\n%s", buf)
	}
}

// TestSummaryWhenTheKeyComesBack: without Flush, the next line of a key
// after its interval writes the summary first.
func TestSummaryWhenTheKeyComesBack(t *testing.T) {
	l, buf, c := newLimiter(slog.LevelInfo, Config{Interval: time.Minute, Burst: 1})
	ctx := context.Background()
	for range 5 {
		l.Log(ctx, slog.LevelInfo, "k", "refused")
	}
	c.Advance(time.Minute)
	l.Log(ctx, slog.LevelInfo, "k", "refused")
	if lines(buf, "count=4") != 1 || lines(buf, `msg=refused`) != 2 {
		t.Fatalf("log:\n%s", buf)
	}
}

// TestKeysBounded: beyond MaxKeys, new keys share one overflow bucket, so
// that a flood from many sources still writes a bounded number of lines.
func TestKeysBounded(t *testing.T) {
	l, buf, c := newLimiter(slog.LevelInfo, Config{Interval: time.Minute, Burst: 1, MaxKeys: 10})
	ctx := context.Background()
	for i := range 10000 {
		l.Log(ctx, slog.LevelWarn, fmt.Sprintf("10.0.%d.%d", i/256, i%256), "refused")
	}
	if n := lines(buf, "msg=refused"); n != 11 {
		t.Fatalf("%d lines for 10000 sources, want 10 keys + 1 overflow", n)
	}
	c.Advance(time.Minute)
	l.Flush()
	if lines(buf, `key="(other keys)" count=9989`) != 1 {
		t.Fatalf("log:\n%s", buf)
	}
	if len(l.keys) != 0 {
		t.Fatalf("%d keys kept after their interval", len(l.keys))
	}
}

// TestDisabledLevelNotCounted: a line the logger would not write anyway is
// not counted as suppressed.
func TestDisabledLevelNotCounted(t *testing.T) {
	l, buf, _ := newLimiter(slog.LevelInfo, Config{Burst: 1})
	for range 10 {
		l.Log(context.Background(), slog.LevelDebug, "k", "noise")
	}
	if buf.Len() != 0 || l.Suppressed() != 0 {
		t.Fatalf("suppressed %d; log:\n%s", l.Suppressed(), buf)
	}
}

// TestRunFlushesOnStop: Run writes what is pending when its context ends.
func TestRunFlushesOnStop(t *testing.T) {
	l, buf, _ := newLimiter(slog.LevelInfo, Config{Interval: time.Hour, Burst: 1})
	for range 3 {
		l.Log(context.Background(), slog.LevelWarn, "k", "refused")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if lines(buf, "count=2") != 1 {
		t.Fatalf("log:\n%s", buf)
	}
}
