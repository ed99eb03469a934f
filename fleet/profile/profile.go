// Package profile serves Go's profiles (net/http/pprof) of the running
// fleet on its debug listener (`sigil serve`'s debug_addr): CPU, heap,
// goroutine and the other runtime profiles, for finding what limits it
// under load. The listener serves nothing else and asks for no
// credential, so it must be a loopback address: a goroutine dump names
// device IDs and a heap profile the fleet's code paths, which are not for
// the network.
package profile

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"
)

// ErrAddr is returned for a debug address that is not loopback.
var ErrAddr = errors.New("profile: debug_addr must be a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT)")

// Listen binds the debug listener, refusing anything but loopback.
func Listen(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAddr, err)
	}
	if ip := net.ParseIP(host); !strings.EqualFold(host, "localhost") && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("%w: %q", ErrAddr, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("profile: debug listener: %w", err)
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() { // localhost resolved elsewhere
		ln.Close()
		return nil, fmt.Errorf("%w: %s resolved to %s", ErrAddr, addr, ip)
	}
	return ln, nil
}

// Handler serves the profiles under /debug/pprof/.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index) // and the named profiles: heap, goroutine, allocs, …
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// Serve serves the profiles on ln until ctx ends.
func Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: Handler(), ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("profile: debug listener: %w", err)
	}
	return nil
}

// Addr is the bound address of the debug listener ln; "" when there is
// none (nil: debug_addr is off).
func Addr(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}
