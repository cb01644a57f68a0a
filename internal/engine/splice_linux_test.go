package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tungate/internal/leaktest"
	"tungate/socks"
)

// testMSS is the segment size of tcpPair's connections: that of a 9000
// MTU, under spliceMaxMSS (loopback's own is 64 KiB).
const testMSS = 8948

// tcpPair returns the two ends of a loopback TCP connection with segments
// of testMSS.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	return tcpPairMSS(t, testMSS)
}

// tcpPairMSS is tcpPair with segments of mss (0: loopback's own).
func tcpPairMSS(t *testing.T, mss int) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	control := func(_, _ string, c syscall.RawConn) error {
		if mss == 0 {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss) }); err != nil {
			return err
		}
		return serr
	}
	lc := net.ListenConfig{Control: control}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := ln.(*net.TCPListener)
	defer l.Close()
	d := net.Dialer{Control: control}
	ac, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := ac.(*net.TCPConn)
	b, err := l.AcceptTCP()
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// spliceRig is a relay between two kernel TCP connections, as the SOCKS5
// server runs one: client <-> clientSide (relay) upSide <-> server.
type spliceRig struct {
	client, server *net.TCPConn
	r              *tcpRelay
	f              *Flow
	done           chan struct{} // closed when the relay has ended
}

// newSpliceRig starts the relay; sndBuf, when set, is the send buffer of
// the relay's own sockets, so that its writes find them full.
func newSpliceRig(t *testing.T, sndBuf int) *spliceRig {
	t.Helper()
	e := New(&Direct{}, nil, nil)
	client, clientSide := tcpPair(t)
	upSide, server := tcpPair(t)
	if sndBuf > 0 {
		clientSide.SetWriteBuffer(sndBuf)
		upSide.SetWriteBuffer(sndBuf)
	}
	a := socks.AddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:4000"))
	f, err := e.reg.Open(FlowSpec{Proto: ProtoTCP, Src: a, Dst: a})
	if err != nil {
		t.Fatal(err)
	}
	rig := &spliceRig{client: client, server: server, f: f, done: make(chan struct{})}
	rig.r = e.startRelay(context.Background(), f, clientSide, upSide)
	go func() {
		defer close(rig.done)
		rig.r.downward.run()
		rig.r.end()
		f.Close()
	}()
	t.Cleanup(func() {
		rig.r.abort()
		<-rig.done
	})
	return rig
}

func (rig *spliceRig) wait(t *testing.T) {
	t.Helper()
	select {
	case <-rig.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end")
	}
}

// sendRecv writes n random bytes to w and closes its write side, reads r
// to EOF, and reports whether what arrived is what was sent. The reader
// pauses now and then when slow is set, so that the relay's socket
// towards it fills up.
func sendRecv(t *testing.T, w, r *net.TCPConn, n int, slow bool) <-chan error {
	out := make(chan error, 1)
	data := make([]byte, n)
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	want := sha256.Sum256(data)
	go func() {
		w.SetWriteDeadline(time.Now().Add(20 * time.Second))
		if _, err := w.Write(data); err != nil {
			out <- err
			return
		}
		out <- w.CloseWrite()
	}()
	got := make(chan error, 1)
	go func() {
		r.SetReadDeadline(time.Now().Add(20 * time.Second))
		h := sha256.New()
		buf := make([]byte, 64<<10)
		total := 0
		for i := 0; ; i++ {
			if slow && i%16 == 0 {
				time.Sleep(time.Millisecond)
			}
			k, err := r.Read(buf)
			h.Write(buf[:k])
			total += k
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				got <- err
				return
			}
		}
		if total != n || !bytes.Equal(h.Sum(nil), want[:]) {
			got <- errors.New("what arrived is not what was sent")
			return
		}
		got <- nil
	}()
	res := make(chan error, 1)
	go func() {
		werr := <-out
		rerr := <-got
		res <- errors.Join(werr, rerr)
	}()
	return res
}

// TestSpliceRelay: between two kernel TCP sockets the relay moves every
// byte through the kernel (splice), both ways at once, to a fast and to
// a slow reader, passes each half-close on, and counts what it moved.
func TestSpliceRelay(t *testing.T) {
	leaktest.Check(t)
	for _, slow := range []bool{false, true} {
		name := "fast"
		if slow {
			name = "slow"
		}
		t.Run(name, func(t *testing.T) {
			sndBuf := 0
			if slow {
				sndBuf = 16 << 10
			}
			rig := newSpliceRig(t, sndBuf)
			if rig.r.upward.splice == nil || rig.r.downward.splice == nil {
				t.Fatal("no splicer between two kernel TCP sockets")
			}
			const n = 8 << 20
			up := sendRecv(t, rig.client, rig.server, n, slow)
			down := sendRecv(t, rig.server, rig.client, n+12345, slow)
			if err := <-up; err != nil {
				t.Fatalf("up: %v", err)
			}
			if err := <-down; err != nil {
				t.Fatalf("down: %v", err)
			}
			rig.wait(t)
			info := rig.f.Info(time.Now())
			if info.BytesUp != n || info.BytesDown != n+12345 {
				t.Errorf("counted %d up, %d down; want %d, %d", info.BytesUp, info.BytesDown, n, n+12345)
			}
			if m := rig.r.upward.splice.moved; m != n {
				t.Errorf("spliced %d of %d bytes up", m, n)
			}
			if m := rig.r.downward.splice.moved; m != n+12345 {
				t.Errorf("spliced %d of %d bytes down", m, n+12345)
			}
		})
	}
}

