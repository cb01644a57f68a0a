package udpbatch

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func listen(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	uc, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Skipf("no %s socket on %s: %v", network, addr, err)
	}
	t.Cleanup(func() { uc.Close() })
	return uc
}

func addrOf(uc *net.UDPConn) netip.AddrPort { return uc.LocalAddr().(*net.UDPAddr).AddrPort() }

// payload is datagram i of a test: its index, then filler.
func payload(i, size int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, size)
	if size >= 4 {
		copy(b, fmt.Sprintf("%04d", i))
	}
	return b
}

// TestWriteRead sends more than a batch with Writer and reads it with
// Reader: every datagram arrives whole and in order with its source, the
// first Read takes one datagram and the next ones whole batches (the
// sender is ahead), and a Read that finds the socket empty gives the extra
// buffers back.
func TestWriteRead(t *testing.T) {
	for _, tc := range []struct {
		name             string
		network, rx, tx  string
		dst              func(rx netip.AddrPort) netip.AddrPort
		wantSrc          func(tx netip.AddrPort) netip.AddrPort
		count, size      int
		wantCounts       []int
		withHead, useOOB bool
	}{
		{
			name: "ipv4", network: "udp4", rx: "127.0.0.1:0", tx: "127.0.0.1:0",
			count: 2*Size + 3, size: 1400, wantCounts: []int{1, Size, Size, 2},
		},
		{
			name: "ipv4 header and payload", network: "udp4", rx: "127.0.0.1:0", tx: "127.0.0.1:0",
			count: 5, size: 100, wantCounts: []int{1, 4}, withHead: true,
		},
		{
			name: "ipv6", network: "udp6", rx: "[::1]:0", tx: "[::1]:0",
			count: Size + 1, size: 1200, wantCounts: []int{1, Size},
		},
		{
			// An IPv4 destination on a dual-stack socket goes as its
			// mapped address; the IPv4 receiver sees the plain one.
			name: "dual-stack to ipv4", network: "udp", rx: "127.0.0.1:0", tx: "[::]:0",
			dst:   func(rx netip.AddrPort) netip.AddrPort { return rx },
			count: 3, size: 10, wantCounts: []int{1, 2},
		},
		{
			// And a dual-stack receiver sees an IPv4 sender mapped, as
			// net.UDPConn gives it.
			name: "ipv4 to dual-stack", network: "udp", rx: "[::]:0", tx: "127.0.0.1:0",
			dst: func(rx netip.AddrPort) netip.AddrPort {
				return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rx.Port())
			},
			wantSrc: func(tx netip.AddrPort) netip.AddrPort {
				return netip.AddrPortFrom(netip.AddrFrom16(tx.Addr().As16()), tx.Port())
			},
			count: 2, size: 10, wantCounts: []int{1, 1},
		},
		{
			name: "largest ipv4 datagram and an empty one", network: "udp4", rx: "127.0.0.1:0", tx: "127.0.0.1:0",
			count: 2, size: 65507, wantCounts: []int{1, 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rxc, txc := listen(t, tc.network, tc.rx), listen(t, tc.network, tc.tx)
			dst := addrOf(rxc)
			if tc.dst != nil {
				dst = tc.dst(dst)
			}
			src := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), addrOf(txc).Port())
			if addrOf(txc).Addr().Is6() && !addrOf(txc).Addr().IsUnspecified() {
				src = addrOf(txc)
			}
			if tc.wantSrc != nil {
				src = tc.wantSrc(addrOf(txc))
			}
			w, err := NewWriter(txc)
			if err != nil {
				t.Fatal(err)
			}
			var want [][]byte
			var ms []Message
			for i := range tc.count {
				size := tc.size
				if tc.size == 65507 && i == 1 {
					size = 0
				}
				p := payload(i, size)
				want = append(want, p)
				m := Message{Buf: p, Addr: dst}
				if tc.withHead && len(p) > 10 {
					m.Head, m.Buf = p[:10], p[10:]
				}
				ms = append(ms, m)
			}
			if n, err := w.Write(ms); n != len(ms) || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(ms))
			}
			if w.gsoMax != gsoMaxBytes {
				t.Errorf("GSO refused on loopback: limit %d", w.gsoMax)
			}
			r, err := NewReader(rxc)
			if err != nil {
				t.Fatal(err)
			}
			var counts []int
			var got [][]byte
			for len(got) < tc.count {
				rxc.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := r.Read(Size)
				if err != nil {
					t.Fatalf("Read after %d datagrams: %v", len(got), err)
				}
				counts = append(counts, n)
				for i := range n {
					b, from := r.Datagram(i)
					if from != src {
						t.Errorf("datagram %d from %v, want %v", len(got), from, src)
					}
					got = append(got, bytes.Clone(b))
				}
			}
			if fmt.Sprint(counts) != fmt.Sprint(tc.wantCounts) {
				t.Errorf("datagrams per Read = %v, want %v", counts, tc.wantCounts)
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Errorf("datagram %d: %d bytes %.8q, want %d bytes %.8q", i, len(got[i]), got[i], len(want[i]), want[i])
				}
			}
			if b, _ := r.Datagram(len(got)); b != nil {
				t.Errorf("Datagram past the last Read = %d bytes, want none", len(b))
			}
			// Nothing queued: the Read waits (here, until the deadline)
			// and holds only its own buffer meanwhile.
			rxc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if n, err := r.Read(Size); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("Read of an empty socket = %d, %v; want 0, deadline exceeded", n, err)
			}
			for i := 1; i < Size; i++ {
				if r.bufs[i] != nil {
					t.Errorf("slot %d still holds a buffer after the socket went idle", i)
				}
			}
		})
	}
}

