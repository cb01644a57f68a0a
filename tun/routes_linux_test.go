package tun

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// routeSetup is a namespace with a LAN (veth0, default routes) and an open
// TUN device tgt0, the calling goroutine inside it.
type routeSetup struct {
	ns  string
	dev *Device
}

func newRouteSetup(t *testing.T) (*routeSetup, func()) {
	t.Helper()
	ns := newNetns(t)
	addLAN(t, ns)
	leave := enterNetns(t, ns)
	d, err := Open(Config{Name: "tgt0", FD: -1, Addrs: pfx("198.18.0.1/30", "2001:db8:1::1/64")})
	if err != nil {
		leave()
		t.Fatal(err)
	}
	return &routeSetup{ns: ns, dev: d}, func() {
		d.Close()
		leave()
	}
}

// routeGet returns `ip route get` for dst (with extra args such as
// "mark 0x2080").
func routeGet(t *testing.T, ns, dst string, extra ...string) string {
	t.Helper()
	args := []string{"route", "get", dst}
	if strings.Contains(dst, ":") {
		args = append([]string{"-6"}, args...)
	}
	return ipn(t, ns, append(args, extra...)...)
}

func expectVia(t *testing.T, ns, dst, dev string, extra ...string) {
	t.Helper()
	out := routeGet(t, ns, dst, extra...)
	if !strings.Contains(out, " dev "+dev+" ") {
		t.Errorf("ip route get %s %s: %q; want dev %s", dst, strings.Join(extra, " "), strings.TrimSpace(out), dev)
	}
}

func expectLines(t *testing.T, what, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l) {
			t.Errorf("%s lacks %q:\n%s", what, l, out)
		}
	}
}