// TestSpliceReset: a reset from the server reaches the client as a
// reset, and the relay ends.
func TestSpliceReset(t *testing.T) {
	leaktest.Check(t)
	rig := newSpliceRig(t, 0)
	msg := []byte("before the reset")
	if _, err := rig.client.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	rig.server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(rig.server, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("server read %q, %v", got, err)
	}
	rig.server.SetLinger(0)
	rig.server.Close()
	rig.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := rig.client.Read(got)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read after the server's reset: %v, want ECONNRESET", err)
	}
	rig.wait(t)
}

// TestSpliceNoPipe: without pipes (out of descriptors) the relay copies
// as it would without splice.
func TestSpliceNoPipe(t *testing.T) {
	leaktest.Check(t)
	newPipeFn = func() *pipe { return nil }
	defer func() { newPipeFn = newPipe }()
	// Empty the pool.
	for len(pipes) > 0 {
		(<-pipes).close()
	}
	rig := newSpliceRig(t, 0)
	const n = 1 << 20
	up := sendRecv(t, rig.client, rig.server, n, false)
	down := sendRecv(t, rig.server, rig.client, n, false)
	if err := errors.Join(<-up, <-down); err != nil {
		t.Fatal(err)
	}
	rig.wait(t)
	if m := rig.r.upward.splice.moved + rig.r.downward.splice.moved; m != 0 {
		t.Errorf("spliced %d bytes with no pipe to be had", m)
	}
	if info := rig.f.Info(time.Now()); info.BytesUp != n || info.BytesDown != n {
		t.Errorf("counted %d up, %d down; want %d each", info.BytesUp, info.BytesDown, n)
	}
}

// TestSplicerOnlyKernelTCP: a splicer needs the runtime's own TCP sockets
// at both ends: not a pipe, not a wrapper that may hold bytes of its own;
// and segments no larger than spliceMaxMSS where it sends.
func TestSplicerOnlyKernelTCP(t *testing.T) {
	a, b := tcpPair(t)
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	type wrapped struct{ *net.TCPConn }
	if newSplicer(a, b) == nil {
		t.Error("no splicer between two TCP sockets")
	}
	// Segments of 64 KiB: copied (see spliceMaxMSS).
	big1, big2 := tcpPairMSS(t, 0)
	if newSplicer(big1, big2) != nil {
		t.Error("a splicer towards a socket with 64 KiB segments")
	}
	for _, c := range []struct {
		name     string
		src, dst net.Conn
	}{
		{"pipe to TCP", p1, b},
		{"TCP to pipe", a, p2},
		{"wrapped TCP", wrapped{a}, b},
	} {
		if newSplicer(c.src, c.dst) != nil {
			t.Errorf("%s: a splicer", c.name)
		}
	}
}

// fdCount is how many descriptors the process has open.
func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}

// drainPool closes the pipes the pool holds, so that a count of
// descriptors shows only those in use.
func drainPool() {
	for {
		select {
		case p := <-pipes:
			p.close()
		default:
			return
		}
	}
}

// TestSplicePipesClosed: pipes do not pile up: after many relays, and
// relays that ended in the middle of a transfer (a pipe holding bytes
// is closed, not pooled, so no other relay sends them), the process
// holds no more descriptors than before and a pool's worth; and every
// relay after one that broke moves its own bytes only.
func TestSplicePipesClosed(t *testing.T) {
	leaktest.Check(t)
	count := func() int { drainPool(); return fdCount(t) }
	before := count()
	for i := range 20 {
		rig := newSpliceRig(t, 0)
		if i%2 == 0 {
			if err := <-sendRecv(t, rig.client, rig.server, 256<<10, false); err != nil {
				t.Fatal(err)
			}
			rig.server.CloseWrite()
		} else {
			// The server resets in the middle of the transfer, so that a
			// pipe may be left holding bytes.
			rig.server.SetReadBuffer(4 << 10)
			rig.client.SetWriteDeadline(time.Now().Add(5 * time.Second))
			go rig.client.Write(make([]byte, 4<<20))
			time.Sleep(5 * time.Millisecond)
			rig.server.SetLinger(0)
			rig.server.Close()
		}
		rig.wait(t)
		rig.client.Close()
		rig.server.Close()
	}
	// The sockets are closed by now (the relay's own ones by its abort).
	if n := count(); n > before {
		t.Fatalf("%d descriptors open, %d before", n, before)
	}
}

