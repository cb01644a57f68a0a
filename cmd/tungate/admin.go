package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"tungate/admin"
	"tungate/internal/engine"
	"tungate/internal/users"
)

// adminDeps is what the admin server is built from.
type adminDeps struct {
	Addrs    []netip.AddrPort // from settings.admin; empty: disabled
	Explicit bool             // cfg.adminExplicit: failing to serve is an error, not a warning
	Engine   *engine.Engine
	Users    *users.Store // nil when there is no --users: then no one can log in; say so in a warning and do not serve
	Level    *slog.LevelVar
	Log      *slog.Logger
}

// startAdmin starts the admin server; stop closes it and waits for its
// sessions. When the server cannot run (no user store, no SCTP in the
// kernel, an address that cannot be bound) it logs one warning saying why
// and what to do, and returns a stop that does nothing, unless --admin was
// given explicitly: then it returns the error.
func startAdmin(ctx context.Context, d adminDeps) (stop func(), err error) {
	noop := func() {}
	if len(d.Addrs) == 0 {
		d.Log.Info("admin server disabled (--admin off)")
		return noop, nil
	}
	where := joinAddrs(d.Addrs)
	if d.Users == nil {
		const why = "no user store, so no admin could log in"
		const fix = "give --users FILE with an admin in it (tungate user add NAME --role admin --users FILE, or TUNGATE_ADMIN_USER and TUNGATE_ADMIN_PASSWORD)"
		if d.Explicit {
			return nil, usagef("--admin %s: %s: %s", where, why, fix)
		}
		d.Log.Warn("admin server not started: "+why+"; "+fix+", or --admin off to silence this", "addr", where)
		return noop, nil
	}

	listeners, err := listenAdmin(d.Addrs)
	if err != nil {
		if d.Explicit {
			return nil, fmt.Errorf("--admin %s: %w", where, err)
		}
		if errors.Is(err, admin.ErrNoSCTP) {
			d.Log.Warn("admin server not started: this kernel has no SCTP; load the sctp module (modprobe sctp) and restart tungate, or pass --admin off to silence this; everything else runs",
				"addr", where, "err", err)
		} else {
			d.Log.Warn("admin server not started; everything else runs", "addr", where, "err", err)
		}
		return noop, nil
	}
	if !hasAdmin(d.Users) {
		d.Log.Warn("the user store has no admin, so no one can log in to the admin server yet; add one with tungate user add NAME --role admin --users " + d.Users.Path())
	}

	srv := newAdminServer(d)
	var wg sync.WaitGroup
	for _, l := range listeners {
		d.Log.Info("admin server listening (SCTP)", "addr", l.Addr().String())
		wg.Go(func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, admin.ErrServerClosed) {
				d.Log.Error("admin server stopped", "addr", l.Addr().String(), "err", err)
			}
		})
	}
	// The server also stops when ctx ends; stop waits either way.
	unhook := context.AfterFunc(ctx, func() { srv.Close() })
	var once sync.Once
	return func() {
		once.Do(func() {
			// Teardown: unhook from ctx, close the server (listeners, then
			// sessions, waited for), then wait for the Serve goroutines.
			unhook()
			srv.Close()
			wg.Wait()
		})
	}, nil
}

// newAdminServer builds the server from d.
func newAdminServer(d adminDeps) *admin.Server {
	return &admin.Server{
		Engine: d.Engine,
		Users:  d.Users,
		Level:  d.Level,
		Logger: d.Log,
	}
}

// listenAdmin opens one SCTP endpoint per port: the addresses that share
// a port are bound together (multi-homing). On failure it closes what it
// opened.
func listenAdmin(addrs []netip.AddrPort) ([]net.Listener, error) {
	var ports []uint16
	byPort := map[uint16][]netip.AddrPort{}
	for _, a := range addrs {
		if _, ok := byPort[a.Port()]; !ok {
			ports = append(ports, a.Port())
		}
		byPort[a.Port()] = append(byPort[a.Port()], a)
	}
	var ls []net.Listener
	for _, p := range ports {
		l, err := admin.ListenSCTP(byPort[p])
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func hasAdmin(s *users.Store) bool {
	return slices.ContainsFunc(s.List(), func(u users.User) bool { return u.Role == users.RoleAdmin })
}

func joinAddrs(addrs []netip.AddrPort) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}
