package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"tungate/internal/engine"
	"tungate/internal/leaktest"
	"tungate/socks"
)

// checkLeaks fails t if the test leaves goroutines running.
func checkLeaks(t *testing.T) { leaktest.Check(t) }

var (
	clientV4 = netip.MustParseAddr("198.18.0.2")
	clientV6 = netip.MustParseAddr("2001:db8::2")
	serverV4 = netip.MustParseAddr("198.18.1.2")
	serverV6 = netip.MustParseAddr("2001:db8:1::2")
	otherV4  = netip.MustParseAddr("198.18.9.9")
)

// fakeOut is an Outbound that records destinations: TCP goes to a local
// echo server whatever the destination, or fails as told; UDP goes to an
// in-memory endpoint the test drives.
type fakeOut struct {
	echo    string
	sndBuf  int // when set, the SO_SNDBUF of the TCP connections dialed
	dialErr error
	udpErr  error
	delay   time.Duration
	// try, when set, makes the UDP endpoints able to send without
	// blocking (engine.MetaTryWriter), refusing while try.block is set.
	try *tryState
	// batch, when set (with try), makes them able to send batches too
	// (engine.MetaBatchTryWriter).
	batch *batchState

	mu    sync.Mutex
	dials []socks.Addr
	pcs   []*fakePC
	newPC chan *fakePC
}

func (f *fakeOut) Upstream() bool { return false }

func (f *fakeOut) DialTCP(ctx context.Context, dst socks.Addr) (net.Conn, error) {
	f.mu.Lock()
	f.dials = append(f.dials, dst)
	f.mu.Unlock()
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.dialErr != nil {
		return nil, f.dialErr
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", f.echo)
	if err == nil && f.sndBuf > 0 {
		c.(*net.TCPConn).SetWriteBuffer(f.sndBuf)
	}
	return c, err
}

func (f *fakeOut) ListenUDP(context.Context) (socks.PacketConn, error) {
	if f.udpErr != nil {
		return nil, f.udpErr
	}
	pc := &fakePC{sent: make(chan fakeDatagram, 64), recv: make(chan fakeDatagram, 16), done: make(chan struct{})}
	f.mu.Lock()
	f.pcs = append(f.pcs, pc)
	f.mu.Unlock()
	if f.newPC != nil {
		f.newPC <- pc
	}
	if f.batch != nil {
		return &fakeBatchPC{fakeTryPC: &fakeTryPC{fakePC: pc, st: f.try}, st: f.batch}, nil
	}
	if f.try != nil {
		return &fakeTryPC{fakePC: pc, st: f.try}, nil
	}
	return pc, nil
}

// tryState steers the fakeTryPCs of a fakeOut.
type tryState struct {
	block  atomic.Bool  // say the socket is full
	pushed atomic.Int32 // datagrams sent through TryWriteToMeta
}

// fakeTryPC is a fakePC that can also send without blocking.
type fakeTryPC struct {
	*fakePC
	st *tryState
}

func (p *fakeTryPC) TryWriteToMeta(b []byte, a socks.Addr, meta engine.Meta) (int, bool, error) {
	if p.st.block.Load() {
		return 0, false, nil
	}
	// Counted before the datagram is handed over, so that a test that
	// has received it also sees it counted.
	p.st.pushed.Add(1)
	select {
	case p.sent <- fakeDatagram{data: string(b), addr: a, ttl: meta.TTL, df: meta.DontFragment}:
	default:
		p.st.pushed.Add(-1)
		return 0, false, nil // full: what would block
	}
	return len(b), true, nil
}

func (f *fakeOut) Bind(context.Context, socks.Addr) (socks.BindListener, error) {
	return nil, errors.New("not supported")
}

type fakeDatagram struct {
	data string
	addr socks.Addr
	ttl  int
	df   bool
	err  error // returned by ReadFrom instead of a datagram
}

type fakePC struct {
	sent, recv chan fakeDatagram
	mu         sync.Mutex
	// writeErr, when set, decides the error of every write.
	writeErr func([]byte, socks.Addr, engine.Meta) error
	once     sync.Once
	done     chan struct{}
}

func (p *fakePC) ReadFrom(b []byte) (int, socks.Addr, error) {
	select {
	case d := <-p.recv:
		if d.err != nil {
			return 0, socks.Addr{}, d.err
		}
		return copy(b, d.data), d.addr, nil
	case <-p.done:
		return 0, socks.Addr{}, net.ErrClosed
	}
}

func (p *fakePC) WriteTo(b []byte, a socks.Addr) (int, error) {
	return p.WriteToMeta(b, a, engine.Meta{})
}

func (p *fakePC) WriteToMeta(b []byte, a socks.Addr, meta engine.Meta) (int, error) {
	p.mu.Lock()
	werr := p.writeErr
	p.mu.Unlock()
	if werr != nil {
		if err := werr(b, a, meta); err != nil {
			return 0, err
		}
	}
	select {
	case p.sent <- fakeDatagram{data: string(b), addr: a, ttl: meta.TTL, df: meta.DontFragment}:
	case <-p.done:
		return 0, net.ErrClosed
	}
	return len(b), nil
}

func (p *fakePC) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

// rig is a gateway Stack with a client gVisor stack on the other end of
// an in-memory link.
type rig struct {
	gw     *Stack
	eng    *engine.Engine
	out    *fakeOut
	client *stack.Stack
}

func newRig(t testing.TB, out *fakeOut) *rig {
	t.Helper()
	gwDev, clientDev := newPipe(1500)
	return newRigOn(t, out, gwDev, clientDev)
}

func newRigOn(t testing.TB, out *fakeOut, gwDev, clientDev *pipeDevice) *rig {
	t.Helper()
	eng := engine.New(out, nil, nil)
	gw, err := New(gwDev, eng, Config{})
	if err != nil {
		t.Fatal(err)
	}
	client := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	cl := newLink(clientDev)
	if err := client.CreateNIC(1, cl); err != nil {
		t.Fatal(err)
	}
	for _, p := range []netip.Prefix{netip.PrefixFrom(clientV4, 15), netip.PrefixFrom(clientV6, 32)} {
		proto := ipv4.ProtocolNumber
		if p.Addr().Is6() {
			proto = ipv6.ProtocolNumber
		}
		err := client.AddProtocolAddress(1, tcpip.ProtocolAddress{
			Protocol:          proto,
			AddressWithPrefix: tcpip.AddrFromSlice(p.Addr().AsSlice()).WithPrefix(),
		}, stack.AddressProperties{})
		if err != nil {
			t.Fatal(err)
		}
	}
	client.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})
	cl.start()
	t.Cleanup(func() {
		if err := gw.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		clientDev.Close()
		cl.Wait()
		client.Close()
		client.Wait()
	})
	return &rig{gw: gw, eng: eng, out: out, client: client}
}

