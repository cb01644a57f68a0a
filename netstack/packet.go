package netstack

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// defaultTTL is the TTL of packets the gateway builds.
const defaultTTL = 64

var ipv4ID atomic.Uint32

var errPacketTooBig = errors.New("netstack: packet too big")

// errFamily is returned when source and destination are of different IP
// families: a reply from an IPv6 peer cannot reach an IPv4 client.
var errFamily = errors.New("netstack: address family mismatch")

// appendUDPPacket appends an IPv4 or IPv6 packet carrying one UDP datagram
// from src to dst, with checksums.
func appendUDPPacket(b []byte, src, dst netip.AddrPort, payload []byte) ([]byte, error) {
	start := len(b)
	b, ipLen, err := appendUDPHeaders(b, src, dst, len(payload))
	if err != nil {
		return b, err
	}
	b = append(b, payload...)
	pkt := b[start:]
	u := header.UDP(pkt[ipLen:])
	srcA, dstA := tcpip.AddrFromSlice(src.Addr().Unmap().AsSlice()), tcpip.AddrFromSlice(dst.Addr().Unmap().AsSlice())
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, srcA, dstA, u.Length())
	xsum = checksum.Checksum(payload, xsum)
	c := ^u.CalculateChecksum(xsum)
	if c == 0 {
		c = 0xffff // RFC 768: zero means no checksum
	}
	u.SetChecksum(c)
	return b, nil
}

// maxUSOBytes bounds the payload of a USO frame: with its headers it must
// fit one IP packet.
const maxUSOBytes = 65000

// appendUDPFrame appends a virtio-net frame (header, then IP packet) that
// carries payloads from src to dst: one datagram, or, with more payloads,
// a USO super-packet that the kernel cuts into datagrams of
// len(payloads[0]) bytes each (the last may be shorter; the caller sees
// to that, and to the total staying within maxUSOBytes). Either way the
// kernel completes the UDP checksum (NEEDS_CSUM): the frame carries only
// the pseudo-header's sum.
func appendUDPFrame(b []byte, src, dst netip.AddrPort, payloads [][]byte) ([]byte, error) {
	total := 0
	for _, p := range payloads {
		total += len(p)
	}
	start := len(b)
	b = append(b, make([]byte, vnetHdrLen)...)
	b, ipLen, err := appendUDPHeaders(b, src, dst, total)
	if err != nil {
		return b[:start], err
	}
	for _, p := range payloads {
		b = append(b, p...)
	}
	frame := b[start:]
	h, pkt := frame[:vnetHdrLen], frame[vnetHdrLen:]
	u := header.UDP(pkt[ipLen:])
	srcA, dstA := tcpip.AddrFromSlice(src.Addr().Unmap().AsSlice()), tcpip.AddrFromSlice(dst.Addr().Unmap().AsSlice())
	u.SetChecksum(header.PseudoHeaderChecksum(header.UDPProtocolNumber, srcA, dstA, u.Length()))
	h[vnetFlagsOff] = vnetFlagNeedsCsum
	binary.LittleEndian.PutUint16(h[vnetCsumStartOff:], uint16(ipLen))
	binary.LittleEndian.PutUint16(h[vnetCsumOffsetOff:], udpChecksumOff)
	if len(payloads) > 1 {
		h[vnetGSOTypeOff] = vnetGSOUDPL4
		binary.LittleEndian.PutUint16(h[vnetHdrLenOff:], uint16(ipLen+header.UDPMinimumSize))
		binary.LittleEndian.PutUint16(h[vnetGSOSizeOff:], uint16(len(payloads[0])))
	}
	return b, nil
}

// udpChecksumOff is where the checksum is in a UDP header.
const udpChecksumOff = 6

