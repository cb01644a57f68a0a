package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tungate/internal/netnstest"
)

// Addresses of the topology (see doc.go).
const (
	clientV4 = "198.18.0.2"
	clientV6 = "2001:db8:0::2"
	gwV4     = "198.18.0.1" // tungate listens here
	gwV6     = "2001:db8:0::1"
	gwSrvV4  = "198.18.1.1" // gw as the server sees it
	gwSrvV6  = "2001:db8:1::1"
	serverV4 = "198.18.1.2"
	serverV6 = "2001:db8:1::2"
	gwUp1V4  = "198.19.0.1"
	up1V4    = "198.19.0.2"
	up1V6    = "2001:db8:190::2"
	up1Up2V4 = "198.19.1.1"
	up2V4    = "198.19.1.2"
	up2V6    = "2001:db8:191::2"

	// noRouteV4 is inside the test range but gw has no route to it.
	noRouteV4 = "198.18.200.1"
	// noHostV4 is on gw's server link, where nobody answers ARP.
	noHostV4 = "198.18.1.99"

	httpPort    = "8080"
	closedPort  = "9"    // nothing listens on it in server
	blockedPort = "9999" // danted's rules block it
	echoPort    = "7"
	socksPort   = "1080" // danted and microsocks

	// Names that dnsmasq (in server) answers; gw resolves through it.
	nameV4     = "www.example.test" // A 198.18.1.2 only
	nameV6     = "v6.example.test"  // AAAA 2001:db8:1::2 only
	nameUDP    = "udp.example.test" // A 198.18.1.123: the answer through UDP ASSOCIATE
	answerUDP  = "198.18.1.123"
	nameHosts  = "hosts.example.test" // only in gw's /etc/hosts: 198.18.1.2
	nameAbsent = "absent.example.test"

	fileSize = 1 << 20
)

// world is the topology of doc.go with its peers, made for one test.
type world struct {
	t   *testing.T
	dir string

	topo                         *netnstest.Topology
	client, gw, server, up1, up2 *netnstest.Namespace

	http *httpServer

	dnsmasq, danted, microsocks *netnstest.Process
	// danteUser and dantePass are the system account danted accepts.
	danteUser, dantePass string
}

