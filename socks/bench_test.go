package socks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"tungate/internal/leaktest"
)

// benchListener is an in-memory net.Listener: dial returns one end of a
// net.Pipe and Accept the other, so a benchmark measures the server's
// negotiation and not the kernel's loopback.
type benchListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newBenchListener() *benchListener {
	return &benchListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *benchListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *benchListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *benchListener) Addr() net.Addr { return benchPipeAddr{} }

func (l *benchListener) dial() (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.conns <- b:
		return a, nil
	case <-l.done:
		a.Close()
		b.Close()
		return nil, net.ErrClosed
	}
}

type benchPipeAddr struct{}

func (benchPipeAddr) Network() string { return "pipe" }
func (benchPipeAddr) String() string  { return "pipe" }

// benchHandler answers every CONNECT with success at once and counts the
// sessions it saw, checking that each carried the request and user the
// client sent.
type benchHandler struct {
	bind    Addr
	dst     Addr
	user    string
	handled atomic.Int64
	mu      sync.Mutex
	err     error
}

func (h *benchHandler) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.err = err
	}
}

func (h *benchHandler) Connect(_ context.Context, s *Session) error {
	if s.Request.Addr != h.dst || s.User != h.user {
		h.fail(fmt.Errorf("session for %v as %q, want %v as %q", s.Request.Addr, s.User, h.dst, h.user))
	}
	if err := s.Reply(ReplySucceeded, h.bind); err != nil {
		h.fail(err)
		return err
	}
	h.handled.Add(1)
	return nil
}

func (h *benchHandler) Bind(context.Context, *Session) error {
	return &ReplyError{Code: ReplyCommandNotSupported}
}

func (h *benchHandler) Associate(context.Context, *Session, PacketConn) error {
	return &ReplyError{Code: ReplyCommandNotSupported}
}

// handshakeCase is one client's side of a negotiation: the messages it
// sends, and what the server must answer.
type handshakeCase struct {
	name string
	user UserPass // zero: no-auth
	dst  Addr
}

var handshakeCases = []handshakeCase{
	{"no-auth/ipv4", UserPass{}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}},
	{"no-auth/domain", UserPass{}, Addr{Name: "example.com", Port: 443}},
	{"userpass/ipv4", UserPass{Username: "alice", Password: "correct horse"}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}},
}

// handshakeWire is what a client of hc sends, message by message, and
// what the server answers to each.
type handshakeWire struct {
	greeting, userPass, request []byte
	method, status, reply       []byte
}

func (hc handshakeCase) wire(tb testing.TB, bind Addr) handshakeWire {
	tb.Helper()
	var w handshakeWire
	var err error
	m := MethodNoAuth
	if hc.user.Username != "" {
		m = MethodUserPass
		if w.userPass, err = AppendUserPass(nil, hc.user); err != nil {
			tb.Fatal(err)
		}
		w.status = AppendUserPassStatus(nil, UserPassSuccess)
	}
	if w.greeting, err = AppendGreeting(nil, Greeting{Methods: []Method{m}}); err != nil {
		tb.Fatal(err)
	}
	if w.request, err = AppendRequest(nil, Request{Cmd: CmdConnect, Addr: hc.dst}); err != nil {
		tb.Fatal(err)
	}
	w.method = AppendMethodSelection(nil, m)
	w.reply = AppendResponse(nil, Response{Reply: ReplySucceeded, Bind: bind})
	return w
}

// BenchmarkHandshake is one full server-side SOCKS5 negotiation per op:
// greeting, method selection, RFC 1929 subnegotiation where the case has a
// user, CONNECT request and success reply. "server" runs it through
// Server.Serve over an in-memory connection (a session goroutine, the
// handler, the connection's close); "codec" runs only the Read/Append
// functions the server uses, on a byte stream.
func BenchmarkHandshake(b *testing.B) {
	bind := Addr{IP: netip.MustParseAddr("192.0.2.7"), Port: 40000}
	for _, hc := range handshakeCases {
		b.Run("server/"+hc.name, func(b *testing.B) { benchHandshakeServer(b, hc, bind) })
	}
	for _, hc := range handshakeCases {
		b.Run("codec/"+hc.name, func(b *testing.B) { benchHandshakeCodec(b, hc, bind) })
	}
}