// dialTCP connects the rig's client stack to dst:port through the
// gateway, within 5 seconds.
func (r *rig) dialTCP(t testing.TB, dst netip.Addr, port uint16) *gonet.TCPConn {
	t.Helper()
	fa, proto := fullAddr(dst, port)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, r.client, fa, proto)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func fullAddr(ip netip.Addr, port uint16) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := ipv4.ProtocolNumber
	if ip.Is6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(ip.AsSlice()), Port: port}, proto
}

func echoServer(t *testing.T) string {
	t.Helper()
	return loopbackServer(t, func(c net.Conn) { io.Copy(c, c) })
}

// loopbackServer listens on loopback and runs serve for each connection,
// on a goroutine of its own, closing the connection after; the test's
// cleanup stops it and waits for them all. It returns the address.
func loopbackServer(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); serve(c) }()
		}
	}()
	return l.Addr().String()
}

func TestTCPThroughStack(t *testing.T) {
	checkLeaks(t)
	r := newRig(t, &fakeOut{echo: echoServer(t)})
	for _, dst := range []netip.Addr{serverV4, serverV6} {
		t.Run(dst.String(), func(t *testing.T) {
			base := r.eng.Registry().Metrics()
			c := r.dialTCP(t, dst, 80)
			defer c.Close()
			msg := strings.Repeat("through the netstack ", 5000) // ~100 KB: many segments
			go c.Write([]byte(msg))
			got := make([]byte, len(msg))
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
				t.Fatalf("echo: %v (%d bytes)", err, len(got))
			}
			waitCounts(t, r.eng, base.BytesUp+uint64(len(msg)), base.BytesDown+uint64(len(msg)))
			flows, _, _ := r.eng.Registry().List(0, 10)
			if len(flows) != 1 {
				t.Fatalf("%d flows, want 1", len(flows))
			}
			f := flows[0]
			src := netip.AddrPortFrom(clientV4, c.LocalAddr().(*net.TCPAddr).AddrPort().Port())
			if dst.Is6() {
				src = netip.AddrPortFrom(clientV6, src.Port())
			}
			if f.Flags != engine.FlagTUN || f.Dst != socks.AddrFromAddrPort(netip.AddrPortFrom(dst, 80)) || f.Src != socks.AddrFromAddrPort(src) {
				t.Errorf("flow %+v", f)
			}
			if f.BytesUp != uint64(len(msg)) || f.BytesDown != uint64(len(msg)) {
				t.Errorf("flow bytes up %d down %d, want %d", f.BytesUp, f.BytesDown, len(msg))
			}
			c.Close()
			for deadline := time.Now().Add(5 * time.Second); r.eng.Registry().Metrics().Concurrent != 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("flow did not close")
				}
			}
		})
	}
}

