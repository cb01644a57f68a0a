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
	"time"

	"tungate/internal/leaktest"
)

// refusedPort is the destination port warmHandler refuses.
const refusedPort = 9

// warmHandler answers CONNECT requests without dialing: success and an
// echo of what the client sends, or connection refused for refusedPort.
type warmHandler struct{}

func (warmHandler) Connect(_ context.Context, s *Session) error {
	bind := Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1}
	if s.Request.Addr.Port == refusedPort {
		return s.Reply(ReplyConnectionRefused, bind)
	}
	if err := s.Reply(ReplySucceeded, bind); err != nil {
		return err
	}
	io.Copy(s.Conn, s.Conn)
	return nil
}

func (warmHandler) Bind(context.Context, *Session) error {
	return &ReplyError{Code: ReplyCommandNotSupported}
}

func (warmHandler) Associate(context.Context, *Session, PacketConn) error {
	return &ReplyError{Code: ReplyCommandNotSupported}
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// warmServer runs a Server on loopback and returns the hop for it and its
// listener; opt adjusts the server before it starts.
func warmServer(t *testing.T, opt func(*Server)) (Hop, *countingListener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: l}
	srv := &Server{Handler: warmHandler{}}
	if opt != nil {
		opt(srv)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(cl) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	a, _ := AddrFromNetAddr(l.Addr())
	return Hop{Addr: a}, cl
}

// newWarm returns a WarmDialer for hops, closed at the end of the test.
func newWarm(t *testing.T, size int, idle time.Duration, hops ...Hop) *WarmDialer {
	t.Helper()
	w, err := NewWarmDialer(&Dialer{Hops: hops}, size, idle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// readyLen returns how many connections w has ready.
func (w *WarmDialer) readyLen() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ready)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// warmUp makes two dials in a row, both cold, which ask w to fill its
// pool, and waits for the n connections it keeps ready.
func warmUp(t *testing.T, w *WarmDialer, n int) {
	t.Helper()
	echoes(t, w, warmDst)
	echoes(t, w, warmDst)
	waitFor(t, fmt.Sprintf("%d ready connections", n), func() bool { return w.readyLen() == n })
}

var warmDst = Addr{IP: netip.MustParseAddr("198.18.0.1"), Port: 80}

// echoes dials dst through w and checks that what it sends comes back.
func echoes(t *testing.T, w *WarmDialer, dst Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := w.Dial(ctx, dst)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	msg := []byte("through the warm chain")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestWarmHits(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  func(*Server)
		hop  func(Hop) Hop
	}{
		{name: "no-auth"},
		{
			name: "username/password",
			opt: func(s *Server) {
				s.Authenticate = func(_ context.Context, u, p string, _ netip.AddrPort) bool {
					return u == "alice" && p == "pw"
				}
				s.RequireAuth = func() bool { return true }
			},
			hop: func(h Hop) Hop { h.Username, h.Password = "alice", "pw"; return h },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaktest.Check(t)
			h, l := warmServer(t, tc.opt)
			if tc.hop != nil {
				h = tc.hop(h)
			}
			w := newWarm(t, 2, 5*time.Second, h)
			warmUp(t, w, 2)
			if got := l.n.Load(); got != 4 {
				t.Fatalf("server accepted %d connections, want 4 (2 dials, 2 ready)", got)
			}
			// The next two use them, and each is replaced.
			echoes(t, w, warmDst)
			echoes(t, w, warmDst)
			waitFor(t, "the ready connections replaced", func() bool { return w.readyLen() == 2 })
			if got := l.n.Load(); got != 6 {
				t.Fatalf("server accepted %d connections, want 6", got)
			}
			if got, want := w.Stats(), (WarmStats{Hits: 2, Misses: 2}); got != want {
				t.Fatalf("Stats = %+v, want %+v", got, want)
			}
		})
	}
}

func TestWarmSporadicDialsKeepNone(t *testing.T) {
	leaktest.Check(t)
	h, l := warmServer(t, nil)
	idle := 150 * time.Millisecond
	w := newWarm(t, 2, idle, h)
	for i := range 3 {
		if i > 0 {
			time.Sleep(idle + 50*time.Millisecond)
		}
		echoes(t, w, warmDst)
	}
	time.Sleep(idle)
	if got := l.n.Load(); got != 3 {
		t.Fatalf("server accepted %d connections for 3 dials far apart, want 3", got)
	}
	if got, want := w.Stats(), (WarmStats{Misses: 3}); got != want {
		t.Fatalf("Stats = %+v, want %+v", got, want)
	}
}

func TestWarmExpiryStopsFilling(t *testing.T) {
	leaktest.Check(t)
	h, l := warmServer(t, nil)
	idle := 300 * time.Millisecond
	w := newWarm(t, 2, idle, h)
	warmUp(t, w, 2)
	// Unused for the idle time, they are closed and not replaced.
	waitFor(t, "the ready connections closed", func() bool { return w.readyLen() == 0 })
	time.Sleep(2 * idle)
	if got := l.n.Load(); got != 4 {
		t.Fatalf("server accepted %d connections, want 4: expired ones were replaced", got)
	}
	w.mu.Lock()
	want := w.want
	w.mu.Unlock()
	if want != 0 {
		t.Fatalf("want = %d after expiry, want 0", want)
	}
	// A dial long after the last is a miss and warms nothing.
	echoes(t, w, warmDst)
	time.Sleep(idle / 2)
	if got := l.n.Load(); got != 5 {
		t.Fatalf("server accepted %d connections, want 5", got)
	}
	if st := w.Stats(); st.Hits != 0 || st.Misses != 3 {
		t.Fatalf("Stats = %+v, want 0 hits and 3 misses", st)
	}
}

// A server that closes negotiated connections sooner than the idle time:
// they are found closed before use, the dial goes cold, and the idle time
// comes down below the server's timeout.
func TestWarmStaleConnections(t *testing.T) {
	leaktest.Check(t)
	serverTimeout := 600 * time.Millisecond
	h, _ := warmServer(t, func(s *Server) { s.HandshakeTimeout = serverTimeout })
	w := newWarm(t, 2, 5*time.Second, h)
	warmUp(t, w, 2)
	time.Sleep(serverTimeout + 300*time.Millisecond)
	echoes(t, w, warmDst)
	// The first found closed shortens the idle time, past which the
	// second is dropped unasked; the dial goes cold, or takes one the
	// filler has made meanwhile.
	st := w.Stats()
	if st.Stale < 1 || st.Hits+st.Misses != 3 || st.Retried != 0 {
		t.Fatalf("Stats = %+v, want stale ones, 3 dials, none retried", st)
	}
	w.mu.Lock()
	idle := w.idle
	w.mu.Unlock()
	if idle >= serverTimeout || idle < MinWarmIdle {
		t.Fatalf("idle = %v, want in [%v, %v)", idle, MinWarmIdle, serverTimeout)
	}
	// With the shorter idle time, ready connections are used or closed
	// before the server closes them.
	waitFor(t, "two ready connections", func() bool { return w.readyLen() == 2 })
	echoes(t, w, warmDst)
	echoes(t, w, warmDst)
	if got := w.Stats(); got.Hits != st.Hits+2 || got.Stale != st.Stale {
		t.Fatalf("Stats = %+v, want 2 more hits and still %d stale", got, st.Stale)
	}
}

func TestWarmRefusedKeepsCode(t *testing.T) {
	leaktest.Check(t)
	h, _ := warmServer(t, nil)
	w := newWarm(t, 2, 5*time.Second, h)
	warmUp(t, w, 2)
	refused := warmDst
	refused.Port = refusedPort
	_, err := w.Dial(context.Background(), refused)
	re := AsReplyError(err)
	if re == nil || re.Code != ReplyConnectionRefused || re.Hop != 1 {
		t.Fatalf("Dial = %v, want connection refused from hop 1", err)
	}
	if st := w.Stats(); st.Hits != 1 || st.Retried != 0 {
		t.Fatalf("Stats = %+v, want the refusal on a ready connection, not retried", st)
	}
}

func TestWarmAuthFailure(t *testing.T) {
	leaktest.Check(t)
	h, _ := warmServer(t, func(s *Server) {
		s.Authenticate = func(context.Context, string, string, netip.AddrPort) bool { return false }
		s.RequireAuth = func() bool { return true }
	})
	h.Username, h.Password = "alice", "wrong"
	w := newWarm(t, 2, 5*time.Second, h)
	for range 2 {
		_, err := w.Dial(context.Background(), warmDst)
		re := AsReplyError(err)
		if re == nil || !errors.Is(err, ErrAuthFailed) || re.Hop != 1 {
			t.Fatalf("Dial = %v, want an authentication failure at hop 1", err)
		}
	}
	waitFor(t, "a failed ready connection", func() bool { return w.Stats().Failed > 0 })
	if n := w.readyLen(); n != 0 {
		t.Fatalf("%d connections ready with wrong credentials", n)
	}
}

// scriptServer negotiates no-auth and reads the request, then hands the
// connection and the request to its function.
type scriptServer struct {
	l    net.Listener
	wg   sync.WaitGroup
	open atomic.Int64 // connections not closed yet
}

func newScriptServer(t *testing.T, then func(c net.Conn, r Request)) Hop {
	t.Helper()
	h, _ := newScriptServerWith(t, ReadRequest, then)
	return h
}

// newScriptServerWith is newScriptServer with the request read by read.
func newScriptServerWith(t *testing.T, read func(io.Reader) (Request, error), then func(c net.Conn, r Request)) (Hop, *scriptServer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptServer{l: l}
	var conns sync.Map
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			s.open.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.open.Add(-1)
				defer c.Close()
				defer conns.Delete(c)
				if _, err := ReadGreeting(c); err != nil {
					return
				}
				if _, err := c.Write(AppendMethodSelection(nil, MethodNoAuth)); err != nil {
					return
				}
				r, err := read(c)
				if err != nil {
					return
				}
				then(c, r)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		s.wg.Wait()
	})
	a, _ := AddrFromNetAddr(l.Addr())
	return Hop{Addr: a}, s
}

