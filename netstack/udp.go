package netstack

import (
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"tungate/internal/engine"
	"tungate/socks"
)

// udpQueueLen bounds the datagrams waiting for a mapping's outbound side;
// past it they are dropped, as a full socket buffer would.
const udpQueueLen = 256

// udpMapper gives each client endpoint (source address and port) one UDP
// association, whatever the destinations: the mapping is endpoint-
// independent ("full cone"), so replies from any peer come back and hole
// punching works. gVisor's UDP endpoints are not used: the mapper takes
// datagrams straight from the stack's demuxer and writes replies as IP
// packets it builds, from whichever peer sent them.
type udpMapper struct {
	s *Stack

	mu     sync.Mutex
	maps   map[netip.AddrPort]*udpMapping
	closed bool
}

func newUDPMapper(s *Stack) *udpMapper {
	return &udpMapper{s: s, maps: make(map[netip.AddrPort]*udpMapping)}
}

// handle is the stack's handler for UDP packets no endpoint claimed: all
// of them. It always reports the packet handled.
func (u *udpMapper) handle(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	src := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	dstIP := addrFrom(id.LocalAddress)
	if !dstIP.IsGlobalUnicast() && !dstIP.IsPrivate() && !dstIP.IsLoopback() || dstIP.IsMulticast() || isBroadcast(dstIP) {
		// Multicast, broadcast and link-local discovery have no meaning
		// beyond this link.
		return true
	}
	dst := socks.AddrFromAddrPort(netip.AddrPortFrom(dstIP, id.LocalPort))

	m := u.mapping(src)
	if m == nil {
		return true
	}
	bp := getDatagram()
	payload := pkt.Data().ToBuffer()
	n, _ := payload.ReadAt((*bp)[:min(int(payload.Size()), len(*bp))], 0)
	payload.Release()
	select {
	case m.in <- datagram{dst: dst, buf: bp, n: n}:
	default:
		putDatagram(bp)
	}
	return true
}

func isBroadcast(ip netip.Addr) bool {
	return ip == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// mapping returns the live mapping of src, starting one if there is none.
func (u *udpMapper) mapping(src netip.AddrPort) *udpMapping {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	if m, ok := u.maps[src]; ok && !m.isClosed() {
		return m
	}
	if !u.s.enter() {
		return nil
	}
	m := &udpMapping{
		u:      u,
		client: src,
		in:     make(chan datagram, udpQueueLen),
		closed: make(chan struct{}),
	}
	u.maps[src] = m
	go func() {
		defer u.s.flows.Done()
		m.serve()
	}()
	return m
}

// closeAll ends every mapping and refuses new ones.
func (u *udpMapper) closeAll() {
	u.mu.Lock()
	u.closed = true
	maps := u.maps
	u.maps = make(map[netip.AddrPort]*udpMapping)
	u.mu.Unlock()
	for _, m := range maps {
		m.Close()
	}
}

// udpMapping is the client side of one association: a socks.PacketConn
// whose ReadFrom yields what the client sent (and to whom), and whose
// WriteTo sends to the client as if from the peer.
type udpMapping struct {
	u      *udpMapper
	client netip.AddrPort
	in     chan datagram

	closeOnce sync.Once
	closed    chan struct{}
}

type datagram struct {
	dst socks.Addr
	buf *[]byte
	n   int
}

func (m *udpMapping) serve() {
	spec := engine.FlowSpec{
		Src:   socks.AddrFromAddrPort(m.client),
		Flags: engine.FlagTUN,
	}
	err := m.u.s.eng.ServeUDP(m.u.s.ctx, spec, m, func() error { return nil })
	if err != nil {
		m.u.s.log.Debug("udp mapping failed", "src", m.client.String(), "err", err)
	}
	m.Close()
	m.u.mu.Lock()
	if m.u.maps[m.client] == m {
		delete(m.u.maps, m.client)
	}
	m.u.mu.Unlock()
	// Drop what is still queued.
	for {
		select {
		case d := <-m.in:
			putDatagram(d.buf)
		default:
			return
		}
	}
}

func (m *udpMapping) isClosed() bool {
	select {
	case <-m.closed:
		return true
	default:
		return false
	}
}

// ReadFrom implements socks.PacketConn.
func (m *udpMapping) ReadFrom(b []byte) (int, socks.Addr, error) {
	select {
	case d := <-m.in:
		n := copy(b, (*d.buf)[:d.n])
		putDatagram(d.buf)
		return n, d.dst, nil
	case <-m.closed:
		return 0, socks.Addr{}, net.ErrClosed
	}
}

// WriteTo implements socks.PacketConn: from is the peer the datagram
// appears to come from.
func (m *udpMapping) WriteTo(b []byte, from socks.Addr) (int, error) {
	if m.isClosed() {
		return 0, net.ErrClosed
	}
	src, ok := from.AddrPort()
	if !ok {
		return 0, errFamily
	}
	bp := getDatagram()
	defer putDatagram(bp)
	pkt, err := appendUDPPacket((*bp)[:0], src, m.client, b)
	if err != nil {
		return 0, err
	}
	if err := m.u.s.link.writeRaw(pkt); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close implements socks.PacketConn.
func (m *udpMapping) Close() error {
	m.closeOnce.Do(func() { close(m.closed) })
	return nil
}

var datagrams = sync.Pool{New: func() any {
	b := make([]byte, maxPacket+128)
	return &b
}}

func getDatagram() *[]byte  { return datagrams.Get().(*[]byte) }
func putDatagram(b *[]byte) { datagrams.Put(b) }
