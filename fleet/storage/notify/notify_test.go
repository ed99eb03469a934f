package notify_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/leaktest"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestMain fails the tests when a goroutine outlives them: Run must leave
// nothing running once its context is done.
func TestMain(m *testing.M) { leaktest.Main(m) }

// inbox collects the events a handler receives.
type inbox struct {
	mu     sync.Mutex
	events []notify.Event
}

func (l *inbox) add(ev notify.Event) { l.mu.Lock(); l.events = append(l.events, ev); l.mu.Unlock() }

func (l *inbox) count(f func(notify.Event) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.events {
		if f(ev) {
			n++
		}
	}
	return n
}

func resyncs(ev notify.Event) bool { return ev.Resync }

func payload(p string) func(notify.Event) bool {
	return func(ev notify.Event) bool { return !ev.Resync && ev.Payload == p }
}

// replica opens a bus on the database at url and runs it until the test
// ends, with the subscriptions subscribe makes.
func replica(t *testing.T, url string, subscribe func(*notify.Postgres)) (*notify.Postgres, *postgres.DB) {
	t.Helper()
	db, err := postgres.Open(t.Context(), url, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := notify.NewPostgres(db, nil)
	b.Retry = 500 * time.Millisecond
	if subscribe != nil {
		subscribe(b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; db.Close() })
	return b, db
}

// TestNotificationReachesEveryReplica: a change one replica announces
// reaches the handlers of every replica, its own included, once each
// has listened (a resync first).
func TestNotificationReachesEveryReplica(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	var ra, rb, other inbox
	a, _ := replica(t, url, func(b *notify.Postgres) { b.Subscribe("revocations", ra.add) })
	replica(t, url, func(b *notify.Postgres) {
		b.Subscribe("revocations", rb.add)
		b.Subscribe("policies", other.add)
	})
	wait.For(t, "both replicas to listen", func() bool { return ra.count(resyncs) == 1 && rb.count(resyncs) == 1 })
	if err := a.Notify(t.Context(), "revocations", "dev-1"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the notification on both replicas", func() bool { return ra.count(payload("dev-1")) == 1 && rb.count(payload("dev-1")) == 1 })
	if n := other.count(func(ev notify.Event) bool { return !ev.Resync }); n != 0 {
		t.Errorf("a handler of another topic got %d notifications", n)
	}
}

// TestResyncAfterTheConnectionIsLost: when the listening connection is
// cut (the database ended it), the bus listens again and every handler
// is told to resync; notifications flow again afterwards.
func TestResyncAfterTheConnectionIsLost(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	var got inbox
	b, db := replica(t, url, func(b *notify.Postgres) { b.Subscribe("quarantines", got.add) })
	wait.For(t, "the bus to listen", func() bool { return got.count(resyncs) == 1 })
	if _, err := db.Pool().Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'`); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "a resync after the connection was cut", func() bool { return got.count(resyncs) == 2 })
	if err := b.Notify(t.Context(), "quarantines", "dev-2"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the notification after the resync", func() bool { return got.count(payload("dev-2")) == 1 })
}

// TestNotifyTxOnlyOnCommit: a notification sent in a transaction that
// rolls back never arrives; one whose transaction commits does.
// Notifications arrive in commit order, so the one committed after the
// rollback shows that the rolled-back one is not merely late.
func TestNotifyTxOnlyOnCommit(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	var got inbox
	_, db := replica(t, url, func(b *notify.Postgres) { b.Subscribe("trust", got.add) })
	wait.For(t, "the bus to listen", func() bool { return got.count(resyncs) == 1 })
	rollback := errors.New("rolled back")
	err := pgx.BeginFunc(t.Context(), db.Pool(), func(tx pgx.Tx) error {
		if err := notify.NotifyTx(t.Context(), tx, "trust", "rolled-back"); err != nil {
			return err
		}
		return rollback
	})
	if !errors.Is(err, rollback) {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(t.Context(), db.Pool(), func(tx pgx.Tx) error {
		return notify.NotifyTx(t.Context(), tx, "trust", "committed")
	}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the committed notification", func() bool { return got.count(payload("committed")) == 1 })
	if n := got.count(payload("rolled-back")); n != 0 {
		t.Errorf("a rolled-back transaction's notification arrived %d times", n)
	}
}

// TestBadInput: topics and payloads a channel cannot carry are refused
// with typed errors, and so is a subscription after Run started.
func TestBadInput(t *testing.T) {
	var l notify.Local
	for _, topic := range []string{"", "Revocations", "a-b", "a;LISTEN x", strings.Repeat("a", 41), "1abc"} {
		if err := l.Subscribe(topic, func(notify.Event) {}); !errors.Is(err, notify.ErrTopic) {
			t.Errorf("Subscribe(%q) = %v, want ErrTopic", topic, err)
		}
		if err := l.Notify(t.Context(), topic, ""); !errors.Is(err, notify.ErrTopic) {
			t.Errorf("Notify(%q) = %v, want ErrTopic", topic, err)
		}
	}
	if err := l.Notify(t.Context(), "ok", strings.Repeat("x", notify.MaxPayload+1)); !errors.Is(err, notify.ErrPayload) {
		t.Errorf("Notify of a long payload = %v, want ErrPayload", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	wait.For(t, "Run to start", func() bool { return errors.Is(l.Subscribe("late", func(notify.Event) {}), notify.ErrTopic) })
	cancel()
	<-done
}

// TestLocal: in one process a notification reaches the topic's handlers
// before Notify returns.
func TestLocal(t *testing.T) {
	var l notify.Local
	var got inbox
	if err := l.Subscribe("policies", got.add); err != nil {
		t.Fatal(err)
	}
	if err := l.Notify(t.Context(), "policies", "p1"); err != nil {
		t.Fatal(err)
	}
	if got.count(payload("p1")) != 1 {
		t.Errorf("events %v", got.events)
	}
}
