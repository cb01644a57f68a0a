package e2e

// TUN mode: tungate's TUN device, its netstack and --auto-route, end to
// end. The topology differs from doc.go's: gw reaches the servers through
// a router, so that its main table has only a default route for them and
// "host-wide" capture (--auto-route with no --route, or --route
// 198.18.0.0/15) really captures them; a connected subnet would win over
// the TUN (see package tun).
//
//	lan     198.18.10.2/24   2001:db8:10::2/64   default via gw (router mode)
//	 |
//	 |      198.18.10.1/24   2001:db8:10::1/64
//	gw      tungate; TUN tg0 198.18.99.1/24 2001:db8:99::1/64
//	 |      198.18.20.1/24   2001:db8:20::1/64   default via wan
//	 |
//	wan     198.18.20.2/24   2001:db8:20::2/64   forwarding on; no route to lan
//	 |--- server  198.18.1.2/24 (+.3)  2001:db8:1::2/64 (+::3)   (wan: .1.1)
//	 |            HTTP :8080, dnsmasq :53, iperf3 -s :5201, UDP peers,
//	 |            the 1,000-connection server :7001
//	 |--- up      198.19.0.2/24  2001:db8:190::2/64              (wan: .0.1)
//	              danted :1080 (username auth, CONNECT and UDP ASSOCIATE)
//
// Everything gw reaches beyond wan has a destination that only gw's default
// route covers, so with --auto-route it goes into the TUN unless the socket
// carries the fwmark (tungate's own). The servers see gw's uplink address
// 198.18.20.1 for a direct tungate and up's 198.19.0.2 through danted; a
// flow that went through the TUN appears in tungate's debug log ("flow
// closed") with the TUN address (or lan's, in router mode) as its source.
//
// The tests (each builds this topology and removes it):
//
//   - TestTUNDirect: --auto-route with the default routes (all of IPv4 and
//     IPv6), out directly. From gw: curl IPv4 and IPv6 (1 MiB, sha256), a
//     closed port refused at once, dig over UDP and TCP, iperf3 TCP, TCP -R
//     and UDP at 200 Mbit/s, each compared with the registry's bytes for
//     its data flow (within 1%); then SIGTERM restores `ip rule`, `ip route
//     show table all` (v4 and v6) and the sysctls exactly.
//   - TestTUNDante: the same through danted, capturing 198.18.0.0/15 and
//     2001:db8::/32 while danted sits at 198.19.0.2: danted logs every flow
//     from gw's uplink, and tungate never sees a flow to danted (no loop).
//   - TestTUNCrashCleanup: SIGKILL leaves rules, a throw route, forwarding
//     sysctls (--router) and the state file; a restart removes them first;
//     after its SIGTERM everything is exactly as before.
//   - TestTUNRouter: --router; lan (default route via gw) reaches the
//     servers only while tungate runs; forwarding is restored afterwards.
//   - TestTUNUDPFullCone: endpoint-independent UDP mapping, IPv4 and IPv6.
//   - TestTUNManyConnections: 1,000 concurrent TCP connections, each with
//     its own byte counts in the registry, none left at shutdown.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tungate/internal/netnstest"
)

const (
	tunLanV4    = "198.18.10.2"
	tunLanV6    = "2001:db8:10::2"
	tunGwLanV4  = "198.18.10.1"
	tunGwLanV6  = "2001:db8:10::1"
	tunGwUpV4   = "198.18.20.1" // gw's uplink: what the servers see of a direct tungate
	tunGwUpV6   = "2001:db8:20::1"
	tunWanV4    = "198.18.20.2"
	tunWanV6    = "2001:db8:20::2"
	tunAddrV4   = "198.18.99.1" // the TUN device's addresses
	tunAddrV6   = "2001:db8:99::1"
	tunPeerBV4  = "198.18.1.3" // second addresses of server: UDP peer B
	tunPeerBV6  = "2001:db8:1::3"
	tunDevice   = "tg0"
	iperfPort   = "5201"
	manyPort    = "7001"
	tunStartMax = 10 * time.Second
)

