package tun

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Test network namespaces are named tuntest-<pid>-<n>. Only addresses from
// 198.18.0.0/15 and 2001:db8::/32 are used, and nothing is done in the
// root namespace: each test works in namespaces of its own, deleted in
// cleanup.

const nsPrefix = "tuntest-"

// requireRoot skips t unless it can create network namespaces and TUN
// devices.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces and TUN devices")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: needs iproute2's ip (apt-get install iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipping: no TUN support: %v", err)
	}
}

var (
	nsSeq       atomic.Int32
	nsSweepOnce sync.Once
)

// sweepNetns deletes test namespaces left by runs whose process is gone.
func sweepNetns() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// newNetns creates a network namespace with lo up, deleted in cleanup.
func newNetns(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	nsSweepOnce.Do(sweepNetns)
	name := fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), nsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create a network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ipn(t, name, "link", "set", "lo", "up")
	return name
}

// ipn runs `ip -n ns args...` and returns its output; failure fails t.
func ipn(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := ipnErr(ns, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func ipnErr(ns string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"-n", ns}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// nsSysctl reads a sysctl inside ns, as `sysctl -n` would.
func nsSysctl(t *testing.T, ns, key string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/sys/"+key).CombinedOutput()
	if err != nil {
		t.Fatalf("reading %s in %s: %v: %s", key, ns, err, out)
	}
	return strings.TrimSpace(string(out))
}

func setNsSysctl(t *testing.T, ns, key, val string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "echo "+val+" > /proc/sys/"+key).CombinedOutput()
	if err != nil {
		t.Fatalf("setting %s=%s in %s: %v: %s", key, val, ns, err, out)
	}
}

// enterNetns locks the calling goroutine to its thread and moves the
// thread into ns. Call the returned function (deferred, in the same
// goroutine) to move back; if moving back fails the thread stays locked
// and the runtime discards it when the goroutine ends.
func enterNetns(t *testing.T, ns string) func() {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current netns: %v", err)
	}
	target, err := netns.GetFromName(ns)
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("netns %s: %v", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("entering netns %s: %v", ns, err)
	}
	return func() {
		defer orig.Close()
		if err := netns.Set(orig); err != nil {
			t.Errorf("leaving netns %s: %v (thread discarded)", ns, err)
			return
		}
		runtime.UnlockOSThread()
	}
}

// nsHandle returns a netlink handle bound to ns, closed in cleanup.
func nsHandle(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	nh, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	h, err := netlink.NewHandleAt(nh, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// addLAN gives ns a "LAN": a veth pair whose end veth0 has 198.19.0.1/24
// and 2001:db8:ff::1/64 and the default routes via .254 / ::fe.
func addLAN(t *testing.T, ns string) {
	t.Helper()
	ipn(t, ns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
	ipn(t, ns, "link", "set", "veth0", "up")
	ipn(t, ns, "link", "set", "veth1", "up")
	ipn(t, ns, "addr", "add", "198.19.0.1/24", "dev", "veth0")
	ipn(t, ns, "-6", "addr", "add", "2001:db8:ff::1/64", "dev", "veth0", "nodad")
	ipn(t, ns, "route", "add", "default", "via", "198.19.0.254")
	ipn(t, ns, "-6", "route", "add", "default", "via", "2001:db8:ff::fe")
}

// snapshot is the routing state InstallRoutes must leave as it found.
func snapshot(t *testing.T, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"rule"}, {"-6", "rule"},
		{"route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"},
	} {
		fmt.Fprintf(&b, "== ip %s\n%s", strings.Join(args, " "), stableLines(ipn(t, ns, args...)))
	}
	return b.String()
}

// stableLines drops what the kernel adds and reorders on its own while a
// test runs, and sorts the rest: IPv6 link-local addresses and routes come
// and go as duplicate address detection ends on each link, and a device
// made again gets a new one. None of them is tungate's to install or
// remove; everything else must match exactly.
func stableLines(s string) string {
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if strings.Contains(l, "fe80::") || strings.HasPrefix(l, "multicast ff00::/8") {
			continue
		}
		keep = append(keep, l)
	}
	sort.Strings(keep)
	return strings.Join(keep, "\n") + "\n"
}
