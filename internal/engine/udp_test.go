package engine_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"tungate/internal/engine"
	"tungate/socks"
)

// udpPeer is a UDP socket on loopback that records who sent to it and can
// echo.
type udpPeer struct {
	c    *net.UDPConn
	addr socks.Addr
}

func newUDPPeer(t *testing.T) *udpPeer {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpPeer{c: c, addr: socks.AddrFromAddrPort(c.LocalAddr().(*net.UDPAddr).AddrPort())}
}

// echoOnce answers one datagram with "echo:" + payload and returns the
// sender's address.
func (p *udpPeer) echoOnce(t *testing.T) netip.AddrPort {
	t.Helper()
	buf := make([]byte, 2048)
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := p.c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("peer %s: %v", p.addr, err)
	}
	if _, err := p.c.WriteToUDPAddrPort(append([]byte("echo:"), buf[:n]...), from); err != nil {
		t.Fatal(err)
	}
	return from
}

func readPacket(t *testing.T, pc socks.PacketConn) (string, socks.Addr) {
	t.Helper()
	type result struct {
		n    int
		from socks.Addr
		err  error
	}
	buf := make([]byte, 65535)
	ch := make(chan result, 1)
	go func() {
		n, from, err := pc.ReadFrom(buf)
		ch <- result{n, from, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("ReadFrom: %v", r.err)
		}
		return string(buf[:r.n]), r.from
	case <-time.After(5 * time.Second):
		pc.Close()
		<-ch
		t.Fatal("no datagram within 5 s")
	}
	return "", socks.Addr{}
}

func TestUDPAssociateFullCone(t *testing.T) {
	checkLeaks(t)
	gw := startGateway(t, &engine.Direct{})
	a, b := newUDPPeer(t), newUDPPeer(t)

	d := &socks.Dialer{Hops: []socks.Hop{hop(gw)}}
	pc, err := d.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()

	if _, err := pc.WriteTo([]byte("one"), a.addr); err != nil {
		t.Fatal(err)
	}
	mapped := a.echoOnce(t)
	if got, from := readPacket(t, pc); got != "echo:one" || from != a.addr {
		t.Fatalf("got %q from %v, want echo:one from %v", got, from, a.addr)
	}
	// Peer B, never contacted, sends to the mapped address: it comes back.
	if _, err := b.c.WriteToUDPAddrPort([]byte("unsolicited"), mapped); err != nil {
		t.Fatal(err)
	}
	if got, from := readPacket(t, pc); got != "unsolicited" || from != b.addr {
		t.Fatalf("got %q from %v, want unsolicited from %v", got, from, b.addr)
	}
	// The mapping is stable across destinations.
	pc.WriteTo([]byte("two"), b.addr)
	if again := b.echoOnce(t); again != mapped {
		t.Fatalf("mapping changed: %v to A, %v to B", mapped, again)
	}
	if got, _ := readPacket(t, pc); got != "echo:two" {
		t.Fatalf("got %q, want echo:two", got)
	}
	waitFor(t, "byte counts", func() bool {
		m := gw.eng.Registry().Metrics()
		return m.BytesUp == 6 && m.BytesDown == uint64(len("echo:one")+len("unsolicited")+len("echo:two"))
	})
	m := gw.eng.Registry().Metrics()
	if m.UDPOpen != 1 || m.BytesUp != 6 || m.BytesDown != uint64(len("echo:one")+len("unsolicited")+len("echo:two")) {
		t.Errorf("metrics = %+v", m)
	}
	// Closing the control connection ends the association.
	pc.Close()
	waitFor(t, "association to end", func() bool { return gw.eng.Registry().Metrics().UDPOpen == 0 })
}

