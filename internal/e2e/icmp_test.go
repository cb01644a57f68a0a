package e2e

// ICMP through the TUN: what a client of the gateway is told when a flow
// cannot be carried (curl's "Connection refused", "Network is
// unreachable", "No route to host"; dig's "connection refused"), ping in
// the three --icmp modes, traceroute through the gateway and two routers,
// and the ICMP rate limit. The byte-level comparison with what Linux
// sends is netstack's icmp_golden_test.go.
//
//	gw      tungate --auto-route (everything; gw's own programs are the
//	 |      clients); TUN tg0 198.18.99.1/24 2001:db8:99::1/64
//	 |      198.18.40.1/24   2001:db8:40::1/64    default via r1;
//	 |      throw 198.18.250.0/24, 2001:db8:250::/64 (see below)
//	 |
//	 |      198.18.40.2/24   2001:db8:40::2/64
//	r1      forwarding; 198.18.42.0/24, 2001:db8:42::/64 via r2; no default
//	 |      route: no route for 198.18.250.0/24, 198.18.251.0/24,
//	 |      2001:db8:250::/64, 2001:db8:251::/64
//	 |      198.18.41.1/24   2001:db8:41::1/64
//	 |--- up       198.19.0.2/24  2001:db8:190::2/64   (r1: .0.1, ::1)
//	 |             danted :1080; throw 198.18.250.0/24, 2001:db8:250::/64
//	 |      198.18.41.2/24   2001:db8:41::2/64
//	r2      forwarding; default via r1
//	 |      198.18.42.1/24   2001:db8:42::1/64    nobody at .42.99, ::99
//	 |
//	server  198.18.42.2/24   2001:db8:42::2/64    default via r2;
//	        HTTP :8080; nothing on TCP or UDP 9
//
// The destinations the tests use and what stops them:
//
//   - 198.18.250.1, 2001:db8:250::1: no route on the egress side. gw's
//     main table has a throw route for them: a lookup in main finds
//     nothing and falls through (for tungate's own, marked, sockets down
//     to the end: ENETUNREACH at once), while gw's unmarked traffic still
//     reaches tungate's table and the TUN, as with no route at all. up
//     has the same throw routes, so danted fails the same way (its reply
//     3).
//   - 198.18.251.1, 2001:db8:251::1: r1 has no route and answers
//     "network unreachable" (3/0, 1/0).
//   - 198.18.42.99, 2001:db8:42::99 (and .98, ::98 for UDP): on r2's
//     connected link, where nobody answers ARP or neighbor solicitation; r2 answers "host unreachable"
//     (3/1) or "address unreachable" (1/3) after about 3 s.
//   - 198.18.42.2 port 9: closed, TCP and UDP (RST, port unreachable).
//
// r1, r2 and server answer without ICMP rate limits
// (net.ipv4.icmp_ratelimit=0, net.ipv6.icmp.ratelimit=0, and the
// namespace-wide net.ipv4.icmp_msgs_burst and icmp_msgs_per_sec raised),
// so that the errors that reach gw depend on tungate only.
//
// The tests (each builds the topology and removes it):
//
//   - TestICMPDirect: tungate --icmp forward, direct. curl to the closed
//     port: "Connection refused" in well under a second; to the no-route
//     addresses: "Network is unreachable" (at gw and at r1), to the absent
//     host: "No route to host" after address resolution fails; dig to the
//     closed UDP port: "connection refused"; a UDP socket's error queue
//     gets r1's and r2's errors from r1 and r2 (and one for the egress
//     no-route case); 50 datagrams at once to the closed port all reach
//     server and all their errors the client; ping and ping -6 reach
//     server and report r1's "Destination Net Unreachable" and r2's
//     "Destination Host Unreachable" / "Address unreachable", and the
//     egress no-route case; traceroute (UDP and ICMP, IPv4 and IPv6) lists
//     the gateway (its TUN address), r1, r2 and server in order.
//   - TestICMPDante: the same curl checks through danted as the upstream:
//     danted's replies 5, 3 and 4 become the same messages.
//   - TestICMPModes: --icmp reply answers pings to any address (the
//     gateway answers itself: local answers, they say nothing of the
//     destination); --icmp off lets pings time out; with --icmp-rate 5
//     --icmp-burst 5 a burst of 50 datagrams that each earn an ICMP error
//     brings the client at least one and at most burst + rate x elapsed
//     of them (relayed port unreachables; time exceeded the gateway
//     generates, IPv6 and IPv4).
//
// A check that meets one of the daemon bugs these tests found (daemonBugs)
// fails naming it. The whole file runs in about 35 s.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tungate/internal/netnstest"
)

const (
	icmpGwV4     = "198.18.40.1"
	icmpGwV6     = "2001:db8:40::1"
	icmpR1V4     = "198.18.40.2" // r1 as gw sees it: hop 2
	icmpR1V6     = "2001:db8:40::2"
	icmpR1R2V4   = "198.18.41.1"
	icmpR1R2V6   = "2001:db8:41::1"
	icmpR2V4     = "198.18.41.2" // r2 as r1 sees it: hop 3
	icmpR2V6     = "2001:db8:41::2"
	icmpR2SrvV4  = "198.18.42.1"
	icmpR2SrvV6  = "2001:db8:42::1"
	icmpSrvV4    = "198.18.42.2" // hop 4
	icmpSrvV6    = "2001:db8:42::2"
	icmpNoHostV4 = "198.18.42.99" // on r2's link; nobody answers ARP
	icmpNoHostV6 = "2001:db8:42::99"
	// Two more absent hosts there, for the UDP cases: their address
	// resolution is their own, not one a TCP case's dial may still have
	// under way (which held the datagram's error back once in CI).
	icmpNoHostUDPV4 = "198.18.42.98"
	icmpNoHostUDPV6 = "2001:db8:42::98"
	icmpGwNetV4     = "198.18.250.1" // no route at gw (and at up, and at r1)
	icmpGwNetV6     = "2001:db8:250::1"
	icmpR1NetV4     = "198.18.251.1" // no route at r1
	icmpR1NetV6     = "2001:db8:251::1"
	icmpAnyV4       = "198.18.77.77" // nothing anywhere: for --icmp reply
	icmpAnyV6       = "2001:db8:77::77"
)

