package e2e

import (
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"tungate/internal/netnstest"
)

// tunChecks runs what TestTUNDirect and TestTUNDante share, from gw itself
// (host-wide mode): curl over IPv4 and IPv6 (wantV4, wantV6: the peer the
// HTTP server must see), a closed port refused at once, dig over UDP and
// TCP, and iperf3 TCP, TCP -R and UDP with the registry's byte counts.
// With viaDante, each check also finds danted's log line for the flow,
// from gw's uplink address (so not looped through the TUN).
func (tw *tunWorld) tunChecks(t *testing.T, d *tunDaemon, wantV4, wantV6 string, viaDante bool) {
	dante := func(t *testing.T, log *daemonLog, mark int, all ...string) {
		t.Helper()
		if viaDante {
			tw.danteSaw(t, log, mark, all...)
		}
	}
	for _, c := range []struct{ name, host, peer string }{
		{"curl IPv4", serverV4, wantV4},
		{"curl IPv6", serverV6, wantV6},
	} {
		t.Run(c.name, func(t *testing.T) {
			log := watch(t, d.Process, tw.danted)
			mark, dmark := d.Mark(), tw.dantedMark()
			tw.fetchTun(t, log, tw.gw, c.host, c.peer)
			checkTunFlow(t, log, d.Process, mark, tunSrc, net.JoinHostPort(c.host, httpPort), fileSize)
			dante(t, log, dmark, "tcp/connect", c.host+"."+httpPort)
		})
	}
	t.Run("closed port refused", func(t *testing.T) {
		log := watch(t, d.Process, tw.danted)
		checkRefused(t, log, tw.gw, serverV4)
		checkRefused(t, log, tw.gw, serverV6)
	})
	t.Run("dig UDP", func(t *testing.T) {
		log := watch(t, d.Process, tw.danted, tw.dnsmasq)
		mark, dmark := d.Mark(), tw.dantedMark()
		digTun(t, log, tw.gw, false, nameV4, "A", serverV4)
		digTun(t, log, tw.gw, false, nameV6, "AAAA", serverV6)
		// The queries went through the TUN: a UDP mapping to dnsmasq
		// (it closes after the idle timeout; wait for one of them).
		dns := netip.MustParseAddrPort(net.JoinHostPort(serverV4, "53"))
		if fl := waitFlows(d.Process, mark, 1, 15*time.Second, func(f flowClosed) bool {
			return f.Proto == "udp" && f.Dst == dns && tunSrc(f.Src)
		}); len(fl) == 0 {
			log.Errorf(t, "no \"flow closed\" line for a UDP flow from the TUN to %s", dns)
		} else {
			t.Logf("registry: %s", fl[0].Line[strings.Index(fl[0].Line, "flow="):])
		}
		dante(t, log, dmark, "udp/udpassociate")
	})
	t.Run("dig TCP", func(t *testing.T) {
		log := watch(t, d.Process, tw.danted, tw.dnsmasq)
		mark, dmark := d.Mark(), tw.dantedMark()
		digTun(t, log, tw.gw, true, nameV4, "A", serverV4)
		checkTunFlow(t, log, d.Process, mark, tunSrc, net.JoinHostPort(serverV4, "53"), 1)
		dante(t, log, dmark, "tcp/connect", serverV4+".53")
	})
	for _, m := range iperfModes {
		t.Run("iperf3 "+m.name, func(t *testing.T) {
			tw.startIperf(t)
			log := watch(t, d.Process, tw.danted)
			dmark := tw.dantedMark()
			tw.iperfTun(t, log, d.Process, tw.gw, serverV4, m)
			if m.udp {
				dante(t, log, dmark, "udp/udpassociate")
			} else {
				dante(t, log, dmark, "tcp/connect", serverV4+"."+iperfPort)
			}
		})
	}
}

func (tw *tunWorld) dantedMark() int {
	if tw.danted == nil {
		return 0
	}
	return tw.danted.Mark()
}