// TestWriteStopsAtBadAddress: the messages before one the socket cannot
// take are sent, and Write says which failed.
func TestWriteStopsAtBadAddress(t *testing.T) {
	rxc, txc := listen(t, "udp4", "127.0.0.1:0"), listen(t, "udp4", "127.0.0.1:0")
	w, _ := NewWriter(txc)
	ms := []Message{
		{Buf: []byte("a"), Addr: addrOf(rxc)},
		{Buf: []byte("b"), Addr: addrOf(rxc)},
		{Buf: []byte("c"), Addr: netip.MustParseAddrPort("[2001:db8::1]:9")},
		{Buf: []byte("d"), Addr: addrOf(rxc)},
	}
	n, err := w.Write(ms)
	var ae *net.AddrError
	if n != 2 || !errors.As(err, &ae) {
		t.Fatalf("Write = %d, %v; want 2 and an address error", n, err)
	}
	r, _ := NewReader(rxc)
	var got []string
	for len(got) < 2 {
		rxc.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := r.Read(Size)
		if err != nil {
			t.Fatal(err)
		}
		for i := range k {
			b, _ := r.Datagram(i)
			got = append(got, string(b))
		}
	}
	if fmt.Sprint(got) != "[a b]" {
		t.Errorf("received %v, want [a b]", got)
	}
	if n, err := w.Write(ms[n+1:]); n != 1 || err != nil {
		t.Errorf("Write of the rest = %d, %v; want 1, nil", n, err)
	}
}

// TestWriteControl: a message's control data goes with it (here its TTL).
func TestWriteControl(t *testing.T) {
	rxc, txc := listen(t, "udp4", "127.0.0.1:0"), listen(t, "udp4", "127.0.0.1:0")
	rc, _ := rxc.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTTL, 1) })
	if serr != nil {
		t.Fatal(serr)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TTL
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = 7
	w, _ := NewWriter(txc)
	ms := []Message{{Buf: []byte("x"), Addr: addrOf(rxc)}, {Buf: []byte("y"), OOB: oob, Addr: addrOf(rxc)}}
	if n, err := w.Write(ms); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	for i, want := range []string{"the default", "7"} {
		buf, rxoob := make([]byte, 16), make([]byte, 64)
		rxc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, oobn, _, _, err := rxc.ReadMsgUDPAddrPort(buf, rxoob)
		if err != nil {
			t.Fatal(err)
		}
		cms, err := unix.ParseSocketControlMessage(rxoob[:oobn])
		if err != nil || len(cms) != 1 || len(cms[0].Data) < 4 {
			t.Fatalf("datagram %d: control messages %v, %v", i, cms, err)
		}
		ttl := int(*(*int32)(unsafe.Pointer(&cms[0].Data[0])))
		if (i == 0 && ttl == 7) || (i == 1 && ttl != 7) {
			t.Errorf("datagram %d arrived with TTL %d, want %s", i, ttl, want)
		}
	}
}

