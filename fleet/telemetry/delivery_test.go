package telemetry_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	devtel "github.com/sigil-iot/sigil/device/telemetry"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// link is the path between the device and the fleet: the broker, the
// fleet's subscription and the ack back, with the faults a real one has.
type link struct {
	mu     sync.Mutex
	rng    *rand.Rand
	down   bool // no session: publishes fail
	flaky  bool // each publish meets one of the faults below at random
	sender *devtel.Sender
	in     *telemetry.Ingester
	faults map[string]int
}

func (l *link) Publish(_ context.Context, payload []byte) error {
	l.mu.Lock()
	down, fault := l.down, ""
	if l.flaky && !down {
		switch r := l.rng.IntN(10); {
		case r < 3:
			fault = "publish fails"
		case r < 5:
			fault = "ack lost"
		case r < 7:
			fault = "delivered twice"
		case r < 8:
			fault = "lost before the fleet" // PUBACK, then the broker lost it
		}
		l.faults[fault]++
	}
	l.mu.Unlock()
	if down || fault == "publish fails" {
		return errors.New("no session")
	}
	if fault == "lost before the fleet" {
		return nil
	}
	env, err := wire.Decode(payload)
	if err != nil {
		return err
	}
	l.in.Handle("dev-1", env)
	if fault == "delivered twice" {
		l.in.Handle("dev-1", env)
	}
	return nil
}

// send is the fleet's Send: the ack goes down to the device's session.
func (l *link) send(deviceID, kind string, payload []byte) error {
	l.mu.Lock()
	s, down := l.sender, l.down
	lose := l.flaky && l.rng.IntN(10) < 2
	l.mu.Unlock()
	if deviceID != "dev-1" || kind != wire.KindTelemetry {
		return errors.New("ack to the wrong place")
	}
	if down || s == nil || lose {
		return nil // published into the void
	}
	env, err := wire.Decode(payload)
	if err != nil {
		return err
	}
	return s.HandleAck(env)
}

func (l *link) set(f func(l *link)) {
	l.mu.Lock()
	f(l)
	l.mu.Unlock()
}

// recorder is the outbox as the sampler sees it; it remembers each point
// the outbox accepted.
type recorder struct {
	o        *state.Outbox
	mu       *sync.Mutex
	accepted map[int]bool
}

func (r recorder) Append(points ...wire.TelemetryPoint) (int, error) {
	n, err := r.o.Append(points...)
	if err == nil {
		r.mu.Lock()
		for _, p := range points {
			r.accepted[int(p.Metrics["n"])] = true
		}
		r.mu.Unlock()
	}
	return n, err
}

// device is sigild's telemetry half: a state store, a sampler and a
// sender, stopped and started like the daemon.
type device struct {
	t      *testing.T
	path   string
	l      *link
	next   *int
	mu     sync.Mutex
	acc    map[int]bool
	store  *state.Store
	stop   context.CancelFunc
	done   sync.WaitGroup
	outbox *state.Outbox
}

