package engine_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tungate/internal/engine"
	"tungate/internal/leaktest"
	"tungate/socks"
)

// checkLeaks fails t if the test leaves goroutines running.
func checkLeaks(t *testing.T) { leaktest.Check(t) }

// gateway is a SOCKS5 server backed by an engine, on loopback.
type gateway struct {
	eng  *engine.Engine
	srv  *socks.Server
	addr socks.Addr
}

type gwOpt func(*socks.Server)

func withUsers(creds map[string]string) gwOpt {
	return func(s *socks.Server) {
		s.Authenticate = func(_ context.Context, u, p string, _ netip.AddrPort) bool {
			want, ok := creds[u]
			return ok && want == p
		}
		s.RequireAuth = func() bool { return true }
	}
}

func startGateway(t *testing.T, out engine.Outbound, opts ...gwOpt) *gateway {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(out, nil, nil)
	srv := &socks.Server{Handler: eng.SOCKSHandler()}
	for _, o := range opts {
		o(srv)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, socks.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	a, _ := socks.AddrFromNetAddr(l.Addr())
	return &gateway{eng: eng, srv: srv, addr: a}
}

func hop(g *gateway) socks.Hop { return socks.Hop{Addr: g.addr} }

// echoTCP runs a TCP echo server on loopback.
func echoTCP(t *testing.T) socks.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	a, _ := socks.AddrFromNetAddr(l.Addr())
	return a
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) socks.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := socks.AddrFromNetAddr(l.Addr())
	l.Close()
	return a
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestConnectDirectCounts(t *testing.T) {
	checkLeaks(t)
	echo := echoTCP(t)
	gw := startGateway(t, &engine.Direct{})
	d := &socks.Dialer{Hops: []socks.Hop{hop(gw)}}
	c, err := d.Dial(context.Background(), echo)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "hello")
	roundTrip(t, c, "world!")

	reg := gw.eng.Registry()
	// Bytes are counted once the other side took them, which may be just
	// after the echo arrived here.
	waitFor(t, "byte counts", func() bool { m := reg.Metrics(); return m.BytesUp == 11 && m.BytesDown == 11 })
	flows, total, next := reg.List(0, 10)
	if total != 1 || len(flows) != 1 || next != 0 {
		t.Fatalf("List: %d flows, total %d, next %d; want 1, 1, 0", len(flows), total, next)
	}
	f := flows[0]
	if f.Proto != engine.ProtoTCP || f.State != engine.StateEstablished || f.Flags != engine.FlagSOCKS || f.Dst != echo {
		t.Errorf("flow = %+v", f)
	}
	if f.BytesUp != 11 || f.BytesDown != 11 {
		t.Errorf("flow bytes up %d down %d, want 11 and 11", f.BytesUp, f.BytesDown)
	}
	c.Close()
	waitFor(t, "flow to close", func() bool { return reg.Metrics().Concurrent == 0 })
	m := reg.Metrics()
	if m.Historic != 1 || m.BytesUp != 11 || m.BytesDown != 11 || m.PeakConcurrent != 1 || m.TCPOpen != 0 {
		t.Errorf("metrics = %+v", m)
	}
}

func TestConnectHalfClose(t *testing.T) {
	checkLeaks(t)
	// The server reads everything, then answers with its length: only a
	// half-close carried through the gateway lets it answer.
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
		b, _ := io.ReadAll(c)
		c.Write([]byte(strings.Repeat("x", len(b))))
	}()
	gw := startGateway(t, &engine.Direct{})
	d := &socks.Dialer{Hops: []socks.Hop{hop(gw)}}
	dst, _ := socks.AddrFromNetAddr(l.Addr())
	c, err := d.Dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("12345"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "xxxxx" {
		t.Fatalf("after half-close got %q, %v; want xxxxx", got, err)
	}
}