// TestTCPSynHeldUntilDial: the handshake completes only after the dial;
// a refused dial refuses the client's connect, without it ever opening.
func TestTCPSynHeldUntilDial(t *testing.T) {
	checkLeaks(t)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	r := newRig(t, &fakeOut{dialErr: refused, delay: 300 * time.Millisecond})
	fa, proto := fullAddr(serverV4, 81)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := gonet.DialContextTCP(ctx, r.client, fa, proto)
	if err == nil {
		t.Fatal("connect succeeded; want refused")
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Fatalf("connect: %v; want connection refused", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Fatalf("connect failed after %v, before the dial ended: the SYN was not held", el)
	}
	if m := r.eng.Registry().Metrics(); m.DialFailures != 1 || m.Concurrent != 0 {
		t.Errorf("metrics %+v", m)
	}
}

func TestUDPFullCone(t *testing.T) {
	checkLeaks(t)
	out := &fakeOut{newPC: make(chan *fakePC, 4)}
	r := newRig(t, out)
	la, proto := fullAddr(clientV4, 5000)
	c, err := gonet.DialUDP(r.client, &la, nil, proto)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peerA := netip.AddrPortFrom(serverV4, 53)
	peerB := netip.AddrPortFrom(otherV4, 7777)
	if _, err := c.WriteTo([]byte("query"), net.UDPAddrFromAddrPort(peerA)); err != nil {
		t.Fatal(err)
	}
	var pc *fakePC
	select {
	case pc = <-out.newPC:
	case <-time.After(5 * time.Second):
		t.Fatal("no association opened")
	}
	if d := <-pc.sent; d.data != "query" || d.addr != socks.AddrFromAddrPort(peerA) {
		t.Fatalf("outbound got %+v", d)
	}
	read := func(want string, from netip.AddrPort) {
		t.Helper()
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, a, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.(*net.UDPAddr).AddrPort(); string(buf[:n]) != want || got != from {
			t.Fatalf("client got %q from %v, want %q from %v", buf[:n], got, want, from)
		}
	}
	pc.recv <- fakeDatagram{data: "answer", addr: socks.AddrFromAddrPort(peerA)}
	read("answer", peerA)
	// B never heard from the client, but its datagram comes through.
	pc.recv <- fakeDatagram{data: "hello from B", addr: socks.AddrFromAddrPort(peerB)}
	read("hello from B", peerB)
	// Another destination uses the same association.
	c.WriteTo([]byte("to B"), net.UDPAddrFromAddrPort(peerB))
	if d := <-pc.sent; d.data != "to B" || d.addr != socks.AddrFromAddrPort(peerB) {
		t.Fatalf("outbound got %+v", d)
	}
	var n atomic.Int32
	out.mu.Lock()
	n.Store(int32(len(out.pcs)))
	out.mu.Unlock()
	if n.Load() != 1 {
		t.Fatalf("%d associations, want 1 for one client endpoint", n.Load())
	}
	waitCounts(t, r.eng, uint64(len("query")+len("to B")), uint64(len("answer")+len("hello from B")))
	if m := r.eng.Registry().Metrics(); m.UDPOpen != 1 || m.BytesUp != uint64(len("query")+len("to B")) {
		t.Errorf("metrics %+v", m)
	}
}

// TestTCPDialFailureAnswers: each way a dial fails reaches the client as
// the table says, for IPv4 and IPv6: a reset, or an ICMP error from the
// destination that quotes the client's SYN exactly.
func TestTCPDialFailureAnswers(t *testing.T) {
	checkLeaks(t)
	errno := func(e syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", e)}
	}
	tests := []struct {
		name         string
		err          error
		rst          bool
		type4, code4 uint8
		type6, code6 uint8
		gvisorErr    string // what gVisor's own TCP says, for IPv4
	}{
		{"refused", errno(syscall.ECONNREFUSED), true, 0, 0, 0, 0, "connection was refused"},
		{"host unreachable", errno(syscall.EHOSTUNREACH), false, 3, 1, 1, 3, "no route to host"},
		{"network unreachable", errno(syscall.ENETUNREACH), false, 3, 0, 1, 0, "network is unreachable"},
		{"upstream TTL expired", &socks.ReplyError{Code: socks.ReplyTTLExpired, Hop: 1}, false, 11, 0, 3, 0, ""},
		{"upstream not allowed", &socks.ReplyError{Code: socks.ReplyNotAllowed, Hop: 1}, false, 3, 13, 1, 1, "no route to host"},
		{"timeout", context.DeadlineExceeded, false, 3, 1, 1, 3, "no route to host"},
		{"general failure", &socks.ReplyError{Code: socks.ReplyGeneralFailure, Hop: 1}, true, 0, 0, 0, 0, "connection was refused"},
	}
	for _, tt := range tests {
		for _, dst := range []netip.Addr{serverV4, serverV6} {
			t.Run(tt.name+"/"+dst.String(), func(t *testing.T) {
				gwDev, clientDev := newPipe(1500)
				gwDev.tap = make(chan []byte, 64)
				clientDev.tap = make(chan []byte, 64)
				r := newRigOn(t, &fakeOut{dialErr: tt.err}, gwDev, clientDev)
				fa, proto := fullAddr(dst, 80)
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				_, err := gonet.DialContextTCP(ctx, r.client, fa, proto)
				if err == nil {
					t.Fatal("connect succeeded")
				}
				if dst.Is4() && tt.gvisorErr != "" && !strings.Contains(err.Error(), tt.gvisorErr) {
					t.Errorf("gVisor client: %v; want %q", err, tt.gvisorErr)
				}
				syn := <-clientDev.tap
				answer := <-gwDev.tap
				checkAnswer(t, dst, syn, answer, tt.rst, tt.type4, tt.code4, tt.type6, tt.code6)
			})
		}
	}
}

// checkAnswer checks that answer is a TCP RST for syn, or the ICMP error
// given, from dst, quoting syn.
func checkAnswer(t *testing.T, dst netip.Addr, syn, answer []byte, rst bool, type4, code4, type6, code6 uint8) {
	t.Helper()
	var src netip.Addr
	var proto uint8
	var payload []byte
	if dst.Is4() {
		ip := header.IPv4(answer)
		src, proto, payload = addrFrom(ip.SourceAddress()), ip.Protocol(), answer[ip.HeaderLength():]
	} else {
		ip := header.IPv6(answer)
		src, proto, payload = addrFrom(ip.SourceAddress()), ip.NextHeader(), answer[header.IPv6MinimumSize:]
	}
	if src != dst {
		t.Errorf("answer from %v, want from %v", src, dst)
	}
	if rst {
		if proto != uint8(header.TCPProtocolNumber) || header.TCP(payload).Flags()&header.TCPFlagRst == 0 {
			t.Fatalf("answer % x is not a TCP RST", answer)
		}
		return
	}
	wantProto, typ, code := uint8(header.ICMPv4ProtocolNumber), type4, code4
	if dst.Is6() {
		wantProto, typ, code = uint8(header.ICMPv6ProtocolNumber), type6, code6
	}
	if proto != wantProto || payload[0] != typ || payload[1] != code {
		t.Fatalf("answer proto %d type %d code %d, want proto %d type %d code %d", proto, payload[0], payload[1], wantProto, typ, code)
	}
	if quote := payload[icmpHeaderLen:]; string(quote) != string(syn) {
		t.Errorf("quote\n% x\nwant the SYN\n% x", quote, syn)
	}
	if dst.Is4() {
		if c := checksum.Checksum(payload, 0); c != 0xffff {
			t.Errorf("ICMP checksum does not verify: %#x", c)
		}
	} else {
		ip := header.IPv6(answer)
		icmp := header.ICMPv6(payload)
		want := icmp.Checksum()
		icmp.SetChecksum(0)
		got := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp[:icmpHeaderLen], Src: ip.SourceAddress(), Dst: ip.DestinationAddress(),
			PayloadCsum: checksum.Checksum(icmp[icmpHeaderLen:], 0), PayloadLen: len(icmp) - icmpHeaderLen})
		if got != want {
			t.Errorf("ICMPv6 checksum %#x, want %#x", want, got)
		}
	}
}

