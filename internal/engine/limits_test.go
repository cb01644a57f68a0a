package engine_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"tungate/internal/engine"
	"tungate/socks"
)

// pipeListener is an in-memory net.Listener: Dial returns one end of a
// net.Pipe and Accept the other, so servers run inside a synctest bubble.
type pipeListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) Dial() net.Conn {
	a, b := net.Pipe()
	select {
	case l.conns <- b:
	case <-l.done:
		b.Close()
	}
	return a
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// pipeOut is an Outbound whose connections are in-memory pipes; the test
// holds the far ends.
type pipeOut struct {
	far chan net.Conn
}

func (o *pipeOut) Upstream() bool { return false }
func (o *pipeOut) DialTCP(ctx context.Context, _ socks.Addr) (net.Conn, error) {
	a, b := net.Pipe()
	o.far <- b
	return a, nil
}
func (o *pipeOut) ListenUDP(context.Context) (socks.PacketConn, error) {
	return nil, errors.New("no UDP")
}
func (o *pipeOut) Bind(context.Context, socks.Addr) (socks.BindListener, error) {
	return nil, errors.New("no BIND")
}

// serve runs a SOCKS server on l until the test's cleanup.
func serve(t *testing.T, srv *socks.Server, l net.Listener) {
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// connect runs a no-auth CONNECT handshake on c and returns the reply.
func connect(t *testing.T, c net.Conn) socks.Response {
	t.Helper()
	go func() {
		b, _ := socks.AppendGreeting(nil, socks.Greeting{Methods: []socks.Method{socks.MethodNoAuth}})
		b, _ = socks.AppendRequest(b, socks.Request{Cmd: socks.CmdConnect, Addr: socks.Addr{Name: "example.test", Port: 80}})
		c.Write(b)
	}()
	if m, err := socks.ReadMethodSelection(c); err != nil || m != socks.MethodNoAuth {
		t.Fatalf("method selection: %v, %v", m, err)
	}
	resp, err := socks.ReadResponse(c)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestHandshakeTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newPipeListener()
		srv := &socks.Server{Handler: engine.New(&pipeOut{}, nil, nil).SOCKSHandler(), HandshakeTimeout: 10 * time.Second}
		serve(t, srv, l)
		c := l.Dial()
		defer c.Close()
		c.Write([]byte{0x05, 0x01}) // a greeting cut short: the method never comes
		start := time.Now()
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("read: %v; want EOF when the server gives up", err)
		}
		if el := time.Since(start); el != 10*time.Second {
			t.Fatalf("closed after %v, want exactly the 10s handshake timeout", el)
		}
	})
}

func TestMaxSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newPipeListener()
		srv := &socks.Server{Handler: engine.New(&pipeOut{}, nil, nil).SOCKSHandler(), MaxSessions: 1}
		serve(t, srv, l)
		first := l.Dial()
		defer first.Close()
		synctest.Wait()
		second := l.Dial()
		defer second.Close()
		if _, err := second.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("second session: %v; want closed at once", err)
		}
		// Once the first ends, there is room again.
		first.Close()
		synctest.Wait()
		third := l.Dial()
		defer third.Close()
		third.Write([]byte{0x05, 0x01, 0x00})
		if m, err := socks.ReadMethodSelection(third); err != nil || m != socks.MethodNoAuth {
			t.Fatalf("third session: %v, %v", m, err)
		}
	})
}

func TestTCPIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		out := &pipeOut{far: make(chan net.Conn, 1)}
		eng := engine.New(out, nil, nil)
		if err := eng.Settings().SetTCPIdleTimeout(time.Minute); err != nil {
			t.Fatal(err)
		}
		l := newPipeListener()
		serve(t, &socks.Server{Handler: eng.SOCKSHandler()}, l)
		c := l.Dial()
		defer c.Close()
		if r := connect(t, c); r.Reply != socks.ReplySucceeded {
			t.Fatalf("reply %v", r.Reply)
		}
		far := <-out.far
		defer far.Close()
		go io.Copy(io.Discard, far)

		// Traffic every 40 s keeps the flow alive past the timeout.
		for range 3 {
			time.Sleep(40 * time.Second)
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatalf("write: %v", err)
			}
			synctest.Wait()
		}
		if n := eng.Registry().Metrics().Concurrent; n != 1 {
			t.Fatalf("%d flows open; the active flow was closed", n)
		}
		// Then a minute of silence closes it.
		start := time.Now()
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("read succeeded; want the idle flow closed")
		}
		if el := time.Since(start); el != time.Minute {
			t.Fatalf("closed after %v of silence, want 1m", el)
		}
		synctest.Wait()
		if n := eng.Registry().Metrics().Concurrent; n != 0 {
			t.Fatalf("%d flows open after the idle timeout", n)
		}
	})
}
