package update_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// faulty is the real FileBackend with failures injected into chosen
// methods: fail[name] is how many more calls of that method fail (-1:
// all). A "reboot" that is ignored models a board that never goes down.
type faulty struct {
	*update.FileBackend
	mu           sync.Mutex
	fail         map[string]int
	calls        map[string]int
	ignoreReboot bool
}

func (f *faulty) hit(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[name]++
	if n := f.fail[name]; n != 0 {
		f.fail[name] = n - 1
		return errors.New(name + " failed")
	}
	return nil
}

func (f *faulty) Install(ctx context.Context, slot, path string) error {
	if err := f.hit("install"); err != nil {
		return err
	}
	return f.FileBackend.Install(ctx, slot, path)
}

func (f *faulty) Switch(ctx context.Context, slot string) error {
	if err := f.hit("switch"); err != nil {
		return err
	}
	return f.FileBackend.Switch(ctx, slot)
}

func (f *faulty) Reboot(ctx context.Context) error {
	if err := f.hit("reboot"); err != nil || f.ignoreReboot {
		return err
	}
	return f.FileBackend.Reboot(ctx)
}

func (f *faulty) Commit(ctx context.Context, slot string) error {
	if err := f.hit("commit"); err != nil {
		return err
	}
	return f.FileBackend.Commit(ctx, slot)
}

func (f *faulty) Rollback(ctx context.Context, slot string) error {
	if err := f.hit("rollback"); err != nil {
		return err
	}
	return f.FileBackend.Rollback(ctx, slot)
}

// flakyCounter is an anti-rollback counter whose advances fail while
// broken is set (and the next failOnce ones), counting the attempts.
type flakyCounter struct {
	Counter  update.Counter
	mu       sync.Mutex
	broken   bool
	failOnce int
	advances int
}

func (c *flakyCounter) SecurityVersion() (uint64, error) { return c.Counter.SecurityVersion() }

func (c *flakyCounter) AdvanceSecurityVersion(to uint64) (uint64, error) {
	c.mu.Lock()
	c.advances++
	fail := c.broken || c.failOnce > 0
	if c.failOnce > 0 {
		c.failOnce--
	}
	c.mu.Unlock()
	if fail {
		return 0, errors.New("TPM_RC_NV_UNAVAILABLE (injected)")
	}
	return c.Counter.AdvanceSecurityVersion(to)
}

func (c *flakyCounter) set(broken bool) (advances int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.broken = broken
	return c.advances
}