// waitCounts waits until the engine has counted up and down bytes: a side
// counts once the other took the bytes, which can be just after they
// arrived where the test looks.
func waitCounts(t testing.TB, eng *engine.Engine, up, down uint64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		m := eng.Registry().Metrics()
		if m.BytesUp == up && m.BytesDown == down {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("counted up %d down %d, want %d and %d", m.BytesUp, m.BytesDown, up, down)
		}
	}
}

// udpProbe builds the IP packet of a client datagram with the given TTL.
func udpProbe(t *testing.T, src, dst netip.AddrPort, ttl uint8, payload string) []byte {
	t.Helper()
	pkt, err := appendUDPPacket(nil, src, dst, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	if src.Addr().Is4() {
		ip := header.IPv4(pkt)
		ip.SetTTL(ttl)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(pkt).SetHopLimit(ttl)
	}
	return pkt
}

// rawRig is a gateway Stack whose client side the test drives by hand.
func rawRig(t *testing.T, out *fakeOut, cfg Config) (gwOut chan []byte, send func([]byte)) {
	t.Helper()
	gwDev, clientDev := newPipe(1500)
	gw, err := New(gwDev, engine.New(out, nil, nil), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		gw.Close()
		clientDev.Close()
	})
	send = func(p []byte) {
		if _, err := clientDev.Write([][]byte{append(make([]byte, clientDev.Headroom()), p...)}, clientDev.Headroom()); err != nil {
			t.Fatal(err)
		}
	}
	return clientDev.in, send
}

func nextPacket(t *testing.T, ch chan []byte) []byte {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("the gateway sent nothing")
	}
	return nil
}

