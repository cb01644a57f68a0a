package netstack

import (
	"net/netip"

	"golang.org/x/time/rate"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tungate/socks"
)

// ICMP types and codes the gateway sends (RFC 792, RFC 1812, RFC 4443).
const (
	icmp4DestUnreachable  = 3
	icmp4TimeExceeded     = 11
	icmp4NetUnreachable   = 0
	icmp4HostUnreachable  = 1
	icmp4PortUnreachable  = 3
	icmp4FragNeeded       = 4
	icmp4AdminProhibited  = 13
	icmp4TTLExceeded      = 0
	icmp6DestUnreachable  = 1
	icmp6PacketTooBig     = 2
	icmp6TimeExceeded     = 3
	icmp6NoRoute          = 0
	icmp6AdminProhibited  = 1
	icmp6AddrUnreachable  = 3
	icmp6PortUnreachable  = 4
	icmp6HopLimitExceeded = 0
	icmpHeaderLen         = 8
	icmp4MaxErrorLen      = 576  // RFC 1812 4.3.2.3: an ICMPv4 error fits in 576 octets
	icmp6MaxErrorLen      = 1280 // RFC 4443 2.4(c): an ICMPv6 error fits in the minimum MTU
	icmpPrecInternetCtrl  = 0xc0 // IP precedence of ICMP errors, as Linux sends them
	icmp4TOSMask          = 0x1e
	defaultICMPRate       = 200 // errors per second, all clients together
	defaultICMPBurst      = 50
)

// Answer is what a TUN client is told when its flow cannot be carried: a
// TCP reset, or an ICMP error of a type and code per IP family.
type Answer struct {
	Reset        bool // TCP: reset the connection attempt (UDP: port unreachable)
	Type4, Code4 uint8
	Type6, Code6 uint8
}

// AnswerFor is the one translation table from a SOCKS5 reply code to what
// the client's kernel receives, for TCP and for UDP. Together with
// socks.ReplyFromError (errno -> reply) it serves every path: a failed
// direct dial, an upstream proxy's reply, a failed UDP association.
//
//	reply                      TCP                    UDP / ICMP
//	X'05' connection refused   RST                    port unreachable (3/3, v6 1/4)
//	X'04' host unreachable     host unreach (3/1)     same; v6 address unreachable (1/3)
//	X'03' network unreachable  net unreach (3/0)      same; v6 no route (1/0)
//	X'06' TTL expired          time exceeded (11/0)   same; v6 hop limit exceeded (3/0)
//	X'02' not allowed          admin prohibited (3/13) same; v6 admin prohibited (1/1)
//	anything else              RST                    port unreachable
func AnswerFor(r socks.Reply) Answer {
	switch r {
	case socks.ReplyHostUnreachable:
		return Answer{Type4: icmp4DestUnreachable, Code4: icmp4HostUnreachable, Type6: icmp6DestUnreachable, Code6: icmp6AddrUnreachable}
	case socks.ReplyNetworkUnreachable:
		return Answer{Type4: icmp4DestUnreachable, Code4: icmp4NetUnreachable, Type6: icmp6DestUnreachable, Code6: icmp6NoRoute}
	case socks.ReplyTTLExpired:
		return Answer{Type4: icmp4TimeExceeded, Code4: icmp4TTLExceeded, Type6: icmp6TimeExceeded, Code6: icmp6HopLimitExceeded}
	case socks.ReplyNotAllowed:
		return Answer{Type4: icmp4DestUnreachable, Code4: icmp4AdminProhibited, Type6: icmp6DestUnreachable, Code6: icmp6AdminProhibited}
	}
	// Refused, and failures that have no network-layer meaning: the
	// gateway refuses, as a host with nothing listening would.
	return Answer{Reset: true, Type4: icmp4DestUnreachable, Code4: icmp4PortUnreachable, Type6: icmp6DestUnreachable, Code6: icmp6PortUnreachable}
}

// appendICMPError appends an ICMPv4 or ICMPv6 error from src to the sender
// of orig, quoting orig (the offending IP packet, from its IP header) as
// far as the size limit allows. mtu is the next-hop MTU for "fragmentation
// needed" and "packet too big", 0 otherwise.
func appendICMPError(b []byte, src netip.Addr, orig []byte, typ, code uint8, mtu uint32) ([]byte, bool) {
	if len(orig) == 0 {
		return b, false
	}
	switch header.IPVersion(orig) {
	case header.IPv4Version:
		return appendICMPv4Error(b, src, orig, typ, code, mtu)
	case header.IPv6Version:
		return appendICMPv6Error(b, src, orig, typ, code, mtu)
	}
	return b, false
}

