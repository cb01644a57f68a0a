package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"syscall"

	"tungate/internal/engine"
	"tungate/netstack"
	"tungate/tun"
)

// outboundControl returns the socket hook for the gateway's own outbound
// sockets: with --auto-route they carry the fwmark, so that the policy
// rules send them to the main table and not back into the TUN device.
func outboundControl(cfg Config, s *settings) func(network, address string, c syscall.RawConn) error {
	if s.tun && cfg.AutoRoute {
		return tun.MarkControl(cfg.Fwmark)
	}
	return nil
}

// markedResolver resolves names with sockets that carry the same hook, so
// that DNS queries of the gateway itself do not loop through the TUN.
func markedResolver(control func(network, address string, c syscall.RawConn) error) *net.Resolver {
	if control == nil {
		return nil
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			d := net.Dialer{Control: control}
			return d.DialContext(ctx, network, address)
		},
	}
}

// startTUN opens the TUN device, runs the netstack on it and, with
// --auto-route, installs the routes that send the host's traffic into it.
// stop undoes all of it; done is closed if the device fails on its own.
func startTUN(cfg Config, s *settings, eng *engine.Engine, log *slog.Logger) (stop func(), done <-chan struct{}, err error) {
	name := cfg.Tun
	if name == "" && cfg.TunFD < 0 {
		name = "tun0"
	}
	if cfg.AutoRoute {
		// Routes and rules left by a run that was killed go first, so that
		// this run starts from the host's own state.
		n, err := tun.CleanupStale(cfg.StateDir, name)
		if err != nil {
			return nil, nil, fmt.Errorf("removing routes left by an earlier run: %w", err)
		}
		if n > 0 {
			log.Warn("removed routes and rules left by an earlier run that did not stop cleanly", "count", n)
		}
	}
	dev, err := tun.Open(tun.Config{Name: name, MTU: cfg.MTU, Addrs: s.tunAddrs, FD: cfg.TunFD})
	if err != nil {
		return nil, nil, err
	}
	var addrs []netip.Addr
	for _, p := range s.tunAddrs {
		addrs = append(addrs, p.Addr())
	}
	icmpRate := cfg.ICMPRate
	if icmpRate == 0 {
		icmpRate = -1 // none at all
	}
	var mark uint32
	if cfg.AutoRoute {
		mark = cfg.Fwmark
	}
	st, err := netstack.New(dev, eng, netstack.Config{
		MaxHalfOpen: cfg.MaxHalfOpen,
		Mark:        mark,
		Addrs:       addrs,
		ICMP:        s.icmp,
		ICMPRate:    icmpRate,
		ICMPBurst:   cfg.ICMPBurst,
		Logger:      log.With("component", "netstack"),
	})
	if err != nil {
		dev.Close()
		return nil, nil, err
	}
	log.Info("TUN device up", "name", dev.Name(), "mtu", dev.MTU(), "addrs", fmt.Sprint(s.tunAddrs), "offloads", dev.Offloads(), "batch", dev.BatchSize(), "icmp", s.icmp.String())

	var routes *tun.Routes
	if cfg.AutoRoute {
		routes, err = tun.InstallRoutes(tun.RouteConfig{
			Device:   dev.Name(),
			Table:    cfg.Table,
			Fwmark:   cfg.Fwmark,
			Routes:   s.routes,
			Excludes: s.excludes,
			Router:   cfg.Router,
			StateDir: cfg.StateDir,
		})
		if err != nil {
			st.Close()
			return nil, nil, err
		}
		log.Info("routes installed", "table", cfg.Table, "fwmark", fmt.Sprintf("%#x", cfg.Fwmark), "routes", fmt.Sprint(s.routes), "exclude", fmt.Sprint(s.excludes), "router", cfg.Router)
	}
	stop = func() {
		// Routes first, so the host stops sending into a device about to
		// go; then the stack, which ends its flows and closes the device.
		if routes != nil {
			if err := routes.Close(); err != nil {
				log.Error("removing routes", "err", err)
			}
		}
		if err := st.Close(); err != nil {
			log.Error("closing TUN stack", "err", err)
		}
	}
	return stop, st.Done(), nil
}
