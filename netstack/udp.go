package netstack

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip/header"
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

	// bmu guards the mappings' batches and dirty, the mappings that have
	// one. Datagrams the reader delivers wait in a batch until it finds
	// the device idle (flush) or the batch is full, and leave with one
	// system call.
	bmu   sync.Mutex
	dirty []*udpMapping
}

func newUDPMapper(s *Stack) *udpMapper {
	return &udpMapper{s: s, maps: make(map[netip.AddrPort]*udpMapping)}
}

// handle is the stack's handler for UDP packets no endpoint claimed: all
// of them. It always reports the packet handled.
func (u *udpMapper) handle(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	src := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	m, ttl, ok := u.admit(src, dst, packetTTL(pkt), func() []byte {
		orig := stack.PayloadSince(pkt.NetworkHeader())
		defer orig.Release()
		return append([]byte(nil), orig.AsSlice()...)
	})
	if !ok {
		return true
	}
	size, ok := udpPayloadLen(pkt)
	if !ok {
		return true
	}
	bp := getDatagram()
	payload := pkt.Data().ToBuffer()
	n, _ := payload.ReadAt((*bp)[:min(size, len(*bp))], 0)
	payload.Release()
	u.send(m, datagram{dst: socks.AddrFromAddrPort(dst), buf: bp, n: n, ttl: ttl, df: dontFragment(pkt)})
	return true
}

// udpPayloadLen returns the length of the datagram's payload as its UDP
// header says, which may be less than what follows the header (the rest is
// not the datagram's), and false when the header's length is less than the
// header or more than there is: the datagram is dropped, as the kernel
// drops it. The stack does not check it; parseUDPPacket does the same.
func udpPayloadLen(pkt *stack.PacketBuffer) (int, bool) {
	th := pkt.TransportHeader().Slice()
	if len(th) < header.UDPMinimumSize {
		return 0, false
	}
	ulen := int(header.UDP(th).Length())
	if ulen < header.UDPMinimumSize || ulen-header.UDPMinimumSize > pkt.Data().Size() {
		return 0, false
	}
	return ulen - header.UDPMinimumSize, true
}

// handleRaw is the link's way for UDP around the stack: a packet that
// parseUDPPacket takes goes to its mapping as handle would send it, with
// no packet buffer and no pass through the stack's IP layer (a quarter of
// the gateway's work per datagram). It reports false, leaving the packet
// to the stack, for anything parseUDPPacket does not take.
func (u *udpMapper) handleRaw(b []byte) bool {
	p, ok := parseUDPPacket(b)
	if !ok {
		return false
	}
	m, ttl, ok := u.admit(p.src, p.dst, p.ttl, func() []byte { return p.ip })
	if !ok {
		return true
	}
	bp := getDatagram()
	n := copy(*bp, p.payload)
	u.send(m, datagram{dst: socks.AddrFromAddrPort(p.dst), buf: bp, n: n, ttl: ttl, df: p.df})
	return true
}

// admit decides whether a datagram from src to dst, with the given TTL,
// goes on, and returns its mapping. It does not for destinations that
// mean nothing beyond this link, nor when the TTL ends at the gateway,
// which then answers with time exceeded, quoting the packet orig returns.
func (u *udpMapper) admit(src, dst netip.AddrPort, ttl uint8, orig func() []byte) (*udpMapping, uint8, bool) {
	dstIP := dst.Addr()
	if !dstIP.IsGlobalUnicast() && !dstIP.IsPrivate() && !dstIP.IsLoopback() || dstIP.IsMulticast() || isBroadcast(dstIP) {
		// Multicast, broadcast and link-local discovery have no meaning
		// beyond this link.
		return nil, 0, false
	}
	if ttl <= 1 {
		// The gateway is a hop, and the datagram's time ends here.
		u.s.sendICMPError(orig(), u.s.hopAddr(dstIP), AnswerFor(socks.ReplyTTLExpired), 0)
		return nil, 0, false
	}
	m := u.mapping(src)
	return m, ttl, m != nil
}