func replyAndEcho(c net.Conn) {
	bind := Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1}
	if _, err := c.Write(AppendResponse(nil, Response{Reply: ReplySucceeded, Bind: bind})); err != nil {
		return
	}
	io.Copy(c, c)
}

// A ready connection that the server drops on the request, without a
// reply, is retried once on a new connection.
func TestWarmBrokenBeforeReplyRetried(t *testing.T) {
	leaktest.Check(t)
	dropped := warmDst
	dropped.Port = 81
	var drops atomic.Int64
	h := newScriptServer(t, func(c net.Conn, r Request) {
		if r.Addr == dropped && drops.Add(1) == 1 {
			return
		}
		replyAndEcho(c)
	})
	w := newWarm(t, 1, 5*time.Second, h)
	warmUp(t, w, 1)
	echoes(t, w, dropped)
	if st := w.Stats(); st.Retried != 1 || st.Hits != 0 || st.Misses != 3 {
		t.Fatalf("Stats = %+v, want 1 retried, 3 misses (the retried one cold)", st)
	}
}

// A reply that begins on a ready connection is the dial's outcome, whatever
// follows: the server may have connected, so the request is not sent
// again.
func TestWarmBrokenReplyNotRetried(t *testing.T) {
	bind := Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1}
	success := AppendResponse(nil, Response{Reply: ReplySucceeded, Bind: bind})
	for _, tc := range []struct {
		name  string
		reply []byte
		want  error
	}{
		{"cut short", success[:5], ErrShort},
		{"version 4", append([]byte{4}, success[1:]...), nil},
		{"address type 9", append(append([]byte{}, success[:3]...), 9, 0, 0, 0, 0, 0, 0), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaktest.Check(t)
			broken := warmDst
			broken.Port = 83
			var asked atomic.Int64
			h := newScriptServer(t, func(c net.Conn, r Request) {
				if r.Addr == broken {
					asked.Add(1)
					c.Write(tc.reply)
					return
				}
				replyAndEcho(c)
			})
			w := newWarm(t, 1, 5*time.Second, h)
			warmUp(t, w, 1)
			_, err := w.Dial(context.Background(), broken)
			re := AsReplyError(err)
			if re == nil || re.Code != ReplyGeneralFailure || re.Hop != 1 || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Dial = %v, want a general failure at hop 1 (%v)", err, tc.want)
			}
			if st := w.Stats(); st.Retried != 0 || st.Hits != 1 {
				t.Fatalf("Stats = %+v, want 1 hit and no retry", st)
			}
			if n := asked.Load(); n != 1 {
				t.Fatalf("the server was asked %d times, want once", n)
			}
		})
	}
}

