package telemetry

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// SeriesConfig bounds the recent series kept per device for the console's
// charts. Each charted metric of a device keeps its raw points for a short
// window and coarser buckets (min, max, mean, count) for longer; every
// point goes into both. Memory per device grows with what its series hold,
// up to about len(Charted) × (raw points × 16 + Buckets × 32) bytes: with
// the defaults and a point a minute (15 raw points), 8 × (15 × 16 + 72 ×
// 32) ≈ 20 KiB once it has sent for six hours (BenchmarkDeviceMemory).
type SeriesConfig struct {
	// Charted names the metrics kept as series; nil means DefaultCharted().
	// Other metrics keep only their latest value.
	Charted []string
	// RawWindow is how long raw points are kept; 0 means 15 minutes.
	RawWindow time.Duration
	// RawPoints caps the raw points of one series; 0 means 120.
	RawPoints int
	// Bucket is the width of a coarse bucket; 0 means 5 minutes.
	Bucket time.Duration
	// Buckets is how many coarse buckets are kept; 0 means 72 (6 hours of
	// 5-minute buckets).
	Buckets int
}

// DefaultCharted returns the metrics charted when SeriesConfig.Charted is
// nil: those device/telemetry collects on every device.
func DefaultCharted() []string {
	return []string{"cpu.busy", "mem.used_ratio", "disk.root.used_ratio", "net.rx_bytes", "net.tx_bytes",
		"proc.count", "listen.tcp.count", "uptime.seconds"}
}

func (c *SeriesConfig) defaults() {
	if c.Charted == nil {
		c.Charted = DefaultCharted()
	}
	if c.RawWindow <= 0 {
		c.RawWindow = 15 * time.Minute
	}
	if c.RawPoints <= 0 {
		c.RawPoints = 120
	}
	if c.Bucket <= 0 {
		c.Bucket = 5 * time.Minute
	}
	if c.Buckets <= 0 {
		c.Buckets = 72
	}
}

// Sample is one point of a series as the console charts it. A raw point
// has Count 1 and Min = Max = Value; a coarse bucket starts at Time and
// Value is the mean of its Count points.
type Sample struct {
	Time       time.Time `json:"time"`
	Value      float64   `json:"value"`
	Min        float64   `json:"min"`
	Max        float64   `json:"max"`
	Count      int       `json:"count"`
	Downsample bool      `json:"downsampled,omitempty"`
}

type rawSample struct {
	t int64 // fleet clock, Unix milliseconds
	v float64
}

// bucket is one coarse bucket of a series: the points whose time falls in
// [start, start+width), where start is its number times the width.
type bucket struct {
	min, max, sum float64
	count         uint32
	n             int32 // bucket number less the series' base
}

// series is one charted metric of one device. Its owner's lock guards it.
// Memory grows with what it holds: the buckets of the newest
// SeriesConfig.Buckets widths that have points (not a ring allocated
// whole for its first point), 32 bytes each, and the raw window.
type series struct {
	raw     []rawSample // ascending time
	buckets []bucket    // ascending number, none empty, all within the newest Buckets widths
	base    int64       // the number of buckets[0] (n counts from it)
}

// empty reports whether the series never had a point (its first makes a
// bucket, which leaves only for newer ones).
func (s *series) empty() bool { return len(s.buckets) == 0 }

// add records v at t (Unix ms). Points older than the newest raw point
// only go into their bucket; points older than the oldest bucket kept are
// not charted.
func (s *series) add(cfg *SeriesConfig, t int64, v float64) {
	if n := len(s.raw); n == 0 || t > s.raw[n-1].t {
		// Make room first: the points the new one pushes out of the
		// window or past RawPoints leave before it comes in.
		cut := 0
		for cut < len(s.raw) && (len(s.raw)+1-cut > cfg.RawPoints || s.raw[cut].t < t-cfg.RawWindow.Milliseconds()) {
			cut++
		}
		if cut > 0 {
			s.raw = append(s.raw[:0], s.raw[cut:]...)
		}
		s.raw = grow(s.raw, cfg.RawPoints)
		s.raw = append(s.raw, rawSample{t, v})
	}
	width := cfg.Bucket.Milliseconds()
	num := (t - mod(t, width)) / width
	if len(s.buckets) > 0 {
		newest := s.number(len(s.buckets) - 1)
		if num <= newest-int64(cfg.Buckets) {
			return // older than the window kept
		}
		cut := 0
		for cut < len(s.buckets) && s.number(cut) <= num-int64(cfg.Buckets) {
			cut++
		}
		if cut > 0 { // they leave the window
			s.buckets = append(s.buckets[:0], s.buckets[cut:]...)
			s.rebase()
		}
	}
	i, found := slices.BinarySearchFunc(s.buckets, num, func(b bucket, num int64) int { return cmp.Compare(s.base+int64(b.n), num) })
	if found {
		b := &s.buckets[i]
		b.min = math.Min(b.min, v)
		b.max = math.Max(b.max, v)
		b.sum += v
		b.count++
		return
	}
	if len(s.buckets) == 0 {
		s.base = num
	}
	s.buckets = grow(s.buckets, cfg.Buckets)
	s.buckets = slices.Insert(s.buckets, i, bucket{min: v, max: v, sum: v, count: 1, n: int32(num - s.base)})
	if i == 0 {
		s.rebase()
	}
}

// number is the bucket number of buckets[i].
func (s *series) number(i int) int64 { return s.base + int64(s.buckets[i].n) }

// rebase makes the first bucket's number the base, so that every n stays
// within [0, Buckets).
func (s *series) rebase() {
	if len(s.buckets) == 0 {
		return
	}
	d := s.buckets[0].n
	if d == 0 {
		return
	}
	s.base += int64(d)
	for i := range s.buckets {
		s.buckets[i].n -= d
	}
}

// grow makes room for one more element in x, doubling its capacity up to
// most (which the caller never exceeds): a series holds no more memory
// than its window needs.
func grow[T any](x []T, most int) []T {
	if len(x) < cap(x) {
		return x
	}
	c := min(max(2*cap(x), 2), max(most, len(x)+1))
	return append(make([]T, 0, c), x...)
}

// samples returns the coarse buckets that end before the first raw point,
// then the raw points, all at or after since (Unix ms).
func (s *series) samples(cfg *SeriesConfig, since int64) []Sample {
	width := cfg.Bucket.Milliseconds()
	rawFrom := int64(math.MaxInt64)
	if len(s.raw) > 0 {
		rawFrom = s.raw[0].t
	}
	var out []Sample
	for i, b := range s.buckets {
		start := s.number(i) * width
		if start+width > rawFrom {
			break
		}
		if start < since {
			continue
		}
		out = append(out, Sample{Time: time.UnixMilli(start).UTC(), Value: b.sum / float64(b.count), Min: b.min, Max: b.max, Count: int(b.count), Downsample: true})
	}
	for _, r := range s.raw {
		if r.t >= since {
			out = append(out, Sample{Time: time.UnixMilli(r.t).UTC(), Value: r.v, Min: r.v, Max: r.v, Count: 1})
		}
	}
	return out
}

// mod is the non-negative remainder.
func mod(a, m int64) int64 {
	r := a % m
	if r < 0 {
		r += m
	}
	return r
}
