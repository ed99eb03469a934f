package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/device/internal/fakefleet"
	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/internal/runtest"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/devicetest"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// testDevice is an agent with a software TPM and a state file, whose
// broker sessions go to an in-memory fleet (device/internal/fakefleet):
// the agent's real enrollment, connection loop, session loop and renewal,
// on synctest's clock.
type testDevice struct {
	a     *Agent
	fleet *fakefleet.Fleet
	tpm   *softtpm.TPM
	st    *state.Store
}

// withFleet has the agent open its broker sessions with f.
func withFleet(f *fakefleet.Fleet) Option {
	return func(o *options) {
		o.link = func(ctx context.Context, cfg link.Config) (session, error) {
			c, err := f.Dial(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return c, nil
		}
	}
}

func newTestDevice(t *testing.T, tweak func(*Config)) *testDevice {
	t.Helper()
	f := fakefleet.New(t, wire.Topics{Prefix: "sigil"})
	dev := devicetest.New(t)
	tp, st := dev.TPM, dev.Store
	cfg := Config{Broker: fakefleet.Broker, ServerName: fakefleet.ServerName, FleetCA: f.WriteCA(t), Model: "gw-1", Serial: "SN-1",
		State: dev.Path, Control: "-", EventLog: "-", UpdateBackend: "-", TelemetryInterval: -1,
		AttestInterval: -1, RetryMin: Duration(time.Second), RetryMax: Duration(10 * time.Second)}
	if tweak != nil {
		tweak(&cfg)
	}
	a, err := New(cfg, slog.New(slog.DiscardHandler), WithTPM(tp), WithState(st), withFleet(f))
	if err != nil {
		t.Fatal(err)
	}
	return &testDevice{a: a, fleet: f, tpm: tp, st: st}
}

// run runs the agent until the returned stop is called (or the test
// ends); stop reports what Run returned.
func (d *testDevice) run(t *testing.T) (stop func() error) {
	t.Helper()
	return runtest.Start(t, d.a.Run)
}

// connected waits, in fake time, for the agent to be connected; it fails
// the test after limit. It runs in a synctest bubble (synctest.Wait
// panics elsewhere).
func (d *testDevice) connected(t *testing.T, limit time.Duration) Status {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		synctest.Wait()
		if st := d.a.Status(); st.Connected && d.fleet.Connected(st.DeviceID) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("not connected after %v: %+v", limit, d.a.Status())
		}
		// sleep: the bubble's fake clock moves on to the agent's next timer (its backoff, a renewal)
		time.Sleep(100 * time.Millisecond)
	}
}

func (d *testDevice) stored(t *testing.T) *state.Identity {
	t.Helper()
	id, err := d.st.Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// mtlsDials are the attempts with a client certificate, and bootstraps
// the enrollment sessions, from index from of the fleet's dials.
func (d *testDevice) dials(from int) (mtls, bootstraps []fakefleet.Dial) {
	for _, dl := range d.fleet.Dials()[from:] {
		if dl.Bootstrap {
			bootstraps = append(bootstraps, dl)
		} else {
			mtls = append(mtls, dl)
		}
	}
	return mtls, bootstraps
}

func serial(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return c.SerialNumber.Text(16)
}

func serialOf(t *testing.T, der []byte) string {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return serial(c)
}

// TestEnrollsAndConnects: a new device makes its keys, enrolls through
// the fleet's challenge and connects with the certificate it got, whose
// key is its transport key in the TPM.
func TestEnrollsAndConnects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newTestDevice(t, nil)
		d.run(t)
		st := d.connected(t, time.Minute)
		id := d.stored(t)
		if id.Status != state.StatusEnrolled || id.DeviceID != st.DeviceID || st.CertSerial == "" {
			t.Fatalf("stored %s %s, status %+v", id.Status, id.DeviceID, st)
		}
		mtls, boot := d.dials(0)
		if len(boot) != 1 || len(mtls) != 1 || serial(mtls[0].Cert) != serialOf(t, id.Cert) {
			t.Fatalf("%d enrollment sessions and %d mTLS sessions; want 1 and 1 with the stored certificate", len(boot), len(mtls))
		}
		if n := len(d.fleet.Sent(wire.TypeHello)); n != 1 {
			t.Fatalf("%d hellos", n)
		}
	})
}

