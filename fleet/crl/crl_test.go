package crl

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m) }

// fakeFleet is an inventory's revocations and a CA whose CRL numbers
// count the signatures.
type fakeFleet struct {
	mu      sync.Mutex
	revoked []inventory.Revocation
	n       int64 // CRLs signed
	// numbered: the CRLs carry the number the Publisher gives (else
	// their count).
	numbered bool
	key      *ecdsa.PrivateKey
	cert     *x509.Certificate
}

func newFakeFleet(t *testing.T) *fakeFleet {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCRLSign | x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeFleet{key: key, cert: cert}
}

func (f *fakeFleet) Revocations(context.Context, time.Time) ([]inventory.Revocation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]inventory.Revocation(nil), f.revoked...), nil
}

func (f *fakeFleet) revoke(serial string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, inventory.Revocation{Serial: serial, Time: time.Now()})
}

func (f *fakeFleet) CRLNumbered(number *big.Int, entries []ca.Revoked, validity time.Duration) ([]byte, error) {
	f.mu.Lock()
	f.n++
	n := big.NewInt(f.n)
	f.mu.Unlock()
	if f.numbered {
		n = number
	}
	list := &x509.RevocationList{Number: n, ThisUpdate: time.Now(), NextUpdate: time.Now().Add(validity)}
	for _, e := range entries {
		s, _ := new(big.Int).SetString(e.Serial, 16)
		list.RevokedCertificateEntries = append(list.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: e.Time})
	}
	return x509.CreateRevocationList(rand.Reader, list, f.cert, f.key)
}

func newPublisher(t *testing.T, cfg Config) (*Publisher, *fakeFleet) {
	f := newFakeFleet(t)
	cfg.Revocations, cfg.Signer = f, f
	return New(cfg), f
}

type result struct {
	l   *List
	err error
	at  time.Time
}

// waitFor starts p.Wait and returns where its result will arrive.
func waitFor(ctx context.Context, p *Publisher, source string, after *big.Int) <-chan result {
	out := make(chan result, 1)
	go func() {
		l, err := p.Wait(ctx, Waiter{Source: source}, after)
		out <- result{l, err, time.Now()}
	}()
	return out
}

func serials(t *testing.T, l *List) []string {
	t.Helper()
	crl, err := x509.ParseRevocationList(l.DER)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, e.SerialNumber.Text(16))
	}
	return out
}

func TestWaitAnswersAtOnceWhenNewer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := newPublisher(t, Config{})
		cur, err := p.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for _, after := range []*big.Int{nil, new(big.Int).Sub(cur.Number, big.NewInt(1))} {
			l, err := p.Wait(t.Context(), Waiter{Source: "a"}, after)
			if err != nil || l == nil || l.Number.Cmp(cur.Number) != 0 {
				t.Fatalf("Wait(after %v) = %v, %v; want the current CRL %v at once", after, l, err, cur.Number)
			}
		}
		if time.Since(start) != 0 || p.Waiting() != 0 {
			t.Fatalf("Wait waited (%v, %d waiting) with a newer CRL at hand", time.Since(start), p.Waiting())
		}
	})
}

func TestWaitAnswersWhenChanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newPublisher(t, Config{})
		cur, err := p.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		res := waitFor(t.Context(), p, "a", cur.Number)
		synctest.Wait()
		select {
		case r := <-res:
			t.Fatalf("Wait answered %v, %v with nothing newer", r.l, r.err)
		default:
		}
		if p.Waiting() != 1 {
			t.Fatalf("%d waiting, want 1", p.Waiting())
		}
		time.Sleep(10 * time.Second) // sleep: fake time passing while it waits (synctest)
		f.revoke("abcd")
		p.Changed()
		r := <-res
		if r.err != nil || r.l == nil || r.l.Number.Cmp(cur.Number) <= 0 {
			t.Fatalf("Wait = %v, %v; want a CRL newer than %v", r.l, r.err, cur.Number)
		}
		if got := serials(t, r.l); len(got) != 1 || got[0] != "abcd" {
			t.Fatalf("the CRL lists %v, want [abcd]", got)
		}
		if r.at.Sub(start) != 10*time.Second || p.Waiting() != 0 {
			t.Fatalf("answered after %v (%d still waiting), want at the change (10s)", r.at.Sub(start), p.Waiting())
		}
	})
}

func TestWaitTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := newPublisher(t, Config{Hold: 30 * time.Second})
		cur, err := p.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r := <-waitFor(t.Context(), p, "a", cur.Number)
		if r.err != nil || r.l != nil {
			t.Fatalf("Wait = %v, %v; want nothing at the hold's end", r.l, r.err)
		}
		if r.at.Sub(start) != 30*time.Second || p.Waiting() != 0 {
			t.Fatalf("answered after %v (%d still waiting), want the hold (30s)", r.at.Sub(start), p.Waiting())
		}
		// A Changed that signs nothing newer for the waiter (the
		// revocations are the same) is not an answer either: here
		// Changed signs again, which is newer; the waiter of that newer
		// number keeps waiting.
		p.Changed()
		l, err := p.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		res := waitFor(t.Context(), p, "a", l.Number)
		synctest.Wait()
		select {
		case r := <-res:
			t.Fatalf("Wait answered %v, %v with nothing newer", r.l, r.err)
		default:
		}
		ctx, cancel := context.WithCancel(t.Context())
		res2 := waitFor(ctx, p, "b", l.Number)
		synctest.Wait()
		cancel()
		if r := <-res2; !errors.Is(r.err, context.Canceled) {
			t.Fatalf("a canceled Wait = %v, %v", r.l, r.err)
		}
		<-res
	})
}

func TestWaitBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newPublisher(t, Config{MaxPerSource: 2, MaxWaiting: 3})
		cur, err := p.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var held []<-chan result
		for _, src := range []string{"a", "a", "b"} {
			held = append(held, waitFor(t.Context(), p, src, cur.Number))
		}
		synctest.Wait()
		if p.Waiting() != 3 {
			t.Fatalf("%d waiting, want 3", p.Waiting())
		}
		if _, err := p.Wait(t.Context(), Waiter{Source: "a"}, cur.Number); !errors.Is(err, ErrSourceBusy) {
			t.Fatalf("a third wait from one source: %v, want ErrSourceBusy", err)
		}
		if _, err := p.Wait(t.Context(), Waiter{Source: "c"}, cur.Number); !errors.Is(err, ErrBusy) {
			t.Fatalf("a fourth wait: %v, want ErrBusy", err)
		}
		// Over the bounds, a request that need not wait is answered.
		if l, err := p.Wait(t.Context(), Waiter{Source: "a"}, nil); err != nil || l == nil {
			t.Fatalf("a request that need not wait: %v, %v", l, err)
		}
		f.revoke("01")
		p.Changed()
		for _, res := range held {
			if r := <-res; r.err != nil || r.l == nil || r.l.Number.Cmp(cur.Number) <= 0 {
				t.Fatalf("Wait = %v, %v; want the newer CRL", r.l, r.err)
			}
		}
		if p.Waiting() != 0 || len(p.bySource) != 0 {
			t.Fatalf("%d waiting, by source %v, after all answered", p.Waiting(), p.bySource)
		}
	})
}

// TestCurrentSeesUnnotifiedRevocations: a plain read counts the
// revocations (at most once per MinInterval), so one recorded without
// Changed is in the CRL it serves; it wakes the waiting requests too.
func TestCurrentSeesUnnotifiedRevocations(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newPublisher(t, Config{})
		cur, err := p.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		res := waitFor(t.Context(), p, "a", cur.Number)
		synctest.Wait()
		f.revoke("02")
		// The revocations are read at most once per MinInterval.
		time.Sleep(DefaultMinInterval) // sleep: fake time passing (synctest)
		l, err := p.Current(t.Context())
		if err != nil || len(serials(t, &l)) != 1 {
			t.Fatalf("Current = %v, %v; want the revocation in it", l, err)
		}
		if r := <-res; r.l == nil || r.l.Number.Cmp(l.Number) != 0 {
			t.Fatalf("the waiter got %v, %v; want the new CRL", r.l, r.err)
		}
	})
}

func TestParseNumber(t *testing.T) {
	for _, s := range []string{"", "-1", "+1", "1e3", "0x10", " 1", "12345678901234567890123456789012345678901234567890"} {
		if _, err := ParseNumber(s); err == nil {
			t.Errorf("ParseNumber(%q) accepted", s)
		}
	}
	if n, err := ParseNumber("1796681012000000000"); err != nil || n.String() != "1796681012000000000" {
		t.Errorf("ParseNumber = %v, %v", n, err)
	}
}

func FuzzParseNumber(f *testing.F) {
	for _, s := range []string{"0", "1796681012000000000", "-1", "١٢"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseNumber(s)
		if err != nil {
			return
		}
		if n.Sign() < 0 || len(s) > maxNumberDigits {
			t.Fatalf("ParseNumber(%q) = %v", s, n)
		}
	})
}

// TestChangesCoalesced: a burst of revocations signs one CRL per
// MinInterval for the waiting requests, which get every revocation of
// the burst.
func TestChangesCoalesced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newPublisher(t, Config{MinInterval: time.Second})
		cur, err := p.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		res := waitFor(t.Context(), p, "a", cur.Number)
		synctest.Wait()
		for _, serial := range []string{"01", "02", "03"} {
			f.revoke(serial)
			p.Changed()
			synctest.Wait()
		}
		r := <-res
		if r.err != nil || r.l == nil || len(serials(t, r.l)) != 3 {
			t.Fatalf("Wait = %v, %v; want one CRL listing the burst", r.l, r.err)
		}
		if r.at.Sub(start) != time.Second {
			t.Fatalf("answered after %v, want MinInterval after the last signature (1s)", r.at.Sub(start))
		}
		f.mu.Lock()
		signed := f.n
		f.mu.Unlock()
		if signed != 2 {
			t.Fatalf("%d CRLs signed, want 2 (before and after the burst)", signed)
		}
		// Long after, a revocation is answered at once.
		time.Sleep(time.Minute) // sleep: fake time passing (synctest)
		res = waitFor(t.Context(), p, "a", r.l.Number)
		synctest.Wait()
		start = time.Now()
		f.revoke("04")
		p.Changed()
		if r := <-res; r.err != nil || r.l == nil || len(serials(t, r.l)) != 4 || r.at.Sub(start) != 0 {
			t.Fatalf("Wait = %v, %v after %v; want the CRL at once", r.l, r.err, r.at.Sub(start))
		}
	})
}

