package telemetry

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/internal/runtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

var (
	_ Queue    = (*state.Outbox)(nil)
	_ Appender = (*state.Outbox)(nil)
)

func outbox(t *testing.T, opts state.OutboxOptions) *state.Outbox {
	t.Helper()
	s, err := state.Open(filepath.Join(t.TempDir(), "state.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.Outbox(opts)
}

func numbered(n int) wire.TelemetryPoint {
	p := wire.TelemetryPoint{Time: int64(1_700_000_000_000 + n)}
	p.SetMetric("n", float64(n))
	return p
}

// fleet acknowledges what it is told to: the publisher hands it each
// batch, and it answers on the down path like the real fleet, from
// another goroutine.
type fleet struct {
	mu       sync.Mutex
	sender   *Sender
	failNext int         // publishes to refuse before the broker takes one
	silent   bool        // take batches but never ack
	reason   wire.Reason // reason of the acks
	got      []int       // "n" of every point received, duplicates included
	attempts []time.Time // publish attempts, fake clock
	sizes    []int       // points per batch taken
	wg       sync.WaitGroup
}

func (f *fleet) Publish(_ context.Context, payload []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts = append(f.attempts, time.Now())
	if f.failNext > 0 {
		f.failNext--
		return errors.New("broker unreachable")
	}
	env, err := wire.Decode(payload)
	if err != nil {
		return err
	}
	var b wire.TelemetryBatch
	if err := wire.DecodeBody(env, wire.TypeTelemetryBatch, &b); err != nil {
		return err
	}
	for _, p := range b.Points {
		f.got = append(f.got, int(p.Metrics["n"]))
	}
	f.sizes = append(f.sizes, len(b.Points))
	if f.silent {
		return nil
	}
	ack, err := wire.Encode(wire.TypeTelemetryAck, env.ID, time.Now(), &wire.TelemetryAck{Stream: b.Stream, Through: b.Last(), Reason: f.reason})
	if err != nil {
		return err
	}
	f.wg.Go(func() {
		env, _ := wire.Decode(ack)
		f.sender.HandleAck(env)
	})
	return nil
}

func (f *fleet) attemptsNow() []time.Time { a, _, _ := f.seen(); return a }
func (f *fleet) gotNow() []int            { _, g, _ := f.seen(); return g }
func (f *fleet) sizesNow() []int          { _, _, z := f.seen(); return z }

// seen returns copies of what the fleet recorded.
func (f *fleet) seen() (attempts []time.Time, got, sizes []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.attempts), slices.Clone(f.got), slices.Clone(f.sizes)
}

// run runs s until the returned stop, which fails t if Run failed.
func run(t *testing.T, s interface{ Run(context.Context) error }) (stop func()) {
	halt := runtest.Start(t, s.Run)
	return func() {
		if err := halt(); err != nil {
			t.Error(err)
		}
	}
}

func TestSenderBacksOffAndRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := outbox(t, state.OutboxOptions{})
		for i := 1; i <= 3; i++ {
			o.Append(numbered(i))
		}
		f := &fleet{failNext: 5}
		s, err := NewSender(SenderConfig{Outbox: o, Publisher: f, MinBackoff: time.Second, MaxBackoff: 4 * time.Second,
			Jitter: func(d time.Duration) time.Duration { return d }})
		if err != nil {
			t.Fatal(err)
		}
		f.sender = s
		start := time.Now()
		stop := run(t, s)
		time.Sleep(12 * time.Second)
		synctest.Wait()
		// Attempts at 0, then after 1, 2, 4, 4 s of backoff: 0 1 3 7 11; the
		// fifth failure is followed by a 4 s wait.
		var at []string
		for _, a := range f.attemptsNow() {
			at = append(at, a.Sub(start).String())
		}
		if strings.Join(at, " ") != "0s 1s 3s 7s 11s" {
			t.Fatalf("attempts at %v", at)
		}
		// Retry ends the backoff at once: the link is back.
		s.Retry()
		synctest.Wait()
		f.wg.Wait()
		synctest.Wait()
		if len(f.attemptsNow()) != 6 || f.attemptsNow()[5].Sub(start) != 12*time.Second {
			t.Fatalf("after Retry: %d attempts, last at %v", len(f.attemptsNow()), f.attemptsNow()[len(f.attemptsNow())-1].Sub(start))
		}
		if st, _ := o.Stats(); st.Points != 0 || st.Acked != 3 {
			t.Fatalf("outbox after the ack: %+v", st)
		}
		if st := s.Stats(); st.Batches != 1 || st.Acked != 3 || st.Failures != 5 {
			t.Fatalf("sender stats %+v", st)
		}
		stop()
	})
}