func TestChainTwoHops(t *testing.T) {
	checkLeaks(t)
	echo := echoTCP(t)
	last := startGateway(t, &engine.Direct{}, withUsers(map[string]string{"bob": "pw2"}))
	up, err := engine.NewUpstream([]socks.Hop{{Addr: last.addr, Username: "bob", Password: "pw2"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := startGateway(t, up, withUsers(map[string]string{"alice": "pw1"}))
	d := &socks.Dialer{Hops: []socks.Hop{{Addr: first.addr, Username: "alice", Password: "pw1"}}}
	c, err := d.Dial(context.Background(), echo)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "through two gateways")
	flows, _, _ := first.eng.Registry().List(0, 10)
	if len(flows) != 1 || flows[0].Flags != engine.FlagSOCKS|engine.FlagUpstream || flows[0].User != "alice" {
		t.Errorf("first gateway flows = %+v", flows)
	}
	flows, _, _ = last.eng.Registry().List(0, 10)
	if len(flows) != 1 || flows[0].User != "bob" || flows[0].Dst != echo {
		t.Errorf("last gateway flows = %+v", flows)
	}

	// The client can also chain by itself: alice's gateway, then bob's.
	d2 := &socks.Dialer{Hops: []socks.Hop{
		{Addr: first.addr, Username: "alice", Password: "pw1"},
		{Addr: last.addr, Username: "bob", Password: "pw2"},
	}}
	c2, err := d2.Dial(context.Background(), echo)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	roundTrip(t, c2, "client-side chain of three")
}

func TestReplyCodePassesThroughChain(t *testing.T) {
	checkLeaks(t)
	closed := closedPort(t)
	last := startGateway(t, &engine.Direct{})
	up, _ := engine.NewUpstream([]socks.Hop{hop(last)}, nil)
	mid := startGateway(t, up)
	up2, _ := engine.NewUpstream([]socks.Hop{hop(mid)}, nil)
	first := startGateway(t, up2)

	d := &socks.Dialer{Hops: []socks.Hop{hop(first)}}
	_, err := d.Dial(context.Background(), closed)
	var re *socks.ReplyError
	if !errors.As(err, &re) || re.Code != socks.ReplyConnectionRefused || re.Hop != 1 {
		t.Fatalf("dial through 3 gateways to a closed port: %v; want connection refused from hop 1", err)
	}
	for i, g := range []*gateway{first, mid, last} {
		if m := g.eng.Registry().Metrics(); m.DialFailures != 1 || m.Concurrent != 0 {
			t.Errorf("gateway %d: metrics %+v, want 1 dial failure and nothing open", i, m)
		}
	}

	// A proxy that cannot be reached is the gateway's failure, not the
	// destination's: general failure, naming the hop.
	dead := &socks.Dialer{Hops: []socks.Hop{{Addr: closed}}}
	_, err = dead.Dial(context.Background(), closed)
	if !errors.As(err, &re) || re.Code != socks.ReplyGeneralFailure || re.Hop != 1 {
		t.Fatalf("dial through a dead proxy: %v; want general failure at hop 1", err)
	}
	// An intermediate hop that cannot reach the next proxy: general
	// failure too, whatever code that hop sent.
	chain := &socks.Dialer{Hops: []socks.Hop{hop(last), {Addr: closed}}}
	_, err = chain.Dial(context.Background(), closed)
	if !errors.As(err, &re) || re.Code != socks.ReplyGeneralFailure || re.Hop != 1 {
		t.Fatalf("dial through a chain with a dead second proxy: %v; want general failure at hop 1", err)
	}
}

func TestConnectTimeout(t *testing.T) {
	checkLeaks(t)
	// A proxy that accepts and then says nothing: the connect timeout
	// bounds the whole chain dial, and it maps to host unreachable.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		l.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	silent, _ := socks.AddrFromNetAddr(l.Addr())
	up, _ := engine.NewUpstream([]socks.Hop{{Addr: silent}}, nil)
	gw := startGateway(t, up)
	if err := gw.eng.Settings().SetConnectTimeout(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	d := &socks.Dialer{Hops: []socks.Hop{hop(gw)}}
	_, err = d.Dial(context.Background(), echoTCP(t))
	var re *socks.ReplyError
	if !errors.As(err, &re) || re.Code != socks.ReplyHostUnreachable {
		t.Fatalf("dial through a silent proxy: %v; want host unreachable", err)
	}
}

// rawSession sends raw bytes to the gateway and returns everything it
// answers until it closes the connection.
func rawSession(t *testing.T, addr socks.Addr, send []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(send); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading answer: %v", err)
	}
	return got
}

func TestRawProtocolAnswers(t *testing.T) {
	checkLeaks(t)
	echo := echoTCP(t)
	open := startGateway(t, &engine.Direct{})
	auth := startGateway(t, &engine.Direct{}, withUsers(map[string]string{"alice": "secret"}))

	ip4 := echo.IP.As4()
	port := []byte{byte(echo.Port >> 8), byte(echo.Port)}
	connect := append(append([]byte{0x05, 0x01, 0x00, 0x01}, ip4[:]...), port...)
	long := strings.Repeat("a", 255)

	tests := []struct {
		name string
		gw   *gateway
		send []byte
		want []byte
	}{
		{"wrong password", auth,
			append([]byte{0x05, 0x01, 0x02, 0x01, 5}, append([]byte("alice\x05wrong"), connect...)...),
			[]byte{0x05, 0x02, 0x01, 0x01}},
		{"unknown user", auth,
			[]byte("\x05\x01\x02\x01\x03bob\x06secret"),
			[]byte{0x05, 0x02, 0x01, 0x01}},
		{"no acceptable method: only GSSAPI offered", open,
			[]byte{0x05, 0x01, 0x01},
			[]byte{0x05, 0xFF}},
		{"no-auth offered where auth is required", auth,
			[]byte{0x05, 0x01, 0x00},
			[]byte{0x05, 0xFF}},
		{"truncated request", open,
			[]byte{0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x01, 127, 0},
			[]byte{0x05, 0x00}},
		{"unsupported command", open,
			[]byte{0x05, 0x01, 0x00, 0x05, 0x09, 0x00, 0x01, 127, 0, 0, 1, 0, 80},
			[]byte{0x05, 0x00, 0x05, 0x07, 0x00, 0x01, 0, 0, 0, 0, 0, 0}},
		{"unsupported address type", open,
			[]byte{0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x02, 127, 0, 0, 1, 0, 80},
			[]byte{0x05, 0x00, 0x05, 0x08, 0x00, 0x01, 0, 0, 0, 0, 0, 0}},
		{"255-octet domain that does not resolve", open,
			append(append([]byte{0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, 255}, long...), 0, 80),
			append([]byte{0x05, 0x00}, 0x05, 0x04, 0x00, 0x01, 0, 0, 0, 0, 0, 0)},
		{"SOCKS4 request", open,
			[]byte{0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, 0},
			[]byte{}},
		{"RFC 1929 version 2", auth,
			[]byte("\x05\x01\x02\x02\x05alice\x06secret"),
			[]byte{0x05, 0x02, 0x01, 0x01}},
		{"connect to closed port", open,
			append([]byte{0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1}, closedPortBytes(t)...),
			append([]byte{0x05, 0x00}, 0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rawSession(t, tt.gw.addr, tt.send)
			if !bytes.Equal(got, tt.want) {
				t.Errorf("answer\n got % x\nwant % x", got, tt.want)
			}
		})
	}
}

func closedPortBytes(t *testing.T) []byte {
	a := closedPort(t)
	return []byte{byte(a.Port >> 8), byte(a.Port)}
}

// TestSessionIsolation: a hostile client holding a half-sent handshake
// does not stop another client from being served.
func TestSessionIsolation(t *testing.T) {
	checkLeaks(t)
	echo := echoTCP(t)
	gw := startGateway(t, &engine.Direct{})
	stuck, err := net.Dial("tcp", gw.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	stuck.Write([]byte{0x05, 0x02, 0x00}) // promises two methods, sends one
	d := &socks.Dialer{Hops: []socks.Hop{hop(gw)}}
	c, err := d.Dial(context.Background(), echo)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "still served")
}

// TestLoopbackRefusedToRemoteClients: a TCP client on another host may not
// reach this host's loopback (or unspecified) addresses through a direct
// outbound, by address or by name; a client on this host may. (UDP:
// TestLoopbackRefusedUDP.)
func TestLoopbackRefusedToRemoteClients(t *testing.T) {
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
			c.Close()
		}
	}()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	eng := engine.New(&engine.Direct{}, nil, nil)
	remote := socks.AddrFromAddrPort(netip.MustParseAddrPort("198.18.0.5:4000"))
	local := socks.AddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:4000"))
	for _, tc := range []struct {
		name    string
		src     socks.Addr
		dst     socks.Addr
		refused bool
	}{
		{"remote to 127.0.0.1", remote, socks.AddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)), true},
		{"remote to 0.0.0.0", remote, socks.AddrFromAddrPort(netip.AddrPortFrom(netip.IPv4Unspecified(), port)), true},
		{"remote to localhost", remote, socks.Addr{Name: "localhost", Port: port}, true},
		{"local to 127.0.0.1", local, socks.AddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			accepted := false
			err := eng.ServeTCP(context.Background(), engine.FlowSpec{Src: tc.src, Dst: tc.dst}, func(up net.Conn) (net.Conn, error) {
				accepted = true
				return nil, errors.New("test: done")
			})
			if tc.refused {
				if accepted || socks.ReplyFromError(err) != socks.ReplyNotAllowed {
					t.Fatalf("dial: accepted %v, err %v (%s); want refused as not allowed", accepted, err, socks.ReplyFromError(err))
				}
				return
			}
			if !accepted {
				t.Fatalf("dial from this host refused: %v", err)
			}
		})
	}
}