// send passes d on to m's outbound side. The fast path: with nothing
// queued or being sent before it (so the order holds), the datagram
// leaves on this goroutine if the outbound socket takes it: in a batch,
// when the reader delivers it (the reader sends the batch before it waits
// for the device), else now. This is the only goroutine that queues, so
// nothing can be queued meanwhile.
func (u *udpMapper) send(m *udpMapping, d datagram) {
	if push := m.push.Load(); push != nil && m.pending.Load() == 0 {
		if u.s.link.delivering.Load() {
			u.batch(m, d)
			return
		}
		if push.One((*d.buf)[:d.n], d.dst, d.meta()) {
			putDatagram(d.buf)
			return
		}
	}
	m.enqueue(d)
}

// batch adds d to m's batch, which is sent when full or when the reader
// goes idle.
func (u *udpMapper) batch(m *udpMapping, d datagram) {
	u.bmu.Lock()
	defer u.bmu.Unlock()
	if len(m.batch) == 0 {
		u.dirty = append(u.dirty, m)
	}
	m.batch = append(m.batch, d)
	if len(m.batch) == socks.MaxBatch {
		m.flushBatch()
	}
}

// flush sends every batch. It is the link's idle hook.
func (u *udpMapper) flush() {
	u.bmu.Lock()
	defer u.bmu.Unlock()
	for i, m := range u.dirty {
		m.flushBatch()
		u.dirty[i] = nil
	}
	u.dirty = u.dirty[:0]
}

// flushBatch sends m's batch as far as the outbound socket takes it at
// once; the rest is queued for the relay, in order. u.bmu is held.
func (m *udpMapping) flushBatch() {
	if len(m.batch) == 0 {
		return
	}
	taken := 0
	if push := m.push.Load(); push != nil && !m.isClosed() {
		for i, d := range m.batch {
			m.ds[i] = socks.Datagram{Buf: (*d.buf)[:d.n], Addr: d.dst}
			m.metas[i] = d.meta()
		}
		taken = push.Batch(m.ds[:len(m.batch)], m.metas[:len(m.batch)])
		clear(m.ds[:len(m.batch)])
	}
	for _, d := range m.batch[:taken] {
		putDatagram(d.buf)
	}
	for _, d := range m.batch[taken:] {
		m.enqueue(d)
	}
	clear(m.batch)
	m.batch = m.batch[:0]
}

// enqueue queues d for the relay's ReadFrom, or drops it when the queue
// is full.
func (m *udpMapping) enqueue(d datagram) {
	m.qmu.Lock()
	if m.ended {
		ans := m.endAnswer
		m.qmu.Unlock()
		if ans != nil {
			m.answer(d, *ans)
		}
		putDatagram(d.buf)
		return
	}
	defer m.qmu.Unlock()
	m.pending.Add(1)
	select {
	case m.in <- d:
	default:
		// The outbound side is not keeping up: drop, as a full socket
		// buffer would, and count it.
		m.pending.Add(-1)
		m.dropped.Add(1)
		putDatagram(d.buf)
	}
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
	// dropped counts datagrams lost because the queue was full.
	dropped atomic.Uint64
	// push, when the engine gave one (engine.PacketPusher), sends
	// datagrams out on the stack's goroutine if the outbound socket takes
	// them at once.
	push atomic.Pointer[engine.Push]
	// batch: datagrams the reader delivered, to be pushed as one batch;
	// ds and metas are flushBatch's scratch. Guarded by u.bmu.
	batch []datagram
	ds    [socks.MaxBatch]socks.Datagram
	metas [socks.MaxBatch]engine.Meta
	// pending counts datagrams queued and not yet sent: the one ReadFrom
	// returned last counts until the next ReadFrom, which the relay calls
	// once it has sent it.
	pending atomic.Int64
	// returned: the relay has a datagram from ReadFrom; its goroutine only.
	returned bool

	// qmu orders enqueue against the end of serve: once ended, a late
	// datagram is answered with endAnswer (when the association could not
	// be set up) or dropped, by enqueue itself.
	qmu       sync.Mutex
	ended     bool
	endAnswer *Answer

	closeOnce sync.Once
	closed    chan struct{}
}

type datagram struct {
	dst socks.Addr
	buf *[]byte
	n   int
	ttl uint8 // as it arrived
	df  bool  // must not be fragmented: IPv4 DF, or IPv6
}