// newWorld builds the namespaces, the HTTP server, the UDP echo and
// dnsmasq. The SOCKS peers (danted, microsocks) start on demand.
func newWorld(t *testing.T) *world {
	t.Helper()
	netnstest.RequireNetns(t)
	netnstest.RequireTool(t, "curl")
	netnstest.RequireTool(t, "dnsmasq")

	w := &world{t: t, dir: t.TempDir()}
	// ip netns exec runs programs as root; the temporary directory is
	// readable by everyone so that danted's unprivileged children can read
	// their configuration too.
	if err := os.Chmod(w.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tp := netnstest.New(t)
	w.topo = tp
	w.client = tp.Namespace("client")
	w.gw = tp.Namespace("gw")
	w.server = tp.Namespace("server")
	w.up1 = tp.Namespace("up1")
	w.up2 = tp.Namespace("up2")
	w.gw.EnableForwarding()
	w.up1.EnableForwarding()

	tp.Link(w.client, []string{clientV4 + "/24", clientV6 + "/64"}, w.gw, []string{gwV4 + "/24", gwV6 + "/64"})
	tp.Link(w.gw, []string{gwSrvV4 + "/24", gwSrvV6 + "/64"}, w.server, []string{serverV4 + "/24", serverV6 + "/64"})
	tp.Link(w.gw, []string{gwUp1V4 + "/24", "2001:db8:190::1/64"}, w.up1, []string{up1V4 + "/24", up1V6 + "/64"})
	tp.Link(w.up1, []string{up1Up2V4 + "/24", "2001:db8:191::1/64"}, w.up2, []string{up2V4 + "/24", up2V6 + "/64"})

	// client: only its link to gw, so everything it reaches beyond gw went
	// through tungate. gw: its links plus up2's link via up1.
	w.gw.Route("198.19.1.0/24", up1V4)
	w.gw.Route("2001:db8:191::/64", up1V6)
	w.server.Route("default", gwSrvV4)
	w.server.Route("default", gwSrvV6)
	w.up1.Route("default", gwUp1V4)
	w.up1.Route("default", "2001:db8:190::1")
	w.up2.Route("default", up1Up2V4)
	w.up2.Route("default", "2001:db8:191::1")

	// gw resolves names with dnsmasq in server; one name only from hosts.
	w.gw.WriteEtc("resolv.conf", "nameserver "+serverV4+"\noptions timeout:2 attempts:2\n")
	w.gw.WriteEtc("hosts", "127.0.0.1 localhost\n::1 localhost\n"+serverV4+" "+nameHosts+"\n")
	// client resolves nothing (no DNS server on its loopback), so a name
	// works there only when tungate resolves it. The others use dnsmasq:
	// no program in the topology ever sees the host's resolv.conf.
	w.client.WriteEtc("resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
	for _, ns := range []*netnstest.Namespace{w.server, w.up1, w.up2} {
		ns.WriteEtc("resolv.conf", "nameserver "+serverV4+"\noptions timeout:2 attempts:2\n")
	}

	w.http = startHTTP(t, w.server)
	startUDPEcho(t, w.server)
	w.startDnsmasq()
	return w
}

// --- HTTP server -----------------------------------------------------------

// httpServer serves /file.bin (fileSize random bytes) and /hello, and
// records the peer address of each request by its ?id= query.
type httpServer struct {
	file    []byte
	fileSum string

	mu    sync.Mutex
	peers map[string][]string
}

func startHTTP(t *testing.T, ns *netnstest.Namespace) *httpServer {
	t.Helper()
	h := &httpServer{file: make([]byte, fileSize), peers: map[string][]string{}}
	if _, err := rand.Read(h.file); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(h.file)
	h.fileSum = hex.EncodeToString(sum[:])

	l, err := ns.Listen("tcp", "[::]:"+httpPort) // both families
	if err != nil {
		t.Fatalf("HTTP listener in %s: %v", ns.Name, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/file.bin", func(rw http.ResponseWriter, r *http.Request) {
		h.record(r)
		http.ServeContent(rw, r, "file.bin", time.Time{}, bytes.NewReader(h.file))
	})
	mux.HandleFunc("/hello", func(rw http.ResponseWriter, r *http.Request) {
		h.record(r)
		fmt.Fprintf(rw, "hello %s\n", r.URL.Query().Get("id"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
	})
	return h
}

func (h *httpServer) record(r *http.Request) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
		host = ip.To4().String() // ::ffff:198.18.1.1 -> 198.18.1.1
	}
	id := r.URL.Query().Get("id")
	h.mu.Lock()
	h.peers[id] = append(h.peers[id], host)
	h.mu.Unlock()
}

// peersOf returns the peer addresses of the requests made with ?id=id.
func (h *httpServer) peersOf(id string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.peers[id]...)
}

// startUDPEcho answers every datagram on port 7 of server with itself.
func startUDPEcho(t *testing.T, ns *netnstest.Namespace) {
	t.Helper()
	pc, err := ns.ListenPacket("udp", "[::]:"+echoPort)
	if err != nil {
		t.Fatalf("UDP echo in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], addr)
		}
	}()
}

// --- dnsmasq ---------------------------------------------------------------

func (w *world) startDnsmasq() {
	t := w.t
	t.Helper()
	w.dnsmasq = w.server.Start(t, "dnsmasq",
		"--keep-in-foreground", "--log-facility=-", "--log-queries",
		"--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
		"--bind-interfaces", "--listen-address="+serverV4, "--listen-address="+serverV6,
		"--user=root", "--group=root", "--pid-file="+filepath.Join(w.dir, "dnsmasq.pid"),
		"--host-record="+nameV4+","+serverV4,
		"--host-record="+nameV6+","+serverV6,
		"--host-record="+nameUDP+","+answerUDP,
		"--local=/example.test/", // other names there: NXDOMAIN
	)
	if err := w.server.WaitTCP(net.JoinHostPort(serverV4, "53"), 5*time.Second); err != nil {
		t.Fatalf("dnsmasq not ready: %v\ndnsmasq output:\n%s", err, w.dnsmasq.Output())
	}
}

// --- danted (up1) ----------------------------------------------------------

// startDanted starts danted in up1 with username authentication (a system
// user made for the test) and CONNECT and UDP ASSOCIATE allowed.
func (w *world) startDanted() {
	t := w.t
	t.Helper()
	if w.danted != nil {
		return
	}
	netnstest.RequireTool(t, "danted")
	w.dantePass = "dante-pw-" + randHex(6)
	w.danteUser = netnstest.AddSystemUser(t, w.dantePass)
	conf := filepath.Join(w.dir, "danted.conf")
	writeFile(t, conf, fmt.Sprintf(`# danted for tungate's e2e tests (up1)
logoutput: stderr
internal: %[1]s port = %[3]s
external: %[1]s
external: %[2]s
clientmethod: none
socksmethod: username
user.privileged: root
user.unprivileged: nobody
timeout.negotiate: 10
timeout.io: 30

# 0/0 matches IPv4 and IPv6 (0.0.0.0/0 only IPv4).
client pass {
	from: 0/0 to: 0/0
	log: error connect disconnect
}
# A port danted refuses by rule: its reply 2 must reach tungate's client.
socks block {
	from: 0/0 to: 0/0 port = %[4]s
	log: error connect
}
socks pass {
	from: 0/0 to: 0/0
	command: bind connect udpassociate
	log: error connect disconnect
}
socks pass {
	from: 0/0 to: 0/0
	command: bindreply udpreply
	log: error connect disconnect
}
`, up1V4, up1V6, socksPort, blockedPort))
	if r := w.up1.Exec(ctxT(t, 10*time.Second), "danted", "-V", "-f", conf); r.Err != nil {
		t.Fatalf("danted -V rejects its configuration: %s", r)
	}
	w.danted = w.up1.Start(t, "danted", "-f", conf, "-N", "1")
	if err := w.gw.WaitTCP(net.JoinHostPort(up1V4, socksPort), 5*time.Second); err != nil {
		t.Fatalf("danted not ready: %v\ndanted output:\n%s", err, w.danted.Output())
	}
}

// --- microsocks (up2) ------------------------------------------------------

func (w *world) startMicrosocks() {
	t := w.t
	t.Helper()
	if w.microsocks != nil {
		return
	}
	netnstest.RequireTool(t, "microsocks")
	w.microsocks = w.up2.Start(t, "microsocks", "-i", up2V4, "-p", socksPort)
	if err := w.up1.WaitTCP(net.JoinHostPort(up2V4, socksPort), 5*time.Second); err != nil {
		t.Fatalf("microsocks not ready: %v\nmicrosocks output:\n%s", err, w.microsocks.Output())
	}
}

// --- helpers ---------------------------------------------------------------

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// testID is a query id unique to the running (sub)test.
func testID(t *testing.T) string {
	r := strings.NewReplacer("/", ".", " ", "_")
	return r.Replace(t.Name()) + "-" + randHex(3)
}

// curlOpts are the options every curl gets: quiet but with errors, bounded.
var curlOpts = []string{"-sS", "--connect-timeout", "8", "--max-time", "15", "--noproxy", ""}

// curl runs curl in client with curlOpts and args.
func (w *world) curl(t *testing.T, args ...string) netnstest.Result {
	t.Helper()
	return curlIn(t, w.client, args...)
}

// curlIn runs curl in ns with curlOpts and args.
func curlIn(t *testing.T, ns *netnstest.Namespace, args ...string) netnstest.Result {
	t.Helper()
	return ns.Exec(ctxT(t, 20*time.Second), "curl", append(append([]string{}, curlOpts...), args...)...)
}

// fetch downloads url (which should carry ?id=) with curl in client using
// the proxy options, and checks the status, the size and the sha256 of the
// body. It returns the curl result for more checks.
func (w *world) fetch(t *testing.T, log *daemonLog, url string, proxyArgs ...string) netnstest.Result {
	t.Helper()
	return w.fetchVia(t, w.client, log, nil, url, proxyArgs...)
}

// fetchIn is fetch with curl in ns.
func (w *world) fetchIn(t *testing.T, ns *netnstest.Namespace, log *daemonLog, url string, proxyArgs ...string) netnstest.Result {
	t.Helper()
	return w.fetchVia(t, ns, log, nil, url, proxyArgs...)
}

// fetchVia is fetch with curl in ns run by the wrapper command (such as
// proxychains4 -q -f CONF), if any.
func (w *world) fetchVia(t *testing.T, ns *netnstest.Namespace, log *daemonLog, wrapper []string, url string, curlArgs ...string) netnstest.Result {
	t.Helper()
	out := filepath.Join(t.TempDir(), "body")
	args := append(append(append([]string{}, curlOpts...), curlArgs...), "-o", out, "-w", "%{http_code} %{size_download}", url)
	var r netnstest.Result
	ctx := ctxT(t, 30*time.Second)
	if len(wrapper) == 0 {
		r = ns.Exec(ctx, "curl", args...)
	} else {
		curl, err := netnstest.LookTool("curl")
		if err != nil {
			t.Fatal(err)
		}
		r = ns.Exec(ctx, wrapper[0], append(append(wrapper[1:len(wrapper):len(wrapper)], curl), args...)...)
	}
	cmdline := strings.Join(append(append([]string{}, wrapper...), append([]string{"curl"}, args...)...), " ")
	if r.Err != nil {
		log.Fatalf(t, "%s: %s", cmdline, r)
	}
	if want := fmt.Sprintf("200 %d", fileSize); r.Stdout != want {
		log.Fatalf(t, "%s: -w printed %q, want %q\n%s", cmdline, r.Stdout, want, r)
	}
	body, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != w.http.fileSum {
		log.Fatalf(t, "%s: body sha256 %s, want %s (%d bytes)", cmdline, got, w.http.fileSum, len(body))
	}
	return r
}

// daemonLog ties failure messages to the output of a daemon (tungate,
// danted) since a mark, so that each failing subtest shows what the daemon
// logged for it.
type daemonLog struct {
	procs []*netnstest.Process
	marks []int
}

// watch marks the processes' output now and logs what they printed since,
// if t fails.
func watch(t *testing.T, procs ...*netnstest.Process) *daemonLog {
	l := &daemonLog{}
	for _, p := range procs {
		if p == nil {
			continue
		}
		l.procs = append(l.procs, p)
		l.marks = append(l.marks, p.Mark())
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(l.dump())
		}
	})
	return l
}

func (l *daemonLog) dump() string {
	if l == nil {
		return ""
	}
	var b strings.Builder
	for i, p := range l.procs {
		fmt.Fprintf(&b, "\n----- %s (pid %d) output during this test -----\n%s", p.Name, p.PID(), p.OutputSince(l.marks[i]))
		if exited, err := p.Exited(); exited {
			fmt.Fprintf(&b, "\n[%s has exited: %v]", p.Name, err)
		}
	}
	return b.String()
}

// Fatalf fails t now; the daemons' output is logged by watch's cleanup.
func (l *daemonLog) Fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf(format, args...)
}

// Errorf fails t and goes on.
func (l *daemonLog) Errorf(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Errorf(format, args...)
}
