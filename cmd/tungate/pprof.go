package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sync"
	"time"
)

// startPProf serves Go's runtime profiles (CPU, heap, goroutines, ...) on
// addr, a loopback address, until the returned stop (idempotent) is called; bound is the address it
// listens on. It is for
// performance work on a running gateway: go tool pprof
// http://127.0.0.1:6060/debug/pprof/profile?seconds=10.
func startPProf(addr netip.AddrPort, log *slog.Logger) (bound net.Addr, stop func(), err error) {
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, nil, fmt.Errorf("--pprof listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof server stopped", "err", err)
		}
	}()
	log.Info("serving runtime profiles", "addr", l.Addr().String())
	var once sync.Once
	return l.Addr(), func() {
		once.Do(func() {
			// Close, not Shutdown: a CPU profile in progress is cut short
			// rather than holding up the exit for its full duration.
			srv.Close()
			wg.Wait()
		})
	}, nil
}