// meta is what the datagram's IP header asks of the outbound side.
func (d datagram) meta() engine.Meta {
	meta := engine.Meta{DontFragment: d.df}
	if d.ttl <= maxCarriedTTL {
		meta.TTL = int(d.ttl) - 1
	}
	return meta
}

// maxCarriedTTL: a datagram that arrives with a TTL up to this was sent
// with a small TTL on purpose (a traceroute probe), and leaves with that
// TTL less one, the gateway's hop. Larger TTLs are ordinary traffic, sent
// with the system's default.
const maxCarriedTTL = 32

// dontFragment reports whether an inbound datagram must not be fragmented
// on its way: IPv4 with DF set (before any reassembly here), and IPv6.
func dontFragment(pkt *stack.PacketBuffer) bool {
	if pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber {
		return header.IPv4(pkt.NetworkHeader().Slice()).Flags()&header.IPv4FlagDontFragment != 0
	}
	return true
}

// packetTTL returns the TTL or hop limit of an inbound packet.
func packetTTL(pkt *stack.PacketBuffer) uint8 {
	nh := pkt.NetworkHeader().Slice()
	if pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber {
		return header.IPv4(nh).TTL()
	}
	return header.IPv6(nh).HopLimit()
}

func (m *udpMapping) serve() {
	spec := engine.FlowSpec{
		Src:   socks.AddrFromAddrPort(m.client),
		Flags: engine.FlagTUN,
	}
	ready := false
	err := m.u.s.eng.ServeUDP(m.u.s.ctx, spec, m, func() error {
		ready = true
		return nil
	})
	if err != nil {
		m.u.s.log.Debug("udp mapping failed", "src", m.client.String(), "err", err)
	}
	if n := m.dropped.Load(); n > 0 {
		m.u.s.log.Debug("udp datagrams dropped: the outbound side did not keep up", "src", m.client.String(), "dropped", n)
	}
	m.Close()
	m.u.mu.Lock()
	if m.u.maps[m.client] == m {
		delete(m.u.maps, m.client)
	}
	m.u.mu.Unlock()
	// What is still queued is lost. If the association could not be set
	// up, each queued datagram is answered as the reply code says, as a
	// router would answer a datagram it cannot deliver.
	var ans Answer
	if err != nil && !ready {
		ans = AnswerFor(socks.ReplyFromError(err))
	}
	// From here on enqueue takes no more datagrams: it answers (or drops)
	// one that comes late itself, so none waits in m.in for nobody.
	m.qmu.Lock()
	m.ended = true
	if err != nil && !ready {
		m.endAnswer = &ans
	}
	m.qmu.Unlock()
	for {
		select {
		case d := <-m.in:
			if err != nil && !ready {
				m.answer(d, ans)
			}
			putDatagram(d.buf)
		default:
			return
		}
	}
}

// answer sends the ICMP error ans about queued datagram d.
func (m *udpMapping) answer(d datagram, ans Answer) {
	dst, ok := d.dst.AddrPort()
	if !ok {
		return
	}
	bp := getDatagram()
	defer putDatagram(bp)
	orig, err := appendUDPPacket((*bp)[:0], m.client, dst, (*d.buf)[:d.n])
	if err != nil {
		return
	}
	m.u.s.sendICMPError(orig, dst.Addr(), ans, 0)
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
	n, dst, _, err := m.ReadFromMeta(b)
	return n, dst, err
}

// ReadFromMeta implements engine.MetaReader: the TTL the datagram should
// leave with (0 for the default), and whether it may be fragmented.
func (m *udpMapping) ReadFromMeta(b []byte) (int, socks.Addr, engine.Meta, error) {
	if m.returned {
		m.returned = false
		m.pending.Add(-1)
	}
	select {
	case d := <-m.in:
		m.returned = true
		n := copy(b, (*d.buf)[:d.n])
		putDatagram(d.buf)
		return n, d.dst, d.meta(), nil
	case <-m.closed:
		return 0, socks.Addr{}, engine.Meta{}, net.ErrClosed
	}
}

