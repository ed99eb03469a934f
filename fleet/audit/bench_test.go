package audit

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend measures durable appends per second (fsync on) with 64
// concurrent callers sharing transactions (group commit), then with one
// caller at a time (one transaction and fsync per append), on the same
// file, and reports both rates and their ratio.
func BenchmarkAppend(b *testing.B) {
	l, err := Open(Config{Path: filepath.Join(b.TempDir(), File)})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	e := New(User("bench"), "device.revoke", "0123456789abcdef0123456789abcdef").Request("req-1").With("serial", "0a1b2c")

	const writers = 64
	var next atomic.Int64
	var failed atomic.Value
	commits0 := l.commits
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := l.Record(ctx, e); err != nil {
					failed.Store(err)
				}
			}
		})
	}
	wg.Wait()
	group := time.Since(start)
	groupCommits := l.commits - commits0

	start = time.Now()
	for range b.N {
		if err := l.Record(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
	single := time.Since(start)
	b.StopTimer()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/group.Seconds(), "group-appends/s")
	b.ReportMetric(float64(b.N)/single.Seconds(), "single-appends/s")
	b.ReportMetric(single.Seconds()/group.Seconds(), "speedup")
	b.ReportMetric(float64(b.N)/float64(groupCommits), "entries/txn")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkVerify measures offline verification of an export of 10,000
// entries with a checkpoint every 1,000.
func BenchmarkVerify(b *testing.B) {
	key := newKey(b)
	l := openLog(b, filepath.Join(b.TempDir(), File), key, nil)
	ctx := context.Background()
	for i := range 10_000 {
		if err := l.Record(ctx, sample(i)); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			if _, err := l.Checkpoint(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	var exp bytes.Buffer
	if err := l.Export(ctx, &exp, 0, 0); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(exp.Len()))
	for b.Loop() {
		rep, err := Verify(bytes.NewReader(exp.Bytes()), &key.PublicKey)
		if err != nil || rep.Entries != 10_000 {
			b.Fatal(rep, err)
		}
	}
	b.ReportMetric(float64(10_000*b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkList measures one page of 50 from a log of 20,000 entries,
// through the actor index and through a scan for an action.
func BenchmarkList(b *testing.B) {
	l := openLog(b, filepath.Join(b.TempDir(), File), nil, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 2500 {
				e := New(User(fmt.Sprintf("user-%d", w)), []string{"device.revoke", "token.create"}[i%2], fmt.Sprintf("dev-%d", i%500))
				if err := l.Record(ctx, e); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, f := range []struct {
		name string
		f    Filter
	}{{"actor", Filter{Actor: User("user-3")}}, {"action", Filter{Action: "token"}}, {"target", Filter{Target: "dev-7"}}} {
		b.Run(f.name, func(b *testing.B) {
			for b.Loop() {
				p, err := l.List(ctx, f.f)
				if err != nil || len(p.Entries) == 0 {
					b.Fatal(p, err)
				}
			}
		})
	}
}