// tunWorld is the topology above. It embeds a world (doc.go's) whose
// client is lan and whose up1 is up, so that world's peers (HTTP server,
// dnsmasq, danted) start unchanged.
type tunWorld struct {
	*world
	lan, wan *netnstest.Namespace
	iperf    *netnstest.Process
}

func newTunWorld(t *testing.T) *tunWorld {
	t.Helper()
	requireTungate(t)
	netnstest.RequireTool(t, "curl")
	netnstest.RequireTool(t, "dnsmasq")

	w := &world{t: t, dir: t.TempDir()}
	if err := os.Chmod(w.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tp := netnstest.New(t)
	w.topo = tp
	tw := &tunWorld{world: w}
	tw.lan = tp.Namespace("lan")
	w.gw = tp.Namespace("gw")
	tw.wan = tp.Namespace("wan")
	w.server = tp.Namespace("server")
	w.up1 = tp.Namespace("up")
	w.client = tw.lan
	tw.wan.EnableForwarding()

	tp.Link(tw.lan, []string{tunLanV4 + "/24", tunLanV6 + "/64"}, w.gw, []string{tunGwLanV4 + "/24", tunGwLanV6 + "/64"})
	tp.Link(w.gw, []string{tunGwUpV4 + "/24", tunGwUpV6 + "/64"}, tw.wan, []string{tunWanV4 + "/24", tunWanV6 + "/64"})
	tp.Link(tw.wan, []string{gwSrvV4 + "/24", gwSrvV6 + "/64"}, w.server, []string{serverV4 + "/24", tunPeerBV4 + "/24", serverV6 + "/64", tunPeerBV6 + "/64"})
	tp.Link(tw.wan, []string{gwUp1V4 + "/24", "2001:db8:190::1/64"}, w.up1, []string{up1V4 + "/24", up1V6 + "/64"})

	tw.lan.Route("default", tunGwLanV4)
	tw.lan.Route("default", tunGwLanV6)
	w.gw.Route("default", tunWanV4)
	w.gw.Route("default", tunWanV6)
	w.server.Route("default", gwSrvV4)
	w.server.Route("default", gwSrvV6)
	w.up1.Route("default", gwUp1V4)
	w.up1.Route("default", "2001:db8:190::1")

	for _, ns := range []*netnstest.Namespace{tw.lan, w.gw, tw.wan, w.server, w.up1} {
		ns.WriteEtc("resolv.conf", "nameserver "+serverV4+"\noptions timeout:2 attempts:2\n")
	}
	w.http = startHTTP(t, w.server)
	w.startDnsmasq()
	return tw
}

// startIperf starts `iperf3 -s` in server (once).
func (tw *tunWorld) startIperf(t *testing.T) {
	t.Helper()
	netnstest.RequireTool(t, "iperf3")
	if tw.iperf != nil {
		return
	}
	tw.iperf = tw.server.Start(tw.t, "iperf3", "-s", "-p", iperfPort, "--forceflush")
	if err := tw.iperf.WaitOutput("Server listening on "+iperfPort, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// tunDaemon is a tungate in TUN mode in gw.
type tunDaemon struct {
	*netnstest.Process
	args []string
}

// tunArgs are the TUN-mode flags every test gives: device tg0 with both
// addresses, --auto-route, state in the world's directory, no SOCKS5
// listener, no admin server, debug log (for the "flow closed" lines).
func (tw *tunWorld) tunArgs() []string {
	return []string{
		"--tun", tunDevice, "--tun-addr", tunAddrV4 + "/24", "--tun-addr", tunAddrV6 + "/64",
		"--auto-route", "--state-dir", filepath.Join(tw.dir, "state"),
		"--socks", "off", "--admin", "off", "--log-level", "debug",
	}
}

// startTun starts tungate with tunArgs and extra in gw and waits until it
// logs that its routes are installed.
func (tw *tunWorld) startTun(t *testing.T, extra ...string) *tunDaemon {
	t.Helper()
	args := append(tw.tunArgs(), extra...)
	cmd := tw.gw.Command(context.Background(), tungateBin, args...)
	cmd.Dir = tw.dir
	cmd.Env = cleanEnv()
	p := tw.gw.StartCmd(t, cmd)
	p.Name = "tungate"
	if err := p.WaitOutput(`msg="routes installed"`, tunStartMax); err != nil {
		t.Fatalf("tungate %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("started: tungate %s (pid %d)", strings.Join(args, " "), p.PID())
	return &tunDaemon{Process: p, args: args}
}

// signal sends sig to the daemon (by its PID) and waits up to timeout for
// it to exit; it returns the wait error.
func (d *tunDaemon) signal(t *testing.T, sig syscall.Signal, timeout time.Duration) error {
	t.Helper()
	if err := syscall.Kill(d.PID(), sig); err != nil {
		t.Fatalf("kill -%d %d: %v", sig, d.PID(), err)
	}
	select {
	case <-d.Done():
	case <-time.After(timeout):
		t.Fatalf("tungate (pid %d) still runs %v after signal %v; output:\n%s", d.PID(), timeout, sig, d.Output())
	}
	_, err := d.Exited()
	return err
}

// --- the "flow closed" log lines -------------------------------------------

// flowClosed is one `msg="flow closed"` line of tungate's debug log.
type flowClosed struct {
	Proto            string
	Src, Dst         netip.AddrPort
	Up, Down         int64
	PktsUp, PktsDown int64
	Line             string
}

var logFieldRE = regexp.MustCompile(`([a-z_-]+)=("(?:[^"\\]|\\.)*"|\S+)`)

// parseFlows returns the "flow closed" lines of out.
func parseFlows(out string) []flowClosed {
	var flows []flowClosed
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `msg="flow closed"`) {
			continue
		}
		f := flowClosed{Line: line}
		for _, m := range logFieldRE.FindAllStringSubmatch(line, -1) {
			v := strings.Trim(m[2], `"`)
			switch m[1] {
			case "proto":
				f.Proto = v
			case "src":
				f.Src, _ = netip.ParseAddrPort(v)
			case "dst":
				f.Dst, _ = netip.ParseAddrPort(v)
			case "up":
				f.Up, _ = strconv.ParseInt(v, 10, 64)
			case "down":
				f.Down, _ = strconv.ParseInt(v, 10, 64)
			case "pkts_up":
				f.PktsUp, _ = strconv.ParseInt(v, 10, 64)
			case "pkts_down":
				f.PktsDown, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		flows = append(flows, f)
	}
	return flows
}

// waitFlows polls the daemon's output since mark until match selects at
// least n "flow closed" lines, for at most timeout, and returns the
// selected lines (fewer on timeout).
func waitFlows(p *netnstest.Process, mark, n int, timeout time.Duration, match func(flowClosed) bool) []flowClosed {
	deadline := time.Now().Add(timeout)
	for {
		var got []flowClosed
		for _, f := range parseFlows(p.OutputSince(mark)) {
			if match(f) {
				got = append(got, f)
			}
		}
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		if exited, _ := p.Exited(); exited {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tunSrc reports whether a is one of the TUN device's own addresses: a
// flow from gw itself that the routes sent into the TUN.
func tunSrc(a netip.AddrPort) bool {
	s := a.Addr().Unmap().String()
	return s == tunAddrV4 || s == tunAddrV6
}

// --- the checks the tests share ------------------------------------------------

// fetchTun downloads /file.bin from host with curl in ns, without any
// proxy option: the routes must carry it. It checks the body's size and
// sha256, and that the HTTP server saw exactly one request, from wantPeer.
func (tw *tunWorld) fetchTun(t *testing.T, log *daemonLog, ns *netnstest.Namespace, host, wantPeer string) {
	t.Helper()
	id := testID(t)
	out := filepath.Join(t.TempDir(), "body")
	u := url(host, "/file.bin", id)
	args := append(append([]string{}, curlOpts...), "-o", out, "-w", "%{http_code} %{size_download} %{local_ip}", u)
	r := ns.Exec(ctxT(t, 30*time.Second), "curl", args...)
	t.Logf("%s: curl %s -> %q (exit %d)", ns.Short, u, r.Stdout, r.ExitCode)
	if r.Err != nil {
		log.Fatalf(t, "curl %s in %s: %s", u, ns.Short, r)
	}
	if !strings.HasPrefix(r.Stdout, fmt.Sprintf("200 %d ", fileSize)) {
		log.Fatalf(t, "curl %s: -w printed %q, want \"200 %d ...\"", u, r.Stdout, fileSize)
	}
	body, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != tw.http.fileSum {
		log.Fatalf(t, "curl %s: body sha256 %s, want %s (%d bytes)", u, got, tw.http.fileSum, len(body))
	}
	tw.checkPeers(t, log, id, wantPeer)
}

// checkTunFlow waits for the "flow closed" line of a TCP flow from src
// (matched by srcOK) to dst and checks that it carried at least minDown
// bytes down.
func checkTunFlow(t *testing.T, log *daemonLog, d *netnstest.Process, mark int, srcOK func(netip.AddrPort) bool, dst string, minDown int64) flowClosed {
	t.Helper()
	want := netip.MustParseAddrPort(dst)
	flows := waitFlows(d, mark, 1, 5*time.Second, func(f flowClosed) bool {
		return f.Proto == "tcp" && f.Dst == want && srcOK(f.Src)
	})
	if len(flows) != 1 {
		log.Fatalf(t, "want exactly one \"flow closed\" line for a TCP flow to %s from the expected source, got %d: %v", dst, len(flows), flows)
	}
	f := flows[0]
	if f.Down < minDown {
		log.Errorf(t, "flow to %s: down=%d, want at least %d\n%s", dst, f.Down, minDown, f.Line)
	}
	t.Logf("registry: %s", f.Line[strings.Index(f.Line, "flow="):])
	return f
}

// digTun asks dnsmasq for name's A record with dig in ns (over UDP, or TCP
// with tcp), with no proxy: the routes carry it.
func digTun(t *testing.T, log *daemonLog, ns *netnstest.Namespace, tcp bool, name, typ, want string) {
	t.Helper()
	netnstest.RequireTool(t, "dig")
	mode := "+notcp"
	if tcp {
		mode = "+tcp"
	}
	args := []string{"@" + serverV4, mode, "+short", "+time=2", "+tries=2", name, typ}
	r := ns.Exec(ctxT(t, 15*time.Second), "dig", args...)
	t.Logf("%s: dig %s -> %q", ns.Short, strings.Join(args, " "), strings.TrimSpace(r.Stdout))
	if r.Err != nil || strings.TrimSpace(r.Stdout) != want {
		log.Fatalf(t, "dig %s in %s: want %q, got %s", strings.Join(args, " "), ns.Short, want, r)
	}
}

// checkRefused checks that a TCP connection through the TUN to a closed
// port of server is refused at once (the netstack answers the SYN with a
// RST only after the outbound connect failed).
func checkRefused(t *testing.T, log *daemonLog, ns *netnstest.Namespace, host string) {
	t.Helper()
	start := time.Now()
	r := curlIn(t, ns, "http://"+net.JoinHostPort(host, closedPort)+"/")
	took := time.Since(start)
	t.Logf("%s: curl to closed port %s: exit %d after %v: %s", ns.Short, net.JoinHostPort(host, closedPort), r.ExitCode, took.Round(time.Millisecond), strings.TrimSpace(r.Stderr))
	if r.ExitCode != 7 || !strings.Contains(r.Stderr, "Couldn't connect") && !strings.Contains(r.Stderr, "refused") {
		log.Fatalf(t, "curl to a closed port through the TUN: want exit 7 (connection refused), got %s", r)
	}
	if took > 2*time.Second {
		log.Errorf(t, "refusal took %v, want it at once", took)
	}
}