func TestSenderResendsWithoutAck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := outbox(t, state.OutboxOptions{})
		o.Append(numbered(1), numbered(2))
		f := &fleet{silent: true}
		s, _ := NewSender(SenderConfig{Outbox: o, Publisher: f, AckTimeout: 10 * time.Second, MinBackoff: time.Second,
			Jitter: func(d time.Duration) time.Duration { return d }})
		f.sender = s
		start := time.Now()
		stop := run(t, s)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if st, _ := o.Stats(); len(f.attemptsNow()) != 1 || st.Points != 2 {
			t.Fatalf("waiting for the ack: %d attempts, outbox %+v", len(f.attemptsNow()), st)
		}
		f.mu.Lock()
		f.silent = false
		f.mu.Unlock()
		time.Sleep(7 * time.Second) // ack timeout at 10 s, backoff 1 s, resend at 11 s
		synctest.Wait()
		f.wg.Wait()
		synctest.Wait()
		if len(f.attemptsNow()) != 2 || f.attemptsNow()[1].Sub(start) != 11*time.Second {
			t.Fatalf("resend: %d attempts", len(f.attemptsNow()))
		}
		if st, _ := o.Stats(); st.Points != 0 {
			t.Fatalf("outbox after the resend: %+v", st)
		}
		if fmt.Sprint(f.gotNow()) != "[1 2 1 2]" {
			t.Fatalf("fleet got %v", f.gotNow())
		}
		stop()
	})
}

func TestSenderKickWakesIdleNotBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := outbox(t, state.OutboxOptions{})
		f := &fleet{}
		s, _ := NewSender(SenderConfig{Outbox: o, Publisher: f, Poll: time.Hour, MinBackoff: time.Minute,
			Jitter: func(d time.Duration) time.Duration { return d }})
		f.sender = s
		start := time.Now()
		stop := run(t, s)
		synctest.Wait()
		o.Append(numbered(1))
		s.Kick()
		synctest.Wait()
		f.wg.Wait()
		synctest.Wait()
		if len(f.attemptsNow()) != 1 || !f.attemptsNow()[0].Equal(start) {
			t.Fatalf("kick of an idle sender: %v", f.attemptsNow())
		}
		// Now it fails and backs off for a minute; a kick does not cut that short.
		f.mu.Lock()
		f.failNext = 1
		f.mu.Unlock()
		o.Append(numbered(2))
		s.Kick()
		synctest.Wait()
		time.Sleep(30 * time.Second)
		s.Kick()
		synctest.Wait()
		if len(f.attemptsNow()) != 2 {
			t.Fatalf("a kick ended the backoff: %d attempts", len(f.attemptsNow()))
		}
		time.Sleep(31 * time.Second)
		synctest.Wait()
		f.wg.Wait()
		synctest.Wait()
		if len(f.attemptsNow()) != 3 || f.attemptsNow()[2].Sub(start) != time.Minute {
			t.Fatalf("after the backoff: %d attempts", len(f.attemptsNow()))
		}
		stop()
	})
}

func TestSenderRefusedAndSplit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := outbox(t, state.OutboxOptions{MaxBytes: 16 << 20})
		// Ten points of about 130 KB: more than one message can carry.
		for i := 1; i <= 10; i++ {
			p := numbered(i)
			for s := range wire.MaxPointSets {
				m := make([]string, wire.MaxSetMembers)
				for j := range m {
					m[j] = fmt.Sprintf("%03d-%s", j, strings.Repeat("x", wire.MaxSetMember-4))
				}
				p.SetMembers(fmt.Sprintf("set%d", s), m)
			}
			if _, err := o.Append(p); err != nil {
				t.Fatal(err)
			}
		}
		f := &fleet{reason: wire.ReasonBadRequest}
		s, _ := NewSender(SenderConfig{Outbox: o, Publisher: f, MaxBytes: 8 << 20})
		f.sender = s
		stop := run(t, s)
		for {
			synctest.Wait()
			f.wg.Wait()
			synctest.Wait()
			if st, _ := o.Stats(); st.Points == 0 {
				break
			}
			time.Sleep(time.Second)
		}
		stop()
		if f.sizesNow()[0] >= 10 || len(f.gotNow()) != 10 {
			t.Fatalf("batches of %v points, %d points in all", f.sizesNow(), len(f.gotNow()))
		}
		if st := s.Stats(); st.Refused != 10 || st.Failures != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestSampler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := outbox(t, state.OutboxOptions{MaxPoints: 3})
		n, appended := 0, 0
		smp, err := NewSampler(SamplerConfig{Outbox: o, Interval: 10 * time.Second, Appended: func() { appended++ },
			Collect: func(context.Context) wire.TelemetryPoint { n++; return numbered(n) }})
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, smp)
		time.Sleep(45 * time.Second)
		synctest.Wait()
		stop()
		// Points at 0, 10, 20, 30, 40 s; the outbox holds three and counted two drops.
		st, _ := o.Stats()
		if n != 5 || appended != 5 || st.Points != 3 || st.Dropped != 2 || st.Next != 6 {
			t.Fatalf("collected %d, appended %d, outbox %+v", n, appended, st)
		}
	})
	if _, err := NewSampler(SamplerConfig{}); err == nil {
		t.Fatal("sampler without Collect and Outbox")
	}
}
