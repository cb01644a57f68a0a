package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

const (
	cloneDevice = "/dev/net/tun"
	// The offloads wireguard's tun enables: it requires the TCP ones with
	// IFF_VNET_HDR and uses the UDP ones (Linux 6.2+) when accepted.
	tcpOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	udpOffloads = unix.TUN_F_USO4 | unix.TUN_F_USO6
)

// Open creates the TUN device cfg describes (or adopts cfg.FD, or an
// existing persistent TUN device of that name), configures it and brings
// it up. On failure nothing it created is left behind.
func Open(cfg Config) (*Device, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	h, own := c.Netlink, false
	if h == nil {
		if h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return nil, fmt.Errorf("tun: netlink: %w", err)
		}
		own = true
	}
	var d *Device
	if c.FD >= 0 {
		d, err = openFD(c, h)
	} else {
		d, err = create(c, h)
	}
	if err != nil {
		if own {
			h.Close()
		}
		return nil, err
	}
	d.nl, d.ownNL = h, own
	return d, nil
}

// tunOpen is the result of getting a TUN file descriptor.
type tunOpen struct {
	fd       int
	name     string
	vnetHdr  bool
	uso      bool
	offloads string
}

// create makes (or attaches to a persistent) device named c.Name.
func create(c Config, h *netlink.Handle) (*Device, error) {
	attach := false
	if !strings.Contains(c.Name, "%") {
		l, err := h.LinkByName(c.Name)
		switch {
		case err == nil:
			tt, ok := l.(*netlink.Tuntap)
			if !ok {
				return nil, fmt.Errorf("tun: interface %q already exists and is a %s device, not TUN: pick another name", c.Name, l.Type())
			}
			if tt.Mode != netlink.TUNTAP_MODE_TUN {
				return nil, fmt.Errorf("tun: interface %q already exists and is a TAP device, not TUN: pick another name", c.Name)
			}
			attach = true
		case errors.As(err, &netlink.LinkNotFoundError{}):
		default:
			return nil, fmt.Errorf("tun: looking up %q: %w", c.Name, err)
		}
	}
	t, err := openTUN(c.Name, !c.DisableOffload)
	if err != nil {
		return nil, err
	}
	d, err := finishOpen(t, c, h, !attach)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// testHookRefuse, when set by tests, makes the kernel seem to refuse
// "IFF_VNET_HDR" or "TUNSETOFFLOAD", to exercise the fallback.
var testHookRefuse string

// openTUN opens /dev/net/tun and attaches it to name, with IFF_VNET_HDR and
// the TCP offloads when wanted and the kernel allows, without them
// otherwise.
func openTUN(name string, offload bool) (tunOpen, error) {
	reason := "disabled by configuration"
	if offload {
		fd, err := tunSetIff(name, unix.IFF_TUN|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
		if err == nil && testHookRefuse == "IFF_VNET_HDR" {
			unix.Close(fd)
			fd, err = -1, unix.EINVAL
		}
		switch {
		case err == nil:
			err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tcpOffloads)
			if testHookRefuse == "TUNSETOFFLOAD" {
				err = unix.EINVAL
			}
			if err != nil {
				unix.Close(fd)
				reason = fmt.Sprintf("kernel refused TUNSETOFFLOAD: %v", err)
				break
			}
			uso := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tcpOffloads|udpOffloads) == nil
			n, err := tunName(fd)
			if err != nil {
				unix.Close(fd)
				return tunOpen{}, fmt.Errorf("tun: reading the name of the new device: %w", err)
			}
			return tunOpen{fd: fd, name: n, vnetHdr: true, uso: uso}, nil
		case errors.Is(err, unix.EINVAL):
			// Old kernels, or a persistent device made for another flag set.
			reason = fmt.Sprintf("kernel refused IFF_VNET_HDR: %v", err)
		default:
			return tunOpen{}, tunSetIffError(name, err)
		}
	}
	fd, err := tunSetIff(name, unix.IFF_TUN|unix.IFF_NO_PI)
	if err != nil {
		return tunOpen{}, tunSetIffError(name, err)
	}
	n, err := tunName(fd)
	if err != nil {
		unix.Close(fd)
		return tunOpen{}, fmt.Errorf("tun: reading the name of the new device: %w", err)
	}
	return tunOpen{fd: fd, name: n, offloads: "none: " + reason}, nil
}

