package telemetry

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
	"unsafe"
)

// ringSeries is the series as it was kept before it grew with what it
// holds (every bucket of the ring allocated with its first point, 40
// bytes each): the model the series must chart exactly like.
type ringSeries struct {
	raw     []rawSample
	buckets []ringBucket
}

type ringBucket struct {
	start         int64
	min, max, sum float64
	count         int
}

func (s *ringSeries) add(cfg *SeriesConfig, t int64, v float64) {
	if s.buckets == nil {
		s.buckets = make([]ringBucket, cfg.Buckets)
	}
	if n := len(s.raw); n == 0 || t > s.raw[n-1].t {
		s.raw = append(s.raw, rawSample{t, v})
		cut := 0
		for cut < len(s.raw) && (len(s.raw)-cut > cfg.RawPoints || s.raw[cut].t < t-cfg.RawWindow.Milliseconds()) {
			cut++
		}
		if cut > 0 {
			s.raw = append(s.raw[:0], s.raw[cut:]...)
		}
	}
	width := cfg.Bucket.Milliseconds()
	start := t - mod(t, width)
	b := &s.buckets[int(mod(start/width, int64(len(s.buckets))))]
	switch {
	case b.count > 0 && start < b.start:
		return
	case b.count == 0 || start > b.start:
		*b = ringBucket{start: start, min: v, max: v}
	}
	b.min = math.Min(b.min, v)
	b.max = math.Max(b.max, v)
	b.sum += v
	b.count++
}

func (s *ringSeries) samples(cfg *SeriesConfig, since int64) []Sample {
	width := cfg.Bucket.Milliseconds()
	rawFrom := int64(math.MaxInt64)
	if len(s.raw) > 0 {
		rawFrom = s.raw[0].t
	}
	var out []Sample
	newest := int64(math.MinInt64)
	for _, b := range s.buckets {
		newest = max(newest, b.start)
	}
	oldest := newest - int64(len(s.buckets)-1)*width
	for start := max(oldest, since-mod(since, width)); start <= newest && start+width <= rawFrom; start += width {
		b := s.buckets[int(mod(start/width, int64(len(s.buckets))))]
		if b.count == 0 || b.start != start || start < since {
			continue
		}
		out = append(out, Sample{Time: time.UnixMilli(b.start).UTC(), Value: b.sum / float64(b.count), Min: b.min, Max: b.max, Count: b.count, Downsample: true})
	}
	for _, r := range s.raw {
		if r.t >= since {
			out = append(out, Sample{Time: time.UnixMilli(r.t).UTC(), Value: r.v, Min: r.v, Max: r.v, Count: 1})
		}
	}
	return out
}

// TestSeriesChartsAsTheRing: whatever points arrive — in order, late,
// far too old, after a gap longer than the window, in bursts, with
// counters too large for anything but float64 — the series charts exactly
// what the ring it replaced charted, from any point in time.
func TestSeriesChartsAsTheRing(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC).UnixMilli()
	for seed := range uint64(40) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 7))
			cfg := SeriesConfig{RawWindow: time.Duration(1+r.IntN(20)) * time.Minute, RawPoints: 1 + r.IntN(40),
				Bucket: time.Duration(1+r.IntN(10)) * time.Minute, Buckets: 1 + r.IntN(80)}
			cfg.defaults()
			got, want := &series{}, &ringSeries{}
			now := t0
			for i := range 3000 {
				at := now
				switch x := r.IntN(100); {
				case x < 40: // in order
					now += int64(r.IntN(90_000))
					at = now
				case x < 70: // in order, on a 30 s grid (on bucket edges too)
					now += int64(r.IntN(4)) * 30_000
					now -= mod(now, 30_000)
					at = now
				case x < 85: // late
					at = now - int64(r.IntN(int(2*cfg.Bucket.Milliseconds())*cfg.Buckets+1))
				case x < 88: // a long silence
					now += int64(r.IntN(int(3 * cfg.Bucket.Milliseconds() * int64(cfg.Buckets))))
					at = now
				case x < 90: // far in the past
					at = t0 - int64(r.IntN(1_000_000_000))
				default: // same time again
				}
				v := r.NormFloat64() * 100
				if i%3 == 0 {
					v = float64(1<<53) - float64(r.IntN(1000)) // a byte counter's size
				}
				got.add(&cfg, at, v)
				want.add(&cfg, at, v)
				if i%37 == 0 || i > 2990 {
					for _, since := range []int64{0, t0, now - cfg.RawWindow.Milliseconds(), now - int64(r.IntN(int(cfg.Bucket.Milliseconds())*cfg.Buckets+1)), now + 1} {
						if g, w := got.samples(&cfg, since), want.samples(&cfg, since); !reflect.DeepEqual(g, w) {
							t.Fatalf("point %d (at %d), since %d:\n got %+v\nwant %+v", i, at, since, g, w)
						}
					}
				}
			}
		})
	}
}

// TestSeriesGrowsWithWhatItHolds: a series holds memory for the points it
// has, not for the window it could hold: one point takes one bucket's
// room; six hours of a point a minute fill the 72 buckets of 32 bytes and
// a raw window of 16 points, no more. Each series allocated its whole
// ring (72 buckets of 40 bytes) with its first point: 23 KB per device
// after a minute, a third of the fleet's heap per device in the 19,900-
// device runs.
func TestSeriesGrowsWithWhatItHolds(t *testing.T) {
	var cfg SeriesConfig
	cfg.defaults()
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	s := &series{}
	s.add(&cfg, t0.UnixMilli(), 0.5)
	if c := cap(s.buckets); c > 2 {
		t.Fatalf("one point: room for %d buckets", c)
	}
	for m := 1; m < 6*60; m++ {
		s.add(&cfg, t0.Add(time.Duration(m)*time.Minute).UnixMilli(), float64(m))
	}
	bucketBytes := cap(s.buckets) * int(unsafe.Sizeof(s.buckets[0]))
	rawBytes := cap(s.raw) * int(unsafe.Sizeof(s.raw[0]))
	if bucketBytes > cfg.Buckets*32 || len(s.buckets) != cfg.Buckets || rawBytes > 16*16 || len(s.raw) != 16 {
		t.Fatalf("six hours: %d buckets in %d bytes, %d raw points in %d bytes", len(s.buckets), bucketBytes, len(s.raw), rawBytes)
	}
}
