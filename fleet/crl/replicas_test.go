package crl

import (
	"context"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestWaitWokenByAnotherReplica: two replicas on one PostgreSQL
// database; a request waiting on the second is answered with the CRL
// listing a revocation recorded through the first (the inventory's
// NOTIFY in the revoking transaction, the second's bus).
func TestWaitWokenByAnotherReplica(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	replica := func() (*postgres.DB, *inventory.Store) {
		db := pgtest.Open(t, url)
		inv, err := inventory.OpenPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		return db, inv
	}
	_, inv1 := replica()
	db2, inv2 := replica()
	f := newFakeFleet(t)
	p := New(Config{Revocations: inv2, Signer: f, Hold: time.Hour})
	bus := notify.NewPostgres(db2, nil)
	if err := p.Listen(bus); err != nil {
		t.Fatal(err)
	}
	// Told when the bus listens: from then on, only a notification
	// calls Changed.
	listening := make(chan struct{}, 1)
	if err := bus.Subscribe(inventory.TopicRevocations, func(e notify.Event) {
		if e.Resync {
			select {
			case listening <- struct{}{}:
			default:
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = bus.Run(ctx) })

	<-listening
	now := time.Now()
	d := &inventory.Device{ID: "0123456789abcdef0123456789abcdef", State: inventory.StateActive}
	d.Issued("0c", now, now.Add(time.Hour))
	if err := inv1.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	cur, err := p.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	res := waitFor(ctx, p, "a", cur.Number)
	if _, _, err := inv1.RevokeDevice(t.Context(), d.ID, inventory.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	// Hold is an hour: only the notification answers it.
	var r result
	select {
	case r = <-res:
	case <-time.After(wait.Timeout):
		t.Fatalf("no answer in %v: the revocation did not reach the other replica", wait.Timeout)
	}
	if r.err != nil || r.l == nil {
		t.Fatalf("Wait = %v, %v", r.l, r.err)
	}
	l, err := x509.ParseRevocationList(r.l.DER)
	if err != nil || len(l.RevokedCertificateEntries) != 1 || l.RevokedCertificateEntries[0].SerialNumber.Int64() != 0x0c {
		t.Fatalf("the CRL of the second replica: %v, %v; want 0c listed", l, err)
	}
}

// TestNumbersIncreaseAcrossReplicas: replicas sharing the database number
// their CRLs from one sequence: a replica whose clock is an hour behind
// another's, signing after it, still signs a CRL with a greater number
// (by its own clock it would be older, and brokers would refuse it).
func TestNumbersIncreaseAcrossReplicas(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	f := newFakeFleet(t)
	f.numbered = true
	publisher := func(now func() time.Time) *Publisher {
		nums, err := OpenNumbers(t.Context(), pgtest.Open(t, url))
		if err != nil {
			t.Fatal(err)
		}
		return New(Config{Revocations: f, Signer: f, Numbers: nums, Now: now})
	}
	ahead := publisher(time.Now)
	behind := publisher(func() time.Time { return time.Now().Add(-time.Hour) })
	first, err := ahead.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	f.revoke("0a")
	behind.Changed()
	second, err := behind.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if second.Number.Cmp(first.Number) <= 0 {
		t.Fatalf("the CRL signed after is numbered %v, not above the first's %v", second.Number, first.Number)
	}
	if first.Number.Int64() < time.Now().Add(-time.Minute).UnixNano() {
		t.Errorf("number %v is below the signer's clock: a broker holding a clock-numbered CRL would refuse it", first.Number)
	}
}
