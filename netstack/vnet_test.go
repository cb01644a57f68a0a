package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// recorder is a stack.NetworkDispatcher that keeps what it is given.
type recorder struct{ pkts [][]byte }

func (r *recorder) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	buf := pkt.ToBuffer()
	r.pkts = append(r.pkts, buf.Flatten())
	buf.Release()
}

func (r *recorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// vnetFrame builds a virtio-net frame: the header (struct virtio_net_hdr,
// little endian: flags, gso_type, hdr_len, gso_size, csum_start,
// csum_offset) and the packet.
func vnetFrame(gsoType uint8, gsoSize, csumStart uint16, pkt []byte) []byte {
	h := make([]byte, vnetHdrLen)
	h[vnetGSOTypeOff] = gsoType
	binary.LittleEndian.PutUint16(h[vnetGSOSizeOff:], gsoSize)
	binary.LittleEndian.PutUint16(h[vnetCsumStartOff:], csumStart)
	return append(h, pkt...)
}

// ipPacket builds an IPv4 or IPv6 packet of protocol proto around l4.
func ipPacket(v6 bool, proto uint8, l4 []byte) []byte {
	if v6 {
		b := make([]byte, header.IPv6MinimumSize)
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength: uint16(len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(proto), HopLimit: 64,
			SrcAddr: tcpip.AddrFrom16Slice(clientV6.AsSlice()), DstAddr: tcpip.AddrFrom16Slice(serverV6.AsSlice()),
		})
		return append(b, l4...)
	}
	b := make([]byte, header.IPv4MinimumSize)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + len(l4)), ID: 100, TTL: 64, Protocol: proto,
		SrcAddr: tcpip.AddrFrom4Slice(clientV4.AsSlice()), DstAddr: tcpip.AddrFrom4Slice(serverV4.AsSlice()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	return append(b, l4...)
}

// udpDatagram is a UDP header (ports 1000 -> 53, length for payload)
// and payload; the checksum is left partial, as the kernel leaves it.
func udpDatagram(payload []byte) []byte {
	u := make([]byte, header.UDPMinimumSize)
	header.UDP(u).Encode(&header.UDPFields{SrcPort: 1000, DstPort: 53, Length: uint16(len(u) + len(payload))})
	return append(u, payload...)
}

// tcpSegment is a TCP header without options and payload.
func tcpSegment(payload []byte) []byte {
	h := make([]byte, header.TCPMinimumSize)
	header.TCP(h).Encode(&header.TCPFields{SrcPort: 1000, DstPort: 80, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 1000})
	return append(h, payload...)
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 13)
	}
	return b
}

func TestDeliverFrame(t *testing.T) {
	udp4 := ipPacket(false, uint8(header.UDPProtocolNumber), udpDatagram(pattern(250)))
	udp6 := ipPacket(true, uint8(header.UDPProtocolNumber), udpDatagram(pattern(250)))
	tso := ipPacket(false, uint8(header.TCPProtocolNumber), tcpSegment(pattern(30000)))
	big := ipPacket(false, uint8(header.TCPProtocolNumber), tcpSegment(pattern(lendMin)))
	big6 := ipPacket(true, uint8(header.TCPProtocolNumber), tcpSegment(pattern(65000)))
	almost := ipPacket(false, uint8(header.TCPProtocolNumber), tcpSegment(pattern(lendMin-1)))
	for _, tc := range []struct {
		name  string
		frame []byte
		want  []int // lengths of the packets delivered
		lend  bool  // read into a view, the stack takes it
	}{
		{"plain packet", vnetFrame(vnetGSONone, 0, 0, udp4), []int{len(udp4)}, false},
		{"TSO super-packet, whole", vnetFrame(vnetGSOTCPv4, 1448, 20, tso), []int{len(tso)}, false},
		{"TSO with the ECN bit", vnetFrame(vnetGSOTCPv4|vnetGSOECNBit, 1448, 20, tso), []int{len(tso)}, false},
		{"TSO, payload lent", vnetFrame(vnetGSOTCPv4, 1448, 20, big), []int{len(big)}, true},
		{"TSO IPv6, payload lent", vnetFrame(vnetGSOTCPv6, 1448, 40, big6), []int{len(big6)}, true},
		{"TSO, a byte short of lending", vnetFrame(vnetGSOTCPv4, 1448, 20, almost), []int{len(almost)}, false},
		{"USO IPv4 in three", vnetFrame(vnetGSOUDPL4, 100, 20, udp4), []int{128, 128, 78}, false},
		{"USO IPv6 in three", vnetFrame(vnetGSOUDPL4, 100, 40, udp6), []int{148, 148, 98}, false},
		{"USO, one segment", vnetFrame(vnetGSOUDPL4, 1000, 20, udp4), []int{len(udp4)}, false},
		{"USO without a segment size", vnetFrame(vnetGSOUDPL4, 0, 20, udp4), nil, false},
		{"USO with a short IP header", vnetFrame(vnetGSOUDPL4, 100, 8, udp4), nil, false},
		{"USO beyond the packet", vnetFrame(vnetGSOUDPL4, 100, 2000, udp4), nil, false},
		{"unknown GSO type", vnetFrame(3, 100, 20, udp4), nil, false},
		{"header only", vnetFrame(vnetGSONone, 0, 0, nil), nil, false},
		{"short header", []byte{0, 0, 0}, nil, false},
	} {
		for _, inView := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/view=%v", tc.name, inView), func(t *testing.T) {
				checkDeliverFrame(t, tc.frame, tc.want, inView, tc.lend && inView)
			})
		}
	}
}