// icmpWorld is the topology above, embedded in a tunWorld (whose gw and
// up1 it sets) so that startTun and startDanted work unchanged.
type icmpWorld struct {
	*tunWorld
	r1, r2 *netnstest.Namespace
}

func newICMPWorld(t *testing.T, withUp bool) *icmpWorld {
	t.Helper()
	requireTungate(t)
	for _, tool := range []string{"curl", "dig", "ping", "traceroute"} {
		netnstest.RequireTool(t, tool)
	}
	w := &world{t: t, dir: t.TempDir()}
	if err := os.Chmod(w.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tp := netnstest.New(t)
	w.topo = tp
	iw := &icmpWorld{tunWorld: &tunWorld{world: w}}
	w.gw = tp.Namespace("gw")
	iw.r1 = tp.Namespace("r1")
	iw.r2 = tp.Namespace("r2")
	w.server = tp.Namespace("server")
	iw.r1.EnableForwarding()
	iw.r2.EnableForwarding()

	tp.Link(w.gw, []string{icmpGwV4 + "/24", icmpGwV6 + "/64"}, iw.r1, []string{icmpR1V4 + "/24", icmpR1V6 + "/64"})
	tp.Link(iw.r1, []string{icmpR1R2V4 + "/24", icmpR1R2V6 + "/64"}, iw.r2, []string{icmpR2V4 + "/24", icmpR2V6 + "/64"})
	tp.Link(iw.r2, []string{icmpR2SrvV4 + "/24", icmpR2SrvV6 + "/64"}, w.server, []string{icmpSrvV4 + "/24", icmpSrvV6 + "/64"})
	w.gw.Route("default", icmpR1V4)
	w.gw.Route("default", icmpR1V6)
	w.gw.IP("-4", "route", "add", "throw", "198.18.250.0/24")
	w.gw.IP("-6", "route", "add", "throw", "2001:db8:250::/64")
	iw.r1.Route("198.18.42.0/24", icmpR2V4)
	iw.r1.Route("2001:db8:42::/64", icmpR2V6)
	iw.r2.Route("default", icmpR1R2V4)
	iw.r2.Route("default", icmpR1R2V6)
	w.server.Route("default", icmpR2SrvV4)
	w.server.Route("default", icmpR2SrvV6)
	if withUp {
		w.up1 = tp.Namespace("up")
		tp.Link(iw.r1, []string{gwUp1V4 + "/24", "2001:db8:190::1/64"}, w.up1, []string{up1V4 + "/24", up1V6 + "/64"})
		w.up1.Route("default", gwUp1V4)
		w.up1.Route("default", "2001:db8:190::1")
		w.up1.IP("-4", "route", "add", "throw", "198.18.250.0/24")
		w.up1.IP("-6", "route", "add", "throw", "2001:db8:250::/64")
		w.up1.WriteEtc("resolv.conf", "nameserver 127.0.0.1\n")
	}
	for _, ns := range []*netnstest.Namespace{iw.r1, iw.r2, w.server} {
		setSysctl(t, ns, "net/ipv4/icmp_ratelimit", "0")
		setSysctl(t, ns, "net/ipv6/icmp/ratelimit", "0")
		setSysctl(t, ns, "net/ipv4/icmp_msgs_burst", "10000") // the netns-wide bucket, IPv4 and IPv6
		setSysctl(t, ns, "net/ipv4/icmp_msgs_per_sec", "100000")
	}
	w.gw.WriteEtc("resolv.conf", "nameserver 127.0.0.1\n")
	w.http = startHTTP(t, w.server)
	return iw
}

func setSysctl(t *testing.T, ns *netnstest.Namespace, key, value string) {
	t.Helper()
	if err := ns.Do(func() error { return os.WriteFile("/proc/sys/"+key, []byte(value+"\n"), 0o644) }); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, ns.Name, err)
	}
}

// cmdRun is one program run, for messages.
type cmdRun struct {
	cmd  string
	r    netnstest.Result
	took time.Duration
}

func (r cmdRun) String() string {
	return fmt.Sprintf("`%s`: exit %d after %v\n%s", r.cmd, r.r.ExitCode, r.took.Round(time.Millisecond),
		strings.TrimSpace(r.r.Stdout+"\n"+r.r.Stderr))
}

// runIn runs prog in ns, bounded by timeout. It may run on any goroutine:
// newICMPWorld has checked that the programs are there.
func runIn(t *testing.T, ns *netnstest.Namespace, timeout time.Duration, prog string, args ...string) cmdRun {
	t.Helper()
	start := time.Now()
	r := ns.Exec(ctxT(t, timeout), prog, args...)
	return cmdRun{cmd: prog + " " + strings.Join(args, " "), r: r, took: time.Since(start)}
}

// --- curl --------------------------------------------------------------------

