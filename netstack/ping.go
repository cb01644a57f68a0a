package netstack

import (
	"encoding/binary"
	"net/netip"
	"strconv"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tungate/socks"
)

// ICMPMode says what the gateway does with ICMP echo requests (ping)
// from the TUN side.
type ICMPMode uint8

// ICMP echo modes.
const (
	// ICMPOff drops echo requests: pings time out.
	ICMPOff ICMPMode = iota
	// ICMPReply answers every echo request from the gateway itself, as if
	// from the destination: it says the gateway is up, nothing more.
	ICMPReply
	// ICMPForward sends real echo requests from this host with
	// unprivileged ICMP sockets and relays the replies and the errors
	// (direct mode only: SOCKS5 cannot carry ICMP).
	ICMPForward
)

func (m ICMPMode) String() string {
	switch m {
	case ICMPOff:
		return "off"
	case ICMPReply:
		return "reply"
	case ICMPForward:
		return "forward"
	}
	return "icmp-mode(" + strconv.Itoa(int(m)) + ")"
}

// Exported defaults of the ICMP rate limit.
const (
	DefaultICMPRate  = defaultICMPRate
	DefaultICMPBurst = defaultICMPBurst
)

// Offsets in an ICMP echo message (RFC 792, RFC 4443 4.1).
const (
	echoIdentOff = 4
	echoSeqOff   = 6
	echoHdrLen   = 8
	icmp4Echo    = 8
	icmp4Reply   = 0
	icmp6Echo    = 128
	icmp6Reply   = 129
)

// echoRequest is an ICMP or ICMPv6 echo request from a TUN client.
type echoRequest struct {
	src, dst netip.Addr
	ident    uint16
	seq      uint16
	ttl      uint8
	data     []byte // after the echo header; aliases the packet
	orig     []byte // the whole IP packet, for quoting in errors
}

// parseEchoRequest recognizes an unfragmented echo request. ok is false
// for anything else, which then goes to gVisor; frag is true for an ICMP
// fragment, which the gateway drops (gVisor would answer its reassembly
// itself, whatever the mode).
func parseEchoRequest(b []byte) (req echoRequest, ok, frag bool) {
	switch header.IPVersion(b) {
	case header.IPv4Version:
		ip := header.IPv4(b)
		if len(b) < header.IPv4MinimumSize || !ip.IsValid(len(b)) || ip.TransportProtocol() != header.ICMPv4ProtocolNumber {
			return req, false, false
		}
		if ip.FragmentOffset() != 0 || ip.More() {
			return req, false, true
		}
		icmp := b[ip.HeaderLength():ip.TotalLength()]
		if len(icmp) < echoHdrLen || icmp[0] != icmp4Echo || icmp[1] != 0 {
			return req, false, false
		}
		req = echoRequest{src: addrFrom(ip.SourceAddress()), dst: addrFrom(ip.DestinationAddress()), ttl: ip.TTL()}
		req.ident, req.seq = binary.BigEndian.Uint16(icmp[echoIdentOff:]), binary.BigEndian.Uint16(icmp[echoSeqOff:])
		req.data, req.orig = icmp[echoHdrLen:], b[:ip.TotalLength()]
		return req, true, false
	case header.IPv6Version:
		ip := header.IPv6(b)
		if len(b) < header.IPv6MinimumSize || !ip.IsValid(len(b)) || ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) {
			// Extension headers (a fragment header among them) go to gVisor.
			return req, false, false
		}
		icmp := b[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
		if len(icmp) < echoHdrLen || icmp[0] != icmp6Echo || icmp[1] != 0 {
			return req, false, false
		}
		req = echoRequest{src: addrFrom(ip.SourceAddress()), dst: addrFrom(ip.DestinationAddress()), ttl: ip.HopLimit()}
		req.ident, req.seq = binary.BigEndian.Uint16(icmp[echoIdentOff:]), binary.BigEndian.Uint16(icmp[echoSeqOff:])
		req.data, req.orig = icmp[echoHdrLen:], b[:header.IPv6MinimumSize+int(ip.PayloadLength())]
		return req, true, false
	}
	return req, false, false
}

// appendEcho appends an echo request (reply false) or reply from src to
// dst with the given identifier, sequence number and data.
func appendEcho(b []byte, reply bool, src, dst netip.Addr, ident, seq uint16, data []byte) []byte {
	v4 := src.Is4()
	ipLen := header.IPv4MinimumSize
	if !v4 {
		ipLen = header.IPv6MinimumSize
	}
	icmpLen := echoHdrLen + len(data)
	start := len(b)
	b = append(b, make([]byte, ipLen+icmpLen)...)
	pkt := b[start:]
	srcA, dstA := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	icmp := pkt[ipLen:]
	binary.BigEndian.PutUint16(icmp[echoIdentOff:], ident)
	binary.BigEndian.PutUint16(icmp[echoSeqOff:], seq)
	copy(icmp[echoHdrLen:], data)
	if v4 {
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(ipLen + icmpLen), ID: uint16(ipv4ID.Add(1)), TTL: defaultTTL,
			Protocol: uint8(header.ICMPv4ProtocolNumber), SrcAddr: srcA, DstAddr: dstA,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp[0] = icmp4Echo
		if reply {
			icmp[0] = icmp4Reply
		}
		header.ICMPv4(icmp).SetChecksum(^checksum.Checksum(icmp, 0))
		return b
	}
	header.IPv6(pkt).Encode(&header.IPv6Fields{
		PayloadLength: uint16(icmpLen), TransportProtocol: header.ICMPv6ProtocolNumber, HopLimit: defaultTTL,
		SrcAddr: srcA, DstAddr: dstA,
	})
	icmp[0] = icmp6Echo
	if reply {
		icmp[0] = icmp6Reply
	}
	header.ICMPv6(icmp).SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: icmp[:echoHdrLen], Src: srcA, Dst: dstA,
		PayloadCsum: checksum.Checksum(data, 0), PayloadLen: len(data),
	}))
	return b
}

// handleEcho takes ICMP echo requests out of the inbound path; it reports
// whether it consumed the packet.
func (s *Stack) handleEcho(b []byte) bool {
	req, ok, frag := parseEchoRequest(b)
	if frag {
		return true
	}
	if !ok {
		return false
	}
	switch s.icmpMode {
	case ICMPReply:
		s.replyEcho(req.dst, req)
	case ICMPForward:
		if req.ttl <= 1 {
			// The request's time ends at the gateway's hop.
			s.sendICMPError(req.orig, s.hopAddr(req.dst), AnswerFor(socks.ReplyTTLExpired), 0)
			return true
		}
		s.pinger.forward(req)
	}
	return true
}

// replyEcho answers req as if from src, within the rate limit: the
// gateway generates this reply.
func (s *Stack) replyEcho(src netip.Addr, req echoRequest) {
	if !s.icmp.allow() {
		return
	}
	s.writeEcho(true, src, req.src, req.ident, req.seq, req.data)
}

// writeEcho sends an echo message to the TUN client.
func (s *Stack) writeEcho(reply bool, src, dst netip.Addr, ident, seq uint16, data []byte) {
	bp := getDatagram()
	defer putDatagram(bp)
	pkt := appendEcho((*bp)[:0], reply, src, dst, ident, seq, data)
	if err := s.link.writeRaw(pkt); err != nil {
		s.log.Debug("sending echo message", "err", err)
	}
}