func appendICMPv4Error(b []byte, src netip.Addr, orig []byte, typ, code uint8, mtu uint32) ([]byte, bool) {
	ip := header.IPv4(orig)
	if len(orig) < header.IPv4MinimumSize || !ip.IsValid(len(orig)) || !src.Is4() {
		return b, false
	}
	// RFC 1812 4.3.2.7: no error about an ICMP error, a non-initial
	// fragment, or a packet to or from a broadcast or multicast address.
	if ip.FragmentOffset() != 0 || isICMPv4Error(orig) {
		return b, false
	}
	dst := addrFrom(ip.SourceAddress())
	if !dst.IsValid() || dst.IsUnspecified() || dst.IsMulticast() || isBroadcast(dst) {
		return b, false
	}
	quote := orig[:min(len(orig), int(ip.TotalLength()), icmp4MaxErrorLen-header.IPv4MinimumSize-icmpHeaderLen)]
	total := header.IPv4MinimumSize + icmpHeaderLen + len(quote)
	start := len(b)
	b = append(b, make([]byte, total)...)
	pkt := b[start:]
	h := header.IPv4(pkt)
	h.Encode(&header.IPv4Fields{
		TOS:         tos(ip)&icmp4TOSMask | icmpPrecInternetCtrl,
		TotalLength: uint16(total),
		ID:          uint16(ipv4ID.Add(1)),
		TTL:         defaultTTL,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpip.AddrFromSlice(src.AsSlice()),
		DstAddr:     ip.SourceAddress(),
	})
	h.SetChecksum(^h.CalculateChecksum())
	icmp := header.ICMPv4(pkt[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4Type(typ))
	icmp.SetCode(header.ICMPv4Code(code))
	if typ == icmp4DestUnreachable && code == icmp4FragNeeded {
		icmp.SetMTU(uint16(min(mtu, 0xffff)))
	}
	copy(icmp[icmpHeaderLen:], quote)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return b, true
}

// isICMPv4Error reports whether an IPv4 packet carries an ICMP error.
func isICMPv4Error(p []byte) bool {
	ip := header.IPv4(p)
	if ip.TransportProtocol() != header.ICMPv4ProtocolNumber {
		return false
	}
	payload := p[ip.HeaderLength():]
	if len(payload) < 1 {
		return false
	}
	switch header.ICMPv4Type(payload[0]) {
	case header.ICMPv4Echo, header.ICMPv4EchoReply, header.ICMPv4Timestamp, header.ICMPv4TimestampReply,
		header.ICMPv4InfoRequest, header.ICMPv4InfoReply:
		return false
	}
	return true
}

func appendICMPv6Error(b []byte, src netip.Addr, orig []byte, typ, code uint8, mtu uint32) ([]byte, bool) {
	ip := header.IPv6(orig)
	if len(orig) < header.IPv6MinimumSize || !ip.IsValid(len(orig)) || !src.Is6() {
		return b, false
	}
	// RFC 4443 2.4(e): no error about an ICMPv6 error, or about a packet
	// from a multicast or unspecified source.
	if ip.NextHeader() == uint8(header.ICMPv6ProtocolNumber) && len(orig) > header.IPv6MinimumSize &&
		orig[header.IPv6MinimumSize] < byte(header.ICMPv6EchoRequest) {
		return b, false
	}
	dst := addrFrom(ip.SourceAddress())
	if !dst.IsValid() || dst.IsUnspecified() || dst.IsMulticast() {
		return b, false
	}
	quote := orig[:min(len(orig), header.IPv6MinimumSize+int(ip.PayloadLength()), icmp6MaxErrorLen-header.IPv6MinimumSize-icmpHeaderLen)]
	plen := icmpHeaderLen + len(quote)
	start := len(b)
	b = append(b, make([]byte, header.IPv6MinimumSize+plen)...)
	pkt := b[start:]
	srcA := tcpip.AddrFromSlice(src.AsSlice())
	header.IPv6(pkt).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(plen),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          defaultTTL,
		SrcAddr:           srcA,
		DstAddr:           ip.SourceAddress(),
	})
	icmp := header.ICMPv6(pkt[header.IPv6MinimumSize:])
	icmp.SetType(header.ICMPv6Type(typ))
	icmp.SetCode(header.ICMPv6Code(code))
	if typ == icmp6PacketTooBig {
		icmp.SetMTU(mtu)
	}
	copy(icmp[icmpHeaderLen:], quote)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header:      icmp[:icmpHeaderLen],
		Src:         srcA,
		Dst:         ip.SourceAddress(),
		PayloadCsum: checksum.Checksum(quote, 0),
		PayloadLen:  len(quote),
	}))
	return b, true
}

// icmpLimiter bounds the ICMP errors the gateway generates, so that a scan
// through it cannot turn it into an amplifier.
type icmpLimiter struct {
	l *rate.Limiter
}

func newICMPLimiter(perSecond, burst int) *icmpLimiter {
	if perSecond <= 0 {
		return &icmpLimiter{l: rate.NewLimiter(0, 0)}
	}
	return &icmpLimiter{l: rate.NewLimiter(rate.Limit(perSecond), max(burst, 1))}
}

func (l *icmpLimiter) allow() bool { return l.l.Allow() }

func tos(ip header.IPv4) uint8 {
	t, _ := ip.TOS()
	return t
}
