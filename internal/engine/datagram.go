package engine

import (
	"fmt"
	"net/netip"

	"tungate/socks"
)

// PacketError is an ICMP error about a datagram that an outbound endpoint
// sent, as the kernel reported it. An endpoint's ReadFrom returns it as
// its error; the association lives on.
type PacketError struct {
	Dst        socks.Addr // where the offending datagram was going
	V6         bool       // Type and Code are ICMPv6's
	Type, Code uint8
	Offender   netip.Addr // who sent the ICMP error: a router, or Dst itself
	Info       uint32     // the next-hop MTU for "fragmentation needed" and "packet too big"
	Payload    []byte     // the start of the offending datagram's payload
}

func (e *PacketError) Error() string {
	return fmt.Sprintf("engine: ICMP error about datagram to %s from %s: %s", e.Dst, e.Offender, e.Reply())
}

// Reply implements socks.Replier: what the ICMP error means as a reply
// code, for paths that cannot carry ICMP.
func (e *PacketError) Reply() socks.Reply {
	if e.V6 {
		switch {
		case e.Type == 1 && e.Code == 4:
			return socks.ReplyConnectionRefused
		case e.Type == 1 && e.Code == 0:
			return socks.ReplyNetworkUnreachable
		case e.Type == 1 && e.Code == 1:
			return socks.ReplyNotAllowed
		case e.Type == 1:
			return socks.ReplyHostUnreachable
		case e.Type == 3:
			return socks.ReplyTTLExpired
		}
		return socks.ReplyGeneralFailure
	}
	switch {
	case e.Type == 3 && e.Code == 3:
		return socks.ReplyConnectionRefused
	case e.Type == 3 && (e.Code == 0 || e.Code == 6):
		return socks.ReplyNetworkUnreachable
	case e.Type == 3 && (e.Code == 9 || e.Code == 10 || e.Code == 13):
		return socks.ReplyNotAllowed
	case e.Type == 3:
		return socks.ReplyHostUnreachable
	case e.Type == 11:
		return socks.ReplyTTLExpired
	}
	return socks.ReplyGeneralFailure
}

// Meta is what the IP header said about a datagram, where the client side
// knows it, for the outbound side to honor.
type Meta struct {
	// TTL to send with (TTL or hop limit); 0 means the system default.
	TTL int
	// DontFragment: the datagram must not be fragmented on the way (IPv4
	// DF; always so for IPv6, which routers never fragment). One too big
	// for the path comes back as a *PacketError with the path's MTU.
	DontFragment bool
}

// MetaReader is implemented by client-side endpoints that know each
// datagram's IP header.
type MetaReader interface {
	ReadFromMeta(b []byte) (n int, addr socks.Addr, meta Meta, err error)
}

// MetaWriter is implemented by outbound endpoints that can honor Meta.
type MetaWriter interface {
	WriteToMeta(b []byte, addr socks.Addr, meta Meta) (int, error)
}

// ErrorReporter is implemented by client-side endpoints that can tell the
// client about an ICMP error (the TUN side can; SOCKS5 cannot).
type ErrorReporter interface {
	ReportPacketError(*PacketError)
}