// TestSwitchOnlyAfterConnectingWithIt: a renewed certificate stays in
// Next, beside the current one, until a connection with it succeeds; only
// then does it become current (and the old key is forgotten). A
// connection with it that fails keeps the current certificate in use and
// the renewed one in Next; a fleet that refuses the renewed certificate
// has the device drop it.
func TestSwitchOnlyAfterConnectingWithIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newTestDevice(t, nil)
		d.fleet.SetLife(3 * time.Hour) // renewal at 2 h of each certificate
		type dial struct {
			renewed int    // which renewed certificate (from 1); 0: the current one
			cert    []byte // presented
			stored  *state.Identity
		}
		var (
			mu      sync.Mutex
			dials   []dial
			renewed int
		)
		fail := map[int]error{
			1: &link.ConnackError{Code: link.ConnackServerUnavailable}, // transient
			3: &link.ConnackError{Code: link.ConnackNotAuthorized},     // the fleet refuses it
		}
		d.fleet.OnConnect(func(dl fakefleet.Dial) error {
			if dl.Bootstrap {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			id := d.stored(t)
			if bytes.Equal(dl.Cert.Raw, id.Cert) {
				dials = append(dials, dial{cert: dl.Cert.Raw, stored: id})
				return nil
			}
			renewed++
			dials = append(dials, dial{renewed: renewed, cert: dl.Cert.Raw, stored: id})
			return fail[renewed]
		})
		stop := d.run(t)
		d.connected(t, time.Minute)
		time.Sleep(4*time.Hour + 10*time.Minute) // two renewals of two certificates
		d.connected(t, time.Minute)
		if err := stop(); err != nil {
			t.Fatal(err)
		}

		mu.Lock()
		defer mu.Unlock()
		var got []int
		for _, dl := range dials {
			got = append(got, dl.renewed)
		}
		want := []int{0, 1, 0, 2, 3, 0, 4}
		if !slices.Equal(got, want) {
			t.Fatalf("connections (0: current certificate, n: n-th renewed one) %v; want %v", got, want)
		}
		first := dials[0].cert
		// Renewed 1: held in Next beside the current one when tried; its
		// failure changes nothing.
		if r := dials[1]; !bytes.Equal(r.stored.Cert, first) || r.stored.Next == nil || !bytes.Equal(r.stored.Next.Cert, r.cert) {
			t.Fatal("a renewed certificate was tried before it was stored in Next, or after it replaced the current one")
		}
		if r := dials[2]; !bytes.Equal(r.stored.Cert, first) || r.stored.Next == nil || !bytes.Equal(r.stored.Next.Cert, dials[1].cert) {
			t.Fatal("a failed connection with the renewed certificate changed the stored identity")
		}
		// Renewed 2: connects; the device switches only then.
		if r := dials[3]; !bytes.Equal(r.stored.Cert, first) {
			t.Fatal("the device switched before connecting with the renewed certificate")
		}
		if r := dials[4]; !bytes.Equal(r.stored.Cert, dials[3].cert) || !bytes.Equal(r.stored.TK.Public, dials[3].stored.Next.TK.Public) {
			t.Fatal("the device did not switch to the renewed certificate it connected with")
		}
		// Renewed 3: refused by the fleet; the device drops it and
		// connects with the certificate it has.
		if r := dials[5]; !bytes.Equal(r.cert, dials[3].cert) || r.stored.Next != nil {
			t.Fatal("the device kept a renewed certificate the fleet refused")
		}
		if id := d.stored(t); !bytes.Equal(id.Cert, dials[6].cert) || id.Next != nil {
			t.Fatal("the last renewal did not end with its certificate current")
		}
	})
}