// TestUDPTTL: a datagram whose TTL ends at the gateway is answered with
// time exceeded from the gateway's own address; a small TTL leaves less
// one; an ordinary one leaves with the default.
func TestUDPTTL(t *testing.T) {
	checkLeaks(t)
	gwV4, gwV6 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:db8::1")
	for _, fam := range []struct{ client, server, gw netip.Addr }{{clientV4, serverV4, gwV4}, {clientV6, serverV6, gwV6}} {
		t.Run(fam.server.String(), func(t *testing.T) {
			out := &fakeOut{newPC: make(chan *fakePC, 4)}
			gwOut, send := rawRig(t, out, Config{Addrs: []netip.Addr{gwV4, gwV6}})
			src, dst := netip.AddrPortFrom(fam.client, 33434), netip.AddrPortFrom(fam.server, 33435)

			probe := udpProbe(t, src, dst, 1, "hop 1")
			send(probe)
			checkAnswer(t, fam.gw, probe, nextPacket(t, gwOut), false, 11, 0, 3, 0)

			send(udpProbe(t, src, dst, 5, "hop 5"))
			pc := <-out.newPC
			if d := <-pc.sent; d.data != "hop 5" || d.ttl != 4 {
				t.Fatalf("outbound got %q with TTL %d, want TTL 4", d.data, d.ttl)
			}
			send(udpProbe(t, src, dst, 64, "ordinary"))
			if d := <-pc.sent; d.data != "ordinary" || d.ttl != 0 {
				t.Fatalf("outbound got %q with TTL %d, want the default (0)", d.data, d.ttl)
			}
		})
	}
}

// TestUDPPacketErrors: an ICMP error the outbound side reports reaches
// the client as the same error from the same sender, quoting the client's
// datagram; and an association that cannot be set up answers the
// datagrams waiting for it as the reply code says.
func TestUDPPacketErrors(t *testing.T) {
	checkLeaks(t)
	router := netip.MustParseAddr("198.18.5.1")
	t.Run("port unreachable passed on", func(t *testing.T) {
		out := &fakeOut{newPC: make(chan *fakePC, 4)}
		gwOut, send := rawRig(t, out, Config{})
		src, dst := netip.AddrPortFrom(clientV4, 40000), netip.AddrPortFrom(serverV4, 53)
		probe := udpProbe(t, src, dst, 64, "query")
		send(probe)
		pc := <-out.newPC
		<-pc.sent
		pc.recv <- fakeDatagram{err: &engine.PacketError{Dst: socks.AddrFromAddrPort(dst), Type: 3, Code: 3, Offender: serverV4, Payload: []byte("query")}}
		ans := nextPacket(t, gwOut)
		quote := ans[header.IPv4MinimumSize+icmpHeaderLen:]
		checkAnswer(t, serverV4, quote, ans, false, 3, 3, 0, 0)
		// The gateway rebuilt the quote: its IPv4 ID is the gateway's, the
		// rest is the client's datagram.
		if a, b := withoutID(quote), withoutID(probe); string(a) != string(b) {
			t.Errorf("quote\n% x\nwant\n% x", a, b)
		}
	})
	t.Run("time exceeded from a router", func(t *testing.T) {
		out := &fakeOut{newPC: make(chan *fakePC, 4)}
		gwOut, send := rawRig(t, out, Config{})
		src, dst := netip.AddrPortFrom(clientV4, 40001), netip.AddrPortFrom(serverV4, 33434)
		probe := udpProbe(t, src, dst, 3, "probe")
		send(probe)
		pc := <-out.newPC
		<-pc.sent
		pc.recv <- fakeDatagram{err: &engine.PacketError{Dst: socks.AddrFromAddrPort(dst), Type: 11, Code: 0, Offender: router, Payload: []byte("probe")}}
		ans := nextPacket(t, gwOut)
		// The quote is the datagram as the gateway rebuilt it: its TTL and
		// ID are the gateway's; addresses, ports and payload are the
		// client's, which is what the client's kernel matches on.
		if got := addrFrom(header.IPv4(ans).SourceAddress()); got != router {
			t.Fatalf("time exceeded from %v, want the router %v", got, router)
		}
		icmp := ans[header.IPv4MinimumSize:]
		if icmp[0] != 11 || icmp[1] != 0 {
			t.Fatalf("type %d code %d, want 11/0", icmp[0], icmp[1])
		}
		q := header.IPv4(icmp[icmpHeaderLen:])
		u := header.UDP(q[header.IPv4MinimumSize:])
		if addrFrom(q.SourceAddress()) != clientV4 || addrFrom(q.DestinationAddress()) != serverV4 ||
			u.SourcePort() != src.Port() || u.DestinationPort() != dst.Port() || string(u.Payload()) != "probe" {
			t.Fatalf("quote % x does not describe the client's datagram", icmp[icmpHeaderLen:])
		}
	})
	for _, fam := range []struct{ client, server netip.Addr }{{clientV4, serverV4}, {clientV6, serverV6}} {
		t.Run("association refused/"+fam.server.String(), func(t *testing.T) {
			out := &fakeOut{udpErr: &socks.ReplyError{Code: socks.ReplyNetworkUnreachable, Hop: 1}}
			gwOut, send := rawRig(t, out, Config{})
			src, dst := netip.AddrPortFrom(fam.client, 40002), netip.AddrPortFrom(fam.server, 53)
			probe := udpProbe(t, src, dst, 64, "query")
			send(probe)
			ans := nextPacket(t, gwOut)
			var quote []byte
			if fam.server.Is4() {
				quote = ans[header.IPv4MinimumSize+icmpHeaderLen:]
			} else {
				quote = ans[header.IPv6MinimumSize+icmpHeaderLen:]
			}
			checkAnswer(t, fam.server, quote, ans, false, 3, 0, 1, 0)
			if a, b := withoutID(quote), withoutID(probe); string(a) != string(b) {
				t.Errorf("quote\n% x\nwant\n% x", a, b)
			}
		})
	}
}

