package audit_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/internal/clocktest"
)

// TestSamplerBoundsAnonymousEntries: ten thousand anonymous entries in one
// interval leave Burst entries and one summary in a real log, which still
// verifies; the summary counts what was left out, by action.
func TestSamplerBoundsAnonymousEntries(t *testing.T) {
	clk := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(audit.Config{Path: filepath.Join(t.TempDir(), audit.File), NoSync: true, Now: clk.Now, Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := audit.NewSampler(l, audit.SamplerConfig{Interval: time.Minute, Burst: 20, Now: clk.Now})
	ctx := context.Background()
	anon := audit.System("api-anonymous")
	const n = 10000
	for i := range n {
		action := "api.devices.revoke.post"
		if i%2 == 1 {
			action = "api.enrollment-tokens.post"
		}
		if err := s.Record(ctx, audit.New(anon, action, fmt.Sprintf("dev-%d", i)).Deny("Unauthorized")); err != nil {
			t.Fatal(err)
		}
	}
	if seq, _ := l.Head(); seq != 20 {
		t.Fatalf("%d entries recorded for %d anonymous requests in one interval, want the burst (20)", seq, n)
	}
	if got := s.Suppressed(); got != n-20 {
		t.Fatalf("Suppressed = %d, want %d", got, n-20)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if seq, _ := l.Head(); seq != 20 {
		t.Fatal("summary recorded before its interval ended")
	}
	clk.Advance(time.Minute)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	seq, _ := l.Head()
	if seq != 21 {
		t.Fatalf("head %d after the interval, want 21 (one summary)", seq)
	}
	sum, err := l.Get(ctx, 21)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Action != audit.SampledAction || sum.Actor != anon || sum.Details["left_out"] != fmt.Sprint(n-20) ||
		sum.Details["api.devices.revoke.post"] != fmt.Sprint(n/2-10) || sum.Details["api.enrollment-tokens.post"] != fmt.Sprint(n/2-10) {
		t.Fatalf("summary %+v", sum)
	}
	if _, err := l.VerifyStore(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// A new interval records a fresh burst; an interval that left nothing
	// out records no summary.
	for range 3 {
		if err := s.Record(ctx, audit.New(anon, "api.devices.revoke.post", "x")); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(time.Minute)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if seq, _ := l.Head(); seq != 24 {
		t.Fatalf("head %d, want 24", seq)
	}
}

// TestSamplerSummaryBounded: many distinct actions and actors still make
// one valid summary entry (per-action counts capped, mixed actors named
// as the audit component).
func TestSamplerSummaryBounded(t *testing.T) {
	clk := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	var got []audit.Entry
	var mu sync.Mutex
	rec := audit.RecorderFunc(func(_ context.Context, e audit.Entry) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, e)
		return nil
	})
	s := audit.NewSampler(rec, audit.SamplerConfig{Burst: 1, Now: clk.Now})
	ctx := context.Background()
	for i := range 500 {
		e := audit.New(audit.System(fmt.Sprintf("c%d", i%3)), fmt.Sprintf("api.route%d.post", i), "")
		if err := s.Record(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	// Run records the interval in progress when it stops.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Run(cctx); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d entries, want the burst and one summary", len(got))
	}
	sum := got[1]
	if sum.Actor != audit.System("audit") || sum.Details["left_out"] != "499" || sum.Details["other"] == "" || len(sum.Details) > audit.MaxDetails {
		t.Fatalf("summary %+v", sum)
	}
	// It is an entry the log accepts.
	l, err := audit.Open(audit.Config{Path: filepath.Join(t.TempDir(), audit.File), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Record(ctx, sum); err != nil {
		t.Fatal(err)
	}
}
