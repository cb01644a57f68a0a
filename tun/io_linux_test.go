package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// packet is an IP packet the test read from the device.
type packet struct {
	src, dst netip.Addr
	proto    int
	l4       []byte // transport header and payload
	raw      []byte
}

func parsePacket(b []byte) (packet, bool) {
	if len(b) < 20 {
		return packet{}, false
	}
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0xf) * 4
		tot := int(binary.BigEndian.Uint16(b[2:]))
		if tot > len(b) || ihl < 20 || tot < ihl {
			return packet{}, false
		}
		return packet{
			src:   netip.AddrFrom4([4]byte(b[12:16])),
			dst:   netip.AddrFrom4([4]byte(b[16:20])),
			proto: int(b[9]),
			l4:    b[ihl:tot],
			raw:   b[:tot],
		}, true
	case 6:
		if len(b) < 40 {
			return packet{}, false
		}
		plen := int(binary.BigEndian.Uint16(b[4:]))
		if 40+plen > len(b) {
			return packet{}, false
		}
		return packet{
			src:   netip.AddrFrom16([16]byte(b[8:24])),
			dst:   netip.AddrFrom16([16]byte(b[24:40])),
			proto: int(b[6]),
			l4:    b[40 : 40+plen],
			raw:   b[:40+plen],
		}, true
	}
	return packet{}, false
}

func sum16(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func pseudoSum(src, dst netip.Addr, proto, length int) uint32 {
	s := sum16(src.AsSlice(), 0)
	s = sum16(dst.AsSlice(), s)
	return s + uint32(proto) + uint32(length)
}

// checksumsOK verifies the IPv4 header checksum and the TCP/UDP checksum.
func (p packet) checksumsOK() bool {
	if p.src.Is4() && fold(sum16(p.raw[:int(p.raw[0]&0xf)*4], 0)) != 0 {
		return false
	}
	return fold(sum16(p.l4, pseudoSum(p.src, p.dst, p.proto, len(p.l4)))) == 0
}

// udpPacket builds an IPv4 or IPv6 UDP packet with correct checksums.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	c := fold(sum16(udp, pseudoSum(src.Addr(), dst.Addr(), unix.IPPROTO_UDP, len(udp))))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	if src.Addr().Is4() {
		ip := make([]byte, 20, 20+len(udp))
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		ip[8] = 64
		ip[9] = unix.IPPROTO_UDP
		copy(ip[12:], src.Addr().AsSlice())
		copy(ip[16:], dst.Addr().AsSlice())
		binary.BigEndian.PutUint16(ip[10:], fold(sum16(ip, 0)))
		return append(ip, udp...)
	}
	ip := make([]byte, 40, 40+len(udp))
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	ip[6] = unix.IPPROTO_UDP
	ip[7] = 64
	copy(ip[8:], src.Addr().AsSlice())
	copy(ip[24:], dst.Addr().AsSlice())
	return append(ip, udp...)
}

// startReader reads the device until it is closed, passing on copies of
// the packets.
func startReader(t *testing.T, d *Device) <-chan packet {
	ch, _ := startReaderStats(d)
	return ch
}

// startReaderStats is startReader that also reports the most packets one
// Read returned (valid once the channel is closed).
func startReaderStats(d *Device) (<-chan packet, *int) {
	ch := make(chan packet, 4096)
	most := new(int)
	go func() {
		defer close(ch)
		n := d.BatchSize()
		bufs := make([][]byte, n)
		sizes := make([]int, n)
		for i := range bufs {
			bufs[i] = make([]byte, d.Headroom()+65535)
		}
		for {
			k, err := d.Read(bufs, sizes, d.Headroom())
			*most = max(*most, k)
			for i := range k {
				b := bytes.Clone(bufs[i][d.Headroom() : d.Headroom()+sizes[i]])
				if p, ok := parsePacket(b); ok {
					ch <- p
				}
			}
			if err != nil {
				if errors.Is(err, wgtun.ErrTooManySegments) {
					continue
				}
				return
			}
		}
	}()
	return ch, most
}

// waitPacket returns the first packet from ch that match accepts.
func waitPacket(t *testing.T, ch <-chan packet, what string, match func(packet) bool) packet {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case p, ok := <-ch:
			if !ok {
				t.Fatalf("device closed while waiting for %s", what)
			}
			if match(p) {
				return p
			}
		case <-timeout:
			t.Fatalf("no %s read from the device within 5s", what)
		}
	}
}

func udpTo(dst netip.AddrPort) func(packet) bool {
	return func(p packet) bool {
		return p.proto == unix.IPPROTO_UDP && p.dst == dst.Addr() && len(p.l4) >= 8 &&
			binary.BigEndian.Uint16(p.l4[2:]) == dst.Port()
	}
}

