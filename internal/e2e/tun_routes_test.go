package e2e

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"tungate/internal/netnstest"
)

// TestTUNCrashCleanup: tungate killed with SIGKILL leaves its policy
// rules and throw routes (its routes through the device vanish with the
// device) and its state file; the next start removes them first, and
// after its SIGTERM gw's rules, routes and sysctls are exactly as before
// the first start.
func TestTUNCrashCleanup(t *testing.T) {
	tw := newTunWorld(t)
	before := tw.gw.RoutingState()
	args := []string{"--router", "--route", "198.18.0.0/15", "--route", "2001:db8::/32", "--exclude", tunPeerBV4 + "/32"}
	statePath := filepath.Join(tw.dir, "state", tunDevice+".routes.json")

	d := tw.startTun(t, args...)
	log := watch(t, d.Process)
	mark := d.Mark()
	tw.fetchTun(t, log, tw.gw, serverV4, tunGwUpV4)
	checkTunFlow(t, log, d.Process, mark, tunSrc, net.JoinHostPort(serverV4, httpPort), fileSize)
	running := tw.gw.RoutingState()
	t.Logf("installed by tungate (diff from before):\n%s", netnstest.DiffLines(before, running))

	err := d.signal(t, syscall.SIGKILL, 5*time.Second)
	if ws, ok := waitStatus(err); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("tungate after SIGKILL: wait error %v, want killed by SIGKILL", err)
	}
	left := tw.gw.RoutingState()
	diff := netnstest.DiffLines(before, left)
	t.Logf("left behind by SIGKILL:\n%s", diff)
	if !strings.Contains(diff, "lookup 2080") || !strings.Contains(diff, "throw "+tunPeerBV4) {
		t.Errorf("after SIGKILL, want the rules into table 2080 and the throw route left behind (what a restart must remove); diff from before:\n%s", diff)
	}
	if _, err := os.Stat(statePath); err != nil {
		t.Errorf("after SIGKILL the state file %s should remain: %v", statePath, err)
	}

	d2 := tw.startTun(t, args...)
	log2 := watch(t, d2.Process)
	if !strings.Contains(d2.Output(), "removed routes and rules left by an earlier run") {
		log2.Errorf(t, "the restarted tungate did not log that it removed what the killed one left")
	} else {
		for _, l := range strings.Split(d2.Output(), "\n") {
			if strings.Contains(l, "left by an earlier run") {
				t.Logf("restart: %s", l)
			}
		}
	}
	// The same as the first one installed, but for the device's
	// link-local entries, which the kernel adds (with a random address)
	// when it gets to it.
	if got := tw.gw.RoutingState(); maskLinkLocal(got) != maskLinkLocal(running) {
		log2.Errorf(t, "the restarted tungate's routing state differs from the first one's:\n%s", netnstest.DiffLines(running, got))
	}
	mark = d2.Mark()
	tw.fetchTun(t, log2, tw.gw, serverV6, tunGwUpV6)
	checkTunFlow(t, log2, d2.Process, mark, tunSrc, net.JoinHostPort(serverV6, httpPort), fileSize)
	tw.stopAndCompare(t, d2, before)
	if _, err := os.Stat(statePath); !os.IsNotExist(err) {
		t.Errorf("after SIGTERM the state file %s should be gone: %v", statePath, err)
	}
}

var linkLocalRE = regexp.MustCompile(`(?m)^.*fe80::[0-9a-f:]* dev ` + tunDevice + ` .*\n`)

func maskLinkLocal(s string) string { return linkLocalRE.ReplaceAllString(s, "") }

func waitStatus(err error) (syscall.WaitStatus, bool) {
	ee, ok := err.(interface{ Sys() any })
	if !ok {
		return 0, false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ws, ok
}

// TestTUNRouter: lan's default route points at gw; tungate --auto-route
// --router in gw carries lan's traffic to the servers. Without tungate lan
// reaches nothing (gw does not forward, and wan has no route back to lan);
// with it the servers see gw's uplink and the registry lan's addresses.
func TestTUNRouter(t *testing.T) {
	tw := newTunWorld(t)
	for _, host := range []string{serverV4, serverV6} {
		r := curlIn(t, tw.lan, "--connect-timeout", "1", url(host, "/hello", testID(t)))
		if r.Err == nil {
			t.Fatalf("lan reached %s without tungate: %s", host, r)
		}
		t.Logf("control, no tungate: lan: curl %s: exit %d", host, r.ExitCode)
	}
	before := tw.gw.RoutingState()
	d := tw.startTun(t, "--router", "--udp-timeout", "2s")
	t.Logf("installed by tungate --router (diff from before):\n%s", netnstest.DiffLines(before, tw.gw.RoutingState()))
	lanSrc := func(a netip.AddrPort) bool {
		s := a.Addr().Unmap().String()
		return s == tunLanV4 || s == tunLanV6
	}
	for _, c := range []struct{ name, host, peer string }{
		{"curl IPv4", serverV4, tunGwUpV4},
		{"curl IPv6", serverV6, tunGwUpV6},
	} {
		t.Run(c.name, func(t *testing.T) {
			log := watch(t, d.Process)
			mark := d.Mark()
			tw.fetchTun(t, log, tw.lan, c.host, c.peer)
			checkTunFlow(t, log, d.Process, mark, lanSrc, net.JoinHostPort(c.host, httpPort), fileSize)
		})
	}
	t.Run("closed port refused", func(t *testing.T) {
		log := watch(t, d.Process)
		checkRefused(t, log, tw.lan, serverV4)
		checkRefused(t, log, tw.lan, serverV6)
	})
	t.Run("dig UDP and TCP", func(t *testing.T) {
		log := watch(t, d.Process, tw.dnsmasq)
		mark := d.Mark()
		digTun(t, log, tw.lan, false, nameV4, "A", serverV4)
		digTun(t, log, tw.lan, true, nameV6, "AAAA", serverV6)
		checkTunFlow(t, log, d.Process, mark, lanSrc, net.JoinHostPort(serverV4, "53"), 1)
	})
	t.Run("iperf3 TCP", func(t *testing.T) {
		tw.startIperf(t)
		log := watch(t, d.Process)
		tw.iperfTun(t, log, d.Process, tw.lan, serverV4, iperfModes[0])
	})
	tw.stopAndCompare(t, d, before)
	r := curlIn(t, tw.lan, "--connect-timeout", "1", url(serverV4, "/hello", testID(t)))
	if r.Err == nil {
		t.Errorf("lan still reaches the server after tungate stopped: %s", r)
	}
}
