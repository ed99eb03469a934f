package mqttpool_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
)

// TestCRLSyncWatch: with Watch, a CRL the fleet pushes (answers to the
// waiting request) is installed and the broker reloaded at once, an hour
// before the interval's fetch; the sync asks for a CRL newer than the
// broker's; a fleet that answers at once with the CRL the broker has is
// not asked again in a loop.
func TestCRLSyncWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fleetCA := openCA(t, nil)
		dir := brokerDir(t, fleetCA)
		first, err := fleetCA.CRL(nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, mqttpool.CRLFile), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: first}), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // sleep: a later signing time, the next CRL number (fake time)
		newer, err := fleetCA.CRL([]ca.Revoked{{Serial: "0a", Time: time.Now()}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		number := func(der []byte) *big.Int {
			l, err := x509.ParseRevocationList(der)
			if err != nil {
				t.Fatal(err)
			}
			return l.Number
		}

		var mu sync.Mutex
		var afters []*big.Int
		reloads := 0
		push := make(chan []byte)
		s := &mqttpool.CRLSync{Dir: dir, Interval: time.Hour,
			Fetch: func(context.Context) ([]byte, error) { return first, nil },
			Watch: func(ctx context.Context, after *big.Int) ([]byte, error) {
				mu.Lock()
				afters = append(afters, after)
				mu.Unlock()
				select {
				case b := <-push:
					return b, nil
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			},
			Reload: func() error { mu.Lock(); reloads++; mu.Unlock(); return nil }}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- s.Run(ctx) }()
		synctest.Wait()
		mu.Lock()
		if len(afters) != 1 || afters[0] == nil || afters[0].Cmp(number(first)) != 0 {
			t.Fatalf("Watch asked after %v, want the broker's CRL number %v", afters, number(first))
		}
		mu.Unlock()

		push <- newer
		synctest.Wait()
		mu.Lock()
		if reloads != 1 || time.Since(start) != 0 {
			t.Fatalf("%d reloads after %v, want 1 at once", reloads, time.Since(start))
		}
		if last := afters[len(afters)-1]; last.Cmp(number(newer)) != 0 {
			t.Fatalf("the next wait asks after %v, want the new number %v", last, number(newer))
		}
		mu.Unlock()
		b, err := os.ReadFile(filepath.Join(dir, mqttpool.CRLFile))
		if err != nil {
			t.Fatal(err)
		}
		if blk, _ := pem.Decode(b); blk == nil || string(blk.Bytes) != string(newer) {
			t.Fatal("crl.pem is not the pushed CRL")
		}

		// A fleet that does not hold the request: it answers with the
		// CRL the broker has, at once, every time.
		mu.Lock()
		n := len(afters)
		mu.Unlock()
		stop := time.After(time.Minute)
	loop:
		for {
			select {
			case push <- newer:
			case <-stop:
				break loop
			}
		}
		mu.Lock()
		if calls := len(afters) - n; calls > 8 || reloads != 1 {
			t.Fatalf("%d waits in a minute (%d reloads) from a fleet that answers at once: want a few, with pauses", calls, reloads)
		}
		mu.Unlock()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
