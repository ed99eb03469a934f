package alert

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Notifier delivers one notification to a sink (fleet/alert/sink has an
// Alertmanager client, syslog with CEF and a generic JSON webhook). It
// returns nil only once the sink accepted it; an error wrapping
// ErrPermanent is not retried. It must not modify n and must honour ctx.
type Notifier interface {
	Notify(ctx context.Context, n Notification) error
}

// BatchNotifier is a Notifier that can also deliver several notifications
// in one request (an Alertmanager takes an array). A route whose sink
// implements it sends up to Route.MaxBatch queued notifications at once;
// they succeed or fail together.
type BatchNotifier interface {
	Notifier
	NotifyBatch(ctx context.Context, ns []Notification) error
}

// NotifierFunc adapts a function to Notifier.
type NotifierFunc func(ctx context.Context, n Notification) error

// Notify calls f.
func (f NotifierFunc) Notify(ctx context.Context, n Notification) error { return f(ctx, n) }

// Route sends the notifications it selects to one sink, in order, off the
// inputs' path: a bounded queue and one worker. A failed delivery is
// retried with exponential backoff (Backoff, doubling up to MaxBackoff) up
// to Attempts times, then recorded as a dead letter; so is a notification
// that finds the queue full — except a repeat, which is skipped (counted in
// Stats): the next re-send carries it.
type Route struct {
	// Name identifies the route in dead letters and logs. Required, unique.
	Name string
	// Notifier is the sink. Required.
	Notifier Notifier
	// MinSeverity selects alerts at least this severe. Empty: all.
	MinSeverity Severity
	// Match selects alerts whose labels (LabelsOf) have these values.
	Match map[string]string
	// Transitions selected. Default firing and resolved; add
	// TransitionRepeat for an Alertmanager, TransitionAcknowledged to tell
	// the sink about acknowledgements.
	Transitions []Transition
	// Attempts is the number of delivery attempts. Default 5.
	Attempts int
	// Backoff is the wait before the first retry. Default 1s.
	Backoff time.Duration
	// MaxBackoff caps the wait between retries. Default 1m.
	MaxBackoff time.Duration
	// Timeout bounds one attempt. Default 10s.
	Timeout time.Duration
	// QueueSize bounds the notifications waiting. Default 1024.
	QueueSize int
	// MaxBatch bounds the notifications sent at once to a BatchNotifier.
	// Default 64.
	MaxBatch int
}

type route struct {
	Route
	transitions map[Transition]bool
	q           chan Notification
	batcher     BatchNotifier // nil unless the sink batches
}

func newRoutes(in []Route) ([]*route, error) {
	seen := map[string]bool{}
	out := make([]*route, 0, len(in))
	for _, r := range in {
		if r.Name == "" || r.Notifier == nil {
			return nil, errors.New("alert: a route needs a Name and a Notifier")
		}
		if seen[r.Name] {
			return nil, fmt.Errorf("alert: route %q defined twice", r.Name)
		}
		seen[r.Name] = true
		if r.MinSeverity != "" && !r.MinSeverity.Valid() {
			return nil, fmt.Errorf("alert: route %q: min severity %q is not info, warning or critical", r.Name, r.MinSeverity)
		}
		if len(r.Transitions) == 0 {
			r.Transitions = []Transition{TransitionFiring, TransitionResolved}
		}
		setDefault(&r.Attempts, 5)
		setDefault(&r.Backoff, time.Second)
		setDefault(&r.MaxBackoff, time.Minute)
		setDefault(&r.Timeout, 10*time.Second)
		setDefault(&r.QueueSize, 1024)
		setDefault(&r.MaxBatch, 64)
		if r.Attempts < 1 || r.Backoff < 0 || r.MaxBackoff < r.Backoff || r.Timeout < 0 || r.QueueSize < 1 || r.MaxBatch < 1 {
			return nil, fmt.Errorf("alert: route %q: attempts, backoff, timeout, queue size and batch size must be positive (max backoff at least backoff)", r.Name)
		}
		rt := &route{Route: r, transitions: map[Transition]bool{}, q: make(chan Notification, r.QueueSize)}
		rt.batcher, _ = r.Notifier.(BatchNotifier)
		for _, t := range r.Transitions {
			switch t {
			case TransitionFiring, TransitionAcknowledged, TransitionResolved, TransitionRepeat:
				rt.transitions[t] = true
			default:
				return nil, fmt.Errorf("alert: route %q: unknown transition %q", r.Name, t)
			}
		}
		out = append(out, rt)
	}
	return out, nil
}

func (rt *route) selects(n *Notification, labels map[string]string) bool {
	if !rt.transitions[n.Transition] || n.Alert.Severity.Rank() < rt.MinSeverity.Rank() {
		return false
	}
	for k, v := range rt.Match {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// dispatch queues n on every route that selects it; a full queue
// dead-letters it for that route.
func (e *Engine) dispatch(n Notification) {
	if e.cfg.OnTransition != nil && n.Transition != TransitionRepeat {
		e.cfg.OnTransition(n)
	}
	if len(e.routes) == 0 {
		return
	}
	labels := LabelsOf(&n.Alert)
	for _, rt := range e.routes {
		if !rt.selects(&n, labels) {
			continue
		}
		select {
		case rt.q <- n:
		default:
			if n.Transition == TransitionRepeat {
				e.stats.repeatsSkipped.Add(1)
				continue
			}
			e.deadLetter(rt.Name, n, 0, ErrQueueFull, false)
		}
	}
}

// work delivers the route's notifications until ctx ends.
func (e *Engine) work(ctx context.Context, rt *route) {
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-rt.q:
			batch := []Notification{n}
		more:
			for rt.batcher != nil && len(batch) < rt.MaxBatch {
				select {
				case m := <-rt.q:
					batch = append(batch, m)
				default:
					break more
				}
			}
			e.deliver(ctx, rt, batch)
		}
	}
}

// deliver tries batch until it is accepted, its attempts run out or the
// error is permanent; then it is delivered or dead-lettered. When ctx ends
// first it is dead-lettered as interrupted.
func (e *Engine) deliver(ctx context.Context, rt *route, batch []Notification) {
	dead := func(attempt int, err error, interrupted bool) {
		for _, n := range batch {
			e.deadLetter(rt.Name, n, attempt, err, interrupted)
		}
	}
	wait := rt.Backoff
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, rt.Timeout)
		var err error
		if len(batch) == 1 {
			err = rt.Notifier.Notify(actx, batch[0])
		} else {
			err = rt.batcher.NotifyBatch(actx, batch)
		}
		cancel()
		if err == nil {
			e.stats.delivered.Add(uint64(len(batch)))
			return
		}
		if ctx.Err() != nil {
			dead(attempt, err, true)
			return
		}
		if errors.Is(err, ErrPermanent) || attempt >= rt.Attempts {
			dead(attempt, err, false)
			return
		}
		e.stats.retried.Add(1)
		e.log.Warn("alert: delivery failed; retrying", "route", rt.Name, "alert_id", batch[0].Alert.ID, "batch", len(batch),
			"attempt", attempt, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			dead(attempt, err, true)
			return
		case <-t.C:
		}
		wait = min(2*wait, rt.MaxBackoff)
	}
}

