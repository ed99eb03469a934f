package telemetry

import (
	"math"
	"time"
)

// SeriesConfig bounds the recent series kept per device for the console's
// charts. Each charted metric of a device keeps its raw points for a short
// window and coarser buckets (min, max, mean, count) for longer; every
// point goes into both. Memory per device is about
// len(Charted) × (RawPoints × 16 + Buckets × 40) bytes: with the defaults,
// 8 × (120 × 16 + 72 × 40) ≈ 38 KiB.
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

type bucket struct {
	start         int64 // Unix milliseconds; 0 for an empty bucket
	min, max, sum float64
	count         int
}

// series is one charted metric of one device. Its owner's lock guards it.
type series struct {
	raw     []rawSample // ascending time
	buckets []bucket    // ring indexed by (start / width) mod len
}

func newSeries(cfg *SeriesConfig) *series {
	return &series{buckets: make([]bucket, cfg.Buckets)}
}

// add records v at t (Unix ms). Points older than the newest raw point
// only go into their bucket; points older than the oldest bucket kept are
// not charted.
func (s *series) add(cfg *SeriesConfig, t int64, v float64) {
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
	i := int(mod(start/width, int64(len(s.buckets))))
	b := &s.buckets[i]
	switch {
	case b.count > 0 && start < b.start:
		return // older than the window the ring holds
	case b.count == 0 || start > b.start:
		*b = bucket{start: start, min: v, max: v}
	}
	b.min = math.Min(b.min, v)
	b.max = math.Max(b.max, v)
	b.sum += v
	b.count++
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

// mod is the non-negative remainder.
func mod(a, m int64) int64 {
	r := a % m
	if r < 0 {
		r += m
	}
	return r
}
