// Command tungate is the gateway daemon: a SOCKS5 server whose flows leave
// directly or through a chain of upstream SOCKS5 proxies.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"tungate/internal/engine"
	"tungate/internal/users"
	"tungate/socks"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is main with its inputs and outputs passed in; it returns the exit
// code: 0 success, 1 failure while running, 2 bad usage or config.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "user" {
		err := runUser(args[1:], stdin, stdout, stderr)
		return exitCode(stderr, err)
	}
	cfg, err := parseConfig(args)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(stdout)
		return 0
	}
	if err != nil {
		return exitCode(stderr, err)
	}
	s, err := cfg.resolve()
	if err != nil {
		return exitCode(stderr, err)
	}
	if s.procs > 0 {
		runtime.GOMAXPROCS(s.procs)
	}
	level := new(slog.LevelVar)
	level.Set(s.logLevel)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if s.procs > 0 {
		log.Info("Go scheduler", "procs", s.procs, "cpus", runtime.NumCPU())
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, s, level, log); err != nil {
		return exitCode(stderr, err)
	}
	return 0
}

// exitCode prints err, if any, and returns the exit code for it.
func exitCode(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "tungate:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// serve runs the daemon until ctx ends.
func serve(ctx context.Context, cfg Config, s *settings, level *slog.LevelVar, log *slog.Logger) error {
	var store *users.Store
	if cfg.Users != "" {
		var err error
		if s.adminUser != "" {
			store, err = users.OpenOrCreate(cfg.Users)
		} else {
			store, err = users.Open(cfg.Users)
		}
		if err != nil {
			return err
		}
		if s.adminUser != "" {
			if err := store.EnsureAdmin(s.adminUser, s.adminPass); err != nil {
				return fmt.Errorf("TUNGATE_ADMIN_USER: %w", err)
			}
		}
		log.Info("user store loaded", "path", cfg.Users, "users", store.Len())
	}

	control := outboundControl(cfg, s)
	var out engine.Outbound = &engine.Direct{Control: control, Resolver: markedResolver(control)}
	if len(s.hops) > 0 {
		up, err := engine.NewUpstream(s.hops, control)
		if err != nil {
			return err
		}
		if s.warm > 0 {
			if err := up.Warm(s.warm, s.warmIdle); err != nil {
				return err
			}
		}
		// Closed last (deferred first): after the TUN side and the SOCKS5
		// server, which dial through it, have stopped.
		defer func() {
			up.Close()
			if s.warm > 0 {
				st := up.WarmStats()
				log.Info("upstream ready connections", "hits", st.Hits, "misses", st.Misses,
					"stale", st.Stale, "retried", st.Retried, "failed", st.Failed)
			}
		}()
		out = up
		log.Info("outbound through upstream chain", "hops", fmt.Sprint(s.hops), "warm", s.warm)
	} else {
		log.Info("outbound direct")
	}
	eng := engine.New(out, s.engine, log.With("component", "engine"))

	stopAdmin, err := startAdmin(ctx, adminDeps{
		Addrs: s.admin, Explicit: cfg.adminExplicit, Engine: eng, Users: store,
		Level: level, Log: log.With("component", "admin"),
	})
	if err != nil {
		return err
	}
	defer stopAdmin()

	if s.pprof.IsValid() {
		_, stopPProf, err := startPProf(s.pprof, log.With("component", "pprof"))
		if err != nil {
			return err
		}
		defer stopPProf()
	}

	var tunDone <-chan struct{}
	if s.tun {
		stopTUN, done, err := startTUN(cfg, s, eng, log)
		if err != nil {
			return err
		}
		defer stopTUN()
		tunDone = done
	}

	var srv *socks.Server
	errc := make(chan error, 1)
	if s.socks.IsValid() {
		l, err := net.Listen("tcp", s.socks.String())
		if err != nil {
			return fmt.Errorf("SOCKS5 listener: %w", err)
		}
		srv = &socks.Server{
			Handler:          eng.SOCKSHandler(),
			RequireAuth:      s.engine.AuthRequired,
			HandshakeTimeout: cfg.HandshakeTimeout,
			MaxSessions:      cfg.MaxSessions,
			Logger:           log.With("component", "socks"),
		}
		if store != nil {
			reg := eng.Registry()
			srv.Authenticate = func(_ context.Context, user, pass string, _ netip.AddrPort) bool {
				if _, ok := store.Authenticate(user, pass); ok {
					return true
				}
				reg.CountFailedLogin()
				return false
			}
		}
		if !s.engine.AuthRequired() && !s.socks.Addr().IsLoopback() {
			log.Warn("SOCKS5 listener accepts clients without authentication on a non-loopback address", "addr", s.socks.String())
		}
		log.Info("SOCKS5 listening", "addr", l.Addr().String(), "auth-required", s.engine.AuthRequired())
		go func() { errc <- srv.Serve(l) }()
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case <-tunDone:
		if srv != nil {
			srv.Close()
			<-errc
		}
		return errors.New("TUN device failed")
	case err := <-errc:
		if srv != nil {
			srv.Close()
		}
		return err
	}
	// Teardown: the SOCKS5 server closes its listener and every session,
	// and waits for them; their flows leave the registry as they end.
	if srv != nil {
		srv.Close()
		<-errc
	}
	return nil
}