// curlTo runs curl -v to http://host:port/ in ns with no proxy option (the
// routes carry it) and returns the run; curl's "connect to ... failed: X"
// line says the errno the kernel gave the socket.
func curlTo(t *testing.T, ns *netnstest.Namespace, host, port string) cmdRun {
	t.Helper()
	u := "http://" + net.JoinHostPort(host, port) + "/"
	return runIn(t, ns, 20*time.Second, "curl", "-sS", "-v", "-o", "/dev/null", "--connect-timeout", "8", "--max-time", "10", "--noproxy", "", u)
}

// curlLines returns curl's lines that tell why the connection failed.
func curlLines(r cmdRun) string {
	var out []string
	for _, l := range strings.Split(r.r.Stderr, "\n") {
		if strings.Contains(l, "connect to") || strings.HasPrefix(l, "curl: (") || strings.Contains(l, "Immediate connect fail") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, " | ")
}

// curlCase is a connection that must fail with a message in a time range.
type curlCase struct {
	name, host, port string
	want             string        // in curl's "connect to ... failed: " line
	min, max         time.Duration // how long the failure may take
}

// checkCurls runs the cases in ns concurrently (address resolution
// failures take seconds each) and checks each: curl exit 7, the message,
// the time.
func checkCurls(t *testing.T, log *daemonLog, ns *netnstest.Namespace, cases []curlCase) {
	t.Helper()
	runs := make([]cmdRun, len(cases))
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = curlTo(t, ns, c.host, c.port)
		}()
	}
	wg.Wait()
	for i, c := range cases {
		r := runs[i]
		t.Logf("%s: curl %s: exit %d after %v: %s", c.name, net.JoinHostPort(c.host, c.port), r.r.ExitCode, r.took.Round(time.Millisecond), curlLines(r))
		if r.r.ExitCode != 7 || !strings.Contains(r.r.Stderr, "failed: "+c.want) {
			log.Errorf(t, "%s: want curl exit 7 with \"failed: %s\", got %s", c.name, c.want, r)
			continue
		}
		if r.took < c.min || r.took > c.max {
			log.Errorf(t, "%s: failed after %v, want between %v and %v", c.name, r.took.Round(time.Millisecond), c.min, c.max)
		}
	}
}

// directCurlCases are what TestICMPDirect and TestICMPDante check: the
// same messages whoever dials.
//
// The refusal comes in well under a second. An ICMP error from r1 can take
// one SYN retransmission (1 s) longer: when it reaches the dialing socket
// (tungate's, or danted's) while connect() still holds the socket's lock
// (over veth the whole round trip runs inside that call), Linux keeps it
// as a soft error and gives up only at the next one.
func directCurlCases() []curlCase {
	quick := time.Second
	icmp := 2500 * time.Millisecond
	arp := [2]time.Duration{2 * time.Second, 7 * time.Second}
	return []curlCase{
		{"closed port IPv4", icmpSrvV4, closedPort, "Connection refused", 0, quick},
		{"closed port IPv6", icmpSrvV6, closedPort, "Connection refused", 0, quick},
		{"no route at the egress IPv4", icmpGwNetV4, httpPort, "Network is unreachable", 0, quick},
		{"no route at the egress IPv6", icmpGwNetV6, httpPort, "Network is unreachable", 0, quick},
		{"no route at r1 IPv4", icmpR1NetV4, httpPort, "Network is unreachable", 0, icmp},
		{"no route at r1 IPv6", icmpR1NetV6, httpPort, "Network is unreachable", 0, icmp},
		{"no host IPv4", icmpNoHostV4, httpPort, "No route to host", arp[0], arp[1]},
		{"no host IPv6", icmpNoHostV6, httpPort, "No route to host", arp[0], arp[1]},
	}
}

// --- ping --------------------------------------------------------------------

var pingLossRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pingRun runs ping (IPv6 when dst is) with -n and args.
func pingRun(t *testing.T, ns *netnstest.Namespace, dst string, args ...string) cmdRun {
	t.Helper()
	full := []string{"-n"}
	if strings.Contains(dst, ":") {
		full = append(full, "-6")
	}
	full = append(append(full, args...), dst)
	return runIn(t, ns, 20*time.Second, "ping", full...)
}

// pingCounts returns the transmitted and received counts ping printed.
func pingCounts(r cmdRun) (tx, rx int, ok bool) {
	m := pingLossRE.FindStringSubmatch(r.r.Stdout)
	if m == nil {
		return 0, 0, false
	}
	fmt.Sscan(m[1], &tx)
	fmt.Sscan(m[2], &rx)
	return tx, rx, true
}

// pingLines returns ping's per-packet lines and its summary.
func pingLines(r cmdRun) string {
	var out []string
	for _, l := range strings.Split(r.r.Stdout, "\n") {
		if strings.Contains(l, "icmp_seq") || strings.Contains(l, "packets transmitted") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, " | ")
}

// checkPingReaches pings dst count times and wants every reply, from dst.
func checkPingReaches(t *testing.T, log *daemonLog, ns *netnstest.Namespace, dst string, count int) {
	t.Helper()
	r := pingRun(t, ns, dst, "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2")
	t.Logf("ping %s: %s", dst, pingLines(r))
	tx, rx, ok := pingCounts(r)
	if !ok || tx != count || rx != count || r.r.ExitCode != 0 {
		log.Errorf(t, "ping %s: want %d of %d replies, got %s", dst, count, count, r)
		return
	}
	if from := "bytes from " + dst + ":"; !strings.Contains(r.r.Stdout, from) {
		log.Errorf(t, "ping %s: replies not %q: %s", dst, from, r)
	}
}

