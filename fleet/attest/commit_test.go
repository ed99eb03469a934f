package attest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// countingKV counts the history's read-write transactions: each Write or
// Update of its own is one commit (with fsync) of the bbolt file.
type countingKV struct {
	kv.DB
	mu  sync.Mutex
	txs int
}

func (c *countingKV) Update(ctx context.Context, fn func(kv.Tx) error) error {
	c.mu.Lock()
	c.txs++
	c.mu.Unlock()
	return c.DB.Update(ctx, fn)
}

func (c *countingKV) Write(ctx context.Context, fn func(kv.Tx) error) error {
	c.mu.Lock()
	c.txs++
	c.mu.Unlock()
	return c.DB.Write(ctx, fn)
}

func (c *countingKV) commits() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.txs
}

// TestVerdictsShareCommits: a verdict that follows no other within
// CommitDelay is written at once; verdicts judged within CommitDelay of
// each other are recorded together — one history transaction (one fsync)
// for CommitBatch of them — each in the history and the inventory as a
// verdict written alone would be. Each was one commit of its own (in each
// file), whatever the rate: in the scale runs (sigil-sim bench fleet,
// 19,900 devices) the fleet spent a quarter of its CPU in bbolt commits.
func TestVerdictsShareCommits(t *testing.T) {
	const batch, devices = 8, 32
	f := newSoftFleet(t, devices, func(c *Config) { c.CommitDelay, c.CommitBatch, c.Workers = time.Hour, batch, 64 })
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(ctx) }()
	defer func() { stop(); <-done }()
	h := f.svc.cfg.History
	commits := &countingKV{DB: h.db}
	h.db = commits
	// The batch's devices, each judged by a worker of its own: a worker
	// waits for its verdict's commit before it takes the next evidence.
	var picked []int
	for i := 1; i < devices && len(picked) < batch; i++ {
		if !slices.ContainsFunc(picked, func(p int) bool { return f.svc.shard(f.ids[p]) == f.svc.shard(f.ids[i]) }) {
			picked = append(picked, i)
		}
	}
	if len(picked) < batch {
		t.Fatalf("only %d of %d devices on workers of their own", len(picked), devices)
	}

	order := append([]int{0}, picked...)
	raws := f.prepare(t, order)
	f.attest(t, 0, raws[0])
	<-f.verdict // alone: no hour-long wait
	if n := commits.commits(); n != 1 {
		t.Fatalf("a lone verdict took %d history commits, want 1", n)
	}
	for k, i := range picked {
		f.attest(t, i, raws[k+1])
	}
	for range batch {
		<-f.verdict
	}
	if n := commits.commits() - 1; n != 1 {
		t.Fatalf("%d verdicts within the delay took %d history commits, want 1", batch, n)
	}
	for _, i := range order {
		recs, err := h.List(t.Context(), f.ids[i], 10)
		if err != nil || len(recs) != 1 || recs[0].Result != "pass" || recs[0].Seq != 1 {
			t.Fatalf("device %d: history %+v, %v", i, recs, err)
		}
		d, err := f.inv.Device(t.Context(), f.ids[i])
		if err != nil || d.Attestation != "pass" || !d.LastAttested.Equal(recs[0].Time) {
			t.Fatalf("device %d: inventory %+v, %v", i, d, err)
		}
	}
}
