package netnstest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NamePrefix begins the name of every namespace (and /etc/netns directory)
// this package creates: NamePrefix + PID + "-" + sequence + "-" + short name.
const NamePrefix = "tgt-"

// cmdTimeout bounds each `ip` command the topology builder runs.
const cmdTimeout = 10 * time.Second

var (
	topoSeq      atomic.Int64
	leftoverOnce sync.Once
	nsNameRE     = regexp.MustCompile(`^` + regexp.QuoteMeta(NamePrefix) + `(\d+)-`)
)

// Topology is a set of network namespaces made for one test. Create it with
// New; everything it made is removed when the test ends.
type Topology struct {
	t      testing.TB
	ip     string
	prefix string

	mu         sync.Mutex
	namespaces []*Namespace
	procs      []*Process
}

// Namespace is one network namespace of a Topology.
type Namespace struct {
	// Name is the full name (as `ip netns list` shows it).
	Name string
	// Short is the name given to Topology.Namespace.
	Short string

	topo   *Topology
	mu     sync.Mutex
	ifaces map[string]bool
	etcDir bool
}

// New returns an empty topology for t, skipping t when network namespaces
// are not available (RequireNetns). The first call in a process removes
// leftovers of earlier runs whose process is gone.
func New(t testing.TB) *Topology {
	t.Helper()
	RequireNetns(t)
	ip, err := LookTool("ip")
	if err != nil {
		t.Skipf("%v (Debian package iproute2)", err)
	}
	leftoverOnce.Do(func() { removeLeftovers(t, ip) })
	tp := &Topology{
		t:      t,
		ip:     ip,
		prefix: fmt.Sprintf("%s%d-%d-", NamePrefix, os.Getpid(), topoSeq.Add(1)),
	}
	t.Cleanup(tp.cleanup)
	return tp
}

// IP runs the ip tool with args, bounded by a timeout, and fails the test on
// error.
func (tp *Topology) IP(args ...string) string {
	tp.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, tp.ip, args...).CombinedOutput()
	if err != nil {
		tp.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out)
}

// Namespace creates a network namespace named after short (which should be
// a few letters: "client", "gw") with lo up.
func (tp *Topology) Namespace(short string) *Namespace {
	tp.t.Helper()
	ns := &Namespace{Name: tp.prefix + short, Short: short, topo: tp, ifaces: map[string]bool{"lo": true}}
	tp.IP("netns", "add", ns.Name)
	tp.mu.Lock()
	tp.namespaces = append(tp.namespaces, ns)
	tp.mu.Unlock()
	ns.IP("link", "set", "lo", "up")
	// No duplicate address detection on the interfaces to come (their
	// link-local addresses too): addresses are usable at once.
	for _, f := range []string{"/proc/sys/net/ipv6/conf/default/accept_dad", "/proc/sys/net/ipv6/conf/all/accept_dad"} {
		if err := ns.Do(func() error { return os.WriteFile(f, []byte("0\n"), 0o644) }); err != nil {
			tp.t.Fatalf("netnstest: %s in %s: %v", f, ns.Name, err)
		}
	}
	return ns
}

// Link connects a and b with a veth pair, gives each end the addresses in
// CIDR notation ("198.18.0.1/24", "2001:db8::1/64"; IPv6 ones with nodad,
// so they are usable at once) and brings both ends up. The interfaces are
// created directly in the namespaces and named "v-" plus the other side's
// short name; Link returns the names in a and in b.
func (tp *Topology) Link(a *Namespace, aAddrs []string, b *Namespace, bAddrs []string) (ifA, ifB string) {
	tp.t.Helper()
	ifA = a.newIfname(b.Short)
	ifB = b.newIfname(a.Short)
	a.IP("link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b.Name)
	// Up first, then addresses: addresses added to an interface that is
	// down made the first IPv6 neighbor solicitation get lost (a 1 s stall).
	a.IP("link", "set", ifA, "up")
	b.IP("link", "set", ifB, "up")
	for _, addr := range aAddrs {
		a.AddAddr(ifA, addr)
	}
	for _, addr := range bAddrs {
		b.AddAddr(ifB, addr)
	}
	return ifA, ifB
}

func (ns *Namespace) newIfname(peer string) string {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	base := "v-" + peer
	if len(base) > 13 {
		base = base[:13]
	}
	name := base
	for i := 2; ns.ifaces[name]; i++ {
		name = base + strconv.Itoa(i)
	}
	ns.ifaces[name] = true
	return name
}

// AddAddr adds an address in CIDR notation to iface; IPv6 addresses get
// nodad so that they can be bound at once.
func (ns *Namespace) AddAddr(iface, cidr string) {
	ns.topo.t.Helper()
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		ns.topo.t.Fatalf("netnstest: address %q: %v", cidr, err)
	}
	args := []string{"addr", "add", cidr, "dev", iface}
	if pfx.Addr().Is6() {
		args = append(args, "nodad")
	}
	ns.IP(args...)
}

