package downlink_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/downlink"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// statements counts the statements a connection pool sends (Begin and
// Commit included).
type statements struct{ n atomic.Int64 }

func (s *statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	s.n.Add(1)
	return ctx
}

func (*statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// replica is one replica's inventory in PostgreSQL, with its own pool
// (whose statements it counts) and notify bus.
type replica struct {
	inv   *inventory.Store
	count *statements
}

func openReplica(t *testing.T, url string, cached bool) *replica {
	t.Helper()
	r := &replica{count: &statements{}}
	db, err := postgres.Open(t.Context(), url, postgres.Options{Tracer: r.count})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	var opts []inventory.Option
	var bus *notify.Postgres
	if cached {
		bus = notify.NewPostgres(db, nil)
		opts = append(opts, inventory.WithBus(bus))
	}
	if r.inv, err = inventory.OpenPostgres(t.Context(), db, opts...); err != nil {
		t.Fatal(err)
	}
	if bus != nil { // listening once the store subscribed
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { _ = bus.Run(ctx) })
		t.Cleanup(func() { cancel(); wg.Wait() })
	}
	return r
}

// TestSendStatementsPerMessage counts the PostgreSQL statements a message
// to a device costs (docs/BENCHMARKS.md §12): the inventory keeps each
// device's protocol version once read (inventory.WithBus), so 1,000
// messages cost the one read of the first instead of a read transaction
// each (3 statements: begin, select, commit). A change of the version on
// another replica (a device that said hello with an older daemon there)
// reaches this one's next message (TopicProtocols), and so does one made
// here.
func TestSendStatementsPerMessage(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	const id, messages = "0123456789abcdef0123456789abcdef", 1000
	verdict, err := wire.Encode(wire.TypeAttestVerdict, nil, time.Now(), &wire.AttestVerdict{Result: "pass"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var last int // the version of the last message published
	pub := func(_ string, payload []byte, _ byte) error {
		env, err := wire.Decode(payload)
		if err != nil {
			return err
		}
		mu.Lock()
		last = env.V
		mu.Unlock()
		return nil
	}
	version := func() int { mu.Lock(); defer mu.Unlock(); return last }
	perMessage := func(r *replica) float64 {
		t.Helper()
		before := r.count.n.Load()
		for range messages {
			if err := downlink.Send(t.Context(), r.inv, pub, id, "t", verdict); err != nil {
				t.Fatal(err)
			}
		}
		return float64(r.count.n.Load()-before) / messages
	}

	a, b := openReplica(t, url, true), openReplica(t, url, true)
	if err := b.inv.PutDevice(t.Context(), &inventory.Device{ID: id, State: inventory.StateActive, Protocol: wire.Version}); err != nil {
		t.Fatal(err)
	}
	uncached := openReplica(t, url, false) // as every replica read it before
	before, after := perMessage(uncached), perMessage(a)
	t.Logf("PostgreSQL statements per message to a device: %.3f without the kept version, %.3f with it", before, after)
	if after > 0.01 {
		t.Errorf("%.3f statements per message with the kept version; want at most one read per 100 messages", after)
	}
	if version() != wire.Version {
		t.Fatalf("sent in version %d, want %d", version(), wire.Version)
	}

	// The device says hello with the previous release's daemon, handled
	// by replica b: replica a's next messages are in that version.
	if _, _, err := b.inv.Hello(t.Context(), id, "", wire.OldestVersion, time.Now()); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, func() error {
		if err := downlink.Send(t.Context(), a.inv, pub, id, "t", verdict); err != nil {
			return err
		}
		if v := version(); v != wire.OldestVersion {
			return fmt.Errorf("replica a still sends version %d after the device spoke %d on replica b", v, wire.OldestVersion)
		}
		return nil
	})
	// Back to the current daemon, said on replica a itself: at once.
	if _, _, err := a.inv.Hello(t.Context(), id, "", wire.Version, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := downlink.Send(t.Context(), a.inv, pub, id, "t", verdict); err != nil || version() != wire.Version {
		t.Fatalf("after a hello on this replica: version %d, %v; want %d", version(), err, wire.Version)
	}
}