// pingCase is a ping that must fail with an ICMP error ping prints.
type pingCase struct {
	name, dst string
	want      string // the "From ... icmp_seq=1 ..." line, from its "From"
}

// checkPingErrors runs the cases concurrently and wants each to print its
// error line and get no reply.
func checkPingErrors(t *testing.T, log *daemonLog, ns *netnstest.Namespace, cases []pingCase) {
	t.Helper()
	runs := make([]cmdRun, len(cases))
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = pingRun(t, ns, c.dst, "-c", "1", "-W", "6")
		}()
	}
	wg.Wait()
	for i, c := range cases {
		r := runs[i]
		t.Logf("%s: ping %s: exit %d after %v: %s", c.name, c.dst, r.r.ExitCode, r.took.Round(time.Millisecond), pingLines(r))
		_, rx, ok := pingCounts(r)
		if !ok || rx != 0 || !strings.Contains(r.r.Stdout, c.want) {
			log.Errorf(t, "%s: want no reply and %q, got %s", c.name, c.want, r)
		}
	}
}

// --- traceroute ---------------------------------------------------------------

var hopRE = regexp.MustCompile(`^\s*(\d+)\s+(\S+)`)

// traceroute runs traceroute -n -q 1 -w 1 -m 6 with mode args and returns
// the hop addresses in order ("*" for none) and the run.
func traceroute(t *testing.T, ns *netnstest.Namespace, dst string, mode ...string) ([]string, cmdRun) {
	t.Helper()
	args := append(append([]string{}, mode...), "-n", "-q", "1", "-w", "1", "-m", "6", dst)
	r := runIn(t, ns, 30*time.Second, "traceroute", args...)
	var hops []string
	for _, l := range strings.Split(r.r.Stdout, "\n") {
		if m := hopRE.FindStringSubmatch(l); m != nil {
			hops = append(hops, m[2])
		}
	}
	return hops, r
}

// --- the ICMP errors a UDP socket gets ----------------------------------------

// icmpErr is one ICMP error a socket's error queue returned.
type icmpErr struct {
	typ, code uint8
	from      string // the offender (SO_EE_OFFENDER)
}

func (e icmpErr) String() string { return fmt.Sprintf("%d/%d from %s", e.typ, e.code, e.from) }

// udpErrors sends n datagrams in ns to dst with the given TTL (0: the
// default), as fast as it can, datagram i from socket i % sockets of
// that many UDP sockets (each its own mapping in tungate), then collects
// for settle the ICMP errors their error queues (IP_RECVERR,
// IPV6_RECVERR) receive. It returns them and how long the sending took.
// It may run on any goroutine.
func udpErrors(ns *netnstest.Namespace, dst netip.AddrPort, ttl, n, sockets int, settle time.Duration) ([]icmpErr, time.Duration, error) {
	v4 := dst.Addr().Is4()
	var sa unix.Sockaddr
	if v4 {
		sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	}
	fds := make([]int, 0, sockets)
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for range sockets {
		var fd int
		err := ns.Do(func() error {
			var err error
			if v4 {
				fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			} else {
				fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			}
			return err
		})
		if err != nil {
			return nil, 0, fmt.Errorf("UDP socket in %s: %w", ns.Name, err)
		}
		fds = append(fds, fd)
		var e1, e2 error
		if v4 {
			e1 = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
			if ttl > 0 {
				e2 = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl)
			}
		} else {
			e1 = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
			if ttl > 0 {
				e2 = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, ttl)
			}
		}
		if err := errors.Join(e1, e2); err != nil {
			return nil, 0, err
		}
	}
	var errs []icmpErr
	buf := make([]byte, 512)
	oob := make([]byte, 512)
	drain := func() {
		for _, fd := range fds {
			for range 1000 {
				_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
				if err != nil {
					break
				}
				if e, ok := parseRecvErr(oob[:oobn]); ok {
					errs = append(errs, e)
				}
			}
		}
	}
	start := time.Now()
	for i := range n {
		fd := fds[i%len(fds)]
		msg := []byte(fmt.Sprintf("tungate e2e datagram %d", i))
		// The socket's own pending error (from an ICMP error about an
		// earlier datagram) fails one send without sending: send again.
		for try := 0; try < 2; try++ {
			if err := unix.Sendto(fd, msg, 0, sa); err == nil || !isSocketICMPErr(err) {
				if err != nil {
					return errs, 0, fmt.Errorf("sendto %v: %w", dst, err)
				}
				break
			}
		}
	}
	sent := time.Since(start)
	for deadline := time.Now().Add(settle); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		drain()
	}
	return errs, sent, nil
}

