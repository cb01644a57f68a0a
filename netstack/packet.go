package netstack

import (
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
	srcIP, dstIP := src.Addr().Unmap(), dst.Addr().Unmap()
	if srcIP.Is4() != dstIP.Is4() {
		return b, errFamily
	}
	ipLen := header.IPv4MinimumSize
	if !srcIP.Is4() {
		ipLen = header.IPv6MinimumSize
	}
	udpLen := header.UDPMinimumSize + len(payload)
	if udpLen > 0xffff || srcIP.Is4() && ipLen+udpLen > 0xffff {
		return b, errPacketTooBig
	}
	start := len(b)
	b = append(b, make([]byte, ipLen+udpLen)...)
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
	u := header.UDP(pkt[ipLen:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(udpLen)})
	copy(u[header.UDPMinimumSize:], payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, srcA, dstA, uint16(udpLen))
	xsum = checksum.Checksum(payload, xsum)
	c := ^u.CalculateChecksum(xsum)
	if c == 0 {
		c = 0xffff // RFC 768: zero means no checksum
	}
	u.SetChecksum(c)
	return b, nil
}