// TestUDPRelayFilters sends by hand to the relay: datagrams from a
// stranger, fragments and malformed headers are dropped, and the client
// gets exactly its own answers.
func TestUDPRelayFilters(t *testing.T) {
	checkLeaks(t)
	gw := startGateway(t, &engine.Direct{})
	peer := newUDPPeer(t)

	ctrl, err := net.Dial("tcp", gw.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	ctrl.SetDeadline(time.Now().Add(5 * time.Second))
	client, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	cport := client.LocalAddr().(*net.UDPAddr).Port
	// Greeting, then UDP ASSOCIATE announcing the client's port.
	req := []byte{0x05, 0x01, 0x00, 0x05, 0x03, 0x00, 0x01, 127, 0, 0, 1, byte(cport >> 8), byte(cport)}
	ctrl.Write(req)
	if _, err := socks.ReadMethodSelection(ctrl); err != nil {
		t.Fatal(err)
	}
	resp, err := socks.ReadResponse(ctrl)
	if err != nil || resp.Reply != socks.ReplySucceeded {
		t.Fatalf("UDP ASSOCIATE: %+v, %v", resp, err)
	}
	relay, _ := resp.Bind.AddrPort()

	stranger, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	hdr, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: peer.addr})
	send := func(c *net.UDPConn, b []byte) {
		if _, err := c.WriteToUDPAddrPort(b, relay); err != nil {
			t.Fatal(err)
		}
	}
	send(stranger, append(hdr[:len(hdr):len(hdr)], "from a stranger"...))
	frag := append([]byte{0, 0, 1}, hdr[3:]...)
	send(client, append(frag, "fragment"...))
	send(client, []byte{0, 0, 0, 0x02, 1, 2}) // unknown ATYP
	send(client, append(hdr[:len(hdr):len(hdr)], "valid"...))

	peer.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, mapped, err := peer.c.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "valid" {
		t.Fatalf("peer got %q, %v; want only \"valid\"", buf[:n], err)
	}
	peer.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _, err := peer.c.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("peer got a second datagram %q; the relay let a dropped one through", buf[:n])
	}
	// The answer reaches the client, and only the client, with a header
	// naming the peer.
	peer.c.WriteToUDPAddrPort([]byte("answer"), mapped)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := client.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	want := append(hdr[:len(hdr):len(hdr)], "answer"...)
	if from != relay || string(buf[:n]) != string(want) {
		t.Fatalf("client got % x from %v, want % x from %v", buf[:n], from, want, relay)
	}
	stranger.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _, err := stranger.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("stranger got % x", buf[:n])
	}
}

func TestUDPThroughChain(t *testing.T) {
	checkLeaks(t)
	peer := newUDPPeer(t)
	last := startGateway(t, &engine.Direct{}, withUsers(map[string]string{"u2": "p2"}))
	up, _ := engine.NewUpstream([]socks.Hop{{Addr: last.addr, Username: "u2", Password: "p2"}}, nil)
	first := startGateway(t, up)

	// Client -> first gateway (whose outbound is the last one) -> peer;
	// and a client-side chain of both, so datagrams nest two headers deep.
	for _, hops := range [][]socks.Hop{
		{hop(first)},
		{hop(first), {Addr: last.addr, Username: "u2", Password: "p2"}},
	} {
		d := &socks.Dialer{Hops: hops}
		pc, err := d.ListenPacket(context.Background())
		if err != nil {
			t.Fatalf("%d hops: %v", len(hops), err)
		}
		if _, err := pc.WriteTo([]byte("nested"), peer.addr); err != nil {
			t.Fatal(err)
		}
		peer.echoOnce(t)
		if got, from := readPacket(t, pc); got != "echo:nested" || from != peer.addr {
			t.Fatalf("%d hops: got %q from %v", len(hops), got, from)
		}
		pc.Close()
	}
	waitFor(t, "associations to end", func() bool {
		return first.eng.Registry().Metrics().Concurrent == 0 && last.eng.Registry().Metrics().Concurrent == 0
	})
}

func TestBind(t *testing.T) {
	checkLeaks(t)
	for _, name := range []string{"direct", "through an upstream"} {
		t.Run(name, func(t *testing.T) {
			var out engine.Outbound = &engine.Direct{}
			if name != "direct" {
				inner := startGateway(t, &engine.Direct{})
				out, _ = engine.NewUpstream([]socks.Hop{hop(inner)}, nil)
			}
			gw := startGateway(t, out)
			d := &socks.Dialer{Hops: []socks.Hop{hop(gw)}}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			// The peer that will connect is on 127.0.0.1.
			bl, err := d.Bind(ctx, socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 0})
			if err != nil {
				t.Fatal(err)
			}
			defer bl.Close()
			if !bl.Addr().IP.IsLoopback() || bl.Addr().Port == 0 {
				t.Fatalf("BIND address %v", bl.Addr())
			}
			peer, err := net.Dial("tcp", bl.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			c, from, err := bl.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := socks.AddrFromAddrPort(peer.LocalAddr().(*net.TCPAddr).AddrPort()); name == "direct" && from != want {
				t.Errorf("second reply names %v, want %v", from, want)
			}
			peer.Write([]byte("ping"))
			buf := make([]byte, 4)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(buf); err != nil || string(buf) != "ping" {
				t.Fatalf("read %q, %v", buf, err)
			}
		})
	}
}