// deliverFrameTo delivers frame through a bare link to a recorder, its
// packet at the start of a view, as the reader has it, when inView (and it
// fits one). It returns the recorder, the frame's packet and whether the
// stack took the view.
func deliverFrameTo(frame []byte, inView bool) (*recorder, []byte, bool) {
	rec := &recorder{}
	l := &link{}
	l.gro.Dispatcher = rec
	hdr, orig := frame[:min(len(frame), vnetHdrLen)], frame[min(len(frame), vnetHdrLen):]
	pkt := orig
	var pv *buffer.View
	if inView && len(pkt) <= maxPacket {
		pv = newPacketView()
		pkt = pv.AsSlice()[:copy(pv.AsSlice(), pkt)]
	}
	_, took := l.deliverFrame(hdr, pkt, pv, nil)
	if pv != nil && !took {
		pv.Release()
	}
	return rec, orig, took
}

// checkDeliverFrame delivers frame, its packet in a view or not, and
// checks the packets the stack got (their lengths are want) and whether it
// took the view.
func checkDeliverFrame(t *testing.T, frame []byte, want []int, inView, lend bool) {
	t.Helper()
	rec, orig, took := deliverFrameTo(frame, inView)
	if took != lend {
		t.Errorf("view taken %v, want %v", took, lend)
	}
	if len(rec.pkts) != len(want) {
		t.Fatalf("%d packets delivered, want %d", len(rec.pkts), len(want))
	}
	// The checks look at orig: a view the stack took is no longer ours.
	hdrLen := 0
	if len(want) > 1 {
		hdrLen = headersLen(orig)
	}
	var payload []byte
	for i, p := range rec.pkts {
		if len(p) != want[i] {
			t.Errorf("packet %d: %d bytes, want %d", i, len(p), want[i])
		}
		if len(want) == 1 && !bytes.Equal(p, orig) {
			t.Errorf("packet changed on the way")
		}
		if len(want) > 1 {
			checkSegment(t, i, p, hdrLen)
			payload = append(payload, p[hdrLen:]...)
		}
	}
	if len(want) > 1 && !bytes.Equal(payload, orig[hdrLen:]) {
		t.Errorf("segments' payloads do not add up to the super-packet's")
	}
}

// checkSegment checks the lengths (and for IPv4 the ID and header
// checksum) of USO segment i, whose headers are hdrLen long.
func checkSegment(t *testing.T, i int, p []byte, hdrLen int) {
	t.Helper()
	ipLen := hdrLen - header.UDPMinimumSize
	if header.IPVersion(p) == header.IPv4Version {
		ip := header.IPv4(p)
		if int(ip.TotalLength()) != len(p) || ip.ID() != 100+uint16(i) || checksum.Checksum(p[:ipLen], 0) != 0xffff {
			t.Errorf("segment %d: IPv4 length %d of %d, ID %d, checksum valid %v", i, ip.TotalLength(), len(p), ip.ID(), checksum.Checksum(p[:ipLen], 0) == 0xffff)
		}
	} else if int(header.IPv6(p).PayloadLength()) != len(p)-header.IPv6MinimumSize {
		t.Errorf("segment %d: IPv6 payload length %d of %d", i, header.IPv6(p).PayloadLength(), len(p))
	}
	if got := int(header.UDP(p[ipLen:]).Length()); got != len(p)-ipLen {
		t.Errorf("segment %d: UDP length %d, want %d", i, got, len(p)-ipLen)
	}
}

