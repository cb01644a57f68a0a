package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	wgtun "golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// Device is the packet device under the stack: a TUN device, or an
// in-memory one in tests. Read and Write move batches of raw IP packets,
// each starting at offset in its buffer (the room a device needs in front
// of a packet, such as a virtio-net header); they follow the contract of
// golang.zx2c4.com/wireguard/tun.Device.
type Device interface {
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
	MTU() int
	// Headroom is the offset Read and Write need.
	Headroom() int
}

// link is the gVisor link endpoint on a Device: a reader goroutine
// delivers what the device reads to the stack, in batches; WritePackets
// hands the stack's packets to the device in batches. It has no link
// header: packets are bare IPv4 or IPv6.
type link struct {
	dev      Device
	mtu      uint32
	headroom int
	// vnet, when the device takes virtio-net headers, is where outbound
	// packets go: the stack then builds TCP segments up to gsoMaxSize and
	// the kernel segments them (TSO), one write for many packets.
	vnet vnetWriter
	// uso: vnet takes UDP super-packets (virtio-net GSO type UDP_L4),
	// which the kernel cuts into datagrams; usoRefused: it refused one
	// (EINVAL) after all, and they are not sent again.
	uso        bool
	usoRefused atomic.Bool

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher

	// gro coalesces the TCP segments of one read batch before the stack
	// sees them, so it handles one large segment instead of dozens. Used
	// by the reader goroutine only.
	gro gro.GRO

	// intercept, when set, sees inbound ICMP and ICMPv6 packets first and
	// reports whether it consumed them. Set before start.
	intercept func([]byte) bool
	// udp, when set, sees inbound UDP packets first and reports whether
	// it took them (the mapper's way around the stack).
	udp func([]byte) bool

	// idle, when set, is called by the reader whenever the device has no
	// packet waiting, before it waits for one: work gathered while
	// packets kept coming (datagrams to send as one batch) is finished
	// there. Set before start.
	idle func()
	// delivering is true while the reader hands packets to the stack:
	// work done then may be left to idle, which the reader calls before
	// it next waits. Work done on other goroutines must not wait for it.
	delivering atomic.Bool

	wg        sync.WaitGroup
	closeOnce sync.Once
	closed    chan struct{}
	readErr   error // why the reader stopped, after wg.Wait

	writeBufs sync.Pool // *[][]byte batches for WritePackets
}

var _ stack.LinkEndpoint = (*link)(nil)

func newLink(dev Device) *link {
	l := &link{
		dev:      dev,
		mtu:      uint32(dev.MTU()),
		headroom: dev.Headroom(),
		closed:   make(chan struct{}),
	}
	if vw, ok := dev.(vnetWriter); ok && vw.VnetHdr() {
		l.vnet = vw
		if u, ok := dev.(usoDevice); ok {
			l.uso = u.USO()
		}
	}
	l.gro.Init(true)
	return l
}

// usoDevice is implemented by vnetWriters that can say whether they take
// UDP super-packets (tun.Device).
type usoDevice interface {
	USO() bool
}

// vnetWriter is implemented by devices that take frames starting with a
// virtio-net header (tun.Device with offloads).
type vnetWriter interface {
	VnetHdr() bool
	WriteVnet(frames [][]byte) (int, error)
}

// gsoMaxSize bounds the TCP segments the stack builds for the kernel to
// split: within an IPv4 packet's 16-bit length, with room for headers.
const gsoMaxSize = 60000

// GSOMaxSize implements stack.GSOEndpoint.
func (l *link) GSOMaxSize() uint32 {
	if l.vnet == nil {
		return 0
	}
	return gsoMaxSize
}

// SupportedGSO implements stack.GSOEndpoint: segmentation by the host
// kernel, when the device takes virtio-net headers.
func (l *link) SupportedGSO() stack.SupportedGSO {
	if l.vnet == nil {
		return stack.GSONotSupported
	}
	return stack.HostGSOSupported
}

// start begins reading from the device. The reader stops when the device
// fails or is closed.
func (l *link) start() {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if vr, ok := l.dev.(vnetReader); ok && vr.VnetHdr() {
			l.readErr = l.readVnetLoop(vr)
			return
		}
		l.readErr = l.readLoop()
	}()
}