// drain dead-letters what is left in the route's queue, as interrupted.
func (e *Engine) drain(rt *route) {
	for {
		select {
		case n := <-rt.q:
			e.deadLetter(rt.Name, n, 0, errors.New("engine stopped before delivery"), true)
		default:
			return
		}
	}
}

func (e *Engine) deadLetter(routeName string, n Notification, attempts int, cause error, interrupted bool) {
	d := &DeadLetter{Route: routeName, Notification: n, Attempts: attempts, Error: truncate(cause.Error(), 1024), Interrupted: interrupted, At: e.cfg.Now()}
	dropped, err := e.st.addDead(context.Background(), d, e.cfg.MaxDeadLetters)
	if err != nil {
		// Nowhere left to keep it: say so loudly.
		e.log.Error("alert: notification lost: could not record dead letter", "route", routeName, "alert_id", n.Alert.ID, "transition", string(n.Transition), "err", err)
		return
	}
	e.stats.deadLettered.Add(1)
	if dropped > 0 {
		e.stats.deadDropped.Add(uint64(dropped))
		e.log.Warn("alert: oldest dead letters deleted", "count", dropped, "max", e.cfg.MaxDeadLetters)
	}
	e.log.Warn("alert: notification dead-lettered", "route", routeName, "alert_id", n.Alert.ID, "transition", string(n.Transition),
		"dead_letter_id", d.ID, "attempts", attempts, "interrupted", interrupted, "err", d.Error)
}

// DeadLetters pages the dead letters, newest first: those with IDs below
// before (0: from the newest), at most limit (default 100, at most 1000).
// next is the cursor for the following page, 0 at the end.
func (e *Engine) DeadLetters(before uint64, limit int) (letters []DeadLetter, next uint64, err error) {
	return e.st.deadLetters(context.Background(), before, pageSize(limit))
}

// Redrive queues dead letter id again on its route and deletes it; if it
// fails again it becomes a new dead letter. ErrQueueFull leaves it in
// place.
func (e *Engine) Redrive(id uint64) error {
	d, err := e.st.deadLetter(context.Background(), id)
	if err != nil {
		return err
	}
	return e.requeue(d)
}

// RedriveAll re-drives every dead letter of a route ("" for all routes),
// stopping at the first full queue, and returns how many it queued.
func (e *Engine) RedriveAll(routeName string) (int, error) {
	return e.redrive(func(d *DeadLetter) bool { return routeName == "" || d.Route == routeName })
}

func (e *Engine) redrive(sel func(*DeadLetter) bool) (int, error) {
	var picked []DeadLetter
	var before uint64
	for {
		page, next, err := e.st.deadLetters(context.Background(), before, maxPageSize)
		if err != nil {
			return 0, err
		}
		for i := range page {
			if sel(&page[i]) {
				picked = append(picked, page[i])
			}
		}
		if next == 0 {
			break
		}
		before = next
	}
	// Oldest first, so a route receives them in their original order.
	n := 0
	for i := len(picked) - 1; i >= 0; i-- {
		if err := e.requeue(&picked[i]); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func (e *Engine) requeue(d *DeadLetter) error {
	var rt *route
	for _, r := range e.routes {
		if r.Name == d.Route {
			rt = r
		}
	}
	if rt == nil {
		return fmt.Errorf("%w: route %q of dead letter %d", ErrNotFound, d.Route, d.ID)
	}
	select {
	case rt.q <- d.Notification:
	default:
		return ErrQueueFull
	}
	if err := e.st.deleteDead(context.Background(), d.ID); err != nil {
		return fmt.Errorf("alert: delete dead letter %d: %w", d.ID, err)
	}
	e.log.Info("alert: dead letter re-driven", "dead_letter_id", d.ID, "route", d.Route, "alert_id", d.Notification.Alert.ID)
	return nil
}

func pageSize(limit int) int {
	if limit <= 0 {
		return defaultPageSize
	}
	return min(limit, maxPageSize)
}
