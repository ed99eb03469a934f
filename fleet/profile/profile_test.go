package profile

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestListenLoopbackOnly: the profiles are served only on a loopback
// address; any other address is refused.
func TestListenLoopbackOnly(t *testing.T) {
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "192.0.2.1:0", "example.com:0", "127.0.0.1", "not an address"} {
		if ln, err := Listen(addr); !errors.Is(err, ErrAddr) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("debug_addr %q: %v, want ErrAddr", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "127.0.0.9:0", "localhost:0"} {
		ln, err := Listen(addr)
		if err != nil {
			t.Errorf("debug_addr %q refused: %v", addr, err)
			continue
		}
		ln.Close()
	}
}

// TestServeStopsWithContext: Serve serves the profile index until its
// context ends, then returns nil.
func TestServeStopsWithContext(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "goroutine") {
		t.Errorf("profile index: %d %.200s", resp.StatusCode, b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
