package netstack

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// udp4Golden is an IPv4 packet with a UDP datagram, byte by byte (RFC 791
// header, RFC 768 datagram): 198.18.0.2:40000 -> 198.18.1.2:53, TTL 64,
// DF, ID 0x1c46, payload "tungate" (7 bytes).
const udp4Golden = "4500" + "0023" + "1c46" + "4000" + "40" + "11" + "0000" +
	"c6120002" + "c6120102" +
	"9c40" + "0035" + "000f" + "0000" +
	"74756e67617465"

// udp6Golden is an IPv6 packet (RFC 8200) with a UDP datagram:
// [2001:db8::2]:40000 -> [2001:db8:1::2]:53, hop limit 7, payload "tg".
const udp6Golden = "60000000" + "000a" + "11" + "07" +
	"20010db8000000000000000000000002" + "20010db8000100000000000000000002" +
	"9c40" + "0035" + "000a" + "0000" +
	"7467"

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseUDPPacket(t *testing.T) {
	v4 := mustHex(t, udp4Golden)
	v6 := mustHex(t, udp6Golden)
	edit := func(b []byte, fn func([]byte)) []byte {
		c := append([]byte(nil), b...)
		fn(c)
		return c
	}
	withOptions := edit(v4, func([]byte) {})
	withOptions = append(append(append([]byte(nil), withOptions[:20]...), 0x01, 0x01, 0x01, 0x00), withOptions[20:]...) // NOP, NOP, NOP, EOL
	withOptions[0] = 0x46
	withOptions[3] += 4

	for _, tc := range []struct {
		name     string
		pkt      []byte
		ok       bool
		src, dst string
		ttl      uint8
		df       bool
		payload  string
	}{
		{"IPv4", v4, true, "198.18.0.2:40000", "198.18.1.2:53", 64, true, "tungate"},
		{"IPv4, no DF", edit(v4, func(b []byte) { b[6] = 0 }), true, "198.18.0.2:40000", "198.18.1.2:53", 64, false, "tungate"},
		{"IPv4 with options (the stack checks them)", withOptions, false, "", "", 0, false, ""},
		{"IPv4, bytes past its length", append(append([]byte(nil), v4...), 0xee, 0xee), true, "198.18.0.2:40000", "198.18.1.2:53", 64, true, "tungate"},
		{"IPv4, UDP length short of the packet", edit(v4, func(b []byte) { b[25] = 0x0c }), true, "198.18.0.2:40000", "198.18.1.2:53", 64, true, "tung"},
		{"IPv4, TTL 1 (the mapper answers)", edit(v4, func(b []byte) { b[8] = 1 }), true, "198.18.0.2:40000", "198.18.1.2:53", 1, true, "tungate"},
		{"IPv6", v6, true, "[2001:db8::2]:40000", "[2001:db8:1::2]:53", 7, true, "tg"},
		{"IPv6, bytes past its length", append(append([]byte(nil), v6...), 0xee), true, "[2001:db8::2]:40000", "[2001:db8:1::2]:53", 7, true, "tg"},

		{"IPv4 first fragment", edit(v4, func(b []byte) { b[6] = 0x20 }), false, "", "", 0, false, ""},
		{"IPv4 later fragment", edit(v4, func(b []byte) { b[7] = 0x01 }), false, "", "", 0, false, ""},
		{"IPv4 header length under 20", edit(v4, func(b []byte) { b[0] = 0x44 }), false, "", "", 0, false, ""},
		{"IPv4 total length past the packet", edit(v4, func(b []byte) { b[3]++ }), false, "", "", 0, false, ""},
		{"IPv4 total length under the header", edit(v4, func(b []byte) { b[3] = 19 }), false, "", "", 0, false, ""},
		{"IPv4, TCP", edit(v4, func(b []byte) { b[9] = 6 }), false, "", "", 0, false, ""},
		{"IPv4, UDP length past the packet", edit(v4, func(b []byte) { b[25] = 0x10 }), false, "", "", 0, false, ""},
		{"IPv4, UDP length under 8", edit(v4, func(b []byte) { b[25] = 7 }), false, "", "", 0, false, ""},
		{"IPv4, no room for the UDP header", v4[:27], false, "", "", 0, false, ""},
		{"IPv4, loopback source", edit(v4, func(b []byte) { b[12] = 127 }), false, "", "", 0, false, ""},
		{"IPv4, loopback destination", edit(v4, func(b []byte) { b[16] = 127 }), false, "", "", 0, false, ""},
		{"IPv4, multicast source", edit(v4, func(b []byte) { b[12] = 224 }), false, "", "", 0, false, ""},
		{"IPv4, broadcast source", edit(v4, func(b []byte) { copy(b[12:16], []byte{255, 255, 255, 255}) }), false, "", "", 0, false, ""},
		{"IPv6, extension header", edit(v6, func(b []byte) { b[6] = 0 }), false, "", "", 0, false, ""},
		{"IPv6 payload length past the packet", edit(v6, func(b []byte) { b[5]++ }), false, "", "", 0, false, ""},
		{"IPv6, multicast source", edit(v6, func(b []byte) { b[8] = 0xff }), false, "", "", 0, false, ""},
		{"IPv6, loopback destination", edit(v6, func(b []byte) { copy(b[24:40], netip.IPv6Loopback().AsSlice()) }), false, "", "", 0, false, ""},
		{"IPv6, IPv4-mapped source", edit(v6, func(b []byte) {
			a := netip.MustParseAddr("::ffff:198.18.0.2").As16()
			copy(b[8:24], a[:])
		}), false, "", "", 0, false, ""},
		{"IPv6 header cut", v6[:39], false, "", "", 0, false, ""},
		{"not IP", edit(v4, func(b []byte) { b[0] = 0x55 }), false, "", "", 0, false, ""},
		{"empty", nil, false, "", "", 0, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, ok := parseUDPPacket(tc.pkt)
			if ok != tc.ok {
				t.Fatalf("taken %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if p.src.String() != tc.src || p.dst.String() != tc.dst || p.ttl != tc.ttl || p.df != tc.df || string(p.payload) != tc.payload {
				t.Errorf("got %s -> %s ttl %d df %v %q, want %s -> %s ttl %d df %v %q",
					p.src, p.dst, p.ttl, p.df, p.payload, tc.src, tc.dst, tc.ttl, tc.df, tc.payload)
			}
			if len(p.ip) > len(tc.pkt) || !bytes.Equal(p.ip, tc.pkt[:len(p.ip)]) || len(tc.pkt) > len(p.ip) && !strings.Contains(tc.name, "past its length") {
				t.Errorf("the packet quoted is %d of %d bytes", len(p.ip), len(tc.pkt))
			}
		})
	}
}