// appendUDPHeaders appends the IP and UDP headers of a datagram of
// payloadLen bytes from src to dst, the UDP checksum zero, and returns
// the IP header's length.
func appendUDPHeaders(b []byte, src, dst netip.AddrPort, payloadLen int) ([]byte, int, error) {
	srcIP, dstIP := src.Addr().Unmap(), dst.Addr().Unmap()
	if srcIP.Is4() != dstIP.Is4() {
		return b, 0, errFamily
	}
	ipLen := header.IPv4MinimumSize
	if !srcIP.Is4() {
		ipLen = header.IPv6MinimumSize
	}
	udpLen := header.UDPMinimumSize + payloadLen
	if udpLen > 0xffff || srcIP.Is4() && ipLen+udpLen > 0xffff {
		return b, 0, errPacketTooBig
	}
	start := len(b)
	b = append(b, make([]byte, ipLen+header.UDPMinimumSize)...)
	pkt := b[start:]
	srcA, dstA := tcpip.AddrFromSlice(srcIP.AsSlice()), tcpip.AddrFromSlice(dstIP.AsSlice())
	if srcIP.Is4() {
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(ipLen + udpLen),
			ID:          uint16(ipv4ID.Add(1)),
			TTL:         defaultTTL,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     srcA,
			DstAddr:     dstA,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(pkt).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(udpLen),
			TransportProtocol: header.UDPProtocolNumber,
			HopLimit:          defaultTTL,
			SrcAddr:           srcA,
			DstAddr:           dstA,
		})
	}
	header.UDP(pkt[ipLen:]).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(udpLen)})
	return b, ipLen, nil
}

// udpPacket is what parseUDPPacket finds in an IP packet carrying a UDP
// datagram.
type udpPacket struct {
	src, dst netip.AddrPort
	ttl      uint8 // TTL or hop limit
	df       bool  // may not be fragmented (always, for IPv6)
	payload  []byte
	ip       []byte // the IP packet, without bytes past its length
}

// IPv4 header fields parseUDPPacket reads beyond the header package's.
const (
	ipv4FlagsOff = 6
	ipv4MFBit    = 0x20
	ipv4DFBit    = 0x40
	ipv4OffMask  = 0x1fff
)

// parseUDPPacket parses b as an IPv4 or IPv6 packet that carries one
// whole UDP datagram: a valid header without IPv4 options, no fragment,
// no IPv6 extension header, a UDP length that fits, and addresses the stack itself would
// take (no loopback, multicast or broadcast source, no loopback
// destination, no IPv4-mapped IPv6 address). It reports false for
// anything else, which is the stack's to judge. Checksums are not
// checked: the packets come from the local kernel, as for the stack
// (stack.PacketBuffer.RXChecksumValidated).
func parseUDPPacket(b []byte) (udpPacket, bool) {
	var p udpPacket
	var l4 []byte
	switch header.IPVersion(b) {
	case header.IPv4Version:
		if len(b) < header.IPv4MinimumSize {
			return p, false
		}
		ip := header.IPv4(b)
		hlen, total := int(ip.HeaderLength()), int(ip.TotalLength())
		if hlen != header.IPv4MinimumSize || total < hlen || total > len(b) || ip.Protocol() != uint8(header.UDPProtocolNumber) {
			return p, false // options are the stack's to check
		}
		if b[ipv4FlagsOff]&ipv4MFBit != 0 || binary.BigEndian.Uint16(b[ipv4FlagsOff:])&ipv4OffMask != 0 {
			return p, false // a fragment: the stack reassembles
		}
		src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		if src.IsLoopback() || src.IsMulticast() || isBroadcast(src) || dst.IsLoopback() {
			return p, false
		}
		p.ip, l4 = b[:total], b[hlen:total]
		p.ttl, p.df = ip.TTL(), b[ipv4FlagsOff]&ipv4DFBit != 0
		p.src, p.dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
	case header.IPv6Version:
		if len(b) < header.IPv6MinimumSize {
			return p, false
		}
		ip := header.IPv6(b)
		total := header.IPv6MinimumSize + int(ip.PayloadLength())
		if total > len(b) || ip.NextHeader() != uint8(header.UDPProtocolNumber) {
			return p, false
		}
		src, dst := netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		if src.IsLoopback() || src.IsMulticast() || dst.IsLoopback() || src.Is4In6() || dst.Is4In6() {
			return p, false
		}
		p.ip, l4 = b[:total], b[header.IPv6MinimumSize:total]
		p.ttl, p.df = ip.HopLimit(), true
		p.src, p.dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
	default:
		return p, false
	}
	if len(l4) < header.UDPMinimumSize {
		return p, false
	}
	u := header.UDP(l4)
	ulen := int(u.Length())
	if ulen < header.UDPMinimumSize || ulen > len(l4) {
		return p, false
	}
	p.src = netip.AddrPortFrom(p.src.Addr(), u.SourcePort())
	p.dst = netip.AddrPortFrom(p.dst.Addr(), u.DestinationPort())
	p.payload = l4[header.UDPMinimumSize:ulen]
	return p, true
}