// tunSetIff opens the clone device and attaches the descriptor to name.
func tunSetIff(name string, flags uint16) (int, error) {
	fd, err := unix.Open(cloneDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return -1, fmt.Errorf("tun: %s does not exist: load the tun module or create the node (mknod %s c 10 200): %w", cloneDevice, cloneDevice, err)
		}
		return -1, fmt.Errorf("tun: opening %s: %w", cloneDevice, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func tunSetIffError(name string, err error) error {
	switch {
	case strings.HasPrefix(err.Error(), "tun: "):
		return err
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("tun: device %q is busy: another process has it open: %w", name, err)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("tun: creating device %q needs CAP_NET_ADMIN (run as root or grant the capability): %w", name, err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("tun: the kernel refused device %q (a persistent device with other flags, such as multi_queue?): %w", name, err)
	}
	return fmt.Errorf("tun: creating device %q: %w", name, err)
}

// tunFlags returns the name and flags a TUN descriptor is attached with.
func tunFlags(fd int) (string, uint16, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return "", 0, err
	}
	return ifr.Name(), ifr.Uint16(), nil
}

func tunName(fd int) (string, error) {
	n, _, err := tunFlags(fd)
	return n, err
}

// openFD adopts a TUN descriptor made by someone else.
func openFD(c Config, h *netlink.Handle) (*Device, error) {
	name, flags, err := tunFlags(c.FD)
	if err != nil {
		return nil, fmt.Errorf("tun: fd %d is not an attached TUN device (want /dev/net/tun after TUNSETIFF; use -1 for none): %w", c.FD, err)
	}
	if flags&unix.IFF_TUN == 0 || flags&unix.IFF_TAP != 0 {
		return nil, fmt.Errorf("tun: fd %d is attached to %q, a TAP device; tungate needs a TUN device", c.FD, name)
	}
	if c.Name != "" && c.Name != name {
		return nil, fmt.Errorf("tun: fd %d is attached to device %q, not %q", c.FD, name, c.Name)
	}
	// TUNGETIFF cannot tell IFF_NO_PI: it reports IFF_NOFILTER, the same
	// bit, for a descriptor without a socket filter. Netlink can.
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("tun: device %q of fd %d is not visible through netlink (another network namespace?): %w", name, c.FD, err)
	}
	if tt, ok := l.(*netlink.Tuntap); ok && tt.Flags&netlink.TUNTAP_NO_PI == 0 {
		return nil, fmt.Errorf("tun: fd %d (device %q) was set up without IFF_NO_PI; tungate needs IFF_NO_PI", c.FD, name)
	}
	t := tunOpen{fd: c.FD, name: name}
	if flags&unix.IFF_VNET_HDR != 0 {
		if err := unix.IoctlSetInt(c.FD, unix.TUNSETOFFLOAD, tcpOffloads); err != nil {
			return nil, fmt.Errorf("tun: fd %d has IFF_VNET_HDR but the kernel refuses the TCP offloads: %w", c.FD, err)
		}
		t.uso = unix.IoctlSetInt(c.FD, unix.TUNSETOFFLOAD, tcpOffloads|udpOffloads) == nil
		// wireguard's tun expects the plain 10-byte virtio_net_hdr.
		if sz, err := unix.IoctlGetInt(c.FD, unix.TUNGETVNETHDRSZ); err != nil || sz != MaxHeadroom {
			if err := unix.IoctlSetPointerInt(c.FD, unix.TUNSETVNETHDRSZ, MaxHeadroom); err != nil {
				return nil, fmt.Errorf("tun: fd %d: setting the virtio-net header size to %d: %w", c.FD, MaxHeadroom, err)
			}
		}
		t.vnetHdr = true
	} else {
		t.offloads = fmt.Sprintf("none: fd %d was set up without IFF_VNET_HDR", c.FD)
	}
	unix.CloseOnExec(c.FD)
	return finishOpen(t, c, h, false)
}

// finishOpen wraps the descriptor in a wireguard device and configures the
// link. created says whether the device is ours to remove. On failure the
// descriptor is closed (and the device, if created, is gone).
func finishOpen(t tunOpen, c Config, h *netlink.Handle, created bool) (*Device, error) {
	if err := unix.SetNonblock(t.fd, true); err != nil {
		unix.Close(t.fd)
		return nil, fmt.Errorf("tun: %w", err)
	}
	dev, _, err := wgtun.CreateUnmonitoredTUNFromFD(t.fd)
	if err != nil {
		// The descriptor is inside an *os.File wireguard dropped; removing
		// the link is the only prompt way to get rid of a device we made.
		if created {
			if l, lerr := h.LinkByName(t.name); lerr == nil {
				h.LinkDel(l)
			}
		}
		return nil, fmt.Errorf("tun: %s: %w", t.name, err)
	}
	d := &Device{dev: dev, name: t.name, created: created, batch: dev.BatchSize()}
	if t.vnetHdr {
		d.vnet = dev.File()
		d.vnetRC, err = d.vnet.SyscallConn() // fails only on a closed file
		d.headroom = MaxHeadroom
		d.uso = t.uso
		d.offloads = "vnet-hdr tso uso gro"
		if !t.uso {
			d.offloads = "vnet-hdr tso gro (no uso: the kernel lacks TUN_F_USO)"
		}
	} else {
		d.offloads = t.offloads
	}
	if err == nil {
		err = d.configure(c, h)
	}
	if err != nil {
		d.nl = h
		d.Close()
		return nil, err
	}
	return d, nil
}

// configure sets the MTU, adds the addresses and brings the link up.
func (d *Device) configure(c Config, h *netlink.Handle) error {
	l, err := h.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("tun: device %q is not visible through netlink (another network namespace?): %w", d.name, err)
	}
	d.index = l.Attrs().Index
	mtu := c.MTU
	if mtu == 0 && d.created && c.FD < 0 {
		mtu = DefaultMTU
	}
	if mtu != 0 && mtu != l.Attrs().MTU {
		if err := h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("tun: setting the MTU of %s to %d: %w", d.name, mtu, err)
		}
	}
	if mtu == 0 {
		mtu = l.Attrs().MTU
	}
	d.mtu = mtu
	for _, p := range c.Addrs {
		if p.Addr().Is6() && mtu < MinMTUIPv6 {
			return fmt.Errorf("tun: %s has MTU %d, below the IPv6 minimum %d: cannot add %s", d.name, mtu, MinMTUIPv6, p)
		}
	}
	for _, p := range c.Addrs {
		a := &netlink.Addr{IPNet: prefixIPNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		err := h.AddrAdd(l, a)
		switch {
		case err == nil:
			if !d.created {
				d.added = append(d.added, p)
			}
		case errors.Is(err, unix.EEXIST) && !d.created:
			// Already there: the owner of the device keeps it.
		case p.Addr().Is6() && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAFNOSUPPORT)):
			return fmt.Errorf("tun: adding %s to %s: IPv6 is disabled (see net.ipv6.conf.%s.disable_ipv6): %w", p, d.name, d.name, err)
		default:
			return fmt.Errorf("tun: adding %s to %s: %w", p, d.name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("tun: bringing %s up: %w", d.name, err)
		}
	}
	return nil
}

