package netstack

import (
	"errors"
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
	"tungate/internal/stackgrow"
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
	// The dial and the handshake's SYN-ACK run forty frames deep; gVisor
	// started this goroutine with a small stack.
	stackgrow.To32K()
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

	// lend and take are ReadVectors' writers, kept for the next call (a
	// relay direction reads the connection from one goroutine at a time).
	lend lender
	take taker
}

var (
	_ engine.ReadNotifier = (*tcpConn)(nil)
	_ engine.VectorReader = (*tcpConn)(nil)
)

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
		stackgrow.To16K() // fn copies: through the netstack, into a socket
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

// Buffered implements engine.VectorReader: the bytes in the endpoint's
// receive queue.
func (c *tcpConn) Buffered() int {
	if c.isClosed() {
		return 0
	}
	n, err := c.ep.GetSockOptInt(tcpip.ReceiveQueueSizeOption)
	if err != nil {
		return 0
	}
	return n
}

// ReadVectors implements engine.VectorReader. It peeks at the receive
// queue, which hands over the segments' own views (the endpoint's lock
// held, so that none of them is freed or reused meanwhile), calls fn with
// them from inside the peek, and then consumes what fn took, which moves
// the receive window on as a Read would.
func (c *tcpConn) ReadVectors(max int, fn func([][]byte) int) (int, error) {
	want := min(c.Buffered(), max)
	if want <= 0 {
		return 0, engine.ErrNotBuffered
	}
	c.lend.start(want, fn)
	c.ep.Read(&c.lend, tcpip.ReadOptions{Peek: true})
	took, called := c.lend.end()
	if !called {
		// The queue held less than it said: reset meanwhile.
		return 0, engine.ErrNotBuffered
	}
	if took > 0 {
		c.take.left = took
		res, err := c.ep.Read(&c.take, tcpip.ReadOptions{})
		if err != nil || res.Count != took {
			// What fn took is gone to the socket, and not from the
			// queue: the connection was torn down in between (only our
			// own Close purges the queue). Nothing may follow it.
			return took, net.ErrClosed
		}
		c.ep.ModerateRecvBuf(took)
	}
	return took, nil
}

// errLent stops a peek or a consuming read once it has what it wants.
var errLent = errors.New("netstack: lent")

// lender is the writer of ReadVectors' peek: it gathers views until it
// has want bytes or engine.MaxVectors views, then calls fn with them,
// while they are still valid.
type lender struct {
	want, have int
	bufs       [][]byte
	fn         func([][]byte) int
	took       int
	called     bool
}

func (l *lender) start(want int, fn func([][]byte) int) {
	l.want, l.have, l.fn, l.took, l.called = want, 0, fn, 0, false
	l.bufs = l.bufs[:0]
}

// Write implements io.Writer for the endpoint's peek.
func (l *lender) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r := l.want - l.have; len(p) > r {
		p = p[:r]
	}
	l.bufs = append(l.bufs, p)
	l.have += len(p)
	if l.have < l.want && len(l.bufs) < engine.MaxVectors {
		return len(p), nil
	}
	l.took = l.fn(l.bufs)
	l.called = true
	return len(p), errLent
}

// end returns what fn took and whether it was called, and drops the
// views, which are no longer valid.
func (l *lender) end() (int, bool) {
	clear(l.bufs)
	l.bufs = l.bufs[:0]
	l.fn = nil
	return l.took, l.called
}

// taker is the writer of ReadVectors' consuming read: it accepts left
// bytes and refuses the rest.
type taker struct{ left int }

// Write implements io.Writer for the endpoint's read.
func (t *taker) Write(p []byte) (int, error) {
	if len(p) <= t.left {
		t.left -= len(p)
		return len(p), nil
	}
	n := t.left
	t.left = 0
	return n, errLent
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