// TestReadWrite checks that packets the kernel routes into the device come
// out of Device.Read (with valid checksums, TSO/USO super-packets split),
// and that packets given to Device.Write reach sockets in the namespace,
// with and without offloads.
func TestReadWrite(t *testing.T) {
	requireRoot(t)
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) {
			ns := newNetns(t)
			defer enterNetns(t, ns)()
			d, err := Open(Config{Name: "tgt0", FD: -1, DisableOffload: !offload,
				Addrs: pfx("198.18.0.1/30", "2001:db8:1::1/64")})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			t.Logf("offloads: %s", d.Offloads())
			ipn(t, ns, "route", "add", "198.18.9.0/24", "dev", "tgt0")
			ipn(t, ns, "-6", "route", "add", "2001:db8:9::/48", "dev", "tgt0")
			ch, most := startReaderStats(d)

			for _, fam := range []struct {
				local, remote netip.Addr
				net           string
			}{
				{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.9.9"), "udp4"},
				{netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:9::9"), "udp6"},
			} {
				// The socket is made on this (locked) thread: in ns.
				sock, err := net.ListenUDP(fam.net, net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.local, 0)))
				if err != nil {
					t.Fatal(err)
				}
				defer sock.Close()
				local := sock.LocalAddr().(*net.UDPAddr).AddrPort()
				remote := netip.AddrPortFrom(fam.remote, 5000)

				// Kernel -> device.
				if _, err := sock.WriteToUDPAddrPort([]byte("hello"), remote); err != nil {
					t.Fatal(err)
				}
				p := waitPacket(t, ch, "UDP to "+remote.String(), udpTo(remote))
				if p.src != fam.local || string(p.l4[8:]) != "hello" || !p.checksumsOK() {
					t.Errorf("read %v -> %v payload %q checksums ok %v", p.src, p.dst, p.l4[8:], p.checksumsOK())
				}

				// Device -> kernel, one packet.
				pkt := udpPacket(remote, local, []byte("world"))
				buf := make([]byte, d.Headroom()+len(pkt))
				copy(buf[d.Headroom():], pkt)
				if _, err := d.Write([][]byte{buf}, d.Headroom()); err != nil {
					t.Fatalf("Write: %v", err)
				}
				sock.SetReadDeadline(time.Now().Add(5 * time.Second))
				rb := make([]byte, 65536)
				n, from, err := sock.ReadFromUDPAddrPort(rb)
				if err != nil || string(rb[:n]) != "world" || from != remote {
					t.Fatalf("socket got %q from %v, %v; want \"world\" from %v", rb[:n], from, err, remote)
				}

				// Device -> kernel, a batch of one flow (coalesced with GRO
				// when offloads are on).
				var batch [][]byte
				var want []string
				for i := range 8 {
					payload := bytes.Repeat([]byte{byte('a' + i)}, 1000)
					want = append(want, string(payload))
					pkt := udpPacket(remote, local, payload)
					b := make([]byte, d.Headroom()+len(pkt), d.Headroom()+65535)
					copy(b[d.Headroom():], pkt)
					batch = append(batch, b)
				}
				for len(batch) > 0 {
					k := min(len(batch), d.BatchSize())
					if _, err := d.Write(batch[:k], d.Headroom()); err != nil {
						t.Fatalf("Write batch: %v", err)
					}
					batch = batch[k:]
				}
				for i, w := range want {
					n, _, err := sock.ReadFromUDPAddrPort(rb)
					if err != nil || string(rb[:n]) != w {
						t.Fatalf("batch datagram %d: %d bytes %q..., %v", i, n, rb[:min(n, 4)], err)
					}
				}

				// A UDP GSO send: one 1400-byte write in 500-byte segments
				// reaches the device as one USO super-packet (split by Read)
				// or as three packets; either way three packets come out.
				rc, _ := sock.SyscallConn()
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, 500) })
				if serr != nil {
					t.Logf("no UDP_SEGMENT (%v): skipping the GSO check", serr)
				} else {
					gso := netip.AddrPortFrom(fam.remote, 5001)
					big := make([]byte, 1400)
					for i := range big {
						big[i] = byte(i)
					}
					if _, err := sock.WriteToUDPAddrPort(big, gso); err != nil {
						t.Fatal(err)
					}
					var got []byte
					for i, size := range []int{500, 500, 400} {
						p := waitPacket(t, ch, fmt.Sprintf("GSO segment %d", i), udpTo(gso))
						if len(p.l4) != 8+size || !p.checksumsOK() {
							t.Errorf("GSO segment %d: %d payload bytes, checksums ok %v; want %d", i, len(p.l4)-8, p.checksumsOK(), size)
						}
						got = append(got, p.l4[8:]...)
					}
					if !bytes.Equal(got, big) {
						t.Error("GSO segments do not add up to what was sent")
					}
				}

				// TCP: a SYN comes out with a complete checksum. The socket
				// is made here, on the thread inside ns, and connects
				// without blocking.
				tcpDst := netip.AddrPortFrom(fam.remote, 80)
				var af int
				var sa unix.Sockaddr
				if fam.remote.Is4() {
					af, sa = unix.AF_INET, &unix.SockaddrInet4{Port: 80, Addr: fam.remote.As4()}
				} else {
					af, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: 80, Addr: fam.remote.As16()}
				}
				fd, err := unix.Socket(af, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(fd)
				if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
					t.Fatalf("connect %v: %v", tcpDst, err)
				}
				syn := waitPacket(t, ch, "TCP SYN to "+tcpDst.String(), func(p packet) bool {
					return p.proto == unix.IPPROTO_TCP && p.dst == tcpDst.Addr() && len(p.l4) >= 20 &&
						binary.BigEndian.Uint16(p.l4[2:]) == 80 && p.l4[13]&0x02 != 0
				})
				if !syn.checksumsOK() {
					t.Error("TCP SYN checksum is not valid")
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			for range ch {
				// The reader ends when the device is closed.
			}
			t.Logf("at most %d packets per Read", *most)
			if offload && strings.Contains(d.Offloads(), "uso") && *most < 3 {
				t.Errorf("with USO the GSO send should come out of one Read as 3 packets; at most %d per Read", *most)
			}
		})
	}
}