// Close closes the device. A device Open created disappears; an adopted
// one (FD, or an existing persistent device) stays, minus the addresses
// Open added. Close is idempotent: later calls return the first result.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		if err := d.dev.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, fmt.Errorf("tun: closing %s: %w", d.name, err))
		}
		if d.nl != nil && d.index > 0 {
			if d.created {
				// Closing the last descriptor removes a non-persistent
				// device; remove it if it lingers (made persistent since).
				if l, err := d.nl.LinkByIndex(d.index); err == nil && l.Attrs().Name == d.name {
					if err := d.nl.LinkDel(l); err != nil && !isGone(err) {
						errs = append(errs, fmt.Errorf("tun: removing %s: %w", d.name, err))
					}
				}
			} else {
				for _, p := range d.added {
					a := &netlink.Addr{IPNet: prefixIPNet(p), LinkIndex: d.index}
					if err := d.nl.AddrDel(nil, a); err != nil && !isGone(err) {
						errs = append(errs, fmt.Errorf("tun: removing %s from %s: %w", p, d.name, err))
					}
				}
			}
		}
		if d.ownNL && d.nl != nil {
			d.nl.Close()
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// isGone reports errors that mean "already not there".
func isGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) ||
		errors.Is(err, unix.EADDRNOTAVAIL) || errors.As(err, &netlink.LinkNotFoundError{})
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// VnetHdr reports whether the device takes frames that start with a
// virtio-net header, so that WriteVnet can hand it TCP segments larger than
// the MTU for the kernel to segment (TSO from the stack's side).
func (d *Device) VnetHdr() bool { return d.vnet != nil }

