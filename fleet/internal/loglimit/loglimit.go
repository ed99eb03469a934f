// Package loglimit keeps log lines that outsiders can cause from flooding
// the fleet's log. Each key (a kind of event, usually with its source
// address) may write Burst lines per Interval; further lines of that key in
// the same interval are counted instead of written, and one summary line
// per key reports the count once the interval is over.
//
// Use it for what unauthenticated clients trigger at will: malformed
// messages, refused connections and publishes of anonymous MQTT clients.
// Lines about authenticated devices and operators go straight to the log.
package loglimit

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Config tunes a Limiter. Zero fields take their defaults.
type Config struct {
	// Interval is the window each key's Burst is counted over. Default 10s.
	Interval time.Duration
	// Burst is the lines a key may write per Interval. Default 5.
	Burst int
	// MaxKeys bounds the keys tracked at once; lines of further keys share
	// one overflow key (""), so that many sources cannot grow the table.
	// Default 1024.
	MaxKeys int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Limiter passes at most Config.Burst lines per key and interval to its
// logger and counts the rest. Its methods are safe for concurrent use.
type Limiter struct {
	log        *slog.Logger
	cfg        Config
	suppressed atomic.Uint64

	mu   sync.Mutex
	keys map[string]*bucket
}

// bucket is one key's current interval.
type bucket struct {
	start   time.Time
	logged  int
	dropped int
	level   slog.Level // highest level dropped
	msg     string     // message of the first line dropped
}

// New returns a Limiter writing to log (nil discards).
func New(log *slog.Logger, cfg Config) *Limiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 5
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 1024
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Limiter{log: log, cfg: cfg, keys: make(map[string]*bucket)}
}

// Allow reports whether a line of key at level, with message msg, may be
// written now; if not, it is counted for the key's summary.
func (l *Limiter) Allow(key string, level slog.Level, msg string) bool {
	now := l.cfg.Now()
	l.mu.Lock()
	b, ok := l.keys[key]
	if !ok && len(l.keys) >= l.cfg.MaxKeys {
		key = ""
		b, ok = l.keys[key]
	}
	var ended *summary
	if ok && now.Sub(b.start) >= l.cfg.Interval {
		ended = b.summary(key, l.cfg.Interval)
		ok = false
	}
	if !ok {
		b = &bucket{start: now}
		l.keys[key] = b
	}
	allow := b.logged < l.cfg.Burst
	if allow {
		b.logged++
	} else {
		if b.dropped == 0 || level > b.level {
			b.level = level
		}
		if b.dropped == 0 {
			b.msg = msg
		}
		b.dropped++
	}
	l.mu.Unlock()
	if !allow {
		l.suppressed.Add(1)
	}
	ended.write(l.log)
	return allow
}

// Log writes a line through log unless key has used its burst; args are
// slog's key-value pairs.
func (l *Limiter) Log(ctx context.Context, level slog.Level, key, msg string, args ...any) {
	if !l.log.Enabled(ctx, level) {
		return // not written anyway: nothing to count
	}
	if l.Allow(key, level, msg) {
		l.log.Log(ctx, level, msg, args...)
	}
}

// Suppressed is the number of lines counted instead of written so far.
func (l *Limiter) Suppressed() uint64 { return l.suppressed.Load() }

// Flush writes the summaries of intervals that are over and forgets their
// keys.
func (l *Limiter) Flush() {
	now := l.cfg.Now()
	var out []*summary
	l.mu.Lock()
	for k, b := range l.keys {
		if now.Sub(b.start) >= l.cfg.Interval {
			out = append(out, b.summary(k, l.cfg.Interval))
			delete(l.keys, k)
		}
	}
	l.mu.Unlock()
	for _, s := range out {
		s.write(l.log)
	}
}

// flushAll writes every pending summary, finished interval or not.
func (l *Limiter) flushAll() {
	var out []*summary
	l.mu.Lock()
	for k, b := range l.keys {
		out = append(out, b.summary(k, l.cfg.Now().Sub(b.start)))
		delete(l.keys, k)
	}
	l.mu.Unlock()
	for _, s := range out {
		s.write(l.log)
	}
}

// Run flushes every Interval until ctx ends, then writes what is pending.
func (l *Limiter) Run(ctx context.Context) error {
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.flushAll()
			return nil
		case <-t.C:
			l.Flush()
		}
	}
}

// summary is a line to write about a key's dropped lines; nil when none.
type summary struct {
	key, msg string
	level    slog.Level
	count    int
	over     time.Duration
}

func (b *bucket) summary(key string, over time.Duration) *summary {
	if b.dropped == 0 {
		return nil
	}
	return &summary{key: key, msg: b.msg, level: b.level, count: b.dropped, over: over}
}

func (s *summary) write(log *slog.Logger) {
	if s == nil {
		return
	}
	key := s.key
	if key == "" {
		key = "(other keys)"
	}
	log.Log(context.Background(), s.level, "log lines suppressed", "line", s.msg, "key", key, "count", s.count, "interval", s.over)
}