// TestReadErrors: the socket's errors come back as net.UDPConn's would:
// a pending ICMP error as its errno, a closed socket as net.ErrClosed.
func TestReadErrors(t *testing.T) {
	uc := listen(t, "udp4", "127.0.0.1:0")
	rc, _ := uc.SyscallConn()
	rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1) })
	closed := listen(t, "udp4", "127.0.0.1:0")
	port := addrOf(closed)
	closed.Close()
	w, _ := NewWriter(uc)
	if n, err := w.Write([]Message{{Buf: []byte("x"), Addr: port}}); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	r, _ := NewReader(uc)
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := r.Read(Size); n != 0 || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Read after a send to a closed port = %d, %v; want 0, connection refused", n, err)
	}
	uc.Close()
	if n, err := r.Read(Size); n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read of a closed socket = %d, %v; want 0, net.ErrClosed", n, err)
	}
	for i, b := range r.bufs {
		if b != nil {
			t.Errorf("slot %d holds a buffer after a failed Read", i)
		}
	}
	if n, err := w.Write([]Message{{Buf: []byte("x"), Addr: port}}); n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write on a closed socket = %d, %v; want 0, net.ErrClosed", n, err)
	}
}

// TestGSORun: which consecutive messages go as one GSO send.
func TestGSORun(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.0.1:9")
	b := netip.MustParseAddrPort("198.18.0.2:9")
	m := func(size int, to netip.AddrPort) Message { return Message{Buf: make([]byte, size), Addr: to} }
	big := make([]Message, Size)
	for i := range big {
		big[i] = m(20000, a)
	}
	for _, tc := range []struct {
		name string
		ms   []Message
		max  int
		want int
	}{
		{"alone", []Message{m(100, a)}, gsoMaxBytes, 1},
		{"equal sizes", []Message{m(100, a), m(100, a), m(100, a)}, gsoMaxBytes, 3},
		{"a shorter last one ends the run", []Message{m(100, a), m(100, a), m(50, a), m(100, a)}, gsoMaxBytes, 3},
		{"a longer one does not join", []Message{m(100, a), m(200, a)}, gsoMaxBytes, 1},
		{"another destination", []Message{m(100, a), m(100, a), m(100, b)}, gsoMaxBytes, 2},
		{"head and payload count together", []Message{m(100, a), {Head: make([]byte, 10), Buf: make([]byte, 90), Addr: a}}, gsoMaxBytes, 2},
		{"control messages go alone", []Message{m(100, a), {Buf: make([]byte, 100), OOB: []byte{1}, Addr: a}}, gsoMaxBytes, 1},
		{"empty datagrams go alone", []Message{m(0, a), m(0, a)}, gsoMaxBytes, 1},
		{"the whole within one IP packet", big, gsoMaxBytes, 3},
		{"segments above the path's limit go alone", []Message{m(2000, a), m(2000, a)}, 1999, 1},
		{"no GSO on the socket", []Message{m(100, a), m(100, a)}, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &Writer{gsoMax: tc.max}
			if got := w.gsoRun(tc.ms); got != tc.want {
				t.Errorf("gsoRun = %d, want %d", got, tc.want)
			}
			// A destination GSOFor refuses gets one datagram per send.
			w.GSOFor = func(to netip.AddrPort) bool { return to != a }
			if got := w.gsoRun(tc.ms); got != 1 && tc.ms[0].Addr == a {
				t.Errorf("gsoRun with GSO refused for %v = %d, want 1", a, got)
			}
		})
	}
}