// withoutID returns a copy of an IP packet with an IPv4 header's ID and
// checksum zeroed: the fields a rebuilt datagram may not share.
func withoutID(p []byte) []byte {
	c := append([]byte(nil), p...)
	if header.IPVersion(c) == header.IPv4Version {
		header.IPv4(c).SetID(0)
		header.IPv4(c).SetChecksum(0)
	}
	return c
}

func echoRequestPacket(src, dst netip.Addr, ttl uint8, ident, seq uint16, data string) []byte {
	p := appendEcho(nil, false, src, dst, ident, seq, []byte(data))
	if src.Is4() {
		ip := header.IPv4(p)
		ip.SetTTL(ttl)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(p).SetHopLimit(ttl)
	}
	return p
}

// checkEchoReply checks that p is an echo reply from src to dst carrying
// ident, seq and data, with checksums as the builder makes them.
func checkEchoReply(t *testing.T, p []byte, src, dst netip.Addr, ident, seq uint16, data string) {
	t.Helper()
	want := appendEcho(nil, true, src, dst, ident, seq, []byte(data))
	if string(withoutID(p)) != string(withoutID(want)) {
		t.Fatalf("echo reply\n% x\nwant\n% x", p, want)
	}
}

func TestEchoModes(t *testing.T) {
	checkLeaks(t)
	for _, fam := range []struct{ client, server netip.Addr }{{clientV4, serverV4}, {clientV6, serverV6}} {
		t.Run("reply/"+fam.server.String(), func(t *testing.T) {
			gwOut, send := rawRig(t, &fakeOut{}, Config{ICMP: ICMPReply})
			send(echoRequestPacket(fam.client, fam.server, 64, 0x1234, 7, "ping data"))
			checkEchoReply(t, nextPacket(t, gwOut), fam.server, fam.client, 0x1234, 7, "ping data")
		})
		t.Run("off/"+fam.server.String(), func(t *testing.T) {
			gwOut, send := rawRig(t, &fakeOut{}, Config{ICMP: ICMPOff})
			send(echoRequestPacket(fam.client, fam.server, 64, 0x1234, 7, "ping data"))
			select {
			case p := <-gwOut:
				t.Fatalf("off mode answered: % x", p)
			case <-time.After(200 * time.Millisecond):
			}
		})
	}
	t.Run("forward: TTL ends at the gateway", func(t *testing.T) {
		gw := netip.MustParseAddr("198.18.0.1")
		gwOut, send := rawRig(t, &fakeOut{}, Config{ICMP: ICMPForward, Addrs: []netip.Addr{gw}})
		req := echoRequestPacket(clientV4, serverV4, 1, 99, 1, "probe")
		send(req)
		checkAnswer(t, gw, req, nextPacket(t, gwOut), false, 11, 0, 0, 0)
	})
}

// TestEchoForwardLoopback forwards real echo requests through the kernel's
// unprivileged ICMP sockets to loopback, and checks that the gateway puts
// net.ipv4.ping_group_range back as it found it.
func TestEchoForwardLoopback(t *testing.T) {
	checkLeaks(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: ICMP sockets may need net.ipv4.ping_group_range widened; run as root (scripts/test)")
	}
	before, err := os.ReadFile(pingGroupRange)
	if err != nil {
		t.Skipf("no %s: %v", pingGroupRange, err)
	}
	func() {
		gwDev, clientDev := newPipe(1500)
		eng := engine.New(&fakeOut{}, nil, nil)
		gw, err := New(gwDev, eng, Config{ICMP: ICMPForward})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			gw.Close()
			clientDev.Close()
		}()
		for _, dst := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
			src := clientV4
			if dst.Is6() {
				src = clientV6
			}
			for seq := uint16(1); seq <= 3; seq++ {
				p := echoRequestPacket(src, dst, 64, 0x4242, seq, "real ping")
				clientDev.Write([][]byte{append(make([]byte, clientDev.Headroom()), p...)}, clientDev.Headroom())
				checkEchoReply(t, nextPacket(t, clientDev.in), dst, src, 0x4242, seq, "real ping")
			}
		}
		// A reply is counted once it is written, so the last count may
		// land just after the client read it.
		var flows []engine.FlowInfo
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			flows, _, _ = eng.Registry().List(0, 10)
			if len(flows) == 2 && flows[0].Proto == engine.ProtoICMP && flows[1].Proto == engine.ProtoICMPv6 &&
				flows[0].PktsUp == 3 && flows[0].PktsDown == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("flows %+v", flows)
				break
			}
		}
	}()
	if after, _ := os.ReadFile(pingGroupRange); string(after) != string(before) {
		t.Errorf("ping_group_range %q after, %q before", after, before)
	}
}