// TestReadVnetIdle: ReadVnetIdle calls idle only when no frame is waiting,
// before it waits, and returns os.ErrClosed once the device is closed.
func TestReadVnetIdle(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	defer enterNetns(t, ns)()
	d, err := Open(Config{Name: "tgt0", FD: -1, Addrs: pfx("198.18.0.1/30")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.VnetHdr() {
		t.Skipf("no virtio-net headers on this device (%s)", d.Offloads())
	}
	ipn(t, ns, "route", "add", "198.18.9.0/24", "dev", "tgt0")
	sock, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	remote := netip.MustParseAddrPort("198.18.9.9:5000")

	type result struct {
		frame []byte
		idles int
		err   error
	}
	read := func() chan result {
		ch := make(chan result, 1)
		go func() {
			frame := make([]byte, MaxHeadroom+65535)
			idles := 0
			n, err := d.ReadVnetIdle(frame[:10], frame[10:], func() { idles++ })
			ch <- result{frame[:n], idles, err}
		}()
		return ch
	}
	get := func(ch chan result) result {
		t.Helper()
		select {
		case r := <-ch:
			return r
		case <-time.After(5 * time.Second):
			t.Fatal("ReadVnetIdle did not return")
		}
		return result{}
	}
	ours := func(r result) bool {
		p, ok := parsePacket(r.frame[min(len(r.frame), 10):])
		return ok && p.proto == unix.IPPROTO_UDP && p.dst == remote.Addr()
	}

	// Three datagrams queued before the reads: each read finds one
	// waiting and does not call idle.
	for i := range 3 {
		if _, err := sock.WriteToUDPAddrPort([]byte{byte(i)}, remote); err != nil {
			t.Fatal(err)
		}
	}
	for got := 0; got < 3; {
		r := get(read())
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.idles != 0 {
			t.Fatalf("idle called %d times with frames waiting", r.idles)
		}
		if ours(r) {
			got++
		}
	}
	// Nothing waiting: idle before the wait, then the next frame.
	ch := read()
	time.Sleep(20 * time.Millisecond)
	if _, err := sock.WriteToUDPAddrPort([]byte("late"), remote); err != nil {
		t.Fatal(err)
	}
	idles := 0
	for tries := 0; ; tries++ {
		r := get(ch)
		if r.err != nil {
			t.Fatal(r.err)
		}
		idles += r.idles // another packet of the kernel's may come first
		if ours(r) {
			if idles == 0 {
				t.Error("read that had to wait did not call idle")
			}
			break
		}
		if tries == 10 {
			t.Fatal("the datagram did not come out")
		}
		ch = read()
	}
	// Closed under a waiting read.
	ch = read()
	time.Sleep(20 * time.Millisecond)
	d.Close()
	if r := get(ch); !errors.Is(r.err, os.ErrClosed) {
		t.Errorf("ReadVnetIdle on a closed device: %v, want os.ErrClosed", r.err)
	}
}
