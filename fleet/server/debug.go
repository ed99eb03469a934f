package server

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

// Go's profiles (net/http/pprof) on Config.DebugAddr: CPU, heap, goroutine
// and the other runtime profiles of the running fleet, for finding what
// limits it under load. Off unless debug_addr is set. The listener serves
// nothing else and asks for no credential, so it must be a loopback
// address: a goroutine dump names device IDs and a heap profile the
// fleet's code paths, which are not for the network.

// errDebugAddr is returned for a debug_addr that is not loopback.
var errDebugAddr = errors.New("server: debug_addr must be a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT)")

// listenDebug binds the debug listener, refusing anything but loopback.
func listenDebug(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errDebugAddr, err)
	}
	if ip := net.ParseIP(host); !strings.EqualFold(host, "localhost") && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("%w: %q", errDebugAddr, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("server: debug listener: %w", err)
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() { // localhost resolved elsewhere
		ln.Close()
		return nil, fmt.Errorf("%w: %s resolved to %s", errDebugAddr, addr, ip)
	}
	return ln, nil
}

// debugHandler serves the profiles under /debug/pprof/.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index) // and the named profiles: heap, goroutine, allocs, …
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// serveDebug serves the debug listener until ctx ends.
func (s *Server) serveDebug(ctx context.Context) error {
	srv := &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(s.debugLn); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("server: debug listener: %w", err)
	}
	return nil
}

// DebugAddr is the debug listener's bound address, "" when it is off.
func (s *Server) DebugAddr() string {
	if s.debugLn == nil {
		return ""
	}
	return s.debugLn.Addr().String()
}