// TestUDPPathMTU: the client's don't-fragment bit reaches the outbound
// side, and a datagram too big for the outbound path comes back to the
// client as "fragmentation needed" / "packet too big" with the path MTU.
func TestUDPPathMTU(t *testing.T) {
	checkLeaks(t)
	for _, fam := range []struct {
		client, server netip.Addr
		typ, code      uint8
		mtu            uint32
	}{{clientV4, serverV4, 3, 4, 1400}, {clientV6, serverV6, 2, 0, 1280}} {
		t.Run(fam.server.String(), func(t *testing.T) {
			out := &fakeOut{newPC: make(chan *fakePC, 1)}
			gwOut, send := rawRig(t, out, Config{})
			src, dst := netip.AddrPortFrom(fam.client, 40100), netip.AddrPortFrom(fam.server, 4000)
			small := udpProbe(t, src, dst, 64, "small")
			if fam.client.Is4() {
				ip := header.IPv4(small)
				ip.SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 0)
				ip.SetChecksum(0)
				ip.SetChecksum(^ip.CalculateChecksum())
			}
			send(small)
			pc := <-out.newPC
			if d := <-pc.sent; !d.df {
				t.Fatalf("outbound got DontFragment false for a DF datagram")
			}
			big := strings.Repeat("x", 1450)
			pc.mu.Lock()
			pc.writeErr = func(b []byte, a socks.Addr, m engine.Meta) error {
				if m.DontFragment && len(b) > int(fam.mtu)-48 {
					return &engine.PacketError{Dst: a, V6: fam.client.Is6(), Type: fam.typ, Code: fam.code, Info: fam.mtu, Payload: b}
				}
				return nil
			}
			pc.mu.Unlock()
			probe := udpProbe(t, src, dst, 64, big)
			if fam.client.Is4() {
				ip := header.IPv4(probe)
				ip.SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 0)
				ip.SetChecksum(0)
				ip.SetChecksum(^ip.CalculateChecksum())
			}
			send(probe)
			ans := nextPacket(t, gwOut)
			var icmp []byte
			if fam.client.Is4() {
				icmp = ans[header.IPv4MinimumSize:]
				if icmp[0] != 3 || icmp[1] != 4 || uint32(header.ICMPv4(icmp).MTU()) != fam.mtu {
					t.Fatalf("got type %d code %d MTU %d, want 3/4 with MTU %d", icmp[0], icmp[1], header.ICMPv4(icmp).MTU(), fam.mtu)
				}
			} else {
				icmp = ans[header.IPv6MinimumSize:]
				if icmp[0] != 2 || icmp[1] != 0 || header.ICMPv6(icmp).MTU() != fam.mtu {
					t.Fatalf("got type %d code %d MTU %d, want 2/0 with MTU %d", icmp[0], icmp[1], header.ICMPv6(icmp).MTU(), fam.mtu)
				}
			}
		})
	}
}

// TestTCPPortReuseAfterServerClose: the server closes first, so the
// gateway's side of the connection would sit in TIME_WAIT; the client
// then connects again from the same port and must be answered at once.
func TestTCPPortReuseAfterServerClose(t *testing.T) {
	checkLeaks(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("bye"))
			c.Close()
		}
	}()
	r := newRig(t, &fakeOut{echo: l.Addr().String()})
	fa, proto := fullAddr(serverV4, 80)
	la, _ := fullAddr(clientV4, 40404)
	for round := range 3 {
		// The client's own end of the last round may hold the port for a
		// moment (its final ACK): wait for that, not for the gateway.
		var c *gonet.TCPConn
		var err error
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, err = gonet.DialTCPWithBind(ctx, r.client, la, fa, proto)
			cancel()
			if err == nil || !strings.Contains(err.Error(), "port is in use") || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("round %d: connecting again from port 40404: %v", round, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); err != nil || string(b) != "bye" {
			t.Fatalf("round %d: read %q, %v", round, b, err)
		}
		c.Close()
		waitCounts(t, r.eng, 0, uint64(3*(round+1)))
	}
}

