package rotation

import (
	"crypto/x509"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// oneDevice is the Sessions of one connected device that nothing
// disconnects.
type oneDevice string

func (d oneDevice) ConnectedDevices(func(string, *x509.Certificate) bool) []string {
	return []string{string(d)}
}
func (oneDevice) Disconnect(string) {}

// TestTrustBundlesArriveInOrder: a hello's bundle read before a
// retirement is never sent after the retirement's reduced one (the device
// keeps the last it gets: it kept the retired root when the hello's send
// was slower than the push, as TestCARotation found in the flake loop).
func TestTrustBundlesArriveInOrder(t *testing.T) {
	c, err := ca.Open(ca.Config{Dir: filepath.Join(t.TempDir(), "ca"), TrustDomain: "order.test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []int // the number of roots in each bundle sent, in order
	helloSending, release := make(chan struct{}), make(chan struct{})
	first := true
	r := NewCARotation(CARotationConfig{CA: c, Sessions: oneDevice("dev"), Send: func(_, kind string, payload []byte) error {
		env, err := wire.Decode(payload)
		if err != nil {
			t.Error(err)
			return err
		}
		var tb wire.TrustBundle
		if err := wire.DecodeBody(env, wire.TypeTrustBundle, &tb); err != nil {
			t.Error(err)
			return err
		}
		mu.Lock()
		slow := first
		first = false
		mu.Unlock()
		if slow { // the hello's send: slow, past the retirement
			close(helloSending)
			<-release
		}
		mu.Lock()
		got = append(got, len(tb.Roots))
		mu.Unlock()
		return nil
	}})
	var wg sync.WaitGroup
	wg.Go(func() { r.Hello("dev") }) // reads the bundle of both roots
	<-helloSending
	wg.Go(func() {
		if _, err := r.RetireCA("test"); err != nil {
			t.Error(err)
		}
	})
	wait.For(t, "the old generation to be retired", func() bool { return len(c.TrustBundle()) == 1 })
	close(release)
	wg.Wait()
	if len(got) != 2 || got[len(got)-1] != 1 {
		t.Fatalf("bundles sent, by their number of roots: %v; the last must be the reduced one (1)", got)
	}
}