// IP runs `ip -n NAME args...` (bounded) and fails the test on error.
func (ns *Namespace) IP(args ...string) string {
	ns.topo.t.Helper()
	return ns.topo.IP(append([]string{"-n", ns.Name}, args...)...)
}

// Route adds a route to dst (a prefix or "default") via the gateway via, of
// the gateway's family.
func (ns *Namespace) Route(dst, via string) {
	ns.topo.t.Helper()
	fam := "-4"
	if strings.Contains(via, ":") {
		fam = "-6"
	}
	ns.IP(fam, "route", "add", dst, "via", via)
}

// EnableForwarding turns on IPv4 and IPv6 forwarding in the namespace.
func (ns *Namespace) EnableForwarding() {
	ns.topo.t.Helper()
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := ns.Do(func() error { return os.WriteFile(f, []byte("1\n"), 0o644) }); err != nil {
			ns.topo.t.Fatalf("netnstest: %s in %s: %v", f, ns.Name, err)
		}
	}
}

// EtcDir returns /etc/netns/NAME, the directory whose files `ip netns exec`
// bind-mounts over the same names in /etc.
func (ns *Namespace) EtcDir() string { return filepath.Join("/etc/netns", ns.Name) }

// WriteEtc writes /etc/netns/NAME/file (such as "hosts" or "resolv.conf"),
// which programs run with Exec or Start see as /etc/file. /etc/file must
// exist on the host for `ip netns exec` to mount it. The directory is
// removed in cleanup. Go code run with Do does not see these files.
func (ns *Namespace) WriteEtc(file, content string) {
	ns.topo.t.Helper()
	if strings.ContainsRune(file, '/') || file == "" || file == "." || file == ".." {
		ns.topo.t.Fatalf("netnstest: WriteEtc: %q is not a plain file name", file)
	}
	if _, err := os.Stat(filepath.Join("/etc", file)); err != nil {
		ns.topo.t.Fatalf("netnstest: WriteEtc: /etc/%s must exist for ip netns exec to bind-mount it: %v", file, err)
	}
	ns.mu.Lock()
	ns.etcDir = true
	ns.mu.Unlock()
	if err := os.MkdirAll(ns.EtcDir(), 0o755); err != nil {
		ns.topo.t.Fatalf("netnstest: %v", err)
	}
	if err := os.WriteFile(filepath.Join(ns.EtcDir(), file), []byte(content), 0o644); err != nil {
		ns.topo.t.Fatalf("netnstest: %v", err)
	}
}

