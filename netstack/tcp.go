package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"sync"

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
// The forwarder calls it on a goroutine of its own.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	if !s.enter() {
		r.Complete(true)
		return
	}
	defer s.flows.Done()

	id := r.ID()
	syn := s.syns.take(id)
	spec := engine.FlowSpec{
		Src:   socks.AddrFromAddrPort(netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)),
		Dst:   socks.AddrFromAddrPort(netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)),
		Flags: engine.FlagTUN,
	}
	completed := false
	err := s.eng.ServeTCP(s.ctx, spec, func(net.Conn) (net.Conn, error) {
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
	})
	if err != nil {
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

// tcpConn is a gonet connection that can also be reset, and waited on
// for something to read without a buffer.
type tcpConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue

	closeOnce sync.Once
	closed    chan struct{}
}

// WaitRead blocks until a Read would not block: data, EOF or an error, or
// the connection closed.
func (c *tcpConn) WaitRead() error {
	const events = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	if c.ep.Readiness(events) != 0 {
		return nil
	}
	e, ch := waiter.NewChannelEntry(events)
	c.wq.EventRegister(&e)
	defer c.wq.EventUnregister(&e)
	if c.ep.Readiness(events) != 0 {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-c.closed:
		return net.ErrClosed
	}
}

// Close closes the connection and ends a WaitRead.
func (c *tcpConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.TCPConn.Close()
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