func (d *device) start() {
	t := d.t
	s, err := state.Open(d.path, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d.store = s
	d.outbox = s.Outbox(state.OutboxOptions{MaxPoints: 60})
	sender, err := devtel.NewSender(devtel.SenderConfig{Outbox: d.outbox, Publisher: d.l, MaxPoints: 25,
		AckTimeout: 5 * time.Second, MinBackoff: time.Second, MaxBackoff: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sampler, err := devtel.NewSampler(devtel.SamplerConfig{Outbox: recorder{d.outbox, &d.mu, d.acc}, Interval: 10 * time.Second,
		Appended: sender.Kick, Collect: func(context.Context) wire.TelemetryPoint {
			*d.next++
			p := wire.TelemetryPoint{Time: time.Now().UnixMilli()}
			p.SetMetric("n", float64(*d.next))
			p.SetMetric("cpu.busy", 0.5)
			return p
		}})
	if err != nil {
		t.Fatal(err)
	}
	d.l.set(func(l *link) { l.sender = sender })
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	d.done.Go(func() { sampler.Run(ctx) })
	d.done.Go(func() { sender.Run(ctx) })
}

// halt stops the daemon and closes its store (the points wait on disk).
func (d *device) halt() {
	d.l.set(func(l *link) { l.sender = nil })
	d.stop()
	d.done.Wait()
	if err := d.store.Close(); err != nil {
		d.t.Fatal(err)
	}
}

// TestDeliveryExactlyOnceOrCounted runs a device against the fleet through
// outages, a flaky link (failed publishes, lost acks, duplicates, batches
// the broker lost after its PUBACK) and daemon restarts, with the real
// outbox (bbolt) and the real ingester. At the end every point the outbox
// accepted arrived exactly once or is counted as dropped, and the counts
// add up.
func TestDeliveryExactlyOnceOrCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		received := map[int]int{}
		var recvMu sync.Mutex
		l := &link{rng: rand.New(rand.NewPCG(1, 2)), faults: map[string]int{}}
		in, err := telemetry.New(telemetry.Config{Send: l.send, OnBatch: func(b telemetry.Batch) {
			recvMu.Lock()
			for _, p := range b.Points {
				received[int(p.Metrics["n"])]++
			}
			recvMu.Unlock()
		}})
		if err != nil {
			t.Fatal(err)
		}
		l.in = in
		next := 0
		d := &device{t: t, path: filepath.Join(t.TempDir(), "state.db"), l: l, next: &next, acc: map[int]bool{}}

		d.start()
		time.Sleep(5 * time.Minute) // normal operation
		l.set(func(l *link) { l.down = true })
		time.Sleep(15 * time.Minute) // outage: 90 points for an outbox of 60
		l.set(func(l *link) { l.down, l.flaky = false, true })
		time.Sleep(5 * time.Minute) // a flaky link
		d.halt()                    // the daemon restarts mid-stream
		time.Sleep(time.Minute)
		d.start()
		time.Sleep(3 * time.Minute)
		l.set(func(l *link) { l.down = true })
		time.Sleep(4 * time.Minute)
		d.halt() // and again, during an outage
		d.start()
		time.Sleep(8 * time.Minute)
		l.set(func(l *link) { l.down, l.flaky = false, false })
		time.Sleep(5 * time.Minute) // recovery
		d.halt()
		// The last points wait in the store; one more start sends them
		// without sampling more.
		d.start()
		d.stop() // sampler and sender stop; resend by hand below
		d.done.Wait()
		sender, _ := devtel.NewSender(devtel.SenderConfig{Outbox: d.outbox, Publisher: l, AckTimeout: 5 * time.Second})
		l.set(func(l *link) { l.sender = sender })
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { sender.Run(ctx) })
		for {
			time.Sleep(time.Second)
			if st, err := d.outbox.Stats(); err != nil || st.Points == 0 {
				break
			}
		}
		cancel()
		wg.Wait()
		st, err := d.outbox.Stats()
		if err != nil {
			t.Fatal(err)
		}
		d.store.Close()

		tot := in.Totals()
		recvMu.Lock()
		defer recvMu.Unlock()
		for n, c := range received {
			if c != 1 {
				t.Errorf("point %d arrived %d times", n, c)
			}
			if !d.acc[n] {
				t.Errorf("point %d arrived but was never accepted", n)
			}
		}
		missing := 0
		for n := range d.acc {
			if received[n] == 0 {
				missing++
			}
		}
		t.Logf("accepted %d, arrived %d, counted dropped %d (device reported %d), duplicates skipped %d, faults %v",
			len(d.acc), len(received), tot.Dropped, tot.DeviceReported, tot.Duplicates, l.faults)
		if uint64(missing) != tot.Dropped || uint64(len(received))+tot.Dropped != uint64(len(d.acc)) || tot.Ingested != uint64(len(received)) {
			t.Fatalf("counts do not add up: accepted %d = arrived %d + dropped %d? (missing %d)", len(d.acc), len(received), tot.Dropped, missing)
		}
		if tot.Dropped == 0 || tot.Duplicates == 0 || tot.Rejected != 0 {
			t.Fatalf("the scenario did not exercise drops and duplicates: %+v", tot)
		}
		if tot.DeviceReported < tot.Dropped || st.Dropped != tot.DeviceReported {
			t.Fatalf("device reports %d drops (outbox says %d), fleet counted %d", tot.DeviceReported, st.Dropped, tot.Dropped)
		}
	})
}