// countingFleet counts the reads of the revocations.
type countingFleet struct {
	*fakeFleet
	reads int
}

func (c *countingFleet) Revocations(ctx context.Context, now time.Time) ([]inventory.Revocation, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.fakeFleet.Revocations(ctx, now)
}

// TestSigningBounded: however many plain reads (anonymous GET /crl) and
// changes come, a CRL is signed at most once per MinInterval and the
// revocations are read at most about as often; every read answers with a
// CRL listing every revocation Changed told of before it (within
// MinInterval).
func TestSigningBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &countingFleet{fakeFleet: newFakeFleet(t)}
		p := New(Config{Revocations: f, Signer: f, MinInterval: time.Second})
		start := time.Now()
		var wg sync.WaitGroup
		for i := range 200 {
			serial := big.NewInt(int64(0x100 + i)).Text(16)
			f.revoke(serial)
			p.Changed()
			for range 5 {
				wg.Go(func() {
					l, err := p.Current(t.Context())
					if err != nil {
						t.Error(err)
						return
					}
					found := false
					for _, s := range serials(t, &l) {
						found = found || s == serial
					}
					if !found {
						t.Errorf("a read after revoking %s got a CRL without it", serial)
					}
				})
			}
			time.Sleep(10 * time.Millisecond) // sleep: fake time passing between requests (synctest)
		}
		wg.Wait()
		elapsed := time.Since(start)
		f.mu.Lock()
		signed, reads := f.n, f.reads
		f.mu.Unlock()
		bound := int64(elapsed/time.Second) + 1
		t.Logf("%v: %d CRLs signed, %d reads of the revocations, for 1,000 requests and 200 changes", elapsed, signed, reads)
		if signed > bound || int64(reads) > 2*bound {
			t.Fatalf("%d CRLs signed and %d reads of the revocations in %v; want at most %d (one per MinInterval)", signed, reads, elapsed, bound)
		}
	})
}

// TestSyncsHaveReservedSlots: anonymous requests that fill every slot
// they may take leave a broker's sync its reserved slots; a sync beyond
// them takes the anonymous ones, and is bounded per source apart from
// them.
func TestSyncsHaveReservedSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newPublisher(t, Config{MaxPerSource: 1, MaxWaiting: 2, Reserved: 1})
		cur, err := p.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var held []<-chan result
		for _, src := range []string{"a", "b"} {
			held = append(held, waitFor(t.Context(), p, src, cur.Number))
		}
		synctest.Wait()
		if _, err := p.Wait(t.Context(), Waiter{Source: "c"}, cur.Number); !errors.Is(err, ErrBusy) {
			t.Fatalf("a third anonymous request: %v, want ErrBusy", err)
		}
		// The sync's source also has an anonymous request waiting.
		sync := func(ctx context.Context) <-chan result {
			out := make(chan result, 1)
			go func() {
				l, err := p.Wait(ctx, Waiter{Source: "a", Sync: true}, cur.Number)
				out <- result{l, err, time.Now()}
			}()
			return out
		}
		held = append(held, sync(t.Context()))
		synctest.Wait()
		if p.Waiting() != 3 {
			t.Fatalf("%d waiting, want the sync beside the 2 anonymous requests", p.Waiting())
		}
		if _, err := p.Wait(t.Context(), Waiter{Source: "a", Sync: true}, cur.Number); !errors.Is(err, ErrSourceBusy) {
			t.Fatalf("a second sync from one source: %v, want ErrSourceBusy", err)
		}
		if _, err := p.Wait(t.Context(), Waiter{Source: "d", Sync: true}, cur.Number); !errors.Is(err, ErrBusy) {
			t.Fatalf("a sync with every slot taken: %v, want ErrBusy", err)
		}
		f.revoke("01")
		p.Changed()
		for _, res := range held {
			if r := <-res; r.err != nil || r.l == nil || r.l.Number.Cmp(cur.Number) <= 0 {
				t.Fatalf("Wait = %v, %v; want the newer CRL", r.l, r.err)
			}
		}
		if p.Waiting() != 0 || len(p.bySource) != 0 {
			t.Fatalf("%d waiting, by source %v, after all answered", p.Waiting(), p.bySource)
		}
	})
}