func (l *link) readLoop() error {
	batch := max(l.dev.BatchSize(), 1)
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	// Devices without virtio-net headers (the vnet reader is used for the
	// others) return one packet per read, so this is one buffer, of the
	// largest packet: the device's MTU may be raised under the gateway.
	for i := range bufs {
		bufs[i] = make([]byte, l.headroom+maxPacket)
	}
	for {
		n, err := l.dev.Read(bufs, sizes, l.headroom)
		l.mu.RLock()
		l.gro.Dispatcher = l.dispatcher
		l.mu.RUnlock()
		l.delivering.Store(true)
		for i := range n {
			if sizes[i] > len(bufs[i])-l.headroom {
				continue // truncated by the device: not a whole packet
			}
			l.deliver(bufs[i][l.headroom : l.headroom+sizes[i]])
		}
		if n > 0 && l.gro.Dispatcher != nil {
			// Segments of one TCP flow in this batch (a TSO packet the
			// device split, typically) were coalesced: hand them up.
			l.gro.Flush()
		}
		l.delivering.Store(false)
		// This device's Read says nothing of what is waiting: each batch
		// ends the work gathered from it.
		l.goIdle()
		if err != nil {
			// wireguard's tun reports a batch too small for a large GRO
			// packet as ErrTooManySegments after delivering what fit.
			if isTransientRead(err) && !l.isClosed() {
				continue
			}
			return l.readEnd(err)
		}
	}
}

// goIdle runs the idle hook, if any.
func (l *link) goIdle() {
	if l.idle != nil {
		l.idle()
	}
}

// readEnd is what a reader returns when the device's read failed with
// err: nil when the link or the device was closed, else the error.
func (l *link) readEnd(err error) error {
	if l.isClosed() || errors.Is(err, os.ErrClosed) {
		return nil
	}
	return fmt.Errorf("netstack: reading device: %w", err)
}

func (l *link) isClosed() bool {
	select {
	case <-l.closed:
		return true
	default:
		return false
	}
}

// Offsets of the protocol fields in IP headers.
const (
	ipv4ProtoOff   = 9
	ipv6NextHdrOff = 6
)

// deliver hands one inbound IP packet to the stack through GRO. The bytes
// are copied: the read buffer is reused for the next batch.
func (l *link) deliver(b []byte) { l.deliverVia(b, true) }

// deliverDirect hands one inbound IP packet to the stack as it is, a
// super-packet whole.
func (l *link) deliverDirect(b []byte) { l.deliverVia(b, false) }

func (l *link) deliverVia(b []byte, viaGRO bool) { l.deliverInVia(b, nil, viaGRO) }

// deliverIn is deliverDirect for a packet b at the start of view pv: the
// stack may take pv, with b's payload in it, instead of a copy (took).
func (l *link) deliverIn(b []byte, pv *buffer.View) (took bool) {
	return l.deliverInVia(b, pv, false)
}

func (l *link) deliverInVia(b []byte, pv *buffer.View, viaGRO bool) (took bool) {
	if len(b) == 0 {
		return false
	}
	var proto tcpip.NetworkProtocolNumber
	switch header.IPVersion(b) {
	case header.IPv4Version:
		proto = header.IPv4ProtocolNumber
		if l.udp != nil && len(b) > ipv4ProtoOff && b[ipv4ProtoOff] == uint8(header.UDPProtocolNumber) && l.udp(b) {
			return false
		}
		if l.intercept != nil && len(b) > ipv4ProtoOff && b[ipv4ProtoOff] == uint8(header.ICMPv4ProtocolNumber) && l.intercept(b) {
			return false
		}
	case header.IPv6Version:
		proto = header.IPv6ProtocolNumber
		if l.udp != nil && len(b) > ipv6NextHdrOff && b[ipv6NextHdrOff] == uint8(header.UDPProtocolNumber) && l.udp(b) {
			return false
		}
		if l.intercept != nil && len(b) > ipv6NextHdrOff && b[ipv6NextHdrOff] == uint8(header.ICMPv6ProtocolNumber) && l.intercept(b) {
			return false
		}
	default:
		return false
	}
	if l.gro.Dispatcher == nil {
		return false
	}
	var data buffer.Buffer
	data, took = packetDataIn(b, pv)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: data,
	})
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = true
	if viaGRO {
		l.gro.Enqueue(pkt)
	} else {
		l.gro.Dispatcher.DeliverNetworkPacket(proto, pkt)
	}
	pkt.DecRef()
	return took
}

// splitMin is the packet size from which packetData keeps the headers
// and the payload in separate chunks.
const splitMin = 512