func benchHandshakeServer(b *testing.B, hc handshakeCase, bind Addr) {
	leaktest.Check(b)
	w := hc.wire(b, bind)
	h := &benchHandler{bind: bind, dst: hc.dst, user: hc.user.Username}
	srv := &Server{Handler: h}
	if hc.user.Username != "" {
		srv.Authenticate = func(_ context.Context, user, password string, _ netip.AddrPort) bool {
			return user == hc.user.Username && password == hc.user.Password
		}
		srv.RequireAuth = func() bool { return true }
	}
	l := newBenchListener()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()

	// step sends msg and reads the answer, which must be want.
	buf := make([]byte, MaxRequestLen)
	step := func(c net.Conn, what string, msg, want []byte) {
		if _, err := c.Write(msg); err != nil {
			b.Fatalf("%s: write: %v", what, err)
		}
		if _, err := io.ReadFull(c, buf[:len(want)]); err != nil {
			b.Fatalf("%s: read: %v", what, err)
		}
		if !bytes.Equal(buf[:len(want)], want) {
			b.Fatalf("%s: got % x, want % x", what, buf[:len(want)], want)
		}
	}

	b.ReportAllocs()
	var ops int64
	for b.Loop() {
		c, err := l.dial()
		if err != nil {
			b.Fatal(err)
		}
		step(c, "greeting", w.greeting, w.method)
		if w.userPass != nil {
			step(c, "username/password", w.userPass, w.status)
		}
		step(c, "request", w.request, w.reply)
		c.Close()
		ops++
	}
	b.StopTimer()

	srv.Close()
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		b.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	if h.err != nil {
		b.Fatal(h.err)
	}
	if got := h.handled.Load(); got != ops {
		b.Fatalf("handler completed %d sessions, want %d", got, ops)
	}
}

func benchHandshakeCodec(b *testing.B, hc handshakeCase, bind Addr) {
	w := hc.wire(b, bind)
	in := append(append(append([]byte{}, w.greeting...), w.userPass...), w.request...)
	want := append(append(append([]byte{}, w.method...), w.status...), w.reply...)
	r := bytes.NewReader(in)
	out := make([]byte, 0, 2*MaxRequestLen)

	b.ReportAllocs()
	for b.Loop() {
		r.Reset(in)
		out = out[:0]
		g, err := ReadGreeting(r)
		if err != nil {
			b.Fatal(err)
		}
		m := MethodNoAuth
		if g.Has(MethodUserPass) {
			m = MethodUserPass
		}
		out = AppendMethodSelection(out, m)
		if m == MethodUserPass {
			up, err := ReadUserPass(r)
			if err != nil {
				b.Fatal(err)
			}
			if up != hc.user {
				b.Fatalf("credentials %+v, want %+v", up, hc.user)
			}
			out = AppendUserPassStatus(out, UserPassSuccess)
		}
		req, err := ReadRequest(r)
		if err != nil {
			b.Fatal(err)
		}
		if req.Cmd != CmdConnect || req.Addr != hc.dst {
			b.Fatalf("request %+v, want connect %v", req, hc.dst)
		}
		out = AppendResponse(out, Response{Reply: ReplySucceeded, Bind: bind})
		if r.Len() != 0 || !bytes.Equal(out, want) {
			b.Fatalf("%d octets left over; answered % x, want % x", r.Len(), out, want)
		}
	}
}

// BenchmarkUDPEncapsulation wraps a 1400-octet payload in the RFC 1928
// section 7 UDP request header and parses it back, per op, as the UDP
// relay does for every datagram.
func BenchmarkUDPEncapsulation(b *testing.B) {
	const payloadLen = 1400
	payload := bytes.Repeat([]byte{0xa5}, payloadLen)
	payload[payloadLen-1] = 0x5a
	tests := []struct {
		name string
		addr Addr
	}{
		{"ipv4", Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 53}},
		{"ipv6", Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 53}},
		{"domain", Addr{Name: "resolver.example.com", Port: 53}},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			buf := make([]byte, 0, MaxUDPHeaderLen+payloadLen)
			hdrLen := udpHdrFixedLen + tt.addr.EncodedLen()
			b.ReportAllocs()
			b.SetBytes(payloadLen)
			for b.Loop() {
				pkt, err := AppendUDPHeader(buf[:0], UDPHeader{Addr: tt.addr})
				if err != nil {
					b.Fatal(err)
				}
				pkt = append(pkt, payload...)
				h, off, err := ParseUDPHeader(pkt)
				if err != nil {
					b.Fatal(err)
				}
				if h.Addr != tt.addr || h.Frag != 0 || off != hdrLen || len(pkt)-off != payloadLen || pkt[len(pkt)-1] != 0x5a {
					b.Fatalf("parsed %+v, payload at %d of %d; want %v, payload of %d at %d", h, off, len(pkt), tt.addr, payloadLen, hdrLen)
				}
			}
		})
	}
}
