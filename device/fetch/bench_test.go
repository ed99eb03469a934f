package fetch_test

import (
	"context"
	"io"
	"testing"

	"github.com/sigil-iot/sigil/device/fetch"
)

// BenchmarkGet downloads a 4 MiB file over loopback TLS, a new connection
// each time (as the update engine does), into io.Discard.
func BenchmarkGet(b *testing.B) {
	img := image(4 << 20)
	srv, _ := serveImage(b, img)
	c := client(srv)
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		resp, err := c.Get(context.Background(), fetch.Request{URL: srv.URL + "/i"})
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != int64(len(img)) {
			b.Fatalf("%d bytes, %v", n, err)
		}
	}
}

// BenchmarkNetHTTPGet is the same download with net/http's client and a
// new connection each time, for comparison.
func BenchmarkNetHTTPGet(b *testing.B) {
	img := image(4 << 20)
	srv, _ := serveImage(b, img)
	hc := srv.Client()
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		resp, err := hc.Get(srv.URL + "/i")
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		hc.CloseIdleConnections()
		if err != nil || n != int64(len(img)) {
			b.Fatalf("%d bytes, %v", n, err)
		}
	}
}