// packetData copies an inbound packet into a gVisor buffer. A large TCP
// or UDP packet gets its IP and transport headers in a chunk of their
// own: the stack's header parsing pulls up (and, the chunk being shared
// by the header and the rest, first clones) only that small chunk, not a
// copy of the whole packet, which for a 64 KiB super-packet would cost
// more than the copy here.
func packetData(b []byte) buffer.Buffer {
	if n := headersLen(b); n > 0 && len(b) >= splitMin {
		buf := buffer.MakeWithData(b[:n])
		buf.Append(buffer.NewViewWithData(b[n:]))
		return buf
	}
	return buffer.MakeWithData(b)
}

// lendMin is the payload size from which a packet read into a view of
// its own leaves its payload there (packetDataIn): copied, it would take a
// chunk of 64 KiB anyway, and the copy would be all the saving.
const lendMin = 32 << 10

// packetDataIn is packetData for a packet b at the start of view pv (pv
// may be nil): a large TCP or UDP payload stays in pv, which the buffer
// takes (took), and only the headers are copied.
func packetDataIn(b []byte, pv *buffer.View) (_ buffer.Buffer, took bool) {
	if pv != nil && len(b) <= pv.Size() && &b[0] == &pv.AsSlice()[0] {
		if n := headersLen(b); n > 0 && len(b)-n >= lendMin {
			buf := buffer.MakeWithData(b[:n])
			pv.CapLength(len(b))
			pv.TrimFront(n)
			buf.Append(pv)
			return buf, true
		}
	}
	return packetData(b), false
}

// headersLen returns the length of the IP and TCP or UDP headers at the
// start of b, or 0 when b is something else or too short to tell (IPv6
// extension headers included: those are left to the stack).
func headersLen(b []byte) int {
	var ipLen int
	var proto uint8
	switch header.IPVersion(b) {
	case header.IPv4Version:
		if len(b) < header.IPv4MinimumSize {
			return 0
		}
		ip := header.IPv4(b)
		ipLen = int(ip.HeaderLength())
		if ipLen < header.IPv4MinimumSize || ip.FragmentOffset() != 0 || ip.More() {
			return 0
		}
		proto = ip.Protocol()
	case header.IPv6Version:
		if len(b) < header.IPv6MinimumSize {
			return 0
		}
		ipLen = header.IPv6MinimumSize
		proto = header.IPv6(b).NextHeader()
	default:
		return 0
	}
	switch proto {
	case uint8(header.TCPProtocolNumber):
		if len(b) < ipLen+header.TCPMinimumSize {
			return 0
		}
		n := ipLen + int(header.TCP(b[ipLen:]).DataOffset())
		if n < ipLen+header.TCPMinimumSize || n > len(b) {
			return 0
		}
		return n
	case uint8(header.UDPProtocolNumber):
		if len(b) < ipLen+header.UDPMinimumSize {
			return 0
		}
		return ipLen + header.UDPMinimumSize
	}
	return 0
}

// WritePackets implements stack.LinkWriter.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if l.vnet != nil {
		return l.writeVnet(pkts)
	}
	list := pkts.AsSlice()
	batch := max(l.dev.BatchSize(), 1)
	written := 0
	for len(list) > 0 {
		n := min(len(list), batch)
		bp := l.getBufs(n)
		bufs := *bp
		for i, pkt := range list[:n] {
			size := pkt.Size()
			b := sized(bufs[i], l.headroom+size)
			off := l.headroom
			for _, s := range pkt.AsSlices() {
				off += copy(b[off:], s)
			}
			bufs[i] = b
		}
		_, err := l.dev.Write(bufs[:n], l.headroom)
		l.putBufs(bp)
		if err != nil {
			if written == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return written, nil
		}
		written += n
		list = list[n:]
	}
	return written, nil
}

// writeRaw sends packets the netstack package built itself (UDP replies,
// ICMP errors) to the device.
func (l *link) writeRaw(pkt []byte) error {
	bp := l.getBufs(1)
	b := sized((*bp)[0], l.headroom+len(pkt))
	copy(b[l.headroom:], pkt)
	(*bp)[0] = b
	_, err := l.dev.Write((*bp)[:1], l.headroom)
	l.putBufs(bp)
	return err
}

// writeFrames writes virtio-net frames; vnet must be set.
func (l *link) writeFrames(frames [][]byte) (int, error) {
	return l.vnet.WriteVnet(frames)
}

// getBufs returns a batch of at least n write buffers from the pool.
// Each buffer grows to the largest packet it was asked to hold (sized):
// a batch that only ever carried ACKs stays small.
func (l *link) getBufs(n int) *[][]byte {
	bp, _ := l.writeBufs.Get().(*[][]byte)
	if bp == nil {
		b := make([][]byte, 0, max(l.dev.BatchSize(), 1))
		bp = &b
	}
	for len(*bp) < n {
		*bp = append(*bp, nil)
	}
	return bp
}