// TestCounterAdvanceFails: an update whose anti-rollback counter cannot be
// advanced is not committed. It stays in advancing_floor, reported to the
// fleet with what is wrong, retried (MaxAttempts in a row, then at every
// run), survives a restart, and holds off other updates (a lower release
// cannot slip in meanwhile); once the counter moves, it commits.
func TestCounterAdvanceFails(t *testing.T) {
	e := newEnv(t)
	e.counter.AdvanceSecurityVersion(1)
	c := &flakyCounter{Counter: e.counter, broken: true}
	withFlaky := func(cfg *update.Config) { cfg.Counter = c }
	img := image("v2", 3000)
	m, b := release("2.0.0", 4, img)
	if err := e.engine(withFlaky).Announce(update.Announcement{ID: "u1", Manifest: m, Bundle: b, URL: e.srv.put("/v2", img)}); err != nil {
		t.Fatal(err)
	}
	check := func(wantAdvances int) {
		t.Helper()
		err := e.engine(withFlaky).Resume(context.Background()) // a new engine each time: sigild restarted
		if !errors.Is(err, update.ErrFloorNotAdvanced) {
			t.Fatalf("Resume: %v, want ErrFloorNotAdvanced", err)
		}
		u, err := e.store.Update()
		if err != nil || u.Phase != string(update.PhaseAdvancingFloor) || u.Final {
			t.Fatalf("recorded update %+v, %v; want advancing_floor, not final", u, err)
		}
		if f := e.rep.finals(); len(f) != 0 {
			t.Fatalf("final reports %+v while the counter was not advanced", f)
		}
		if n := c.set(true); n != wantAdvances {
			t.Fatalf("%d advances tried, want %d", n, wantAdvances)
		}
		if v, _ := e.counter.SecurityVersion(); v != 1 {
			t.Fatalf("counter %d", v)
		}
	}
	check(update.DefaultMaxAttempts)
	var reported *update.Report
	for _, r := range e.rep.reports {
		if r.ID == "u1" && r.Phase == update.PhaseAdvancingFloor && strings.Contains(r.Message, "anti-rollback counter not advanced") {
			reported = &r
		}
	}
	if reported == nil || reported.Final || reported.Version != "2.0.0" {
		t.Fatalf("the fleet was not told: %+v", e.rep.reports)
	}

	// Meanwhile no other release is taken, lower or not.
	old := image("v1.5", 3000)
	m15, b15 := release("1.5.0", 1, old)
	if err := e.engine(withFlaky).Announce(update.Announcement{ID: "u2", Manifest: m15, Bundle: b15, URL: e.srv.put("/v15", old)}); !errors.Is(err, update.ErrBusy) {
		t.Fatalf("announcement of a lower release while the floor is pending: %v", err)
	}

	// sigild restarts: one more attempt per run, still not committed.
	check(update.DefaultMaxAttempts + 1)

	// The counter works again: the next run commits.
	c.set(false)
	if err := e.engine(withFlaky).Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rep := e.final("u1"); rep.Phase != update.PhaseCommitted || rep.Running != "2.0.0" || rep.Message != "" {
		t.Fatalf("final report %+v", rep)
	}
	if v, _ := e.counter.SecurityVersion(); v != 4 {
		t.Fatalf("counter %d after commit, want 4", v)
	}
}

// TestRunRetriesFloorAdvance: under Run, an advance that fails once is
// retried by itself and the update commits.
func TestRunRetriesFloorAdvance(t *testing.T) {
	e := newEnv(t)
	c := &flakyCounter{Counter: e.counter, failOnce: 1}
	eng := e.engine(func(cfg *update.Config) { cfg.Counter = c })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	img := image("v2", 3000)
	m, b := release("2.0.0", 2, img)
	if err := eng.Announce(update.Announcement{ID: "u1", Manifest: m, Bundle: b, URL: e.srv.put("/v2", img)}); err != nil {
		t.Fatal(err)
	}
	rep := <-e.rep.final
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if rep.Phase != update.PhaseCommitted || c.set(false) != 2 {
		t.Fatalf("final %+v after %d advances", rep, c.set(false))
	}
	if v, _ := e.counter.SecurityVersion(); v != 2 {
		t.Fatalf("counter %d", v)
	}
	want := phaseList(update.PhaseHealth, update.PhaseCommitting, update.PhaseAdvancingFloor, update.PhaseCommitted)
	if got := phaseList(e.rep.phases("u1")...); !strings.HasSuffix(got, want) {
		t.Fatalf("phases %s, want them to end with %s", got, want)
	}
}

