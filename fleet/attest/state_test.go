package attest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestStateConformance runs the State suite on the in-memory default and
// on PostgreSQL.
func TestStateConformance(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		stateSuite(t, func(*testing.T) State { return newMemState(time.Now) })
	})
	srv := pgtest.Start(t)
	t.Run("postgres", func(t *testing.T) {
		stateSuite(t, func(t *testing.T) State {
			db, err := postgres.Open(t.Context(), srv.NewDatabase(t), postgres.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(db.Close)
			st, err := OpenStatePostgres(t.Context(), db)
			if err != nil {
				t.Fatal(err)
			}
			return st
		})
	})
}

func stateSuite(t *testing.T, open func(*testing.T) State) {
	issue := func(t *testing.T, st State, dev, purpose string, ttl time.Duration) []byte {
		t.Helper()
		v := make([]byte, 32)
		rand.Read(v)
		if err := st.Issue(t.Context(), &Nonce{Value: v, DeviceID: dev, Purpose: purpose, Issued: time.Now(), Selections: []wire.PCRSelection{wire.DefaultSelection()}}, ttl); err != nil {
			t.Fatal(err)
		}
		return v
	}
	refused := func(t *testing.T, err error, what string) {
		t.Helper()
		var we *wire.Error
		if !errors.As(err, &we) || we.Reason != wire.ReasonNonceInvalid {
			t.Errorf("%s: %v, want a nonce_invalid refusal", what, err)
		}
	}
	t.Run("single use, bound to its device", func(t *testing.T) {
		st := open(t)
		v := issue(t, st, "d1", wire.PurposeRenew, time.Minute)
		_, err := st.Take(t.Context(), "d2", v)
		refused(t, err, "another device's take")
		n, err := st.Take(t.Context(), "d1", v)
		if err != nil {
			t.Fatalf("take after another device's try: %v", err)
		}
		if n.Purpose != wire.PurposeRenew || n.DeviceID != "d1" || n.Issued.IsZero() || len(n.Selections) != 1 || !slices.Equal(n.Selections[0].PCRs, wire.DefaultSelection().PCRs) {
			t.Errorf("taken nonce %+v", n)
		}
		_, err = st.Take(t.Context(), "d1", v)
		refused(t, err, "second take")
	})
	t.Run("expired", func(t *testing.T) {
		st := open(t)
		v := issue(t, st, "d1", "", -time.Second)
		_, err := st.Take(t.Context(), "d1", v)
		refused(t, err, "expired nonce")
		if err != errNonceExpired {
			t.Errorf("expired nonce: %v, want %v", err, errNonceExpired)
		}
		v = issue(t, st, "d1", "", -time.Second)
		if err := st.Expire(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Take(t.Context(), "d1", v); err != errNonceUnknown {
			t.Errorf("nonce taken after Expire: %v, want %v", err, errNonceUnknown)
		}
	})
	t.Run("open nonces bounded", func(t *testing.T) {
		st := open(t)
		var vs [][]byte
		for range maxOpenNonces + 1 {
			vs = append(vs, issue(t, st, "d1", "", time.Minute))
		}
		other := issue(t, st, "d2", "", time.Minute)
		_, err := st.Take(t.Context(), "d1", vs[0])
		refused(t, err, "the oldest nonce beyond the bound")
		for i, v := range append(vs[1:], other) {
			dev := "d1"
			if i == maxOpenNonces {
				dev = "d2"
			}
			if _, err := st.Take(t.Context(), dev, v); err != nil {
				t.Errorf("nonce %d within the bound: %v", i+1, err)
			}
		}
	})
	t.Run("liveness", func(t *testing.T) {
		st := open(t)
		issue(t, st, "d1", "", time.Minute)
		issue(t, st, "d1", "", time.Minute)
		l, err := st.Liveness(t.Context(), []string{"d0", "d1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(l) != 2 || l[0].Unanswered != 0 || l[1].Unanswered != 2 || l[0].Silent < 0 {
			t.Fatalf("liveness after two challenges to d1: %+v", l)
		}
		if err := st.Answered(t.Context(), "d1", time.Now(), false, time.Time{}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if l, err = st.Liveness(t.Context(), []string{"d1"}); err != nil || l[0].Unanswered != 0 || l[0].Silent > time.Minute {
			t.Fatalf("liveness after d1 answered: %+v, %v", l, err)
		}
	})
	t.Run("sessions", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		not := func(what string) {
			t.Helper()
			if err := st.Current(ctx, "d1", time.Hour); !errors.Is(err, ErrNoCurrentVerdict) {
				t.Errorf("%s: Current %v, want ErrNoCurrentVerdict", what, err)
			}
		}
		pass := func(v []byte, ok bool) {
			t.Helper()
			n, err := st.Take(ctx, "d1", v)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Answered(ctx, "d1", time.Now(), ok, n.Issued, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		pass(issue(t, st, "d1", "", time.Minute), true)
		not("a pass without a session")
		early := issue(t, st, "d1", "", time.Minute)
		if err := st.SessionStarted(ctx, "d1", time.Now()); err != nil {
			t.Fatal(err)
		}
		not("a new session")
		pass(early, true)
		not("a pass on a nonce issued before the session")
		pass(issue(t, st, "d1", "", time.Minute), true)
		if err := st.Current(ctx, "d1", time.Hour); err != nil {
			t.Errorf("a pass in the session: %v", err)
		}
		if err := st.Current(ctx, "d1", -time.Nanosecond); !errors.Is(err, ErrNoCurrentVerdict) {
			t.Errorf("a pass older than the maximum age: %v", err)
		}
		if err := st.Current(ctx, "d2", time.Hour); !errors.Is(err, ErrNoCurrentVerdict) {
			t.Errorf("another device: %v", err)
		}
		// Two passes judged on two replicas at once: the one on the
		// nonce issued before the session (the device's own request,
		// overtaken by its hello) is recorded after the one on the
		// nonce issued within it (the hello's challenge); the latter
		// still counts.
		before := issue(t, st, "d1", "", time.Minute)
		if err := st.SessionStarted(ctx, "d1", time.Now()); err != nil {
			t.Fatal(err)
		}
		pass(issue(t, st, "d1", "", time.Minute), true)
		pass(before, true)
		if err := st.Current(ctx, "d1", time.Hour); err != nil {
			t.Errorf("a pass in the session, then one on an older nonce: %v", err)
		}
		older := issue(t, st, "d1", "", time.Minute)
		pass(issue(t, st, "d1", "", time.Minute), true)
		pass(older, false)
		not("a failing verdict, even on an older nonce, after the pass")
		pass(issue(t, st, "d1", "", time.Minute), true)
		pass(issue(t, st, "d1", "", time.Minute), false)
		not("a failing verdict after the pass")
		pass(issue(t, st, "d1", "", time.Minute), true)
		if err := st.SessionEnded(ctx, "d1"); err != nil {
			t.Fatal(err)
		}
		not("the session ended")
	})
}

// TestStateNonceTakenOnceAcrossReplicas: replicas racing to take the same
// nonces (a device's evidence delivered twice, to two replicas) each get
// a nonce at most once, and every nonce is taken.
func TestStateNonceTakenOnceAcrossReplicas(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	var states []State
	for range 2 {
		db := pgtest.Open(t, url)
		st, err := OpenStatePostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		states = append(states, st)
	}
	const n = 50
	nonces := make([][]byte, n)
	for i := range nonces {
		nonces[i] = make([]byte, 32)
		rand.Read(nonces[i])
		dev := fmt.Sprintf("d%d", i) // one each: a device keeps only a few open
		if err := states[i%2].Issue(t.Context(), &Nonce{Value: nonces[i], DeviceID: dev, Issued: time.Now()}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	taken := make([]int, n)
	var wg sync.WaitGroup
	for _, st := range states {
		wg.Go(func() {
			for i, v := range nonces {
				_, err := st.Take(t.Context(), fmt.Sprintf("d%d", i), v)
				switch {
				case err == nil:
					mu.Lock()
					taken[i]++
					mu.Unlock()
				case err != errNonceUnknown:
					t.Errorf("take: %v", err)
				}
			}
		})
	}
	wg.Wait()
	for i, c := range taken {
		if c != 1 {
			t.Errorf("nonce %d taken %d times, want once", i, c)
		}
	}
}