// TestSpliceIdleHoldsNoPipe: relays with nothing to move hold no pipe:
// their descriptors are their four sockets.
func TestSpliceIdleHoldsNoPipe(t *testing.T) {
	leaktest.Check(t)
	// One relay that moved something first, so that the pool is warm.
	warm := newSpliceRig(t, 0)
	if err := <-sendRecv(t, warm.client, warm.server, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	drainPool()
	before := fdCount(t)
	const rigs = 20
	for range rigs {
		rig := newSpliceRig(t, 0)
		// Something through each, then idle.
		rig.client.Write([]byte("x"))
		b := make([]byte, 1)
		rig.server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(rig.server, b); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond) // let every direction go back to waiting
	drainPool()
	if n := fdCount(t) - before; n > 4*rigs {
		t.Errorf("%d idle relays hold %d descriptors, want %d for their sockets", rigs, n, 4*rigs)
	}
}

// TestSpliceUrgent: urgent data (MSG_OOB), at which splice stops for
// good, is relayed as a read would: the bytes around it arrive, the
// urgent byte does not (it is not in the stream without SO_OOBINLINE),
// and the EOF after it too.
func TestSpliceUrgent(t *testing.T) {
	leaktest.Check(t)
	for _, tt := range []struct {
		name string
		more bool // more data once the urgent byte is past; else the FIN right after it
	}{{"more after", true}, {"FIN right after", false}} {
		t.Run(tt.name, func(t *testing.T) {
			rig := newSpliceRig(t, 0)
			rc, err := rig.client.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := rig.client.Write([]byte("abc")); err != nil {
				t.Fatal(err)
			}
			var serr error
			rc.Write(func(fd uintptr) bool {
				serr = unix.Sendto(int(fd), []byte("X"), unix.MSG_OOB, nil)
				return true
			})
			if serr != nil {
				t.Fatal(serr)
			}
			if _, err := rig.client.Write([]byte("def")); err != nil {
				t.Fatal(err)
			}
			want := "abcdef"
			if tt.more {
				// Once the urgent byte is past, splice carries on.
				time.Sleep(20 * time.Millisecond)
				if _, err := rig.client.Write([]byte("ghi")); err != nil {
					t.Fatal(err)
				}
				want += "ghi"
			}
			rig.client.CloseWrite()
			rig.server.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(rig.server)
			if err != nil || string(got) != want {
				t.Fatalf("server got %q, %v; want %q and EOF", got, err, want)
			}
			rig.server.CloseWrite()
			rig.wait(t)
		})
	}
}

// TestSpliceNoWait: a step that must not wait (a watcher's drain) says
// idle when there is nothing, holding no pipe, and moves what there is.
func TestSpliceNoWait(t *testing.T) {
	leaktest.Check(t)
	e := New(&Direct{}, nil, nil)
	client, clientSide := tcpPair(t)
	upSide, server := tcpPair(t)
	a := socks.AddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:4000"))
	f, err := e.reg.Open(FlowSpec{Proto: ProtoTCP, Src: a, Dst: a})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := newDirection(e, f, upSide, clientSide, true, new(atomic.Int32), func() {})
	if d.splice == nil {
		t.Fatal("no splicer")
	}
	drainPool()
	before := fdCount(t)
	for range 50 {
		if more, idle := d.step(false); !more || !idle {
			t.Fatalf("step with nothing to read: more %v idle %v, want true, true", more, idle)
		}
	}
	// At most one pipe, back in the pool.
	if n := fdCount(t) - before; n > 2 {
		t.Errorf("50 idle steps left %d more descriptors open", n)
	}
	client.Write([]byte("hello"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		more, idle := d.step(false)
		if !more {
			t.Fatal("the direction ended")
		}
		if !idle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the data never came")
		}
		time.Sleep(time.Millisecond)
	}
	b := make([]byte, 5)
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, b); err != nil || string(b) != "hello" || d.splice.moved != 5 {
		t.Fatalf("server got %q, %v; spliced %d", b, err, d.splice.moved)
	}
	client.CloseWrite()
	for {
		more, idle := d.step(false)
		if !more {
			break
		}
		if !idle || time.Now().After(deadline) {
			t.Fatalf("after the client's FIN: more %v idle %v", more, idle)
		}
		time.Sleep(time.Millisecond)
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(b); err != io.EOF {
		t.Fatalf("server read after the FIN: %v, want EOF", err)
	}
}