// FuzzParseUDPPacket: whatever parseUDPPacket takes, gVisor's own header
// code reads the same way: a valid IP header, the same addresses, ports,
// TTL and a payload that the UDP length covers exactly.
func FuzzParseUDPPacket(f *testing.F) {
	f.Add(mustHex(f, udp4Golden))
	f.Add(mustHex(f, udp6Golden))
	frag := mustHex(f, udp4Golden)
	frag[6] = 0x20
	f.Add(frag)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := parseUDPPacket(b)
		if !ok {
			return
		}
		var ipLen int
		var src, dst netip.Addr
		var ttl uint8
		switch header.IPVersion(b) {
		case header.IPv4Version:
			ip := header.IPv4(b)
			if !ip.IsValid(len(b)) || ip.More() || ip.FragmentOffset() != 0 {
				t.Fatal("took an IPv4 packet gVisor finds invalid or fragmented")
			}
			ipLen, ttl = int(ip.HeaderLength()), ip.TTL()
			src, dst = addrFrom(ip.SourceAddress()), addrFrom(ip.DestinationAddress())
			if len(p.ip) != int(ip.TotalLength()) {
				t.Fatalf("quoted %d bytes of a %d-byte packet", len(p.ip), ip.TotalLength())
			}
		case header.IPv6Version:
			ip := header.IPv6(b)
			if !ip.IsValid(len(b)) || ip.NextHeader() != uint8(header.UDPProtocolNumber) {
				t.Fatal("took an IPv6 packet gVisor finds invalid or not UDP")
			}
			ipLen, ttl = header.IPv6MinimumSize, ip.HopLimit()
			src, dst = addrFrom(ip.SourceAddress()), addrFrom(ip.DestinationAddress())
		default:
			t.Fatal("took a packet that is not IP")
		}
		u := header.UDP(b[ipLen:])
		if p.src != netip.AddrPortFrom(src, u.SourcePort()) || p.dst != netip.AddrPortFrom(dst, u.DestinationPort()) || p.ttl != ttl {
			t.Fatalf("read %s -> %s ttl %d, gVisor %s -> %s ttl %d", p.src, p.dst, p.ttl, src, dst, ttl)
		}
		if len(p.payload)+header.UDPMinimumSize != int(u.Length()) || !bytes.Equal(p.payload, b[ipLen+header.UDPMinimumSize:ipLen+int(u.Length())]) {
			t.Fatalf("payload of %d bytes for a UDP length of %d", len(p.payload), u.Length())
		}
		if src.IsLoopback() || src.IsMulticast() || dst.IsLoopback() || isBroadcast(src) {
			t.Fatalf("took a packet the stack would drop: %s -> %s", src, dst)
		}
	})
}