// ReportPacketError implements engine.ErrorReporter: the ICMP error the
// outbound side got about a datagram goes to the client as the same error,
// from the same sender (a router, or the destination), quoting the
// client's datagram.
func (m *udpMapping) ReportPacketError(pe *engine.PacketError) {
	dst, ok := pe.Dst.AddrPort()
	if !ok || dst.Addr().Is4() != m.client.Addr().Is4() {
		return
	}
	bp := getDatagram()
	defer putDatagram(bp)
	orig, err := appendUDPPacket((*bp)[:0], m.client, dst, pe.Payload)
	if err != nil {
		return
	}
	from := pe.Offender
	if !from.IsValid() || from.Is4() != dst.Addr().Is4() {
		from = dst.Addr()
	}
	if pe.V6 == dst.Addr().Is6() {
		m.u.s.sendICMP(orig, from, pe.Type, pe.Code, pe.Info)
		return
	}
	m.u.s.sendICMPError(orig, from, AnswerFor(pe.Reply()), pe.Info)
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

// WriteBatch implements socks.BatchWriter. Where the device takes UDP
// super-packets, consecutive datagrams from one peer of one size (the last
// may be shorter) go to the client as one, which the kernel cuts into the
// datagrams; every frame of the batch leaves with one write each, no
// checksum computed here (the kernel completes it). Elsewhere it is
// WriteTo for each.
func (m *udpMapping) WriteBatch(ds []socks.Datagram) (int, error) {
	l := m.u.s.link
	if !l.uso || l.usoRefused.Load() {
		return m.writeEach(ds)
	}
	if m.isClosed() {
		return 0, net.ErrClosed
	}
	bp := l.getBufs(len(ds))
	defer l.putBufs(bp)
	// Each frame is built in the pooled buffer it then replaces (so the
	// pool keeps what the buffers grew to): frames is bufs[:len(frames)].
	bufs := *bp
	frames := bufs[:0]
	var ends [socks.MaxBatch]int // datagrams carried up to each frame
	var payloads [socks.MaxBatch][]byte
	i := 0
	var ferr error
	for i < len(ds) && len(frames) < socks.MaxBatch {
		src, ok := ds[i].Addr.AddrPort()
		if !ok {
			ferr = errFamily
			break
		}
		run := usoRun(ds[i:])
		for k := range run {
			payloads[k] = ds[i+k].Buf
		}
		f, err := appendUDPFrame(bufs[len(frames)][:0], src, m.client, payloads[:run])
		clear(payloads[:run])
		if err != nil {
			ferr = err
			break
		}
		frames = append(frames, f)
		i += run
		ends[len(frames)-1] = i
	}
	n, err := l.writeFrames(frames)
	if err != nil {
		done := 0
		if n > 0 {
			done = ends[n-1]
		}
		if errors.Is(err, syscall.EINVAL) && ends[n]-done > 1 {
			// The kernel does not take UDP super-packets after all: one
			// datagram per packet from now on.
			l.usoRefused.Store(true)
			k, err := m.writeEach(ds[done:])
			return done + k, err
		}
		return done, err
	}
	if ferr != nil {
		return i, ferr
	}
	if i < len(ds) {
		// More frames than a batch: the rest goes the same way.
		k, err := m.WriteBatch(ds[i:])
		return i + k, err
	}
	return i, nil
}

// writeEach is WriteBatch one WriteTo at a time.
func (m *udpMapping) writeEach(ds []socks.Datagram) (int, error) {
	for i, d := range ds {
		if _, err := m.WriteTo(d.Buf, d.Addr); err != nil {
			return i, err
		}
	}
	return len(ds), nil
}

// usoRun returns how many datagrams from ds[0] can go as one USO frame:
// one peer, one size (the last may be shorter), within maxUSOBytes.
func usoRun(ds []socks.Datagram) int {
	size := len(ds[0].Buf)
	if size == 0 {
		return 1
	}
	n, total := 1, size
	for n < len(ds) {
		d := ds[n]
		if d.Addr != ds[0].Addr || len(d.Buf) == 0 || len(d.Buf) > size || total+len(d.Buf) > maxUSOBytes {
			break
		}
		n++
		total += len(d.Buf)
		if len(d.Buf) < size {
			break
		}
	}
	return n
}

// SetPush implements engine.PacketPusher.
func (m *udpMapping) SetPush(p *engine.Push) { m.push.Store(p) }

var (
	_ engine.PacketPusher = (*udpMapping)(nil)
	_ socks.BatchWriter   = (*udpMapping)(nil)
)

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