// TestUDPAssociateFailureReplied: an upstream that refuses UDP ASSOCIATE
// makes the client get that reply code, not a closed connection.
func TestUDPAssociateFailureReplied(t *testing.T) {
	checkLeaks(t)
	// The upstream hop answers every request with "command not supported".
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := socks.ReadGreeting(c); err != nil {
			return
		}
		c.Write(socks.AppendMethodSelection(nil, socks.MethodNoAuth))
		if _, err := socks.ReadRequest(c); err != nil {
			return
		}
		c.Write(socks.AppendResponse(nil, socks.Response{Reply: socks.ReplyCommandNotSupported}))
	}()
	hopAddr, _ := socks.AddrFromNetAddr(l.Addr())
	up, _ := engine.NewUpstream([]socks.Hop{{Addr: hopAddr}}, nil)
	gw := startGateway(t, up)
	d := &socks.Dialer{Hops: []socks.Hop{hop(gw)}}
	_, err = d.ListenPacket(context.Background())
	var re *socks.ReplyError
	if !errors.As(err, &re) || re.Code != socks.ReplyCommandNotSupported {
		t.Fatalf("UDP ASSOCIATE through a hop without UDP: %v; want command not supported", err)
	}
}

// TestUDPBurstThroughChain: a burst of datagrams, more than a batch,
// through two gateways (the SOCKS5 server's relay and the outbound sockets
// move batches) and back: all arrive, whole, in order, and both gateways
// count every payload byte. Datagrams of one size go between the gateways
// as UDP GSO sends, read with UDP GRO.
func TestUDPBurstThroughChain(t *testing.T) {
	for _, tc := range []struct {
		name string
		size func(i int) int
	}{
		{"sizes differ", func(i int) int { return i * 5 }},
		{"one size", func(int) int { return 480 }},
	} {
		t.Run(tc.name, func(t *testing.T) { testUDPBurst(t, tc.size) })
	}
}

func testUDPBurst(t *testing.T, size func(int) int) {
	checkLeaks(t)
	peer := newUDPPeer(t)
	last := startGateway(t, &engine.Direct{})
	up, _ := engine.NewUpstream([]socks.Hop{hop(last)}, nil)
	first := startGateway(t, up)

	const count = 100 // with at most 500 bytes each, within default socket buffers
	msg := func(i int) []byte {
		b := make([]byte, size(i))
		for j := range b {
			b[j] = byte(i + j)
		}
		return b
	}
	d := &socks.Dialer{Hops: []socks.Hop{hop(first)}}
	pc, err := d.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	echoed := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		for i := range count {
			peer.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err := peer.c.ReadFromUDPAddrPort(buf)
			if err != nil {
				echoed <- fmt.Errorf("peer, datagram %d: %w", i, err)
				return
			}
			if _, err := peer.c.WriteToUDPAddrPort(buf[:n], from); err != nil {
				echoed <- err
				return
			}
		}
		echoed <- nil
	}()
	var want uint64
	for i := range count {
		if _, err := pc.WriteTo(msg(i), peer.addr); err != nil {
			t.Fatal(err)
		}
		want += uint64(len(msg(i)))
	}
	for i := range count {
		got, from := readPacket(t, pc)
		if got != string(msg(i)) || from != peer.addr {
			t.Fatalf("datagram %d: %d bytes from %v, want %d bytes from %v", i, len(got), from, len(msg(i)), peer.addr)
		}
	}
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
	for _, g := range []*gateway{first, last} {
		waitFor(t, "byte counts", func() bool {
			m := g.eng.Registry().Metrics()
			return m.BytesUp == want && m.BytesDown == want
		})
	}
	pc.Close()
	waitFor(t, "associations to end", func() bool {
		return first.eng.Registry().Metrics().Concurrent == 0 && last.eng.Registry().Metrics().Concurrent == 0
	})
}