// Ready connections the server resets say nothing of its timeout: they
// are dropped and the idle time stays.
func TestWarmResetKeepsIdle(t *testing.T) {
	leaktest.Check(t)
	wait := 150 * time.Millisecond
	h, _ := newScriptServerWith(t, func(r io.Reader) (Request, error) {
		c := r.(net.Conn)
		c.SetReadDeadline(time.Now().Add(wait))
		req, err := ReadRequest(c)
		if err != nil {
			c.(*net.TCPConn).SetLinger(0) // its close is a reset
			return req, err
		}
		c.SetReadDeadline(time.Time{})
		return req, nil
	}, func(c net.Conn, _ Request) { replyAndEcho(c) })
	w := newWarm(t, 2, 5*time.Second, h)
	warmUp(t, w, 2)
	time.Sleep(2 * wait)
	echoes(t, w, warmDst)
	st := w.Stats()
	if st.Stale < 1 || st.Retried != 0 || st.Hits+st.Misses != 3 {
		t.Fatalf("Stats = %+v, want reset ones found stale, 3 dials, none retried", st)
	}
	w.mu.Lock()
	idle := w.idle
	w.mu.Unlock()
	if idle != 5*time.Second {
		t.Fatalf("idle = %v after resets, want 5s still", idle)
	}
}

