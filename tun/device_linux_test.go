package tun

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkAddrs lists the addresses on a link, with their flags.
func linkAddrs(t *testing.T, h *netlink.Handle, name string) map[string]int {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	as, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, a := range as {
		out[a.IPNet.String()] = a.Flags
	}
	return out
}

func TestOpenCreatesDevice(t *testing.T) {
	ns := newNetns(t)
	defer enterNetns(t, ns)()
	h := nsHandle(t, ns)

	d, err := Open(Config{
		Name:  "tgt0",
		MTU:   9000,
		Addrs: pfx("198.18.0.1/30", "198.18.200.1/24", "2001:db8:1::1/64", "2001:db8:2::1/64"),
		FD:    -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("offloads: %s, batch %d, headroom %d", d.Offloads(), d.BatchSize(), d.Headroom())
	if d.Name() != "tgt0" || d.MTU() != 9000 || d.Index() <= 0 {
		t.Errorf("Name, MTU, Index = %q, %d, %d", d.Name(), d.MTU(), d.Index())
	}
	if strings.HasPrefix(d.Offloads(), "vnet-hdr") {
		if d.BatchSize() != 128 || d.Headroom() != MaxHeadroom {
			t.Errorf("with offloads: BatchSize %d, Headroom %d; want 128, %d", d.BatchSize(), d.Headroom(), MaxHeadroom)
		}
	} else if !strings.HasPrefix(d.Offloads(), "none: ") || d.BatchSize() != 1 {
		t.Errorf("Offloads %q, BatchSize %d", d.Offloads(), d.BatchSize())
	}

	l, err := h.LinkByName("tgt0")
	if err != nil {
		t.Fatal(err)
	}
	tt, ok := l.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TUN {
		t.Errorf("link is %T %+v, want a TUN device", l, l)
	}
	if l.Attrs().MTU != 9000 || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().Index != d.Index() {
		t.Errorf("link MTU %d, flags %v, index %d", l.Attrs().MTU, l.Attrs().Flags, l.Attrs().Index)
	}
	addrs := linkAddrs(t, h, "tgt0")
	for _, want := range []string{"198.18.0.1/30", "198.18.200.1/24", "2001:db8:1::1/64", "2001:db8:2::1/64"} {
		flags, ok := addrs[want]
		if !ok {
			t.Errorf("address %s missing; have %v", want, addrs)
			continue
		}
		if strings.Contains(want, ":") && (flags&unix.IFA_F_NODAD == 0 || flags&unix.IFA_F_TENTATIVE != 0) {
			t.Errorf("address %s flags %#x: want nodad and not tentative", want, flags)
		}
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName("tgt0"); err == nil {
		t.Error("tgt0 still exists after Close")
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	bufs := [][]byte{make([]byte, 100)}
	if _, err := d.Read(bufs, []int{0}, d.Headroom()); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close = %v; want os.ErrClosed", err)
	}
}

func TestOpenDefaultsAndPattern(t *testing.T) {
	ns := newNetns(t)
	defer enterNetns(t, ns)()

	d, err := Open(Config{FD: -1})
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != DefaultName || d.MTU() != DefaultMTU {
		t.Errorf("defaults: %q MTU %d", d.Name(), d.MTU())
	}
	d.Close()

	d, err = Open(Config{Name: "tgp%d", FD: -1, Addrs: pfx("198.18.0.1/30")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Name() != "tgp0" {
		t.Errorf("pattern tgp%%d gave %q, want tgp0", d.Name())
	}
}

func TestOpenWithoutOffload(t *testing.T) {
	ns := newNetns(t)
	defer enterNetns(t, ns)()
	d, err := Open(Config{Name: "tgt0", FD: -1, DisableOffload: true, Addrs: pfx("198.18.0.1/30")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.BatchSize() != 1 || d.Headroom() != 0 || d.Offloads() != "none: disabled by configuration" {
		t.Errorf("BatchSize %d, Headroom %d, Offloads %q", d.BatchSize(), d.Headroom(), d.Offloads())
	}
	_, flags, err := tunFlags(fdOf(t, d))
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.IFF_VNET_HDR != 0 {
		t.Error("IFF_VNET_HDR is set")
	}
}

func fdOf(t *testing.T, d *Device) int {
	t.Helper()
	return int(d.dev.File().Fd())
}

// openRawTUN does what a VM manager would: open /dev/net/tun and attach it
// to name with flags.
func openRawTUN(t *testing.T, name string, flags uint16) int {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		t.Fatalf("TUNSETIFF %s: %v", name, err)
	}
	return fd
}

func TestOpenFromFD(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name  string
		flags uint16
		addrs []netip.Prefix
		mtu   int
	}{
		{"plain", unix.IFF_TUN | unix.IFF_NO_PI, nil, 0},
		{"vnet-hdr", unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR, nil, 0},
		{"with addresses", unix.IFF_TUN | unix.IFF_NO_PI, pfx("198.18.0.1/30", "2001:db8:1::1/64"), 1400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t)
			defer enterNetns(t, ns)()
			h := nsHandle(t, ns)
			fd := openRawTUN(t, "tgf0", tc.flags)
			d, err := Open(Config{FD: fd, Addrs: tc.addrs, MTU: tc.mtu})
			if err != nil {
				unix.Close(fd)
				t.Fatal(err)
			}
			t.Logf("offloads: %s", d.Offloads())
			if d.Name() != "tgf0" {
				t.Errorf("Name %q", d.Name())
			}
			wantMTU := 1500 // the kernel's default for a TUN device
			if tc.mtu != 0 {
				wantMTU = tc.mtu
			}
			if d.MTU() != wantMTU {
				t.Errorf("MTU %d, want %d", d.MTU(), wantMTU)
			}
			if tc.flags&unix.IFF_VNET_HDR != 0 {
				if !strings.HasPrefix(d.Offloads(), "vnet-hdr tso") || d.Headroom() != MaxHeadroom || d.BatchSize() != 128 {
					t.Errorf("Offloads %q, Headroom %d, BatchSize %d", d.Offloads(), d.Headroom(), d.BatchSize())
				}
			} else if !strings.Contains(d.Offloads(), "without IFF_VNET_HDR") || d.Headroom() != 0 || d.BatchSize() != 1 {
				t.Errorf("Offloads %q, Headroom %d, BatchSize %d", d.Offloads(), d.Headroom(), d.BatchSize())
			}
			addrs := linkAddrs(t, h, "tgf0")
			for _, p := range tc.addrs {
				if _, ok := addrs[p.String()]; !ok {
					t.Errorf("address %s missing: %v", p, addrs)
				}
			}
			if len(tc.addrs) == 0 {
				for a := range addrs {
					if !strings.HasPrefix(a, "fe80:") {
						t.Errorf("unexpected address %s on an adopted device", a)
					}
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			// We held the only descriptor: the device is gone.
			if _, err := h.LinkByName("tgf0"); err == nil {
				t.Error("tgf0 still exists after Close")
			}
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
				t.Errorf("fd %d still open after Close", fd)
			}
		})
	}
}

func TestOpenAttachesPersistentDevice(t *testing.T) {
	ns := newNetns(t)
	defer enterNetns(t, ns)()
	h := nsHandle(t, ns)
	ipn(t, ns, "tuntap", "add", "name", "tgq0", "mode", "tun")
	ipn(t, ns, "link", "set", "tgq0", "mtu", "1400")
	ipn(t, ns, "addr", "add", "198.18.7.1/24", "dev", "tgq0")

	d, err := Open(Config{Name: "tgq0", FD: -1, Addrs: pfx("198.18.0.1/30", "198.18.7.1/24")})
	if err != nil {
		t.Fatal(err)
	}
	if d.MTU() != 1400 {
		t.Errorf("MTU of the adopted device %d, want 1400 (unchanged)", d.MTU())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName("tgq0"); err != nil {
		t.Fatalf("persistent tgq0 was removed: %v", err)
	}
	addrs := linkAddrs(t, h, "tgq0")
	if _, ok := addrs["198.18.0.1/30"]; ok {
		t.Error("the address Open added is still there")
	}
	if _, ok := addrs["198.18.7.1/24"]; !ok {
		t.Error("the address that was there before Open is gone")
	}
}

func TestOpenErrorsRoot(t *testing.T) {
	ns := newNetns(t)
	defer enterNetns(t, ns)()
	h := nsHandle(t, ns)
	ipn(t, ns, "link", "add", "vtg0", "type", "veth", "peer", "name", "vtg1")
	ipn(t, ns, "tuntap", "add", "name", "tap0", "mode", "tap")

	busy, err := Open(Config{Name: "tgb0", FD: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	tapFD := openRawTUN(t, "tap1", unix.IFF_TAP|unix.IFF_NO_PI)
	defer unix.Close(tapFD)
	piFD := openRawTUN(t, "tgpi0", unix.IFF_TUN)
	defer unix.Close(piFD)
	nameFD := openRawTUN(t, "tgn0", unix.IFF_TUN|unix.IFF_NO_PI)
	defer unix.Close(nameFD)

	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"busy", Config{Name: "tgb0", FD: -1}, `tun: device "tgb0" is busy: another process has it open`},
		{"veth", Config{Name: "vtg0", FD: -1}, `tun: interface "vtg0" already exists and is a veth device, not TUN`},
		{"tap", Config{Name: "tap0", FD: -1}, `tun: interface "tap0" already exists and is a TAP device`},
		{"pipe fd", Config{FD: int(r.Fd())}, "is not an attached TUN device"},
		{"tap fd", Config{FD: tapFD}, "a TAP device; tungate needs a TUN device"},
		{"pi fd", Config{FD: piFD}, "without IFF_NO_PI"},
		{"fd name", Config{FD: nameFD, Name: "other0"}, `is attached to device "tgn0", not "other0"`},
		{"fd v6 small MTU", Config{FD: nameFD, MTU: 1000, Addrs: pfx("2001:db8::1/64")}, "IPv6 minimum"},
		{"long name", Config{Name: "a-very-long-name0", FD: -1}, "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A subtest runs on a goroutine (and thread) of its own.
			defer enterNetns(t, ns)()
			d, err := Open(tc.cfg)
			if err == nil {
				d.Close()
				t.Fatalf("Open succeeded; want error containing %q", tc.err)
			}
			if !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "tun: ") {
				t.Fatalf("Open = %v; want error containing %q", err, tc.err)
			}
		})
	}
	// The failed attempts left the busy device alone.
	if _, err := h.LinkByName("tgb0"); err != nil {
		t.Errorf("tgb0: %v", err)
	}
}

// TestOpenFallback makes the kernel seem to refuse IFF_VNET_HDR, then the
// offloads: Open must fall back to a plain device that works.
func TestOpenFallback(t *testing.T) {
	requireRoot(t)
	for _, refuse := range []string{"IFF_VNET_HDR", "TUNSETOFFLOAD"} {
		t.Run(refuse, func(t *testing.T) {
			ns := newNetns(t)
			defer enterNetns(t, ns)()
			testHookRefuse = refuse
			defer func() { testHookRefuse = "" }()
			d, err := Open(Config{Name: "tgt0", FD: -1, Addrs: pfx("198.18.0.1/30")})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			want := "none: kernel refused " + refuse + ": invalid argument"
			if d.Offloads() != want || d.BatchSize() != 1 || d.Headroom() != 0 {
				t.Errorf("Offloads %q, BatchSize %d, Headroom %d; want %q, 1, 0", d.Offloads(), d.BatchSize(), d.Headroom(), want)
			}
			if _, flags, err := tunFlags(fdOf(t, d)); err != nil || flags&unix.IFF_VNET_HDR != 0 {
				t.Errorf("flags %#x, %v: want no IFF_VNET_HDR", flags, err)
			}
			// The device works: a datagram routed into it is read.
			ipn(t, ns, "route", "add", "198.18.9.0/24", "dev", "tgt0")
			ch := startReader(t, d)
			c, err := net.ListenUDP("udp4", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			dst := netip.MustParseAddrPort("198.18.9.9:7")
			if _, err := c.WriteToUDPAddrPort([]byte("x"), dst); err != nil {
				t.Fatal(err)
			}
			if p := waitPacket(t, ch, "the datagram", udpTo(dst)); !p.checksumsOK() {
				t.Error("bad checksums")
			}
		})
	}
}
