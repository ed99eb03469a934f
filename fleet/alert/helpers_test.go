package alert

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/clocktest"
	"github.com/sigil-iot/sigil/internal/runtest"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
)

func newClock() *clocktest.Clock { return clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) }

// recorder is a sink that keeps what it receives; fail, when set, decides
// an attempt's outcome.
type recorder struct {
	mu       sync.Mutex
	got      []Notification
	attempts int
	fail     func(attempt int, n Notification) error
	ch       chan Notification
}

func newRecorder() *recorder { return &recorder{ch: make(chan Notification, 1000)} }

func (r *recorder) Notify(_ context.Context, n Notification) error {
	r.mu.Lock()
	r.attempts++
	a, fail := r.attempts, r.fail
	r.mu.Unlock()
	if fail != nil {
		if err := fail(a, n); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.got = append(r.got, n)
	r.mu.Unlock()
	r.ch <- n
	return nil
}

// next waits for the next delivered notification.
func (r *recorder) next(t *testing.T) Notification {
	t.Helper()
	select {
	case n := <-r.ch:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no notification delivered")
	}
	return Notification{}
}

// none checks that nothing else was delivered once the engine's queues are
// empty and idle.
func (r *recorder) none(t *testing.T, e *Engine) {
	t.Helper()
	waitFor(t, func() bool { return e.Stats().Queued == 0 })
	select {
	case n := <-r.ch:
		t.Fatalf("unexpected notification: %s %q", n.Transition, n.Alert.Summary)
	default:
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	wait.For(t, "the condition", cond)
}

type fixture struct {
	e     *Engine
	clock *clocktest.Clock
	path  string
}

// newFixture opens an engine on a fresh file with a fake clock. It is not
// running unless run is called.
func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{clock: newClock()}
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "alerts.db")
	}
	if cfg.Now == nil {
		cfg.Now = f.clock.Now
	}
	cfg.NoSync = true
	f.path = cfg.Path
	e, err := openBackend(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.e = e
	t.Cleanup(func() { e.Close() })
	return f
}

// run starts the engine until the test ends.
func (f *fixture) run(t *testing.T) {
	t.Helper()
	runtest.Start(t, f.e.Run)
}

func (f *fixture) put(t *testing.T, r Rule) *Rule {
	t.Helper()
	out, err := f.e.PutRule(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fixture) open(t *testing.T, deviceID string) []Alert {
	t.Helper()
	as, _, err := f.e.Alerts(Query{DeviceID: deviceID, Open: true})
	if err != nil {
		t.Fatal(err)
	}
	return as
}

func (f *fixture) all(t *testing.T, deviceID string) []Alert {
	t.Helper()
	as, _, err := f.e.Alerts(Query{DeviceID: deviceID, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return as
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func dur(d time.Duration) config.Duration { return config.Duration(d) }

var errDown = errors.New("receiver down")
