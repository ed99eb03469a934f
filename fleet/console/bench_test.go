package console_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// benchDevices is the inventory size of the latency figures.
const benchDevices = 100_000

// fillInventory stores n devices through PutDevice (the inventory opened
// with NoSync): 1% quarantined, 2% pending, 1% decommissioned, 100 owners,
// 10 groups, 5 models.
func fillInventory(b *testing.B, f *fixture, n int) {
	b.Helper()
	now := f.clock.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				state := inventory.StateActive
				switch {
				case i%100 == 1:
					state = inventory.StateQuarantined
				case i%100 == 2, i%100 == 3:
					state = inventory.StatePending
				case i%100 == 4:
					state = inventory.StateDecommissioned
				}
				d := &inventory.Device{ID: devID(i), EKFingerprint: ekFP(i), State: state, Model: fmt.Sprintf("gw-%d", i%5),
					Serial: fmt.Sprintf("SN-%06d", i), Owner: fmt.Sprintf("plant-%d", i%100), Group: fmt.Sprintf("g%d", i%10),
					Firmware: fmt.Sprintf("1.%d.0", i%20), TrustPath: inventory.TrustEKCA, CertSerial: fmt.Sprintf("%x", 0xc0000+i),
					CertExpiry: now.Add(time.Duration(i%48) * time.Hour), FirstSeen: now, LastSeen: now.Add(-time.Duration(i*7919%100000) * time.Second),
					Attestation: "pass", LastAttested: now, EKPublic: make([]byte, 280), AKPublic: make([]byte, 90)}
				if i%1000 == 7 {
					d.Tags = []string{"canary"}
				}
				if err := f.inv.PutDevice(context.Background(), d); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkDeviceList100k times the device list page and the API's device
// list over a 100,000-device inventory, each request authenticated (a
// session cookie for the console, an API token for the API), and reports
// p50 and p99 latencies.
func BenchmarkDeviceList100k(b *testing.B) {
	// One device in five holds a broker session.
	f := newFixture(b, func(c *console.Config) {
		c.Connected = func(id string) bool { return id[len(id)-1] == '0' || id[len(id)-1] == '5' }
	})
	fillInventory(b, f, benchDevices)
	op := f.login("olga", auth.RoleOperator)
	token, _, err := f.auth.CreateToken(b.Context(), "olga", "bench", auth.RoleOperator, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	// Each API request comes from another address, so that the API's
	// per-client rate limit does not turn the benchmark into 429s.
	clients := 0
	apiGet := func(path string) func() *http.Request {
		return func() *http.Request {
			clients++
			r := newRequest(http.MethodGet, path, nil)
			r.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:40000", clients>>16&0xff, clients>>8&0xff, clients&0xff)
			r.Header.Set("Authorization", "Bearer "+token)
			return r
		}
	}
	consoleGet := func(path string) func() *http.Request {
		return func() *http.Request {
			r := newRequest(http.MethodGet, path, nil)
			r.AddCookie(op.cookie)
			return r
		}
	}
	cases := []struct {
		name string
		req  func() *http.Request
	}{
		{"console/first-page", consoleGet("/devices")},
		{"console/page-deep", consoleGet("/devices?after=" + devID(80_000))},
		{"console/state=quarantined", consoleGet("/devices?state=quarantined")},
		{"console/exact-id", consoleGet("/devices?q=" + devID(54_321))},
		{"console/exact-ek", consoleGet("/devices?q=" + ekFP(54_321))},
		{"console/owner+group", consoleGet("/devices?owner=plant-42&group=g2")},
		{"console/text-rare", consoleGet("/devices?q=SN-099999")},
		{"console/sort=last_seen-desc", consoleGet("/devices?sort=last_seen&dir=desc")},
		{"console/sort=cert_expiry-deep", consoleGet("/devices?sort=cert_expiry&after=" + cursorAt(f, "cert_expiry", 60_000))},
		{"console/firmware=1.7.0", consoleGet("/devices?firmware=1.7.0")},
		{"console/firmware+state+sort=serial", consoleGet("/devices?firmware=1.7.0&state=active&sort=serial&dir=desc")},
		{"console/tag=canary", consoleGet("/devices?tag=canary")},
		{"console/connected=yes", consoleGet("/devices?connected=yes")},
		{"console/quarantined+sort=last_seen", consoleGet("/devices?state=quarantined&sort=last_seen&dir=desc")},
		{"console/device-page", consoleGet("/devices/" + devID(54_321))},
		{"api/first-page", apiGet("/api/v1/devices?limit=50")},
		{"api/state=quarantined", apiGet("/api/v1/devices?state=quarantined&limit=50")},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				r := c.req()
				start := time.Now()
				w := f.serve(r)
				lat = append(lat, time.Since(start))
				if w.Code != http.StatusOK {
					b.Fatalf("status %d: %s", w.Code, w.Body.String())
				}
			}
			reportPercentiles(b, lat)
		})
	}
	b.Run("console/overview-recount", func(b *testing.B) {
		var lat []time.Duration
		for b.Loop() {
			f.clock.Advance(time.Minute) // past SummaryMaxAge: the view counts the inventory again
			r := consoleGet("/")()
			start := time.Now()
			w := f.serve(r)
			lat = append(lat, time.Since(start))
			if w.Code != http.StatusOK {
				b.Fatalf("status %d", w.Code)
			}
		}
		reportPercentiles(b, lat)
	})
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

// cursorAt returns the list's cursor after the n-th device in an order
// (to time a page deep in a sorted list).
func cursorAt(f *fixture, order inventory.Field, n int) string {
	f.t.Helper()
	p, err := f.inv.Query(context.Background(), inventory.Query{Order: order, Limit: 1000})
	for err == nil && n > 1000 && p.Next != "" {
		n -= 1000
		p, err = f.inv.Query(context.Background(), inventory.Query{Order: order, Limit: 1000, After: p.Next})
	}
	if err != nil || p.Next == "" {
		f.t.Fatalf("cursor at %d: %v", n, err)
	}
	return url.QueryEscape(p.Next)
}
