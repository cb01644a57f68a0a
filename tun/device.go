package tun

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Device is an open TUN device. It wraps a golang.zx2c4.com/wireguard/tun
// Device, which does the virtio-net header handling, TSO/USO splitting on
// Read and GRO coalescing on Write when the kernel allows offloads.
//
// Read and Write may be called concurrently with each other (one reader,
// one writer); Close may be called at any time and ends a pending Read
// with an error matching os.ErrClosed.
type Device struct {
	dev      wgtun.Device
	name     string
	index    int
	mtu      int
	batch    int
	headroom int
	offloads string
	vnet     *os.File // the descriptor, when it takes virtio-net headers
	vnetRC   syscall.RawConn
	uso      bool // the kernel takes and gives UDP super-packets (TUN_F_USO)
	vread    vnetRead

	created bool           // Open created the device (not adopted)
	added   []netip.Prefix // addresses Open added to an adopted device

	nl    *netlink.Handle
	ownNL bool

	closeOnce sync.Once
	closeErr  error
}

// errNoVnet is returned by WriteVnet on a device without virtio-net headers.
var errNoVnet = errors.New("tun: the device has no virtio-net headers")

// Name is the device's interface name.
func (d *Device) Name() string { return d.name }

// MTU is the device's MTU as configured at Open.
func (d *Device) MTU() int { return d.mtu }

// Index is the device's interface index.
func (d *Device) Index() int { return d.index }

// BatchSize is the most packets one Read returns or one Write should be
// given: 128 with offloads (a TSO/USO super-packet is split into up to
// that many), 1 without.
func (d *Device) BatchSize() int { return d.batch }

// Headroom is the offset callers must pass to Read and Write, and leave
// free in front of each packet in every buffer: MaxHeadroom (10, the
// virtio-net header) with offloads, 0 without. Passing MaxHeadroom always
// is fine.
func (d *Device) Headroom() int { return d.headroom }

// Offloads says what was enabled, for the log: "vnet-hdr tso uso gro"
// (or without uso when the kernel lacks it), or "none: <reason>".
func (d *Device) Offloads() string { return d.offloads }

// USO reports whether WriteVnet takes USO frames (virtio-net GSO type
// UDP_L4) and ReadVnet may return them: the kernel has TUN_F_USO.
func (d *Device) USO() bool { return d.vnet != nil && d.uso }

// Read reads one or more packets, as golang.zx2c4.com/wireguard/tun's
// Device.Read: each packet lands at bufs[i][offset:], its length in
// sizes[i]; it returns how many. offset must be at least Headroom();
// len(bufs) should be BatchSize() and each buffer at least offset+MTU()
// bytes (offset+65535 is always enough). len(sizes) must be >= len(bufs).
// With a batch too small for a super-packet it returns what fit with
// wireguard's tun.ErrTooManySegments.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.dev.Read(bufs, sizes, offset)
}

// Write writes packets bufs[i][offset:], as golang.zx2c4.com/wireguard/
// tun's Device.Write; it returns the number of bytes written. offset must
// be at least Headroom(): with offloads the header is built in the
// headroom and packets of one flow may be coalesced, so Write may change
// the buffers (including their length).
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	return d.dev.Write(bufs, offset)
}