func TestHeadersLen(t *testing.T) {
	udp4 := ipPacket(false, uint8(header.UDPProtocolNumber), udpDatagram(pattern(10)))
	tcp6 := ipPacket(true, uint8(header.TCPProtocolNumber), tcpSegment(pattern(10)))
	frag := bytes.Clone(udp4)
	header.IPv4(frag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	badOff := bytes.Clone(tcp6)
	badOff[header.IPv6MinimumSize+12] = 0xf0 // data offset 60 > the packet
	for _, tc := range []struct {
		name string
		b    []byte
		want int
	}{
		{"IPv4 UDP", udp4, 28},
		{"IPv6 TCP", tcp6, 60},
		{"IPv4 fragment", frag, 0},
		{"TCP data offset past the end", badOff, 0},
		{"ICMP", ipPacket(false, uint8(header.ICMPv4ProtocolNumber), make([]byte, 8)), 0},
		{"truncated", udp4[:24], 0},
		{"empty", nil, 0},
	} {
		if got := headersLen(tc.b); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// FuzzDeliverFrame: whatever the device hands over, the link never
// panics, delivers nothing longer than the frame's packet, and a USO
// split delivers exactly the super-packet's payload.
func FuzzDeliverFrame(f *testing.F) {
	f.Add(vnetFrame(vnetGSOUDPL4, 100, 20, ipPacket(false, uint8(header.UDPProtocolNumber), udpDatagram(pattern(250)))), false)
	f.Add(vnetFrame(vnetGSOUDPL4, 7, 40, ipPacket(true, uint8(header.UDPProtocolNumber), udpDatagram(pattern(50)))), false)
	f.Add(vnetFrame(vnetGSOTCPv6, 1440, 40, ipPacket(true, uint8(header.TCPProtocolNumber), tcpSegment(pattern(3000)))), true)
	f.Add(vnetFrame(vnetGSONone, 0, 0, ipPacket(false, uint8(header.TCPProtocolNumber), tcpSegment(nil))), false)
	f.Add(vnetFrame(vnetGSOTCPv4, 1448, 20, ipPacket(false, uint8(header.TCPProtocolNumber), tcpSegment(pattern(lendMin)))), true)
	f.Fuzz(func(t *testing.T, frame []byte, inView bool) {
		rec, pkt, _ := deliverFrameTo(frame, inView)
		uso := len(frame) >= vnetHdrLen && frame[vnetGSOTypeOff]&^vnetGSOECNBit == vnetGSOUDPL4
		if !uso && len(rec.pkts) == 1 && !bytes.Equal(rec.pkts[0], pkt) {
			t.Fatal("packet changed on the way")
		}
		if len(frame) <= vnetHdrLen {
			if len(rec.pkts) != 0 {
				t.Fatal("delivered a packet from a frame without one")
			}
			return
		}
		total := 0
		for _, p := range rec.pkts {
			if len(p) > len(pkt) {
				t.Fatalf("delivered %d bytes from a %d-byte packet", len(p), len(pkt))
			}
			total += len(p)
		}
		if frame[vnetGSOTypeOff]&^vnetGSOECNBit == vnetGSOUDPL4 && len(rec.pkts) > 0 {
			hdrLen := int(binary.LittleEndian.Uint16(frame[vnetCsumStartOff:])) + header.UDPMinimumSize
			if total-len(rec.pkts)*hdrLen != len(pkt)-hdrLen {
				t.Fatalf("USO: %d payload bytes delivered, the super-packet has %d", total-len(rec.pkts)*hdrLen, len(pkt)-hdrLen)
			}
		}
	})
}

// TestAppendUDPFrame: a frame for several datagrams is a USO super-packet
// whose virtio-net header, lengths and partial checksum let the kernel cut
// it into exactly those datagrams, each with a valid checksum. The cutting
// and the completion of the checksum are done here as the kernel does them
// (headers copied with the segment's length; the pseudo-header sum moved
// from the whole length to the segment's; the sum of the UDP header and
// payload added, folded, inverted), then checked from scratch.
func TestAppendUDPFrame(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src, dst string
		sizes    []int
	}{
		{"IPv4, one datagram", "198.18.1.2:53", "198.18.0.2:40000", []int{300}},
		{"IPv4, three", "198.18.1.2:9", "198.18.0.2:40000", []int{1400, 1400, 1400}},
		{"IPv4, a shorter last", "198.18.1.2:9", "198.18.0.2:40000", []int{1000, 1000, 17}},
		{"IPv6, two", "[2001:db8:1::2]:9", "[2001:db8::2]:40000", []int{1200, 1200}},
		{"IPv4, odd sizes", "198.18.1.2:9", "198.18.0.2:40001", []int{333, 333, 333, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
			var payloads [][]byte
			for i, n := range tc.sizes {
				p := pattern(n)
				for j := range p {
					p[j] += byte(i)
				}
				payloads = append(payloads, p)
			}
			frame, err := appendUDPFrame(nil, src, dst, payloads)
			if err != nil {
				t.Fatal(err)
			}
			h, pkt := frame[:vnetHdrLen], frame[vnetHdrLen:]
			ipLen := header.IPv4MinimumSize
			if src.Addr().Is6() {
				ipLen = header.IPv6MinimumSize
			}
			wantType, wantSize := uint8(vnetGSONone), 0
			if len(payloads) > 1 {
				wantType, wantSize = vnetGSOUDPL4, tc.sizes[0]
			}
			if h[vnetFlagsOff] != vnetFlagNeedsCsum || h[vnetGSOTypeOff] != wantType ||
				int(binary.LittleEndian.Uint16(h[vnetCsumStartOff:])) != ipLen ||
				binary.LittleEndian.Uint16(h[vnetCsumOffsetOff:]) != udpChecksumOff ||
				int(binary.LittleEndian.Uint16(h[vnetGSOSizeOff:])) != wantSize {
				t.Fatalf("virtio-net header % x: want NEEDS_CSUM, GSO type %d, segment size %d, checksum at %d+6", h, wantType, wantSize, ipLen)
			}
			if len(payloads) > 1 && int(binary.LittleEndian.Uint16(h[vnetHdrLenOff:])) != ipLen+8 {
				t.Errorf("header length %d, want %d", binary.LittleEndian.Uint16(h[vnetHdrLenOff:]), ipLen+8)
			}
			seg := len(pkt) - ipLen - 8
			if wantSize > 0 {
				seg = wantSize
			}
			u := header.UDP(pkt[ipLen:])
			whole := u.Length()
			if int(whole) != len(pkt)-ipLen {
				t.Fatalf("UDP length %d, want %d", whole, len(pkt)-ipLen)
			}
			srcA, dstA := tcpip.AddrFromSlice(src.Addr().AsSlice()), tcpip.AddrFromSlice(dst.Addr().AsSlice())
			data := pkt[ipLen+8:]
			for i, want := range payloads {
				n := min(seg, len(data))
				segLen := uint16(8 + n)
				// The kernel: the pseudo-header sum, moved to this length.
				partial := checksum.Combine(checksum.Combine(u.Checksum(), ^whole), segLen)
				udp := append([]byte(nil), u[:8]...)
				binary.BigEndian.PutUint16(udp[4:], segLen)
				binary.BigEndian.PutUint16(udp[6:], 0)
				udp = append(udp, data[:n]...)
				c := ^checksum.Checksum(udp, partial)
				binary.BigEndian.PutUint16(udp[6:], c)
				// From scratch: the pseudo-header, the header, the data.
				if got := checksum.Checksum(udp, header.PseudoHeaderChecksum(header.UDPProtocolNumber, srcA, dstA, segLen)); got != 0xffff {
					t.Errorf("datagram %d: checksum %#04x does not verify (sum %#04x)", i, c, got)
				}
				if !bytes.Equal(data[:n], want) {
					t.Errorf("datagram %d: %d bytes, not the payload given (%d bytes)", i, n, len(want))
				}
				data = data[n:]
			}
			if len(data) != 0 {
				t.Errorf("%d bytes left after the datagrams", len(data))
			}
			if src.Addr().Is4() {
				ip := header.IPv4(pkt)
				if int(ip.TotalLength()) != len(pkt) || !ip.IsChecksumValid() {
					t.Errorf("IPv4 total length %d (want %d), header checksum valid %v", ip.TotalLength(), len(pkt), ip.IsChecksumValid())
				}
			} else if int(header.IPv6(pkt).PayloadLength()) != len(pkt)-ipLen {
				t.Errorf("IPv6 payload length %d, want %d", header.IPv6(pkt).PayloadLength(), len(pkt)-ipLen)
			}
		})
	}
}