// Command returns `ip netns exec NAME PROGRAM ARGS...` as a command that
// runs in its own process group and is killed (the whole group) when ctx
// ends or the test process dies. program is looked up with LookTool unless
// it is a path.
func (ns *Namespace) Command(ctx context.Context, program string, args ...string) *exec.Cmd {
	path := program
	if !strings.ContainsRune(program, '/') {
		if p, err := LookTool(program); err == nil {
			path = p
		}
	}
	cmd := exec.CommandContext(ctx, ns.topo.ip, append([]string{"netns", "exec", ns.Name, path}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Exec runs program in the namespace and waits for it; ctx bounds it.
func (ns *Namespace) Exec(ctx context.Context, program string, args ...string) Result {
	return runCmd(ns.Command(ctx, program, args...))
}

// ExecCmd runs a command made by Command (after the caller set Env, Stdin,
// ...) and waits for it.
func (ns *Namespace) ExecCmd(cmd *exec.Cmd) Result { return runCmd(cmd) }

// Start starts program in the namespace. The process is stopped (its
// process group killed by PID) and waited for when t ends, and in any case
// before the topology's namespaces are deleted.
func (ns *Namespace) Start(t testing.TB, program string, args ...string) *Process {
	t.Helper()
	return ns.StartCmd(t, ns.Command(context.Background(), program, args...))
}

// StartCmd starts a command made by Command, like Start.
func (ns *Namespace) StartCmd(t testing.TB, cmd *exec.Cmd) *Process {
	t.Helper()
	name := filepath.Base(cmd.Args[0])
	if len(cmd.Args) > 4 && cmd.Args[1] == "netns" && cmd.Args[2] == "exec" {
		name = filepath.Base(cmd.Args[4])
	}
	p := startProcess(t, name, cmd)
	ns.topo.mu.Lock()
	ns.topo.procs = append(ns.topo.procs, p)
	ns.topo.mu.Unlock()
	return p
}

// Do runs fn on an OS thread that has joined the namespace. The thread is
// locked to fn's goroutine while it is in the namespace and returns to the
// original namespace afterwards (if that fails, the thread is discarded), so
// the switch cannot leak into other goroutines. Sockets that fn creates
// stay in the namespace and may be used from any goroutine. Goroutines that
// fn starts do not run in the namespace.
func (ns *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns.Name))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = unix.Setns(int(target.Fd()), unix.CLONE_NEWNET)
		target.Close()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		defer func() {
			// Back to the original namespace; a thread that cannot go back
			// stays locked and ends with this goroutine.
			if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		errc <- fn()
	}()
	return <-errc
}

// Listen is net.Listen inside the namespace.
func (ns *Namespace) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenPacket is net.ListenPacket inside the namespace.
func (ns *Namespace) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// DialContext dials address (an IP literal and port: names would be
// resolved outside the namespace) from inside the namespace.
func (ns *Namespace) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// WaitTCP polls until a TCP connection to address from inside the namespace
// succeeds, for at most timeout. It returns the last dial error on timeout.
func (ns *Namespace) WaitTCP(address string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		c, err := ns.DialContext(ctx, "tcp", address)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no TCP listener at %s after %v (%d attempts): %w", ns.Name, address, timeout, attempt+1, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (tp *Topology) cleanup() {
	tp.mu.Lock()
	procs := tp.procs
	namespaces := tp.namespaces
	tp.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop()
	}
	for i := len(namespaces) - 1; i >= 0; i-- {
		ns := namespaces[i]
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		if out, err := exec.CommandContext(ctx, tp.ip, "netns", "del", ns.Name).CombinedOutput(); err != nil {
			tp.t.Errorf("netnstest cleanup: ip netns del %s: %v: %s", ns.Name, err, strings.TrimSpace(string(out)))
		}
		cancel()
		ns.mu.Lock()
		etc := ns.etcDir
		ns.mu.Unlock()
		if etc {
			if err := os.RemoveAll(ns.EtcDir()); err != nil {
				tp.t.Errorf("netnstest cleanup: %v", err)
			}
		}
	}
}

// pidAlive reports whether a process with the PID exists.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// removeLeftovers deletes namespaces and /etc/netns directories named with
// NamePrefix whose creating process is gone, killing (by PID) what still
// runs in such a namespace: only a run of this package can have started it.
// It also removes such runs' system users.
func removeLeftovers(t testing.TB, ip string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, ip, "netns", "list").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			fields := strings.Fields(line)
			if len(fields) == 0 {
				continue
			}
			name := fields[0]
			m := nsNameRE.FindStringSubmatch(name)
			if m == nil {
				continue
			}
			if pid, _ := strconv.Atoi(m[1]); pidAlive(pid) {
				continue
			}
			if pids, err := exec.CommandContext(ctx, ip, "netns", "pids", name).Output(); err == nil {
				for _, f := range strings.Fields(string(pids)) {
					if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			if out, err := exec.CommandContext(ctx, ip, "netns", "del", name).CombinedOutput(); err != nil {
				t.Logf("netnstest: removing leftover namespace %s: %v: %s", name, err, out)
			} else {
				t.Logf("netnstest: removed leftover namespace %s", name)
			}
		}
	}
	if entries, err := os.ReadDir("/etc/netns"); err == nil {
		for _, e := range entries {
			m := nsNameRE.FindStringSubmatch(e.Name())
			if m == nil {
				continue
			}
			if pid, _ := strconv.Atoi(m[1]); !pidAlive(pid) {
				_ = os.RemoveAll(filepath.Join("/etc/netns", e.Name()))
			}
		}
	}
	removeLeftoverUsers(ctx, t)
}