// An idle time brought down comes back up as ready connections are found
// open at its end.
func TestWarmIdleGrowsBack(t *testing.T) {
	leaktest.Check(t)
	h, _ := warmServer(t, nil)
	w := newWarm(t, 2, 5*time.Second, h)
	warmUp(t, w, 2)
	short := 200 * time.Millisecond
	w.mu.Lock()
	w.idle = short // as if a server had closed one at 400 ms
	w.mu.Unlock()
	w.wake <- struct{}{}
	waitFor(t, "the ready connections expired", func() bool { return w.readyLen() == 0 })
	w.mu.Lock()
	idle := w.idle
	w.mu.Unlock()
	// They expired at an age of at least short, and were open.
	if idle < 2*short || idle > 5*time.Second {
		t.Fatalf("idle = %v after connections found open at %v, want in [%v, 5s]", idle, short, 2*short)
	}
}

// A server that closes ready connections faster than they can be used
// stops the filling for a while, however often dials come.
func TestWarmServerClosesTooSoon(t *testing.T) {
	leaktest.Check(t)
	h, l := warmServer(t, nil)
	w := newWarm(t, 2, 5*time.Second, h)
	w.shorten(150 * time.Millisecond) // first found closed: 75 ms, raised to the least
	w.mu.Lock()
	idle, want := w.idle, w.want
	w.mu.Unlock()
	if idle != MinWarmIdle || want != 0 {
		t.Fatalf("after one: idle %v, want %d; want %v, 0", idle, want, MinWarmIdle)
	}
	w.shorten(50 * time.Millisecond) // again, at the least already: too soon
	echoes(t, w, warmDst)
	echoes(t, w, warmDst)
	echoes(t, w, warmDst)
	time.Sleep(100 * time.Millisecond)
	if got := l.n.Load(); got != 3 {
		t.Fatalf("server accepted %d connections for 3 dials while paused, want 3", got)
	}
	if st := w.Stats(); st.Misses != 3 {
		t.Fatalf("Stats = %+v, want 3 misses", st)
	}
}

// A dial whose context ends while the last hop has not replied on a ready
// connection fails with the context's error and is not retried.
func TestWarmContextEndsBeforeReply(t *testing.T) {
	leaktest.Check(t)
	silent := warmDst
	silent.Port = 82
	h := newScriptServer(t, func(c net.Conn, r Request) {
		if r.Addr == silent {
			io.Copy(io.Discard, c) // no reply, ever
			return
		}
		replyAndEcho(c)
	})
	w := newWarm(t, 1, 5*time.Second, h)
	warmUp(t, w, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := w.Dial(ctx, silent)
	re := AsReplyError(err)
	if re == nil || re.Code != ReplyHostUnreachable || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v, want host unreachable for the deadline", err)
	}
	if st := w.Stats(); st.Retried != 0 || st.Hits != 1 {
		t.Fatalf("Stats = %+v, want 1 hit and no retry", st)
	}
}