// TestBackendFailures checks the transitions taken when a step of the
// backend fails: retried up to MaxAttempts, then ended with the reason for
// it, the device left on a good slot and the running version reported.
func TestBackendFailures(t *testing.T) {
	for _, c := range []struct {
		name         string
		image        string
		fail         map[string]int
		ignoreReboot bool
		want         update.Phase
		reason       wire.Reason
		running      string
		slot         string
		message      string
	}{
		{name: "install fails once", image: "v2", fail: map[string]int{"install": 1},
			want: update.PhaseCommitted, running: "2.0.0", slot: "b"},
		{name: "install always fails", image: "v2", fail: map[string]int{"install": -1},
			want: update.PhaseFailed, reason: wire.ReasonFirmwareInstall, running: "1.0.0", slot: "a"},
		{name: "switch always fails", image: "v2", fail: map[string]int{"switch": -1},
			want: update.PhaseFailed, reason: wire.ReasonFirmwareInstall, running: "1.0.0", slot: "a"},
		{name: "reboot fails twice", image: "v2", fail: map[string]int{"reboot": 2},
			want: update.PhaseCommitted, running: "2.0.0", slot: "b"},
		{name: "device never reboots", image: "v2", ignoreReboot: true,
			want: update.PhaseFailed, reason: wire.ReasonFirmwareInstall, running: "1.0.0", slot: "a"},
		{name: "commit always fails", image: "v2", fail: map[string]int{"commit": -1},
			want: update.PhaseRolledBack, reason: wire.ReasonFirmwareInstall, running: "1.0.0", slot: "a"},
		{name: "rollback fails once", image: "v2-unhealthy", fail: map[string]int{"rollback": 1},
			want: update.PhaseRolledBack, reason: wire.ReasonFirmwareHealth, running: "1.0.0", slot: "a"},
		// The new image stays: say so, rather than claim a rollback.
		{name: "rollback always fails", image: "v2-unhealthy", fail: map[string]int{"rollback": -1},
			want: update.PhaseFailed, reason: wire.ReasonFirmwareHealth, running: "2.0.0", slot: "b", message: "rollback failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			fb := &faulty{FileBackend: e.fb, fail: c.fail, calls: map[string]int{}, ignoreReboot: c.ignoreReboot}
			eng := e.engine(func(cfg *update.Config) {
				cfg.Backend = fb
				cfg.RebootTimeout = time.Millisecond
			})
			img := image(c.image, 3000)
			m, b := release("2.0.0", 1, img)
			rep := e.run(eng, "u1", m, b, e.srv.put("/i", img))
			if rep.Phase != c.want || rep.Reason != c.reason || rep.Running != c.running || rep.Slot != c.slot {
				t.Fatalf("final report %+v\nwant %s/%s running %s in %s", rep, c.want, c.reason, c.running, c.slot)
			}
			if !strings.Contains(rep.Message, c.message) {
				t.Fatalf("message %q does not say %q", rep.Message, c.message)
			}
			s := e.state()
			if s.Booted != c.slot || s.Pending != "" {
				t.Fatalf("boot record %+v", s)
			}
			if c.want != update.PhaseFailed || c.reason != wire.ReasonFirmwareHealth {
				if s.Active != c.slot {
					t.Fatalf("active slot %s, want %s", s.Active, c.slot)
				}
			}
			for name, n := range c.fail {
				if n < 0 && fb.calls[name] != update.DefaultMaxAttempts {
					t.Fatalf("%s called %d times, want %d", name, fb.calls[name], update.DefaultMaxAttempts)
				}
			}
			if c.ignoreReboot && fb.calls["reboot"] != update.DefaultMaxAttempts {
				t.Fatalf("reboot asked %d times", fb.calls["reboot"])
			}
			if c.want == update.PhaseFailed && c.slot == "a" {
				st, err := eng.Status(context.Background())
				if err != nil || st.Version != "1.0.0" {
					t.Fatalf("status %+v, %v", st, err)
				}
			}
			if _, err := os.Stat(e.fb.Image("b")); c.name == "install always fails" && err == nil {
				t.Fatal("slot b written although every install failed")
			}
		})
	}
}

// TestRun is the way sigild uses the engine: Run in the background,
// announcements from the fleet, reports back.
func TestRun(t *testing.T) {
	e := newEnv(t)
	eng := e.engine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	for i, v := range []string{"2.0.0", "3.0.0"} {
		img := image(v, 5000)
		m, b := release(v, uint64(i+1), img)
		id := "u" + v[:1]
		if err := eng.Announce(update.Announcement{ID: id, Manifest: m, Bundle: b, URL: e.srv.put("/"+v, img)}); err != nil {
			t.Fatal(err)
		}
		rep := <-e.rep.final
		if rep.ID != id || rep.Phase != update.PhaseCommitted || rep.Running != v {
			t.Fatalf("%s: %+v", id, rep)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if s := e.state(); s.Booted != "a" || s.Active != "a" {
		t.Fatalf("after two updates: %+v", s)
	}
}
