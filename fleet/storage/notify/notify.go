// Package notify tells every replica of the fleet about a change it must
// see at once — a revocation, a quarantine, a new policy, a trust bundle —
// instead of each one polling for it. With a PostgreSQL database the
// changes travel by LISTEN/NOTIFY (Postgres); in one process, Local hands
// them over directly.
//
// A notification is a hint, not the change itself: the change is in the
// database, committed before the notification is sent, and the receiver
// reads it from there. Notifications sent while a replica's listening
// connection was down are lost, so after each (re)connection every
// handler is called with Event.Resync set: it reloads what it keeps
// rather than trust it missed nothing. A replica receives its own
// notifications too.
package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// Event is what a handler receives.
type Event struct {
	Topic   string
	Payload string // what the sender said (an ID, often), "" on a resync
	// Resync: the connection that listens was (re)established and
	// notifications may have been missed: reload everything.
	Resync bool
}

// Bus sends and receives notifications.
type Bus interface {
	// Subscribe calls fn with each notification of topic (and each
	// resync), one at a time per bus, on the bus's goroutine. Call it
	// before Run.
	Subscribe(topic string, fn func(Event)) error
	// Notify sends payload to every subscriber of topic on every replica
	// (at most MaxPayload bytes).
	Notify(ctx context.Context, topic, payload string) error
	// Run listens until ctx ends.
	Run(ctx context.Context) error
}

// Errors. Compare with errors.Is.
var (
	// ErrTopic: a topic is not lowercase letters, digits and underscores
	// (at most 40), or was subscribed after Run started.
	ErrTopic = errors.New("notify: invalid topic")
	// ErrPayload: a payload is longer than MaxPayload.
	ErrPayload = errors.New("notify: payload too long")
)

// MaxPayload bounds a payload (PostgreSQL's limit is 8,000 bytes).
const MaxPayload = 4000

var topicRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

// channel is a topic's PostgreSQL channel.
func channel(topic string) string { return "sigil_" + topic }

// handlers is the subscription table both buses share.
type handlers struct {
	mu      sync.Mutex
	running bool
	subs    map[string][]func(Event)
}

func (h *handlers) subscribe(topic string, fn func(Event)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !topicRE.MatchString(topic) || h.running {
		return fmt.Errorf("%w: %q", ErrTopic, topic)
	}
	if h.subs == nil {
		h.subs = map[string][]func(Event){}
	}
	h.subs[topic] = append(h.subs[topic], fn)
	return nil
}

// start marks the table as in use and returns its topics.
func (h *handlers) start() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.running = true
	topics := make([]string, 0, len(h.subs))
	for t := range h.subs {
		topics = append(topics, t)
	}
	return topics
}

func (h *handlers) call(ev Event) {
	h.mu.Lock()
	fns := h.subs[ev.Topic]
	h.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

func check(topic, payload string) error {
	if !topicRE.MatchString(topic) {
		return fmt.Errorf("%w: %q", ErrTopic, topic)
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w: %d bytes", ErrPayload, len(payload))
	}
	return nil
}

// Local is the bus of one process: Notify calls the handlers before it
// returns.
type Local struct{ h handlers }

var _ Bus = (*Local)(nil)

// Subscribe adds fn for topic.
func (l *Local) Subscribe(topic string, fn func(Event)) error { return l.h.subscribe(topic, fn) }

// Notify calls topic's handlers.
func (l *Local) Notify(_ context.Context, topic, payload string) error {
	if err := check(topic, payload); err != nil {
		return err
	}
	l.h.call(Event{Topic: topic, Payload: payload})
	return nil
}

// Run waits for ctx to end.
func (l *Local) Run(ctx context.Context) error {
	l.h.start()
	<-ctx.Done()
	return nil
}

// Postgres is the bus of replicas sharing a PostgreSQL database.
type Postgres struct {
	db  *postgres.DB
	log *slog.Logger
	h   handlers
	// Retry bounds the wait before listening again after the connection
	// failed (from a tenth of it, doubling).
	Retry time.Duration
}

var _ Bus = (*Postgres)(nil)

// NewPostgres returns a bus over db (log nil: discard).
func NewPostgres(db *postgres.DB, log *slog.Logger) *Postgres {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Postgres{db: db, log: log, Retry: 5 * time.Second}
}

// Subscribe adds fn for topic.
func (p *Postgres) Subscribe(topic string, fn func(Event)) error { return p.h.subscribe(topic, fn) }

// Notify sends payload on topic's channel (pg_notify), delivered to the
// listeners once the statement's transaction commits.
func (p *Postgres) Notify(ctx context.Context, topic, payload string) error {
	if err := check(topic, payload); err != nil {
		return err
	}
	if _, err := p.db.Pool().Exec(ctx, "SELECT pg_notify($1, $2)", channel(topic), payload); err != nil {
		return fmt.Errorf("notify: %s: %w", topic, err)
	}
	return nil
}

// NotifyTx sends payload on topic's channel within tx: delivered only if
// tx commits, with the change it makes.
func NotifyTx(ctx context.Context, tx pgx.Tx, topic, payload string) error {
	if err := check(topic, payload); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", channel(topic), payload); err != nil {
		return fmt.Errorf("notify: %s: %w", topic, err)
	}
	return nil
}

// Run holds a connection that listens on every subscribed topic's
// channel and calls the handlers, until ctx ends. When the connection
// fails it connects again (after a growing wait, up to Retry); each time
// it listens again, every handler gets a resync.
func (p *Postgres) Run(ctx context.Context) error {
	topics := p.h.start()
	if len(topics) == 0 {
		<-ctx.Done()
		return nil
	}
	delay := p.Retry / 10
	for {
		err := p.listen(ctx, topics)
		if ctx.Err() != nil {
			return nil
		}
		p.log.Warn("listening for notifications failed; listening again", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, p.Retry)
	}
}

// listen listens on one connection until it fails or ctx ends.
func (p *Postgres) listen(ctx context.Context, topics []string) error {
	pc, err := p.db.Pool().Acquire(ctx)
	if err != nil {
		return err
	}
	// Taken out of the pool: it LISTENs, and may be broken; closed after.
	conn := pc.Hijack()
	defer conn.Close(context.Background())
	byChannel := map[string]string{}
	for _, t := range topics {
		ch := channel(t)
		byChannel[ch] = t
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return err
		}
	}
	for _, t := range topics {
		p.h.call(Event{Topic: t, Resync: true})
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if t, ok := byChannel[n.Channel]; ok {
			p.h.call(Event{Topic: t, Payload: n.Payload})
		}
	}
}