func isSocketICMPErr(err error) bool {
	for _, e := range []error{syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// parseRecvErr decodes IP_RECVERR / IPV6_RECVERR control data: struct
// sock_extended_err, then the offender's sockaddr.
func parseRecvErr(oob []byte) (icmpErr, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return icmpErr{}, false
	}
	for _, m := range msgs {
		if !(m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR ||
			m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR) || len(m.Data) < 16 {
			continue
		}
		e := icmpErr{typ: m.Data[5], code: m.Data[6], from: "?"}
		off := m.Data[16:]
		if len(off) >= 8 && off[0] == unix.AF_INET { // sockaddr_in, host byte order family (little endian)
			e.from = netip.AddrFrom4([4]byte(off[4:8])).String()
		} else if len(off) >= 24 && off[0] == unix.AF_INET6 {
			e.from = netip.AddrFrom16([16]byte(off[8:24])).String()
		}
		return e, true
	}
	return icmpErr{}, false
}

// rxPackets returns the packets the kernel received on dev in ns (what
// tungate wrote into its TUN device).
func rxPackets(t *testing.T, ns *netnstest.Namespace, dev string) int64 {
	t.Helper()
	r := ns.Exec(ctxT(t, 10*time.Second), "ip", "-j", "-s", "link", "show", "dev", dev)
	var links []struct {
		Stats struct {
			RX struct {
				Packets int64 `json:"packets"`
			} `json:"rx"`
		} `json:"stats64"`
	}
	if r.Err != nil || json.Unmarshal([]byte(r.Stdout), &links) != nil || len(links) != 1 {
		t.Fatalf("ip -j -s link show dev %s in %s: %s", dev, ns.Name, r)
	}
	return links[0].Stats.RX.Packets
}

// countErrs counts the errors of type/code from from ("" any sender).
func countErrs(errs []icmpErr, typ, code uint8, from string) int {
	n := 0
	for _, e := range errs {
		if e.typ == typ && e.code == code && (from == "" || e.from == from) {
			n++
		}
	}
	return n
}

// snmp reads one counter of /proc/net/snmp ("Icmp", "OutDestUnreachs";
// "Udp", "InDatagrams") of ns.
func snmp(t *testing.T, ns *netnstest.Namespace, group, name string) int64 {
	t.Helper()
	var v int64 = -1
	err := ns.Do(func() error {
		// thread-self: /proc/net follows the process's first thread, which
		// is not in ns.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) == 0 || f[0] != group+":" {
				continue
			}
			if names == nil {
				names = f[1:]
				continue
			}
			for i, n := range names {
				if n == name && i+1 < len(f) {
					fmt.Sscan(f[i+1], &v)
				}
			}
		}
		return nil
	})
	if err != nil || v < 0 {
		t.Fatalf("/proc/net/snmp %s %s in %s: not found (%v)", group, name, ns.Name, err)
	}
	return v
}

// --- daemon bugs these tests found ------------------------------------------

// daemonBugs names the daemon bugs these tests found (all fixed), so that
// a regression fails with what the bug was and where it lived.
var daemonBugs = map[string]string{
	"martian-hop": "IPv4: the time exceeded the gateway sends as hop 1 (TTL <= 1, from its TUN address) reaches " +
		"this host's own programs from this host's own address on the TUN device; the kernel drops it as a " +
		"martian source unless the device's accept_local is 1 (tun: planSysctls)",
	"sk-err-send": "an ICMP error about one datagram sets the outbound socket's pending error (IP_RECVERR); the next " +
		"send returns it instead of sending, and the consumed error no longer wakes the reader " +
		"(engine: directPacketConn.send drains and hands over; netstack: pinger.forward drains and retries)",
	"egress-noroute-silent": "a datagram or echo request the gateway cannot send at all (no route on the egress " +
		"side: ENETUNREACH) must be answered as a router would, 3/0 or 1/0 (engine.LocalSendError)",
}

// daemonBug fails t for a regression of the daemon bug name; detail says
// what the check saw.
func daemonBug(t *testing.T, log *daemonLog, name, detail string) {
	t.Helper()
	desc, ok := daemonBugs[name]
	if !ok {
		t.Fatalf("daemonBug(%q): no such entry", name)
	}
	log.Errorf(t, "daemon bug %s: %s\nseen: %s", name, desc, detail)
}

// --- the tests ------------------------------------------------------------------