// WriteVnet writes frames that each start with a 10-byte virtio-net header
// (struct virtio_net_hdr, little endian) followed by an IP packet. It goes
// around wireguard's Write, which coalesces MTU-sized packets itself; it
// is for packets the caller segmented-by-offload already. Safe to call
// concurrently with Read and Write.
func (d *Device) WriteVnet(frames [][]byte) (int, error) {
	if d.vnet == nil {
		return 0, errNoVnet
	}
	for i, f := range frames {
		if _, err := d.vnet.Write(f); err != nil {
			return i, fmt.Errorf("tun: %s: %w", d.name, err)
		}
	}
	return len(frames), nil
}

// ReadVnetIdle is ReadVnet that calls idle, on the caller's goroutine,
// each time it finds no frame waiting and is about to wait for one. A
// caller that gathers work while frames keep coming (datagrams to send as
// one batch) finishes it there, and never leaves it waiting longer than
// the device is busy. The frame is read into head, and what does not fit
// there into tail (one readv): a caller can have the packet land in a
// buffer of its own choosing, the header apart. Calls must not overlap.
func (d *Device) ReadVnetIdle(head, tail []byte, idle func()) (int, error) {
	if d.vnet == nil {
		return 0, errNoVnet
	}
	r := &d.vread
	if r.fn == nil {
		r.fn = r.read
	}
	r.iov = r.iovs[:0]
	for _, b := range [2][]byte{head, tail} {
		if len(b) > 0 {
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			r.iov = append(r.iov, v)
		}
	}
	if len(r.iov) == 0 {
		return 0, nil
	}
	r.idle = idle
	err := d.vnetRC.Read(r.fn)
	n, rerr := r.n, r.err
	clear(r.iovs[:])
	r.idle, r.err = nil, nil
	switch {
	case err != nil:
		// The poller's own errors (poll.ErrFileClosing, not os.ErrClosed)
		// all mean the descriptor is closed or closing: no deadline is
		// ever set on it.
		return 0, os.ErrClosed
	case errors.Is(rerr, unix.EBADFD):
		// The device was closed under the read.
		return 0, os.ErrClosed
	case rerr != nil:
		return 0, fmt.Errorf("tun: %s: %w", d.name, rerr)
	}
	return n, nil
}

// vnetRead is ReadVnetIdle's state, kept from one call to the next so
// that a read allocates nothing: the iovecs, and the RawConn callback.
type vnetRead struct {
	iovs [2]unix.Iovec
	iov  []unix.Iovec
	idle func()
	fn   func(fd uintptr) bool
	n    int
	err  error
}

// read is the RawConn callback: one readv, false (wait) when the device
// has nothing, after calling idle.
func (r *vnetRead) read(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&r.iov[0])), uintptr(len(r.iov)))
		r.n, r.err = int(n), nil
		if e != 0 {
			r.n, r.err = 0, e
		}
		if e != unix.EINTR {
			break
		}
	}
	if r.err == unix.EAGAIN {
		r.idle()
		return false
	}
	return true
}

// ReadVnet reads one frame as the kernel hands it over: a 10-byte
// virtio-net header followed by an IP packet, which may be a TSO or USO
// super-packet of up to 64 KiB, not split. It is for a caller that can
// take large segments whole (the netstack does); frame should have room
// for MaxHeadroom+65535 bytes. Use either ReadVnet or Read on a device,
// not both.
func (d *Device) ReadVnet(frame []byte) (int, error) {
	if d.vnet == nil {
		return 0, errNoVnet
	}
	n, err := d.vnet.Read(frame)
	if err != nil {
		if errors.Is(err, unix.EBADFD) {
			// The device was closed under the read.
			return 0, os.ErrClosed
		}
		return 0, fmt.Errorf("tun: %s: %w", d.name, err)
	}
	return n, nil
}
