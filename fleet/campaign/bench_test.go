package campaign

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/clocktest"
)

// BenchmarkCampaign10k runs a whole campaign over 10,000 devices that
// report every step at once (downloading … committed, six reports each):
// the engine's own cost — creation, waves of 1, 2, 4 … devices,
// announcements, 60,000 reports with real fsyncs. One op is one campaign
// from Create to completed.
func BenchmarkCampaign10k(b *testing.B) {
	b.Run("device-goroutines", func(b *testing.B) { benchCampaign(b, 0) })
	b.Run("32-workers", func(b *testing.B) { benchCampaign(b, 32) })
	b.Run("submit", func(b *testing.B) { benchCampaign(b, -1) })
}

// benchCampaign runs the benchmark with the reports sent by a pool of
// reporters goroutines, by one goroutine per device (0), as the broker's
// inline handlers run on each device's connection, or queued with Submit
// by the announcing goroutine itself (-1), with Run writing them.
func benchCampaign(b *testing.B, reporters int) {
	const n = 10_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
	}
	var reports atomic.Int64
	steps := []Step{StepDownloading, StepVerifying, StepInstalling, StepSwitching, StepHealth, StepCommitted}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		store, err := Open(filepath.Join(b.TempDir(), fmt.Sprintf("c%d.db", i)))
		if err != nil {
			b.Fatal(err)
		}
		clk := clocktest.New(start)
		work := make(chan Announcement, n)
		var inflight, workers sync.WaitGroup
		var m *Manager
		device := func(a Announcement) {
			for _, s := range steps {
				if _, err := m.Report(DeviceReport{DeviceID: a.Device, Campaign: a.Campaign, Step: s}); err != nil {
					b.Error(err)
				}
				reports.Add(1)
			}
			inflight.Done()
		}
		for range reporters {
			workers.Go(func() {
				for a := range work {
					device(a)
				}
			})
		}
		m, err = New(Config{
			Store:   store,
			Targets: TargetsFunc(func(context.Context, string, Selector) ([]string, error) { return ids, nil }),
			Announcer: AnnouncerFunc(func(_ context.Context, a Announcement) error {
				inflight.Add(1)
				switch {
				case reporters == 0:
					go device(a)
				case reporters < 0:
					for i, s := range steps {
						m.Submit(DeviceReport{DeviceID: a.Device, Campaign: a.Campaign, Step: s}, func(ok bool, err error) {
							if err != nil || !ok {
								b.Errorf("report %s %s: %v %v", a.Device, s, ok, err)
							}
							reports.Add(1)
							if i == len(steps)-1 {
								inflight.Done()
							}
						})
					}
				default:
					work <- a
				}
				return nil
			}),
			Now:   clk.Now,
			Batch: 2000,
			Tick:  time.Hour,
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		ran := make(chan error)
		go func() { ran <- m.Run(ctx) }() // writes what Submit queues; its ticks are too rare to step
		b.StartTimer()

		d := def()
		d.Waves = Waves{Canary: 1, Growth: 2}
		c, err := m.Create(context.Background(), d, "bench", "")
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Start(c.ID, time.Time{}, "bench", ""); err != nil {
			b.Fatal(err)
		}
		for steps := 0; ; steps++ {
			if err := m.step(context.Background()); err != nil {
				b.Fatal(err)
			}
			inflight.Wait()
			got, err := m.Get(c.ID)
			if err != nil {
				b.Fatal(err)
			}
			if got.State == StateCompleted && got.Counts.Committed == n {
				break
			}
			if steps > 1000 {
				b.Fatalf("campaign stuck: %s %+v", got.State, got.Counts)
			}
			clk.Advance(time.Second)
		}

		b.StopTimer()
		stop()
		if err := <-ran; err != nil {
			b.Fatal(err)
		}
		close(work)
		workers.Wait()
		store.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "devices/s")
	b.ReportMetric(float64(reports.Load())/b.Elapsed().Seconds(), "reports/s")
}