// TestICMPDirect: tungate --icmp forward in gw, out directly; gw's own
// curl, dig, ping and traceroute are its clients.
func TestICMPDirect(t *testing.T) {
	iw := newICMPWorld(t, false)
	gw := iw.gw
	d := iw.startTun(t, "--icmp", "forward", "--udp-timeout", "5s")

	t.Run("curl", func(t *testing.T) {
		log := watch(t, d.Process)
		checkCurls(t, log, gw, directCurlCases())
	})

	t.Run("dig to a closed UDP port", func(t *testing.T) {
		log := watch(t, d.Process)
		for _, srv := range []string{icmpSrvV4, icmpSrvV6} {
			r := runIn(t, gw, 15*time.Second, "dig", "@"+srv, "-p", closedPort, "+notcp", "+tries=1", "+time=3", "example.test", "A")
			var lines []string
			for _, l := range strings.Split(r.r.Stdout, "\n") {
				if strings.HasPrefix(l, ";;") && (strings.Contains(l, "error") || strings.Contains(l, "refused") || strings.Contains(l, "timed out")) {
					lines = append(lines, l)
				}
			}
			t.Logf("dig @%s -p %s: exit %d after %v: %s", srv, closedPort, r.r.ExitCode, r.took.Round(time.Millisecond), strings.Join(lines, " | "))
			if !strings.Contains(r.r.Stdout, "connection refused") {
				log.Errorf(t, "dig to closed port %s of %s: want \"connection refused\" (ICMP port unreachable), got %s", closedPort, srv, r)
			} else if r.took > time.Second {
				log.Errorf(t, "dig to a closed port took %v: the refusal should come at once", r.took)
			}
		}
	})

	// dig takes "network unreachable" and "host unreachable" for soft
	// errors and waits on; a socket's error queue shows what arrived.
	t.Run("UDP errors passed on from routers", func(t *testing.T) {
		log := watch(t, d.Process)
		cases := []struct {
			name, dst string
			typ, code uint8
			from      string
			noEgress  bool
		}{
			{"no route at r1 IPv4", icmpR1NetV4, 3, 0, icmpR1V4, false},
			{"no route at r1 IPv6", icmpR1NetV6, 1, 0, icmpR1V6, false},
			{"no host IPv4", icmpNoHostUDPV4, 3, 1, icmpR2V4, false},
			{"no host IPv6", icmpNoHostUDPV6, 1, 3, icmpR2V6, false},
			{"no route at the egress IPv4", icmpGwNetV4, 3, 0, "", true},
			{"no route at the egress IPv6", icmpGwNetV6, 1, 0, "", true},
		}
		got := make([][]icmpErr, len(cases))
		errs := make([]error, len(cases))
		var wg sync.WaitGroup
		for i, c := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], _, errs[i] = udpErrors(gw, netip.AddrPortFrom(netip.MustParseAddr(c.dst), 53), 0, 1, 1, 4500*time.Millisecond)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		var silent []string
		for i, c := range cases {
			t.Logf("%s: one datagram to %s:53 -> ICMP errors %v", c.name, c.dst, got[i])
			if n := countErrs(got[i], c.typ, c.code, c.from); n == 1 && len(got[i]) == 1 {
				continue
			}
			if c.noEgress && len(got[i]) == 0 {
				silent = append(silent, c.dst)
				continue
			}
			log.Errorf(t, "%s: want one ICMP error %d/%d from %q, got %v", c.name, c.typ, c.code, c.from, got[i])
		}
		if len(silent) > 0 && !t.Failed() {
			daemonBug(t, log, "egress-noroute-silent", fmt.Sprintf("no ICMP error for a datagram to %v; tungate: %s", silent, grepLines(d.OutputSince(0), "datagram dropped", "network is unreachable")))
		}
	})

	t.Run("UDP after an ICMP error", func(t *testing.T) {
		// One socket, 50 datagrams to the closed port at once: each earns
		// a port unreachable, some while the next datagrams are still on
		// their way out. All 50 must reach server, and all 50 errors the
		// client (the default --icmp-burst is 50).
		const n = 50
		log := watch(t, d.Process)
		mark := d.Mark()
		in := snmp(t, iw.server, "Udp", "NoPorts")
		errs, sent, err := udpErrors(gw, netip.MustParseAddrPort(net.JoinHostPort(icmpSrvV4, closedPort)), 0, n, 1, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		arrived := snmp(t, iw.server, "Udp", "NoPorts") - in
		got := countErrs(errs, 3, 3, icmpSrvV4)
		t.Logf("%d datagrams in %v: %d reached server (Udp NoPorts), the client got %d port unreachables from %s", n, sent.Round(time.Millisecond), arrived, got, icmpSrvV4)
		if arrived == n && got == n {
			return
		}
		out := d.OutputSince(mark)
		if dropped := strings.Count(out, "sendmsg: connection refused"); arrived+int64(dropped) == n {
			daemonBug(t, log, "sk-err-send", fmt.Sprintf("%d of %d datagrams reached server, %d of their port unreachables reached the client; tungate dropped %d:%s",
				arrived, n, got, dropped, grepLines(out, "sendmsg: connection refused")))
		}
		log.Errorf(t, "%d of %d datagrams reached server and %d port unreachables the client, want all", arrived, n, got)
	})

	t.Run("ping forward", func(t *testing.T) {
		log := watch(t, d.Process)
		checkPingReaches(t, log, gw, icmpSrvV4, 3)
		checkPingReaches(t, log, gw, icmpSrvV6, 3)
		checkPingErrors(t, log, gw, []pingCase{
			{"no route at r1 IPv4", icmpR1NetV4, "From " + icmpR1V4 + " icmp_seq=1 Destination Net Unreachable"},
			{"no route at r1 IPv6", icmpR1NetV6, "From " + icmpR1V6 + " icmp_seq=1 Destination unreachable: No route"},
			{"no host IPv4", icmpNoHostV4, "From " + icmpR2V4 + " icmp_seq=1 Destination Host Unreachable"},
			{"no host IPv6", icmpNoHostV6, "From " + icmpR2V6 + " icmp_seq=1 Destination unreachable: Address unreachable"},
		})
	})

	t.Run("ping forward, no route at the egress", func(t *testing.T) {
		// The gateway's own ICMP socket cannot send (ENETUNREACH): as a
		// router without a route would, the gateway should say "network
		// unreachable" to the client.
		log := watch(t, d.Process)
		mark := d.Mark()
		cases := []pingCase{
			{"no route at the egress IPv4", icmpGwNetV4, "icmp_seq=1 Destination Net Unreachable"},
			{"no route at the egress IPv6", icmpGwNetV6, "icmp_seq=1 Destination unreachable: No route"},
		}
		runs := make([]cmdRun, len(cases))
		var wg sync.WaitGroup
		for i, c := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runs[i] = pingRun(t, gw, c.dst, "-c", "1", "-W", "2")
			}()
		}
		wg.Wait()
		silent := 0
		for i, c := range cases {
			r := runs[i]
			t.Logf("%s: ping %s: exit %d after %v: %s", c.name, c.dst, r.r.ExitCode, r.took.Round(time.Millisecond), pingLines(r))
			_, rx, ok := pingCounts(r)
			switch {
			case ok && rx == 0 && strings.Contains(r.r.Stdout, c.want):
			case ok && rx == 0 && !strings.Contains(r.r.Stdout, "From "):
				silent++
			default:
				log.Errorf(t, "%s: want no reply and %q, got %s", c.name, c.want, r)
			}
		}
		if silent > 0 && !t.Failed() {
			daemonBug(t, log, "egress-noroute-silent", fmt.Sprintf("ping got no answer at all; tungate: %s", grepLines(d.OutputSince(mark), "forwarding echo request")))
		}
	})

	// Hop 1 is the gateway: a probe's TTL 1 ends at its netstack, which
	// answers from its TUN address. The next TTLs leave gw one less.
	for _, tc := range []struct {
		name string
		mode []string
		want []string
	}{
		{"traceroute UDP IPv4", nil, []string{tunAddrV4, icmpR1V4, icmpR2V4, icmpSrvV4}},
		{"traceroute ICMP IPv4", []string{"-I"}, []string{tunAddrV4, icmpR1V4, icmpR2V4, icmpSrvV4}},
		{"traceroute UDP IPv6", []string{"-6"}, []string{tunAddrV6, icmpR1V6, icmpR2V6, icmpSrvV6}},
		{"traceroute ICMP IPv6", []string{"-6", "-I"}, []string{tunAddrV6, icmpR1V6, icmpR2V6, icmpSrvV6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := watch(t, d.Process)
			mark := d.Mark()
			hops, r := traceroute(t, gw, tc.want[len(tc.want)-1], tc.mode...)
			t.Logf("%s\n%s", r.cmd, strings.TrimSpace(r.r.Stdout))
			if r.r.Err != nil || strings.Join(hops, " ") == strings.Join(tc.want, " ") {
				if r.r.Err != nil {
					log.Errorf(t, "traceroute failed: %s", r)
				}
				return
			}
			bugs, ok := traceBugs(hops, tc.want, len(tc.mode) > 0 && tc.mode[len(tc.mode)-1] == "-I")
			if !ok {
				log.Errorf(t, "hops %v, want %v\n%s", hops, tc.want, r)
				return
			}
			daemonBug(t, log, bugs[0], fmt.Sprintf("hops %v, want %v (known bugs: %v); tungate: %s", hops, tc.want, bugs,
				grepLines(d.OutputSince(mark), "forwarding echo request")))
		})
	}
}