// TestUDPFragmentsTakeTheStack: a datagram that reaches the gateway in
// IPv4 fragments, which the mapper's way around the stack leaves alone,
// is reassembled by the stack and leaves whole.
func TestUDPFragmentsTakeTheStack(t *testing.T) {
	checkLeaks(t)
	out := &fakeOut{newPC: make(chan *fakePC, 4)}
	_, send := rawRig(t, out, Config{})
	src, dst := netip.AddrPortFrom(clientV4, 40000), netip.AddrPortFrom(serverV4, 9)
	payload := strings.Repeat("0123456789", 300)
	whole := udpProbe(t, src, dst, 64, payload)
	// Fragments of 1480 bytes of IP payload (a multiple of 8), each with
	// its own copy of the header.
	const fragPayload = 1480
	data := whole[header.IPv4MinimumSize:]
	for off := 0; off < len(data); off += fragPayload {
		end := min(off+fragPayload, len(data))
		frag := append(append([]byte(nil), whole[:header.IPv4MinimumSize]...), data[off:end]...)
		ip := header.IPv4(frag)
		flags := uint8(0)
		if end < len(data) {
			flags = header.IPv4FlagMoreFragments
		}
		ip.SetFlagsFragmentOffset(flags, uint16(off))
		ip.SetTotalLength(uint16(len(frag)))
		ip.SetID(0x4242)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		if _, ok := parseUDPPacket(frag); ok {
			t.Fatal("the way around the stack took a fragment")
		}
		send(frag)
	}
	var pc *fakePC
	select {
	case pc = <-out.newPC:
	case <-time.After(5 * time.Second):
		t.Fatal("no association opened")
	}
	select {
	case d := <-pc.sent:
		if d.data != payload {
			t.Fatalf("outbound got %d bytes, want the %d of the datagram", len(d.data), len(payload))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reassembled datagram did not leave")
	}
}

// withIPv4Options returns an IPv4 packet with four bytes of options
// (NOP, NOP, NOP, end of list) after the header: the stack's path, not
// the way around it.
func withIPv4Options(t *testing.T, pkt []byte) []byte {
	t.Helper()
	b := append(append(append([]byte(nil), pkt[:header.IPv4MinimumSize]...), 1, 1, 1, 0), pkt[header.IPv4MinimumSize:]...)
	ip := header.IPv4(b)
	ip.SetHeaderLength(header.IPv4MinimumSize + 4)
	ip.SetTotalLength(uint16(len(b)))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// TestUDPLengthBothWays: whichever way a datagram takes through the
// gateway (around the stack, or through it for a packet with IPv4
// options), a UDP length short of the packet cuts the payload to it, and
// one longer than the packet, or shorter than the header, drops it.
func TestUDPLengthBothWays(t *testing.T) {
	checkLeaks(t)
	for _, viaStack := range []bool{false, true} {
		t.Run(map[bool]string{false: "around the stack", true: "through the stack"}[viaStack], func(t *testing.T) {
			out := &fakeOut{newPC: make(chan *fakePC, 4)}
			_, send := rawRig(t, out, Config{})
			src, dst := netip.AddrPortFrom(clientV4, 40000), netip.AddrPortFrom(serverV4, 9)
			probe := func(payload string, udpLen int) []byte {
				p := udpProbe(t, src, dst, 64, payload)
				if udpLen >= 0 {
					header.UDP(p[header.IPv4MinimumSize:]).SetLength(uint16(udpLen))
				}
				if viaStack {
					p = withIPv4Options(t, p)
				}
				return p
			}
			send(probe("first", -1))
			var pc *fakePC
			select {
			case pc = <-out.newPC:
			case <-time.After(5 * time.Second):
				t.Fatal("no association opened")
			}
			next := func() string {
				t.Helper()
				select {
				case d := <-pc.sent:
					return d.data
				case <-time.After(5 * time.Second):
					t.Fatal("nothing left")
				}
				return ""
			}
			if got := next(); got != "first" {
				t.Fatalf("got %q, want %q", got, "first")
			}
			send(probe("tungate", header.UDPMinimumSize+4))
			if got := next(); got != "tung" {
				t.Errorf("UDP length short of the packet: got %q, want %q", got, "tung")
			}
			send(probe("too long", header.UDPMinimumSize+9))
			send(probe("too short", header.UDPMinimumSize-1))
			send(probe("last", -1))
			if got := next(); got != "last" {
				t.Errorf("after two bad lengths got %q, want %q (they should have been dropped)", got, "last")
			}
		})
	}
}