// A destination that cannot be encoded fails as it does cold, without
// spending a ready connection.
func TestWarmBadDestination(t *testing.T) {
	leaktest.Check(t)
	h, l := warmServer(t, nil)
	w := newWarm(t, 1, 5*time.Second, h)
	warmUp(t, w, 1)
	bad := Addr{Name: string(bytes.Repeat([]byte("a"), 256)), Port: 80}
	accepted, st := l.n.Load(), w.Stats()
	_, errCold := (&Dialer{Hops: []Hop{h}}).Dial(context.Background(), bad)
	_, err := w.Dial(context.Background(), bad)
	if err == nil || errCold == nil || err.Error() != errCold.Error() {
		t.Fatalf("warm Dial = %v, cold Dial = %v: want the same error", err, errCold)
	}
	time.Sleep(20 * time.Millisecond) // for a refill, had one been spent
	if n, got := w.readyLen(), l.n.Load(); n != 1 || got != accepted {
		t.Fatalf("%d ready connections and %d accepted after the bad dial, want 1 still and %d", n, got, accepted)
	}
	if got := w.Stats(); got != st {
		t.Fatalf("Stats = %+v after the bad dial, want %+v unchanged", got, st)
	}
}

func TestWarmChain(t *testing.T) {
	leaktest.Check(t)
	// hop 1 relays CONNECT to hop 2 (its destination), which echoes.
	last, lastL := warmServer(t, nil)
	first := newScriptServer(t, func(c net.Conn, r Request) {
		up, err := net.Dial("tcp", r.Addr.String())
		if err != nil {
			c.Write(AppendResponse(nil, Response{Reply: ReplyFromError(err), Bind: Addr{IP: netip.IPv4Unspecified()}}))
			return
		}
		defer up.Close()
		bind := Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1}
		if _, err := c.Write(AppendResponse(nil, Response{Reply: ReplySucceeded, Bind: bind})); err != nil {
			return
		}
		done := make(chan struct{})
		go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
		io.Copy(c, up)
		<-done
	})
	w := newWarm(t, 2, 5*time.Second, first, last)
	warmUp(t, w, 2)
	echoes(t, w, warmDst)
	if st := w.Stats(); st.Hits != 1 || st.Misses != 2 {
		t.Fatalf("Stats = %+v, want 1 hit, 2 misses", st)
	}
	// Through the chain, the ready connections reached the last hop.
	if got := lastL.n.Load(); got < 4 {
		t.Fatalf("last hop accepted %d connections, want at least 4", got)
	}
	refused := warmDst
	refused.Port = refusedPort
	_, err := w.Dial(context.Background(), refused)
	if re := AsReplyError(err); re == nil || re.Code != ReplyConnectionRefused || re.Hop != 2 {
		t.Fatalf("Dial = %v, want connection refused from hop 2", err)
	}
}

func TestWarmClose(t *testing.T) {
	leaktest.Check(t)
	h, l := warmServer(t, nil)
	w, err := NewWarmDialer(&Dialer{Hops: []Hop{h}}, 2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	warmUp(t, w, 2)
	// The server's end of each ready connection sees it closed.
	sh, ss := newScriptServerWith(t, ReadRequest, func(c net.Conn, _ Request) { replyAndEcho(c) })
	sw := newWarm(t, 2, 5*time.Second, sh)
	warmUp(t, sw, 2)
	for range 2 {
		if err := w.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		sw.Close()
	}
	if n := w.readyLen(); n != 0 {
		t.Fatalf("%d ready connections after Close", n)
	}
	waitFor(t, "the server's ends closed", func() bool { return ss.open.Load() == 0 })
	before := l.n.Load()
	// Dials after Close still work, each on its own connection.
	echoes(t, w, warmDst)
	echoes(t, w, warmDst)
	time.Sleep(50 * time.Millisecond)
	if got := l.n.Load(); got != before+2 {
		t.Fatalf("server accepted %d connections after Close for 2 dials, want 2", got-before)
	}
}

func TestNewWarmDialerErrors(t *testing.T) {
	h := Hop{Addr: warmDst}
	for _, tc := range []struct {
		name string
		d    *Dialer
		size int
		want error
	}{
		{"no hops", &Dialer{}, 2, ErrNoHops},
		{"size 0", &Dialer{Hops: []Hop{h}}, 0, nil},
		{"negative size", &Dialer{Hops: []Hop{h}}, -1, nil},
	} {
		w, err := NewWarmDialer(tc.d, tc.size, 0)
		if err == nil {
			w.Close()
			t.Errorf("%s: no error", tc.name)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}