// traceBugs explains how hops differ from want by the known bugs: hop 1
// missing in IPv4 (martian-hop), and with ICMP probes (icmp) other hops
// missing, the destination then reached one or more hops later
// (sk-err-send). ok is false when the known bugs do not explain it.
func traceBugs(hops, want []string, icmp bool) (bugs []string, ok bool) {
	dst := want[len(want)-1]
	if len(hops) < len(want) || hops[len(hops)-1] != dst {
		return nil, false
	}
	seen := map[string]bool{}
	for i, h := range hops {
		switch {
		case i < len(want) && h == want[i]:
		case h == "*" && i == 0 && !strings.Contains(dst, ":"):
			seen["martian-hop"] = true
		case h == "*" && icmp:
			seen["sk-err-send"] = true
		case i == len(hops)-1 && icmp:
			// The destination, later than it is: a probe was lost.
			seen["sk-err-send"] = true
		default:
			return nil, false
		}
	}
	for _, b := range []string{"martian-hop", "sk-err-send"} {
		if seen[b] {
			bugs = append(bugs, b)
		}
	}
	return bugs, len(bugs) > 0
}

// grepLines returns the lines of out containing all of the strings, at
// most 6, joined.
func grepLines(out string, all ...string) string {
	var got []string
	for _, l := range strings.Split(out, "\n") {
		ok := true
		for _, s := range all {
			ok = ok && strings.Contains(l, s)
		}
		if ok && l != "" {
			got = append(got, l)
		}
	}
	if len(got) > 6 {
		got = append(got[:6], fmt.Sprintf("... %d more", len(got)-6))
	}
	if len(got) == 0 {
		return "(no such log line)"
	}
	return "\n  " + strings.Join(got, "\n  ")
}

// danteErrRE finds why danted's connect failed in its log line.
var danteErrRE = regexp.MustCompile(`remote peer error \([^)]*\)|failed: [^.]*`)

// TestICMPDante: tungate with danted (in up, behind r1) as its upstream.
// danted's reply codes for the same destinations (5 refused, 3 network
// unreachable: its own no route, and r1's ICMP; 4 host unreachable)
// reach gw's curl as the same messages as a direct dial's.
func TestICMPDante(t *testing.T) {
	iw := newICMPWorld(t, true)
	iw.startDanted()
	danted := net.JoinHostPort(up1V4, socksPort)
	d := iw.startTun(t, "--proxy", "socks5://"+iw.danteUser+":"+iw.dantePass+"@"+danted)
	log := watch(t, d.Process, iw.danted)
	mark, dmark := d.Mark(), iw.danted.Mark()
	checkCurls(t, log, iw.gw, directCurlCases())
	// What danted did and replied, and what tungate made of it.
	tout, dout := d.OutputSince(mark), iw.danted.OutputSince(dmark)
	for _, c := range directCurlCases() {
		dst := c.host + "." + c.port
		found := ""
		for _, l := range strings.Split(dout, "\n") {
			if strings.Contains(l, "tcp/connect ]") && strings.Contains(l, dst) {
				if m := danteErrRE.FindStringSubmatch(l); m != nil {
					found = m[0]
				}
				break
			}
		}
		reply := ""
		hp := net.JoinHostPort(c.host, c.port)
		for _, l := range strings.Split(tout, "\n") {
			if strings.Contains(l, "tcp flow failed") && strings.Contains(l, "dst="+hp) {
				reply = l[strings.Index(l, "err="):]
				break
			}
		}
		if found == "" || reply == "" {
			log.Errorf(t, "%s: no danted log line (%q) or no tungate \"tcp flow failed\" line (%q) for %s", c.name, found, reply, dst)
			continue
		}
		t.Logf("%s: danted: %s; tungate: %s", c.name, found, reply)
	}
}

