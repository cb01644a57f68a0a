package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// vnetReader is implemented by devices whose frames can be read whole,
// virtio-net header first (tun.Device with offloads). The link then hands
// a TSO super-packet to the stack as one large TCP segment, instead of
// having the device split it into MTU-sized packets (a copy and a checksum
// each) for the stack to coalesce again.
type vnetReader interface {
	VnetHdr() bool
	ReadVnet(frame []byte) (int, error)
}

// GSO types of the virtio-net header beyond the TCP ones (link.go).
const (
	vnetGSONone   = 0
	vnetGSOUDPL4  = 5
	vnetGSOECNBit = 0x80
)

// idleVnetReader is implemented by vnetReaders that can say when no frame
// is waiting (tun.Device): the link's idle hook runs then, and not after
// every frame. They read a frame into head, and what does not fit there
// into tail, so that the packet can land in a gVisor view of its own.
type idleVnetReader interface {
	ReadVnetIdle(head, tail []byte, idle func()) (int, error)
}

// readVnetLoop is the reader for a vnetReader device: one frame per read.
func (l *link) readVnetLoop(r vnetReader) error {
	if ir, ok := r.(idleVnetReader); ok {
		return l.readVnetIdleLoop(ir)
	}
	frame := make([]byte, vnetHdrLen+maxPacket)
	var scratch []byte // for USO segments
	for {
		n, err := r.ReadVnet(frame)
		if err != nil {
			return l.readEnd(err)
		}
		if n < vnetHdrLen || n > len(frame) {
			continue // no packet, or truncated by the device
		}
		l.beginDelivery()
		scratch, _ = l.deliverFrame(frame[:vnetHdrLen], frame[vnetHdrLen:n], nil, scratch)
		l.delivering.Store(false)
		l.goIdle()
	}
}

// readVnetIdleLoop is readVnetLoop for an idleVnetReader. Each packet is
// read straight into a gVisor view; a large TCP packet's payload goes to
// the stack in that view, not copied, and the next read takes a new one.
// A smaller packet is copied out as before and the view is read into
// again.
func (l *link) readVnetIdleLoop(r idleVnetReader) error {
	var hdr [vnetHdrLen]byte
	pv := newPacketView()
	defer func() { pv.Release() }()
	var scratch []byte // for USO segments
	since := 0         // frames since the idle hook ran
	idle := func() {
		l.goIdle()
		since = 0
	}
	for {
		n, err := r.ReadVnetIdle(hdr[:], pv.AsSlice(), idle)
		if err != nil {
			return l.readEnd(err)
		}
		if n > vnetHdrLen+pv.Size() {
			continue // truncated by the device: not a whole frame
		}
		l.beginDelivery()
		var took bool
		scratch, took = l.deliverFrame(hdr[:], pv.AsSlice()[:max(n-vnetHdrLen, 0)], pv, scratch)
		l.delivering.Store(false)
		if took {
			pv = newPacketView()
		}
		// A device that stays busy does not hold the work gathered
		// from it for longer than a few frames.
		if since++; since == idleEveryFrames {
			idle()
		}
	}
}

// newPacketView returns a view whose whole capacity, enough for any
// packet, is its size: a buffer to read a packet into.
func newPacketView() *buffer.View {
	v := buffer.NewView(maxPacket)
	v.Grow(v.Capacity())
	return v
}

// beginDelivery is called before the reader delivers a frame.
func (l *link) beginDelivery() {
	l.mu.RLock()
	l.gro.Dispatcher = l.dispatcher
	l.mu.RUnlock()
	l.delivering.Store(true)
}

// idleEveryFrames bounds the frames the reader delivers between two calls
// of the idle hook while the device never runs dry: a datagram waits in a
// batch for at most that many frames (about a hundred microseconds).
const idleEveryFrames = 32

// deliverFrame hands the packet of one virtio-net frame (its header hdr,
// its packet pkt) to the stack: as it is, TSO super-packets included
// (their IP length covers the whole packet; the partial TCP checksum the
// kernel left is not checked, as with every packet from the device), or,
// for a USO super-packet, as the datagrams it stands for. When pkt lies at
// the start of view pv, the stack may take pv with the packet's payload in
// it (took): pv is then no longer the caller's. It returns scratch for
// reuse.
func (l *link) deliverFrame(hdr, pkt []byte, pv *buffer.View, scratch []byte) (_ []byte, took bool) {
	if len(hdr) < vnetHdrLen || len(pkt) == 0 {
		return scratch, false
	}
	switch hdr[vnetGSOTypeOff] &^ vnetGSOECNBit {
	case vnetGSONone, vnetGSOTCPv4, vnetGSOTCPv6:
		took = l.deliverIn(pkt, pv)
	case vnetGSOUDPL4:
		gsoSize := int(binary.LittleEndian.Uint16(hdr[vnetGSOSizeOff:]))
		ipLen := int(binary.LittleEndian.Uint16(hdr[vnetCsumStartOff:]))
		scratch = l.splitUDP(pkt, ipLen, gsoSize, scratch)
	}
	return scratch, took
}

// splitUDP delivers the datagrams of a USO super-packet: each segment of
// gsoSize payload bytes gets a copy of the IP and UDP headers with its
// own lengths (and, for IPv4, its own ID and header checksum).
func (l *link) splitUDP(pkt []byte, ipLen, gsoSize int, scratch []byte) []byte {
	hdrLen := ipLen + header.UDPMinimumSize
	if gsoSize <= 0 || len(pkt) <= hdrLen {
		return scratch
	}
	v4 := header.IPVersion(pkt) == header.IPv4Version
	switch {
	case v4 && ipLen < header.IPv4MinimumSize, !v4 && ipLen < header.IPv6MinimumSize:
		return scratch
	}
	if cap(scratch) < hdrLen+gsoSize {
		scratch = make([]byte, hdrLen+gsoSize)
	}
	payload := pkt[hdrLen:]
	for i := 0; len(payload) > 0; i++ {
		seg := payload[:min(gsoSize, len(payload))]
		payload = payload[len(seg):]
		out := scratch[:hdrLen+len(seg)]
		copy(out, pkt[:hdrLen])
		copy(out[hdrLen:], seg)
		if v4 {
			ip := header.IPv4(out)
			ip.SetTotalLength(uint16(len(out)))
			ip.SetID(ip.ID() + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^checksum.Checksum(out[:ipLen], 0))
		} else {
			header.IPv6(out).SetPayloadLength(uint16(len(out) - header.IPv6MinimumSize))
		}
		header.UDP(out[ipLen:]).SetLength(uint16(header.UDPMinimumSize + len(seg)))
		l.deliverDirect(out)
	}
	return scratch
}