// TestTCPIdleHoldsOneGoroutine: an idle TUN connection costs the relay one
// parked goroutine (the outbound side's reader); the client side's reader
// is a callback, not a goroutine, until the client sends. Closing the flow
// through the registry while it is idle ends it all the same.
func TestTCPIdleHoldsOneGoroutine(t *testing.T) {
	checkLeaks(t)
	r := newRig(t, &fakeOut{echo: echoServer(t)})
	const n = 40
	before := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	fa, proto := fullAddr(serverV4, 80)
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := gonet.DialContextTCP(ctx, r.client, fa, proto)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// Both directions carry data once, so both readers have run.
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != byte(i) {
			t.Fatalf("echo %d: %v %v", i, b, err)
		}
	}
	// Per connection: the relay's goroutine and the echo server's. With a
	// goroutine for the client side's reader too it would be three.
	var held int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		held = runtime.NumGoroutine() - before
		if held <= 2*n+n/4 || time.Now().After(deadline) {
			break
		}
	}
	if held > 2*n+n/4 {
		t.Fatalf("%d idle connections hold %d goroutines, want about %d", n, held, 2*n)
	}

	// Each is still a working connection after the idle wait.
	for i, c := range conns {
		if _, err := c.Write([]byte{byte(i + 1)}); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != byte(i+1) {
			t.Fatalf("echo again %d: %v %v", i, b, err)
		}
	}

	// Closed through the registry while idle: every flow ends and the
	// client sees its connection end.
	flows, _, _ := r.eng.Registry().List(0, 2*n)
	if len(flows) != n {
		t.Fatalf("%d flows, want %d", len(flows), n)
	}
	for _, fi := range flows {
		f, ok := r.eng.Registry().Flow(fi.ID)
		if !ok || !f.Abort() {
			t.Fatalf("flow %d: not found or not abortable", fi.ID)
		}
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if _, err := c.Read(b[:]); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after CLOSE FLOW: %v, want the connection ended", err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); r.eng.Registry().Metrics().Concurrent != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("flows did not close")
		}
	}
}

// TestUDPPushFastPath: with an outbound side that can send without
// blocking, datagrams leave on the stack's goroutine; when it cannot (a
// full socket), they wait in the mapping's queue; either way every one
// arrives, in the order sent, and is counted.
func TestUDPPushFastPath(t *testing.T) {
	checkLeaks(t)
	out := &fakeOut{newPC: make(chan *fakePC, 4), try: &tryState{}}
	r := newRig(t, out)
	la, proto := fullAddr(clientV4, 5001)
	c, err := gonet.DialUDP(r.client, &la, nil, proto)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer := net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverV4, 9))
	// idle waits until the mapping has nothing queued or being sent, so
	// that the next datagram may take the fast path.
	idle := func() {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			var pending int64
			r.gw.udp.mu.Lock()
			for _, m := range r.gw.udp.maps {
				pending += m.pending.Load()
			}
			r.gw.udp.mu.Unlock()
			if pending == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d datagrams still pending", pending)
			}
		}
	}
	const n = 90
	var pc *fakePC
	var up int
	var unblocked int32
	for i := range n {
		// The middle third while the socket is "full"; some of those
		// are sent back to back, so that they queue behind each other.
		blocked := i >= n/3 && i < 2*n/3
		out.try.block.Store(blocked)
		msgs := []int{i}
		if blocked && i%5 == 0 && i+1 < 2*n/3 {
			msgs = append(msgs, i+1)
		} else if blocked && i%5 == 1 {
			continue // sent with the one before
		}
		for _, k := range msgs {
			msg := fmt.Sprintf("datagram %03d", k)
			if _, err := c.WriteTo([]byte(msg), peer); err != nil {
				t.Fatal(err)
			}
			up += len(msg)
		}
		if pc == nil {
			select {
			case pc = <-out.newPC:
			case <-time.After(5 * time.Second):
				t.Fatal("no association opened")
			}
		}
		for _, k := range msgs {
			select {
			case d := <-pc.sent:
				if w := fmt.Sprintf("datagram %03d", k); d.data != w {
					t.Fatalf("got %q, want %q", d.data, w)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("datagram %d did not arrive", k)
			}
		}
		if i == 0 {
			// The first one opened the association, and may or may not
			// have found it ready: not counted.
			out.try.pushed.Store(0)
		}
		if !blocked && i > 0 {
			unblocked++
		}
		idle()
	}
	// Every datagram sent while the socket took them, after the first,
	// took the fast path; none of the others did.
	if p := out.try.pushed.Load(); p != unblocked {
		t.Errorf("%d datagrams took the fast path, want %d", p, unblocked)
	}
	waitCounts(t, r.eng, uint64(up), 0)
	if len(out.pcs) != 1 {
		t.Errorf("%d associations, want 1", len(out.pcs))
	}
}
