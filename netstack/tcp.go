package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"tungate/internal/engine"
	"tungate/socks"
)

// handleTCP runs one TCP connection from the TUN side. The client's SYN is
// held (no SYN-ACK) while the engine dials the destination; only once the
// outbound side is connected does the stack complete the handshake, so a
// failed dial is answered instead of a connection that opens and closes.
// The forwarder calls it on a goroutine of its own, which ends once the
// relay has started: the relay's goroutines are the engine's, and it
// reports the flow's end to s.flows (engine.StartTCP), so that a held
// connection does not keep this goroutine, whose stack the handshake has
// grown.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	if !s.enter() {
		r.Complete(true)
		return
	}

	id := r.ID()
	syn := s.syns.take(id)
	spec := engine.FlowSpec{
		Src:   socks.AddrFromAddrPort(netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)),
		Dst:   socks.AddrFromAddrPort(netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)),
		Flags: engine.FlagTUN,
	}
	completed := false
	err := s.eng.StartTCP(s.ctx, spec, func(net.Conn) (net.Conn, error) {
		var wq waiter.Queue
		ep, terr := r.CreateEndpoint(&wq)
		completed = true
		if terr != nil {
			r.Complete(true)
			return nil, fmt.Errorf("netstack: completing handshake with %s: %s", spec.Src, terr)
		}
		r.Complete(false)
		ep.SocketOptions().SetKeepAlive(true)
		return &tcpConn{TCPConn: gonet.NewTCPConn(&wq, ep), ep: ep, wq: &wq, closed: make(chan struct{})}, nil
	}, s.flows.Done)
	if err != nil {
		s.flows.Done()
		if !completed {
			s.answerSYN(r, syn, socks.ReplyFromError(err))
		}
		s.log.Debug("tcp flow failed", "src", spec.Src.String(), "dst", spec.Dst.String(), "err", err)
	}
}

// answerSYN answers a held SYN whose flow failed with reply code rep, as
// AnswerFor says: a reset, or an ICMP error quoting the SYN, from the
// address the client tried to reach.
func (s *Stack) answerSYN(r *tcp.ForwarderRequest, syn []byte, rep socks.Reply) {
	ans := AnswerFor(rep)
	if ans.Reset || syn == nil {
		r.Complete(true)
		return
	}
	dst := addrFrom(r.ID().LocalAddress)
	r.Complete(false)
	s.sendICMPError(syn, dst, ans, 0)
}

// sendICMPError sends the ICMP error ans describes about orig, from src,
// within the rate limit.
func (s *Stack) sendICMPError(orig []byte, src netip.Addr, ans Answer, mtu uint32) {
	typ, code := ans.Type4, ans.Code4
	if src.Is6() {
		typ, code = ans.Type6, ans.Code6
	}
	s.sendICMP(orig, src, typ, code, mtu)
}

// sendICMP sends an ICMP error of the family of orig, within the rate limit.
func (s *Stack) sendICMP(orig []byte, src netip.Addr, typ, code uint8, mtu uint32) {
	if !s.icmp.allow() {
		return
	}
	bp := getDatagram()
	defer putDatagram(bp)
	pkt, ok := appendICMPError((*bp)[:0], src, orig, typ, code, mtu)
	if !ok {
		return
	}
	if err := s.link.writeRaw(pkt); err != nil {
		s.log.Debug("sending ICMP error", "err", err)
	}
}

// hopAddr is the address the gateway answers from as a hop on the path
// (TTL expired at the gateway): its own address of that family on the
// TUN side, or, with none, the destination's.
func (s *Stack) hopAddr(dst netip.Addr) netip.Addr {
	for _, a := range s.addrs {
		if a.Is4() == dst.Is4() {
			return a
		}
	}
	return dst
}

// tcpConn is a gonet connection that can also be reset, and that calls
// back when it has something to read (engine.ReadNotifier), so that the
// relay direction reading it holds no goroutine while the client is idle.
type tcpConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue

	// pending is the NotifyRead callback not yet fired; Close fires it.
	pending atomic.Pointer[readNotify]

	closeOnce sync.Once
	closed    chan struct{}
}

var _ engine.ReadNotifier = (*tcpConn)(nil)

// readEvents are the events after which a Read does not block.
const readEvents = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// ReadReady implements engine.ReadNotifier. A closed connection is ready:
// its Read returns the error at once.
func (c *tcpConn) ReadReady() bool {
	return c.ep.Readiness(readEvents) != 0 || c.isClosed()
}

func (c *tcpConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// NotifyRead implements engine.ReadNotifier. The callback is registered
// with the endpoint's waiter queue; the stack calls it from its own
// goroutines with the queue locked, so it only starts the goroutine that
// unregisters it and runs fn.
func (c *tcpConn) NotifyRead(fn func()) {
	n := &readNotify{c: c, fn: fn}
	n.entry = waiter.NewFunctionEntry(readEvents, n.notify)
	c.pending.Store(n)
	c.wq.EventRegister(&n.entry)
	// Ready before the registration (or closed meanwhile, after Close
	// looked at pending): no event will come, so fire now.
	if c.ReadReady() {
		n.notify(0)
	}
}

// readNotify is one NotifyRead callback.
type readNotify struct {
	c     *tcpConn
	fn    func()
	entry waiter.Entry
	fired atomic.Bool
}

func (n *readNotify) notify(waiter.EventMask) {
	if n.fired.Swap(true) {
		return
	}
	n.c.pending.CompareAndSwap(n, nil)
	go func() {
		n.c.wq.EventUnregister(&n.entry)
		n.fn()
	}()
}

// Read reads from the connection; after Close it returns net.ErrClosed
// (gonet would say io.EOF, which a relay would take for the client's FIN).
func (c *tcpConn) Read(b []byte) (int, error) {
	if c.isClosed() {
		return 0, net.ErrClosed
	}
	return c.TCPConn.Read(b)
}

// Close closes the connection and fires a pending NotifyRead callback.
func (c *tcpConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	err := c.TCPConn.Close()
	if n := c.pending.Swap(nil); n != nil {
		n.notify(0)
	}
	return err
}

// SetLinger implements the engine's reset hook: SetLinger(0) then Close
// sends a RST.
func (c *tcpConn) SetLinger(sec int) error {
	c.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: sec >= 0, Timeout: 0})
	return nil
}

// addrFrom converts a gVisor address.
func addrFrom(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip.Unmap()
}