// TestStartTCP: a detached relay copies both ways and reports its end once,
// when both sides have closed; a flow that fails to dial returns the error
// and never reports an end.
func TestStartTCP(t *testing.T) {
	checkLeaks(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c) // echo until the client's FIN
	}()
	eng := engine.New(&engine.Direct{}, nil, nil)
	local := socks.AddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:4000"))
	dst := socks.AddrFromAddrPort(l.Addr().(*net.TCPAddr).AddrPort())

	// The client's side is a loopback TCP pair, as the relay's kernel side.
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	client, err := net.Dial("tcp", cl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	relaySide, err := cl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{}, 2)
	err = eng.StartTCP(context.Background(), engine.FlowSpec{Src: local, Dst: dst}, func(net.Conn) (net.Conn, error) {
		return relaySide, nil
	}, func() { ended <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("detached "), 20000)
	go client.Write(msg)
	got := make([]byte, len(msg))
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the detached relay: %v", err)
	}
	client.(*net.TCPConn).CloseWrite()
	if _, err := client.Read(got[:1]); err != io.EOF {
		t.Fatalf("after the client's FIN: %v, want EOF passed back", err)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not report its end")
	}
	select {
	case <-ended:
		t.Fatal("the end reported twice")
	case <-time.After(50 * time.Millisecond):
	}
	if m := eng.Registry().Metrics(); m.Concurrent != 0 || m.BytesUp != uint64(len(msg)) || m.BytesDown != uint64(len(msg)) {
		t.Errorf("metrics %+v", m)
	}

	// A refused dial: the error, and no end.
	closed := socks.AddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:1"))
	err = eng.StartTCP(context.Background(), engine.FlowSpec{Src: local, Dst: closed}, func(net.Conn) (net.Conn, error) {
		t.Error("accept called for a failed dial")
		return nil, errors.New("unreachable")
	}, func() { ended <- struct{}{} })
	if socks.ReplyFromError(err) != socks.ReplyConnectionRefused {
		t.Errorf("dial to a closed port: %v", err)
	}
	select {
	case <-ended:
		t.Error("a flow that never started reported an end")
	case <-time.After(50 * time.Millisecond):
	}
}
