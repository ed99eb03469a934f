package broker

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestShutdownWhileClientsLeave closes the broker while its clients
// disconnect on their own. mochi's close function for a listener took the
// client table's read lock twice, so a client leaving between the two (its
// delete waiting for the write lock) hung the shutdown for good.
func TestShutdownWhileClientsLeave(t *testing.T) {
	for round := range 20 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			e := startBroker(t, nil)
			const n = 16
			var wg sync.WaitGroup
			for i := range n {
				c, err := e.client(t, fmt.Sprintf("boot-%d-%d", round, i), nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.Disconnect(0)
				}()
			}
			closed := make(chan error, 1)
			go func() { closed <- e.b.close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(shutdownBound):
				t.Fatal("the broker's shutdown hung while clients were leaving")
			}
			wg.Wait()
		})
	}
}

// shutdownBound bounds a shutdown that takes milliseconds. The hang
// needs one interleaving (a delete queued between two read locks): this
// test makes it possible in every round, it cannot force it.
const shutdownBound = 10 * time.Second