func TestInstallRoutes(t *testing.T) {
	s, done := newRouteSetup(t)
	defer done()
	ns := s.ns
	h := nsHandle(t, ns)
	before := snapshot(t, ns)
	dir := t.TempDir()

	r, err := InstallRoutes(RouteConfig{
		Device:   "tgt0",
		Excludes: pfx("198.18.6.0/24", "2001:db8:6::/48"),
		StateDir: dir,
		Netlink:  h,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("installed:\n%s", strings.Join(r.Summary(), "\n"))

	expectLines(t, "ip rule", ipn(t, ns, "rule"),
		"2080:\tfrom all fwmark 0x2080/0x2080 lookup main proto 208",
		"2081:\tfrom all lookup main suppress_prefixlength 0 proto 208",
		"2082:\tfrom all fwmark 0/0x2080 lookup 2080 proto 208")
	expectLines(t, "ip -6 rule", ipn(t, ns, "-6", "rule"),
		"2080:\tfrom all fwmark 0x2080/0x2080 lookup main proto 208",
		"2081:\tfrom all lookup main suppress_prefixlength 0 proto 208",
		"2082:\tfrom all fwmark 0/0x2080 lookup 2080 proto 208")
	expectLines(t, "table 2080", ipn(t, ns, "route", "show", "table", "2080"),
		"default dev tgt0 proto 208 scope link", "throw 198.18.6.0/24 proto 208")
	expectLines(t, "-6 table 2080", ipn(t, ns, "-6", "route", "show", "table", "2080"),
		"default dev tgt0 proto 208", "throw 2001:db8:6::/48 dev lo proto 208")

	expectVia(t, ns, "198.18.5.5", "tgt0")
	expectVia(t, ns, "198.18.5.5", "veth0", "mark", "0x2080")
	expectVia(t, ns, "198.18.6.6", "veth0") // excluded
	expectVia(t, ns, "198.19.0.7", "veth0") // LAN: main's connected route
	expectVia(t, ns, "2001:db8:5::5", "tgt0")
	expectVia(t, ns, "2001:db8:5::5", "veth0", "mark", "0x2080")
	expectVia(t, ns, "2001:db8:6::6", "veth0")
	expectVia(t, ns, "2001:db8:ff::7", "veth0")

	st, err := readState(r.StatePath())
	if err != nil {
		t.Fatal(err)
	}
	if !st.Complete || st.PID != os.Getpid() || len(st.Rules) != 6 || len(st.Routes) != 4 || st.Protocol != RouteProtocol {
		t.Errorf("state file: %+v", st)
	}

	// Live: an unmarked socket's packet enters the TUN device, a marked
	// one's does not. The sockets are made on this thread, in ns.
	ch := startReader(t, s.dev)
	plain, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	lc := net.ListenConfig{Control: MarkControl(DefaultFwmark)}
	marked, err := lc.ListenPacket(context.Background(), "udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer marked.Close()
	if _, err := marked.WriteTo([]byte("marked"), &net.UDPAddr{IP: net.ParseIP("198.18.5.6"), Port: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.WriteTo([]byte("plain"), &net.UDPAddr{IP: net.ParseIP("198.18.5.5"), Port: 9}); err != nil {
		t.Fatal(err)
	}
	p := waitPacket(t, ch, "the unmarked datagram", func(p packet) bool {
		if p.dst == netip.MustParseAddr("198.18.5.6") {
			t.Error("the marked datagram entered the TUN device")
		}
		return p.dst == netip.MustParseAddr("198.18.5.5")
	})
	if string(p.l4[8:]) != "plain" {
		t.Errorf("payload %q", p.l4[8:])
	}

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("routing differs after Close:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Stat(r.StatePath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file still there after Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestInstallRoutesNarrow(t *testing.T) {
	s, done := newRouteSetup(t)
	defer done()
	ns := s.ns
	ipn(t, ns, "route", "add", "198.18.128.0/17", "via", "198.19.0.253")
	ipn(t, ns, "-6", "route", "add", "2001:db8:5:8000::/49", "via", "2001:db8:ff::fd")
	before := snapshot(t, ns)

	r, err := InstallRoutes(RouteConfig{
		Device:   "tgt0",
		Table:    3000,
		Fwmark:   0x1,
		Priority: 500,
		Routes:   pfx("198.18.0.0/16", "198.18.130.0/24", "2001:db8:5::/48"),
		Excludes: pfx("198.18.130.128/25"),
		StateDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("installed:\n%s", strings.Join(r.Summary(), "\n"))
	expectVia(t, ns, "198.18.130.5", "tgt0")                  // /24 route beats main's /17
	expectVia(t, ns, "198.18.130.200", "veth0")               // excluded: main's /17
	expectVia(t, ns, "198.18.131.5", "veth0")                 // main's /17 beats the /16 route
	expectVia(t, ns, "198.18.5.5", "tgt0")                    // /16 route beats main's default
	expectVia(t, ns, "198.18.5.5", "veth0", "mark", "0x1")    // the gateway's own
	expectVia(t, ns, "198.19.5.5", "veth0")                   // not routed
	expectVia(t, ns, "2001:db8:5::5", "tgt0")                 // /48 beats main's default
	expectVia(t, ns, "2001:db8:5:8000::5", "veth0")           // main's /49 beats the /48
	expectVia(t, ns, "2001:db8:7::7", "veth0")                // not routed
	expectVia(t, ns, "2001:db8:5::5", "veth0", "mark", "0x1") // the gateway's own
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("routing differs after Close:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestInstallRoutesRollback makes InstallRoutes fail after each of its
// steps in turn: every time, the routing and the sysctls must be as
// before and no state file may remain.
func TestInstallRoutesRollback(t *testing.T) {
	s, done := newRouteSetup(t)
	defer done()
	ns := s.ns
	setNsSysctl(t, ns, "net/ipv4/ip_forward", "0")
	setNsSysctl(t, ns, "net/ipv6/conf/all/forwarding", "0")
	before := snapshot(t, ns)
	dir := t.TempDir()
	cfg := RouteConfig{Device: "tgt0", Router: true, Excludes: pfx("198.18.6.0/24", "2001:db8:6::/48"), StateDir: dir}

	r, err := InstallRoutes(cfg)
	if err != nil {
		t.Fatal(err)
	}
	steps := len(r.done)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if steps < 10 {
		t.Fatalf("only %d steps installed", steps)
	}
	defer func() { testHookApplied = nil }()
	for k := 1; k <= steps; k++ {
		boom := fmt.Errorf("injected failure after step %d", k)
		testHookApplied = func(n int) error {
			if n == k {
				return boom
			}
			return nil
		}
		r, err := InstallRoutes(cfg)
		if !errors.Is(err, boom) {
			if r != nil {
				r.Close()
			}
			t.Fatalf("step %d: InstallRoutes = %v; want the injected failure", k, err)
		}
		if after := snapshot(t, ns); after != before {
			t.Fatalf("step %d: routing differs after the failed install:\nbefore:\n%s\nafter:\n%s", k, before, after)
		}
		if v := nsSysctl(t, ns, "net/ipv4/ip_forward"); v != "0" {
			t.Fatalf("step %d: ip_forward %s after the failed install", k, v)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("step %d: state dir not empty: %v", k, ents)
		}
	}
}

func TestInstallRoutesRefuses(t *testing.T) {
	s, done := newRouteSetup(t)
	defer done()
	ns := s.ns
	before := snapshot(t, ns)
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		setup []string // ip arguments, undone by undo
		undo  []string
		cfg   RouteConfig
		err   string
	}{
		{name: "priority taken", setup: []string{"rule", "add", "prio", "2081", "lookup", "main"}, undo: []string{"rule", "del", "prio", "2081"},
			err: "already has priority 2081"},
		{name: "table used by a rule", setup: []string{"-6", "rule", "add", "prio", "100", "lookup", "2080"}, undo: []string{"-6", "rule", "del", "prio", "100"},
			err: "already uses table 2080"},
		{name: "table not empty", setup: []string{"route", "add", "198.18.44.0/24", "dev", "veth0", "table", "2080"}, undo: []string{"route", "del", "198.18.44.0/24", "table", "2080"},
			err: "routing table 2080 already has 1 inet routes"},
		{name: "no device", cfg: RouteConfig{Device: "nope0"}, err: `tun: device "nope0" not found`},
		{name: "device down", setup: []string{"tuntap", "add", "name", "tgd0", "mode", "tun"}, undo: []string{"link", "del", "tgd0"},
			cfg: RouteConfig{Device: "tgd0"}, err: `tun: device "tgd0" is down`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer enterNetns(t, ns)()
			if tc.setup != nil {
				ipn(t, ns, tc.setup...)
				defer ipn(t, ns, tc.undo...)
			}
			mid := snapshot(t, ns)
			cfg := tc.cfg
			if cfg.Device == "" {
				cfg.Device = "tgt0"
			}
			cfg.StateDir = dir
			r, err := InstallRoutes(cfg)
			if err == nil {
				r.Close()
				t.Fatalf("InstallRoutes succeeded; want an error containing %q", tc.err)
			}
			if !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("InstallRoutes = %v; want an error containing %q", err, tc.err)
			}
			if after := snapshot(t, ns); after != mid {
				t.Errorf("routing changed by a refused install:\n%s\n%s", mid, after)
			}
		})
	}

	// Installing twice for one device is refused while the first stands.
	r, err := InstallRoutes(RouteConfig{Device: "tgt0", StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if r2, err := InstallRoutes(RouteConfig{Device: "tgt0", StateDir: dir, Table: 3000, Priority: 3000}); err == nil || !strings.Contains(err.Error(), "already installed by this process") {
		if r2 != nil {
			r2.Close()
		}
		t.Errorf("second InstallRoutes = %v", err)
	}
	if n, err := CleanupStale(dir, "tgt0"); err == nil || n != 0 {
		t.Errorf("CleanupStale of a live install = %d, %v; want a refusal", n, err)
	}
	if n, err := CleanupStale(dir, ""); err != nil || n != 0 {
		t.Errorf("CleanupStale of all devices = %d, %v; want the live install skipped", n, err)
	}
	if _, err := os.Stat(r.StatePath()); err != nil {
		t.Errorf("state file of the live install: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("routing differs:\n%s\n%s", before, after)
	}
}

func TestRouterSysctls(t *testing.T) {
	s, done := newRouteSetup(t)
	defer done()
	ns := s.ns
	keys := []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/tgt0/rp_filter"}
	initial := []string{"0", "0", "1", "0"} // strict filtering everywhere
	for i, k := range keys {
		setNsSysctl(t, ns, k, initial[i])
	}
	read := func() []string {
		var out []string
		for _, k := range keys {
			out = append(out, nsSysctl(t, ns, k))
		}
		return out
	}
	r, err := InstallRoutes(RouteConfig{Device: "tgt0", Router: true, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(read(), " "), "1 1 2 2"; got != want {
		t.Errorf("sysctls after install %s; want %s", got, want)
	}
	// Close runs from another goroutine (thread, root namespace): the
	// sysctls are still restored in ns.
	errc := make(chan error)
	go func() { errc <- r.Close() }()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(read(), " "), strings.Join(initial, " "); got != want {
		t.Errorf("sysctls after Close %s; want %s", got, want)
	}

	// Without Router only the strict rp_filter is loosened; a value
	// changed by someone else meanwhile is left alone.
	r, err = InstallRoutes(RouteConfig{Device: "tgt0", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(read(), " "), "0 0 2 0"; got != want {
		t.Errorf("sysctls after install %s; want %s", got, want)
	}
	setNsSysctl(t, ns, "net/ipv4/conf/all/rp_filter", "0")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(read(), " "), "0 0 0 0"; got != want {
		t.Errorf("sysctls after Close %s; want %s", got, want)
	}
}

func TestMarkControl(t *testing.T) {
	ns := newNetns(t)
	defer enterNetns(t, ns)()
	for _, mark := range []uint32{0x2080, 0} {
		lc := net.ListenConfig{Control: MarkControl(mark)}
		c, err := lc.ListenPacket(context.Background(), "udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := c.(*net.UDPConn).SyscallConn()
		var got int
		var gerr error
		rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		c.Close()
		if gerr != nil || uint32(got) != mark {
			t.Errorf("SO_MARK = %#x, %v; want %#x", got, gerr, mark)
		}
	}
}

const crashHelperEnv = "TUNGATE_TUN_CRASH_HELPER"

// TestCrashHelper is the process TestCrashCleanup kills: it opens tgt0,
// installs routes (router mode) and waits to be killed.
func TestCrashHelper(t *testing.T) {
	if os.Getenv(crashHelperEnv) != "1" {
		t.Skip("the process TestCrashCleanup starts and kills; not a test on its own")
	}
	d, err := Open(Config{Name: "tgt0", FD: -1, Addrs: pfx("198.18.0.1/30", "2001:db8:1::1/64")})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	_ = d
	r, err := InstallRoutes(RouteConfig{Device: "tgt0", Router: true,
		Excludes: pfx("198.18.6.0/24", "2001:db8:6::/48"), StateDir: os.Getenv("TUNGATE_TUN_STATEDIR")})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	_ = r
	fmt.Println("READY")
	for {
		time.Sleep(time.Hour)
	}
}

// startCrashHelper runs TestCrashHelper inside ns and waits until it has
// installed its routes.
func startCrashHelper(t *testing.T, ns, dir string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^TestCrashHelper$", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), crashHelperEnv+"=1", "TUNGATE_TUN_STATEDIR="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil { // not killed and waited for yet
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	ready := make(chan string, 1)
	go func() {
		var lines []string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if sc.Text() == "READY" {
				ready <- ""
				for sc.Scan() {
					// Keep draining so that the helper never blocks on stdout.
				}
				return
			}
		}
		ready <- strings.Join(lines, "\n")
	}()
	select {
	case msg := <-ready:
		if msg != "" {
			t.Fatalf("helper failed:\n%s\n%s", msg, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("helper not ready after 60s: %s", stderr.String())
	}
	return cmd
}

// killHelper kills the helper with SIGKILL, by its PID.
func killHelper(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
}

// TestCrashCleanup kills (SIGKILL) a process that installed routes, then
// checks that CleanupStale, or the next InstallRoutes, restores the
// routing and the sysctls exactly.
func TestCrashCleanup(t *testing.T) {
	ns := newNetns(t)
	addLAN(t, ns)
	setNsSysctl(t, ns, "net/ipv4/ip_forward", "0")
	setNsSysctl(t, ns, "net/ipv6/conf/all/forwarding", "0")
	before := snapshot(t, ns)
	dir := t.TempDir()

	cmd := startCrashHelper(t, ns, dir)
	during := snapshot(t, ns)
	if !strings.Contains(during, "proto 208") || nsSysctl(t, ns, "net/ipv4/ip_forward") != "1" {
		t.Fatalf("the helper installed nothing?\n%s", during)
	}
	func() {
		defer enterNetns(t, ns)()
		if n, err := CleanupStale(dir, "tgt0"); err == nil || !strings.Contains(err.Error(), "running process") || n != 0 {
			t.Errorf("CleanupStale while the owner runs = %d, %v; want a refusal", n, err)
		}
	}()
	killHelper(t, cmd)

	left := snapshot(t, ns)
	if left == before {
		t.Fatal("nothing left behind after kill -9: the test proves nothing")
	}
	t.Logf("left behind:\n%s", left)
	func() {
		defer enterNetns(t, ns)()
		n, err := CleanupStale(dir, "tgt0")
		if err != nil {
			t.Fatal(err)
		}
		// 6 rules, 2 throw routes, 2 forwarding sysctls (the device's
		// rp_filter went with the device).
		if n != 10 {
			t.Errorf("CleanupStale removed %d items, want 10", n)
		}
		if n, err := CleanupStale(dir, "tgt0"); n != 0 || err != nil {
			t.Errorf("second CleanupStale = %d, %v; want 0, nil", n, err)
		}
	}()
	if after := snapshot(t, ns); after != before {
		t.Errorf("routing differs after CleanupStale:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if v := nsSysctl(t, ns, k); v != "0" {
			t.Errorf("%s = %s after CleanupStale, want 0", k, v)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("state dir not empty: %v", ents)
	}

	// Again, but this time the next InstallRoutes cleans up by itself.
	cmd = startCrashHelper(t, ns, dir)
	killHelper(t, cmd)
	func() {
		defer enterNetns(t, ns)()
		d, err := Open(Config{Name: "tgt0", FD: -1, Addrs: pfx("198.18.0.1/30", "2001:db8:1::1/64")})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		r, err := InstallRoutes(RouteConfig{Device: "tgt0", StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		sum := r.Summary()
		if len(sum) == 0 || !strings.Contains(sum[0], "removed 10 leftovers") {
			t.Errorf("Summary does not report the leftovers: %q", sum)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	if after := snapshot(t, ns); after != before {
		t.Errorf("routing differs after the second round:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if v := nsSysctl(t, ns, k); v != "0" {
			t.Errorf("%s = %s after the second round, want 0", k, v)
		}
	}
}

// TestInstallRoutesNoIPv6: with the default routes and a device where
// IPv6 cannot work (MTU below 1280), only IPv4 is routed, with a note.
func TestInstallRoutesNoIPv6(t *testing.T) {
	ns := newNetns(t)
	addLAN(t, ns)
	defer enterNetns(t, ns)()
	d, err := Open(Config{Name: "tgt0", FD: -1, MTU: 1000, Addrs: pfx("198.18.0.1/30")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	before := snapshot(t, ns)
	r, err := InstallRoutes(RouteConfig{Device: "tgt0", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	sum := strings.Join(r.Summary(), "\n")
	if !strings.Contains(sum, "IPv6 is not usable on tgt0") || strings.Contains(sum, "-6") {
		t.Errorf("summary:\n%s", sum)
	}
	if out := ipn(t, ns, "-6", "rule"); strings.Contains(out, "proto 208") {
		t.Errorf("IPv6 rules installed:\n%s", out)
	}
	expectVia(t, ns, "198.18.5.5", "tgt0")
	expectVia(t, ns, "2001:db8:5::5", "veth0")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("routing differs after Close:\n%s\n%s", before, after)
	}
}

// TestCleanupStaleAfterReboot: a state file from another boot lists
// nothing that can still be installed; it is deleted and nothing is
// touched (not even a sysctl whose value happens to match).
func TestCleanupStaleAfterReboot(t *testing.T) {
	ns := newNetns(t)
	setNsSysctl(t, ns, "net/ipv4/ip_forward", "1")
	ipn(t, ns, "rule", "add", "prio", "2080", "lookup", "main", "proto", "208")
	defer enterNetns(t, ns)()
	dir := t.TempDir()
	st := &stateFile{Version: stateVersion, Device: "tgt0", PID: 1, BootID: "another-boot", Netns: "net:[1]",
		Rules:   []ruleSpec{{Family: famInet, Priority: 2080, Table: tableMain}},
		Sysctls: []sysctlSpec{{Key: "net/ipv4/ip_forward", Old: "0", New: "1"}}}
	if err := writeState(statePath(dir, "tgt0"), st); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, ns)
	if n, err := CleanupStale(dir, ""); n != 0 || err != nil {
		t.Errorf("CleanupStale = %d, %v; want 0, nil", n, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("state file not deleted: %v", ents)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("routing changed:\n%s\n%s", before, after)
	}
	if v := nsSysctl(t, ns, "net/ipv4/ip_forward"); v != "1" {
		t.Errorf("ip_forward = %s, want 1 (untouched)", v)
	}
}