// TestICMPModes: --icmp reply and off, and the ICMP rate limit.
func TestICMPModes(t *testing.T) {
	iw := newICMPWorld(t, false)
	gw := iw.gw

	t.Run("reply: the gateway answers every ping itself", func(t *testing.T) {
		d := iw.startTun(t, "--icmp", "reply")
		log := watch(t, d.Process)
		// Nothing has these addresses: the answers are the gateway's own
		// (local answers: they say the gateway is up, nothing more).
		checkPingReaches(t, log, gw, icmpAnyV4, 3)
		checkPingReaches(t, log, gw, icmpAnyV6, 3)
		if err := d.signal(t, syscall.SIGTERM, 10*time.Second); err != nil {
			t.Errorf("tungate exited with %v", err)
		}
	})

	t.Run("off: pings time out", func(t *testing.T) {
		d := iw.startTun(t, "--icmp", "off")
		log := watch(t, d.Process)
		for _, dst := range []string{icmpSrvV4, icmpSrvV6} {
			r := pingRun(t, gw, dst, "-c", "2", "-i", "0.2", "-W", "1")
			t.Logf("ping %s: exit %d: %s", dst, r.r.ExitCode, pingLines(r))
			if tx, rx, ok := pingCounts(r); !ok || tx != 2 || rx != 0 || strings.Contains(r.r.Stdout, "From ") {
				log.Errorf(t, "ping %s with --icmp off: want 2 sent, none answered, no error; got %s", dst, r)
			}
		}
		if err := d.signal(t, syscall.SIGTERM, 10*time.Second); err != nil {
			t.Errorf("tungate exited with %v", err)
		}
	})

	t.Run("rate limit", func(t *testing.T) {
		const rate, burst, n = 5, 5, 50
		d := iw.startTun(t, "--icmp", "reply", "--icmp-rate", fmt.Sprint(rate), "--icmp-burst", fmt.Sprint(burst))
		// burstCheck sends n datagrams at once, each from a socket of its
		// own (so each is a mapping of its own, with an outbound socket
		// that sends just it), and wants at least one and at most
		// burst + rate x elapsed errors typ/code.
		burstCheck := func(t *testing.T, log *daemonLog, dst string, ttl int, typ, code uint8) int {
			t.Helper()
			errs, sent, err := udpErrors(gw, netip.MustParseAddrPort(dst), ttl, n, n, 1500*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			got := countErrs(errs, typ, code, "")
			// The bucket refills at rate per second while the datagrams
			// go out; the errors come back within milliseconds of them.
			limit := burst + int(float64(rate)*(sent+200*time.Millisecond).Seconds()) + 1
			t.Logf("%d datagrams to %s (TTL %d) in %v -> the client got %d ICMP %d/%d errors (limit %d)", n, dst, ttl, sent.Round(time.Millisecond), got, typ, code, limit)
			if got == 0 || got > limit || len(errs) != got {
				log.Errorf(t, "the client got %v for %d datagrams, want 1..%d errors %d/%d (--icmp-rate %d --icmp-burst %d)", errs, n, limit, typ, code, rate, burst)
			}
			return got
		}
		t.Run("relayed port unreachable", func(t *testing.T) {
			log := watch(t, d.Process)
			before := snmp(t, iw.server, "Icmp", "OutDestUnreachs")
			got := burstCheck(t, log, net.JoinHostPort(icmpSrvV4, closedPort), 0, 3, 3)
			sent := snmp(t, iw.server, "Icmp", "OutDestUnreachs") - before
			t.Logf("server sent %d port unreachables (Icmp OutDestUnreachs); the client got %d", sent, got)
			if sent != n {
				log.Errorf(t, "server sent %d port unreachables for %d datagrams", sent, n)
			}
			if sent <= int64(got) {
				log.Errorf(t, "server sent %d port unreachables: not more than the client got (%d), so this tested nothing", sent, got)
			}
		})
		time.Sleep(time.Second) // the bucket fills again
		t.Run("time exceeded from the gateway IPv6", func(t *testing.T) {
			log := watch(t, d.Process)
			burstCheck(t, log, net.JoinHostPort(icmpSrvV6, "33434"), 1, 3, 0)
		})
		time.Sleep(time.Second)
		t.Run("time exceeded from the gateway IPv4", func(t *testing.T) {
			log := watch(t, d.Process)
			// What tungate writes into the TUN is what tg0 receives,
			// whatever the kernel does with it next.
			before := rxPackets(t, gw, tunDevice)
			errs, sent, err := udpErrors(gw, netip.MustParseAddrPort(net.JoinHostPort(icmpSrvV4, "33434")), 1, n, n, 1500*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			written := rxPackets(t, gw, tunDevice) - before
			limit := burst + int(float64(rate)*(sent+200*time.Millisecond).Seconds()) + 1
			t.Logf("%d datagrams with TTL 1 -> tungate wrote %d packets into %s (limit %d); the client got %v", n, written, tunDevice, limit, errs)
			switch {
			case written < 1 || written > int64(limit):
				log.Errorf(t, "tungate wrote %d packets into the TUN for %d datagrams with TTL 1, want 1..%d time exceeded", written, n, limit)
			case len(errs) == int(written) && countErrs(errs, 11, 0, tunAddrV4) == len(errs):
			case len(errs) == 0:
				daemonBug(t, log, "martian-hop", fmt.Sprintf("tungate wrote %d time exceeded (within the limit %d), the socket got none", written, limit))
			default:
				log.Errorf(t, "want %d time exceeded from %s, got %v", written, tunAddrV4, errs)
			}
		})
	})
}