// danteSaw checks that danted logged, since mark, a line with all of the
// strings from our user at gw's uplink address (danted writes addresses
// as ADDR.PORT), and nothing from the TUN's addresses.
func (tw *tunWorld) danteSaw(t *testing.T, log *daemonLog, mark int, all ...string) {
	t.Helper()
	out := tw.danted.OutputSince(mark)
	want := append([]string{"username%" + tw.danteUser + "@" + tunGwUpV4 + "."}, all...)
	found := ""
	for _, line := range strings.Split(out, "\n") {
		ok := true
		for _, s := range want {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			found = line
			break
		}
	}
	if found == "" {
		log.Errorf(t, "danted logged no line with all of %q since the check began", want)
	} else {
		t.Logf("danted: %s", found[max(0, strings.Index(found, "danted[")):])
	}
	if strings.Contains(out, tunAddrV4+".") || strings.Contains(out, tunAddrV6+".") {
		log.Errorf(t, "danted saw the TUN's address: a connection to it looped through the TUN")
	}
}

// stopAndCompare sends SIGTERM to d, checks that it exits 0 within 10 s
// and that gw's rules, routes and sysctls are exactly as before.
func (tw *tunWorld) stopAndCompare(t *testing.T, d *tunDaemon, before string) {
	t.Helper()
	if err := d.signal(t, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Errorf("tungate exited with %v after SIGTERM; output:\n%s", err, lastLines(d.Output(), 30))
	}
	after := tw.gw.RoutingState()
	if after != before {
		t.Errorf("gw's routing state after SIGTERM differs from before tungate:\n%s\n----- before -----\n%s----- after -----\n%s",
			netnstest.DiffLines(before, after), before, after)
	} else {
		t.Logf("after SIGTERM: ip rule, ip route show table all (v4, v6) and sysctls as before (%d lines)", strings.Count(before, "\n"))
	}
}

// TestTUNDirect: tungate --auto-route (all of IPv4 and IPv6) in gw, out
// directly. gw's own programs reach the servers through the TUN; the
// servers see gw's uplink.
func TestTUNDirect(t *testing.T) {
	tw := newTunWorld(t)
	before := tw.gw.RoutingState()
	d := tw.startTun(t, "--udp-timeout", "2s")
	rules := tw.gw.IP("-4", "rule", "show") + tw.gw.IP("-6", "rule", "show")
	t.Logf("gw's rules with tungate running:\n%s", rules)
	if !strings.Contains(rules, "lookup 2080") {
		t.Fatalf("no rule into table 2080:\n%s", rules)
	}
	tw.tunChecks(t, d, tunGwUpV4, tunGwUpV6, false)
	tw.stopAndCompare(t, d, before)
}

// TestTUNDante: tungate --auto-route capturing all of 198.18.0.0/15 and
// 2001:db8::/32, with danted (in that range, 198.19.0.2) as its upstream.
// The connection to danted carries the fwmark and does not loop: danted
// sees it from gw's uplink, and tungate has no TUN flow to danted.
func TestTUNDante(t *testing.T) {
	tw := newTunWorld(t)
	tw.startDanted() // before tungate: it waits for danted from gw
	before := tw.gw.RoutingState()
	danted := net.JoinHostPort(up1V4, socksPort)
	d := tw.startTun(t, "--udp-timeout", "2s",
		"--route", "198.18.0.0/15", "--route", "2001:db8::/32",
		"--proxy", "socks5://"+tw.danteUser+":"+tw.dantePass+"@"+danted)
	tw.tunChecks(t, d, up1V4, up1V6, true)
	tw.stopAndCompare(t, d, before)
	// No loop: tungate never saw its own connections to danted in the TUN
	// (with the routes above they would be TUN flows to 198.19.0.2:1080).
	dst := netip.MustParseAddrPort(danted)
	n := 0
	for _, f := range parseFlows(d.Output()) {
		n++
		if f.Dst == dst {
			t.Errorf("tungate relayed a flow to danted itself (a loop): %s", f.Line)
		}
	}
	t.Logf("no loop: none of tungate's %d flows went to danted (%s)", n, danted)
}