// TestGSOFallback: a GSO send the path refuses is sent again without GSO
// (for that size, or at all), and every datagram arrives.
func TestGSOFallback(t *testing.T) {
	for _, tc := range []struct {
		errno   syscall.Errno
		size    int
		wantMax int
	}{
		{unix.EINVAL, 1000, 999},
		{unix.EIO, 1000, 0},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			rxc, txc := listen(t, "udp4", "127.0.0.1:0"), listen(t, "udp4", "127.0.0.1:0")
			w, _ := NewWriter(txc)
			refused := 0
			w.send = func(fd uintptr, hs []unix.Mmsghdr) (int, error) {
				if hs[0].Hdr.Controllen > 0 {
					refused++
					return 0, tc.errno
				}
				return sendmmsg(fd, hs)
			}
			var ms []Message
			for i := range 4 {
				ms = append(ms, Message{Buf: payload(i, tc.size), Addr: addrOf(rxc)})
			}
			if n, err := w.Write(ms); n != 4 || err != nil {
				t.Fatalf("Write = %d, %v; want 4, nil", n, err)
			}
			if refused != 1 || w.gsoMax != tc.wantMax {
				t.Errorf("GSO refused %d times, limit now %d; want 1, %d", refused, w.gsoMax, tc.wantMax)
			}
			buf := make([]byte, 2048)
			for i := range 4 {
				rxc.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _, err := rxc.ReadFromUDPAddrPort(buf)
				if err != nil || !bytes.Equal(buf[:n], payload(i, tc.size)) {
					t.Fatalf("datagram %d: %d bytes, %v", i, n, err)
				}
			}
			// Another errno is the datagram's own: returned, not retried.
			w.gsoMax = gsoMaxBytes
			w.send = func(fd uintptr, hs []unix.Mmsghdr) (int, error) { return 0, unix.ENETUNREACH }
			if n, err := w.Write(ms); n != 0 || !errors.Is(err, syscall.ENETUNREACH) {
				t.Errorf("Write = %d, %v; want 0, network unreachable", n, err)
			}
		})
	}
}

// TestGRO: on a socket with UDP GRO, a GSO send arrives as one message,
// and Read hands out its datagrams as they were sent, limit at a time;
// datagrams of another size, or another sender, stay apart.
func TestGRO(t *testing.T) {
	rxc, txc := listen(t, "udp4", "127.0.0.1:0"), listen(t, "udp4", "127.0.0.1:0")
	if !EnableGRO(rxc) {
		t.Skip("the kernel has no UDP_GRO")
	}
	other := listen(t, "udp4", "127.0.0.1:0")
	w, _ := NewWriter(txc)
	var ms []Message
	var want [][]byte
	for i := range 7 {
		size := 1400
		if i == 6 {
			size = 300 // a shorter last one: still the same GSO send
		}
		want = append(want, payload(i, size))
		ms = append(ms, Message{Buf: want[i], Addr: addrOf(rxc)})
	}
	if n, err := w.Write(ms); n != len(ms) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	ow, _ := NewWriter(other)
	if _, err := ow.Write([]Message{{Buf: []byte("other"), Addr: addrOf(rxc)}}); err != nil {
		t.Fatal(err)
	}
	want = append(want, []byte("other"))

	r, _ := NewReader(rxc)
	var got [][]byte
	var froms []netip.AddrPort
	var counts []int
	for len(got) < len(want) {
		rxc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := r.Read(3)
		if err != nil {
			t.Fatalf("Read after %d datagrams: %v", len(got), err)
		}
		counts = append(counts, n)
		for i := range n {
			b, from := r.Datagram(i)
			got = append(got, bytes.Clone(b))
			froms = append(froms, from)
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("datagram %d: %d bytes %.8q, want %d bytes %.8q", i, len(got[i]), got[i], len(want[i]), want[i])
		}
		wantFrom := addrOf(txc)
		if i == len(want)-1 {
			wantFrom = addrOf(other)
		}
		if froms[i] != wantFrom {
			t.Errorf("datagram %d from %v, want %v", i, froms[i], wantFrom)
		}
	}
	// One message of 7 handed out 3, 3, 1; then the other sender's.
	if fmt.Sprint(counts) != "[3 3 1 1]" {
		t.Errorf("datagrams per Read = %v, want [3 3 1 1] (the GSO send as one message)", counts)
	}
}

// TestZoneCache: zones name interfaces as net.UDPConn does, both ways,
// and a name that is no interface is an error.
func TestZoneCache(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no lo: %v", err)
	}
	var c zoneCache
	for range 2 { // the second time from the cache
		if got := c.name(uint32(lo.Index)); got != "lo" {
			t.Errorf("name(%d) = %q, want lo", lo.Index, got)
		}
		if idx, err := c.index("lo"); err != nil || idx != uint32(lo.Index) {
			t.Errorf("index(lo) = %d, %v; want %d", idx, err, lo.Index)
		}
	}
	if idx, err := c.index("7"); err != nil || idx != 7 {
		t.Errorf("index(7) = %d, %v; want 7 (a numeric zone)", idx, err)
	}
	if _, err := c.index("no-such-interface"); err == nil {
		t.Error("index of an unknown interface succeeded")
	}
	if got := c.name(1 << 30); got != "1073741824" {
		t.Errorf("name of an unknown index = %q, want the number", got)
	}
}