func (l *link) putBufs(bp *[][]byte) {
	for i := range *bp {
		(*bp)[i] = (*bp)[i][:cap((*bp)[i])]
	}
	l.writeBufs.Put(bp)
}

// minWriteBuf is the smallest write buffer allocated: room for a packet
// of a typical MTU with a device header, so that most never grow again.
const minWriteBuf = 2048

// sized returns b with length n, reallocated if its capacity is smaller.
func sized(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	return make([]byte, n, max(n, minWriteBuf))
}

// MTU implements stack.LinkEndpoint.
func (l *link) MTU() uint32 { return l.mtu }

// SetMTU implements stack.LinkEndpoint.
func (l *link) SetMTU(mtu uint32) { l.mtu = mtu }

// MaxHeaderLength implements stack.LinkEndpoint: no link header.
func (l *link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint: a TUN device has none.
func (l *link) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.
func (l *link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint. The kernel checks the
// checksums of what it reads from a TUN device, so gVisor need not verify
// them twice; it still computes them on the way out.
func (l *link) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// Attach implements stack.LinkEndpoint.
func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

// IsAttached implements stack.LinkEndpoint.
func (l *link) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}

// Wait implements stack.LinkEndpoint.
func (l *link) Wait() { l.wg.Wait() }

// ARPHardwareType implements stack.LinkEndpoint.
func (l *link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.
func (l *link) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.
func (l *link) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.LinkEndpoint. It marks the link closed; the
// device itself is closed by its owner, which ends the reader.
func (l *link) Close() {
	l.closeOnce.Do(func() { close(l.closed) })
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (l *link) SetOnCloseAction(func()) {}

// isTransientRead reports read errors after which the device still works.
func isTransientRead(err error) bool {
	return errors.Is(err, wgtun.ErrTooManySegments)
}

// The virtio-net header (struct virtio_net_hdr, without num_buffers).
const (
	vnetHdrLen        = 10
	vnetFlagNeedsCsum = 1
	vnetGSOTCPv4      = 1
	vnetGSOTCPv6      = 4
	vnetHdrLenOff     = 2
	vnetGSOSizeOff    = 4
	vnetCsumStartOff  = 6
	vnetCsumOffsetOff = 8
	vnetGSOTypeOff    = 1
	vnetFlagsOff      = 0
)

// writeVnet writes packets with a virtio-net header each: a TCP segment
// larger than the MSS is marked for the kernel to segment, and a partial
// TCP checksum for the kernel to finish.
func (l *link) writeVnet(pkts stack.PacketBufferList) (int, tcpip.Error) {
	list := pkts.AsSlice()
	batch := max(l.dev.BatchSize(), 1)
	written := 0
	for len(list) > 0 {
		n := min(len(list), batch)
		bp := l.getBufs(n)
		bufs := *bp
		for i, pkt := range list[:n] {
			b := sized(bufs[i], vnetHdrLen+pkt.Size())
			putVnetHdr(b[:vnetHdrLen], pkt)
			off := vnetHdrLen
			for _, s := range pkt.AsSlices() {
				off += copy(b[off:], s)
			}
			bufs[i] = b
		}
		_, err := l.vnet.WriteVnet(bufs[:n])
		l.putBufs(bp)
		if err != nil {
			if written == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return written, nil
		}
		written += n
		list = list[n:]
	}
	return written, nil
}

// putVnetHdr fills h with the virtio-net header for pkt.
func putVnetHdr(h []byte, pkt *stack.PacketBuffer) {
	clear(h)
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone || !gso.NeedsCsum {
		return
	}
	l3 := len(pkt.NetworkHeader().Slice())
	l4 := len(pkt.TransportHeader().Slice())
	h[vnetFlagsOff] = vnetFlagNeedsCsum
	binary.LittleEndian.PutUint16(h[vnetCsumStartOff:], uint16(l3))
	binary.LittleEndian.PutUint16(h[vnetCsumOffsetOff:], gso.CsumOffset)
	if pkt.Size()-l3-l4 <= int(gso.MSS) {
		return
	}
	switch gso.Type {
	case stack.GSOTCPv4:
		h[vnetGSOTypeOff] = vnetGSOTCPv4
	case stack.GSOTCPv6:
		h[vnetGSOTypeOff] = vnetGSOTCPv6
	default:
		return
	}
	binary.LittleEndian.PutUint16(h[vnetHdrLenOff:], uint16(l3+l4))
	binary.LittleEndian.PutUint16(h[vnetGSOSizeOff:], gso.MSS)
}