// TestRefusedTwiceReenrolls: when the fleet refuses the device's
// certificate twice in a row (a revocation: CONNACK 5 from the broker it
// authenticated), the device forgets the certificate and enrolls again
// from its EK, then connects with the new certificate. One refusal
// followed by a success, and failures that are not refusals, never
// re-enroll.
func TestRefusedTwiceReenrolls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newTestDevice(t, nil)
		d.run(t)
		st := d.connected(t, time.Minute)
		before := len(d.fleet.Dials())
		old := d.stored(t).Cert

		d.fleet.Revoke(st.DeviceID)
		d.connected(t, 5*time.Minute)
		// In order: what the device did after the revocation.
		var got []string
		for _, dl := range d.fleet.Dials()[before:] {
			switch {
			case dl.Bootstrap:
				got = append(got, "enroll")
			case bytes.Equal(dl.Cert.Raw, old) && dl.Err != nil:
				got = append(got, "refused")
			case !bytes.Equal(dl.Cert.Raw, old) && dl.Err == nil:
				got = append(got, "connected with a new certificate")
			default:
				got = append(got, fmt.Sprintf("other (%v)", dl.Err))
			}
		}
		if want := []string{"refused", "refused", "enroll", "connected with a new certificate"}; !slices.Equal(got, want) {
			t.Fatalf("after the revocation: %q; want %q", got, want)
		}
		if id := d.stored(t); bytes.Equal(id.Cert, old) || id.Status != state.StatusEnrolled || id.DeviceID != st.DeviceID {
			t.Fatal("the device did not store the certificate of its re-enrollment")
		}
		if n := len(d.fleet.Sent(wire.TypeEnrollRequest)); n != 2 {
			t.Fatalf("%d enrollment requests; want 2", n)
		}
	})
}

// TestOneRefusalOrOtherFailuresKeepTheCertificate: a single refusal, or
// any number of failures that are not the fleet's refusal (CONNACK 3,
// a broker that cannot be reached), never make the device enroll again.
func TestOneRefusalOrOtherFailuresKeepTheCertificate(t *testing.T) {
	refused := &link.ConnackError{Code: link.ConnackNotAuthorized}
	unavailable := &link.ConnackError{Code: link.ConnackServerUnavailable}
	for name, fail := range map[string]func(n int) error{
		"refused once": func(n int) error {
			if n == 1 {
				return refused
			}
			return nil
		},
		"server unavailable": func(n int) error {
			if n <= 6 {
				return unavailable
			}
			return nil
		},
		"unreachable": func(n int) error {
			if n <= 6 {
				return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
			}
			return nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := newTestDevice(t, nil)
				var mu sync.Mutex
				n := -1 // the first connection, after enrolling, succeeds
				d.fleet.OnConnect(func(dl fakefleet.Dial) error {
					if dl.Bootstrap {
						return nil
					}
					mu.Lock()
					defer mu.Unlock()
					n++
					if n == 0 {
						return nil
					}
					return fail(n)
				})
				d.run(t)
				st := d.connected(t, time.Minute)
				d.fleet.Drop(st.DeviceID)
				time.Sleep(time.Second)
				d.connected(t, 10*time.Minute)
				if _, boot := d.dials(0); len(boot) != 1 {
					t.Fatalf("%d enrollment sessions; want 1 (no re-enrollment)", len(boot))
				}
			})
		})
	}
}

// TestExpiredWhileOfflineReenrolls: a device whose certificate expired
// while it could not reach the fleet proves itself again from its EK
// instead of presenting the expired certificate, and connects with the
// certificate of its new enrollment.
func TestExpiredWhileOfflineReenrolls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newTestDevice(t, nil)
		d.fleet.SetLife(time.Hour) // renewal at 40 min: the device goes offline before
		d.run(t)
		st := d.connected(t, time.Minute)
		old := d.stored(t)
		c, _ := x509.ParseCertificate(old.Cert)
		before := len(d.fleet.Dials())

		d.fleet.SetOnline(false)
		time.Sleep(time.Until(c.NotAfter) + 10*time.Minute)
		synctest.Wait()
		d.fleet.SetOnline(true)
		d.connected(t, time.Minute)

		mtls, boot := d.dials(before)
		if len(boot) == 0 {
			t.Fatal("the device did not enroll again")
		}
		for _, m := range mtls {
			if m.Cert != nil && bytes.Equal(m.Cert.Raw, old.Cert) && !m.At.Before(c.NotAfter) {
				t.Fatalf("the device presented its certificate %v after it expired", m.At.Sub(c.NotAfter))
			}
		}
		last := mtls[len(mtls)-1]
		if last.Err != nil || bytes.Equal(last.Cert.Raw, old.Cert) {
			t.Fatal("the device did not connect with a new certificate")
		}
		if id := d.stored(t); !bytes.Equal(id.Cert, last.Cert.Raw) || id.DeviceID != st.DeviceID {
			t.Fatal("the new certificate was not stored")
		}
		if n := len(d.fleet.Sent(wire.TypeEnrollRequest)); n != 2 {
			t.Fatalf("%d enrollment requests; want 2", n)
		}
	})
}
