package engine_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"tungate/internal/benchtest"
	"tungate/internal/engine"
	"tungate/internal/leaktest"
	"tungate/socks"
)

// benchDeadline bounds every blocking step of a benchmark, so that a
// broken relay fails it instead of hanging until the test binary's timeout.
const benchDeadline = 2 * time.Minute

// benchLoopback returns both ends of a fresh loopback TCP connection.
func benchLoopback(tb testing.TB) (dialed, accepted *net.TCPConn) {
	tb.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	dialed, err = net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	l.SetDeadline(time.Now().Add(5 * time.Second))
	accepted, err = l.AcceptTCP()
	if err != nil {
		dialed.Close()
		tb.Fatal(err)
	}
	return dialed, accepted
}

// BenchmarkRelayTCP measures the engine's TCP relay (Engine.ServeTCP with
// a Direct outbound) copying a bulk stream between two loopback TCP
// connections: the benchmark's client <-> the engine's client side, and the
// engine's outbound side <-> a loopback sink. One op is one chunk read at
// the far end; a writer streams meanwhile, so the relay runs as it does
// under a bulk transfer.
func BenchmarkRelayTCP(b *testing.B) {
	const chunk = 128 << 10
	tests := []struct {
		name   string
		up     bool // client -> destination; else destination -> client
		bufLen int
	}{
		{"up/buf=32K", true, engine.DefaultRelayBufferSize},
		{"down/buf=32K", false, engine.DefaultRelayBufferSize},
		{"up/buf=256K", true, 256 << 10},
		{"down/buf=256K", false, 256 << 10},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			leaktest.Check(b)
			settings := engine.NewSettings()
			if err := settings.SetRelayBufferSize(tt.bufLen); err != nil {
				b.Fatal(err)
			}
			eng := engine.New(&engine.Direct{}, settings, nil)

			sinkL, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer sinkL.Close()
			dst, _ := socks.AddrFromNetAddr(sinkL.Addr())
			client, clientSide := benchLoopback(b)
			defer client.Close()
			src, _ := socks.AddrFromNetAddr(client.LocalAddr())

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			served := make(chan error, 1)
			go func() {
				served <- eng.ServeTCP(ctx, engine.FlowSpec{Src: src, Dst: dst, Flags: engine.FlagSOCKS},
					func(net.Conn) (net.Conn, error) { return clientSide, nil })
			}()
			sinkL.SetDeadline(time.Now().Add(5 * time.Second))
			sink, err := sinkL.AcceptTCP()
			if err != nil {
				b.Fatal(err)
			}
			defer sink.Close()

			writer, reader := client, sink
			if !tt.up {
				writer, reader = sink, client
			}
			writer.SetDeadline(time.Now().Add(benchDeadline))
			reader.SetDeadline(time.Now().Add(benchDeadline))
			written := benchtest.Stream(b, writer, reader, chunk)
			select {
			case err := <-served:
				if err != nil {
					b.Fatalf("ServeTCP: %v", err)
				}
			case <-time.After(5 * time.Second):
				b.Fatal("the relay did not end after both half-closes")
			}
			m := eng.Registry().Metrics()
			up, down := m.BytesUp, m.BytesDown
			if !tt.up {
				up, down = down, up
			}
			if up != uint64(written) || down != 0 || m.Concurrent != 0 {
				b.Fatalf("counted %d octets the way of the stream and %d back, %d flows open; want %d, 0, 0",
					up, down, m.Concurrent, written)
			}
		})
	}
}

// benchPC is an in-memory socks.PacketConn. ReadFrom yields a datagram
// for each sequence number sent on in, stamped with it in its first 8
// octets, from or to peer; WriteTo hands what it was given to got, and
// succeeds only once the benchmark took it.
type benchPC struct {
	in      chan uint64
	got     chan benchDatagram
	peer    socks.Addr
	payload []byte

	once sync.Once
	done chan struct{}
}

type benchDatagram struct {
	seq  uint64
	n    int
	addr socks.Addr
}

func newBenchPC(peer socks.Addr, payload []byte) *benchPC {
	return &benchPC{
		in:      make(chan uint64, 64),
		got:     make(chan benchDatagram),
		peer:    peer,
		payload: payload,
		done:    make(chan struct{}),
	}
}

func (p *benchPC) ReadFrom(b []byte) (int, socks.Addr, error) {
	select {
	case seq := <-p.in:
		n := copy(b, p.payload)
		binary.BigEndian.PutUint64(b, seq)
		return n, p.peer, nil
	case <-p.done:
		return 0, socks.Addr{}, net.ErrClosed
	}
}

func (p *benchPC) WriteTo(b []byte, a socks.Addr) (int, error) {
	if len(b) < 8 {
		return 0, errors.New("bench: short datagram")
	}
	select {
	case p.got <- benchDatagram{seq: binary.BigEndian.Uint64(b), n: len(b), addr: a}:
		return len(b), nil
	case <-p.done:
		return 0, net.ErrClosed
	}
}

func (p *benchPC) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

// benchUDPOut is an Outbound whose one UDP endpoint is pc.
type benchUDPOut struct{ pc *benchPC }

func (o benchUDPOut) Upstream() bool { return false }
func (o benchUDPOut) DialTCP(context.Context, socks.Addr) (net.Conn, error) {
	return nil, errors.New("bench: no TCP")
}
func (o benchUDPOut) ListenUDP(context.Context) (socks.PacketConn, error) { return o.pc, nil }
func (o benchUDPOut) Bind(context.Context, socks.Addr) (socks.BindListener, error) {
	return nil, errors.New("bench: no BIND")
}

// BenchmarkRelayUDP measures the engine's UDP relay (Engine.ServeUDP)
// between two in-memory PacketConns: one op is one datagram taken at the
// far side, in order, while a feeder keeps the near side supplied.
func BenchmarkRelayUDP(b *testing.B) {
	peer := socks.AddrFromAddrPort(netip.MustParseAddrPort("198.51.100.9:9000"))
	src := socks.AddrFromAddrPort(netip.MustParseAddrPort("192.0.2.2:40000"))
	tests := []struct {
		name string
		up   bool // client -> outbound; else outbound -> client
		size int
	}{
		{"up/1400", true, 1400},
		{"down/1400", false, 1400},
		{"up/64", true, 64},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			leaktest.Check(b)
			payload := make([]byte, tt.size)
			client, out := newBenchPC(peer, payload), newBenchPC(peer, payload)
			eng := engine.New(benchUDPOut{out}, nil, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ready := make(chan struct{})
			served := make(chan error, 1)
			go func() {
				served <- eng.ServeUDP(ctx, engine.FlowSpec{Src: src, Flags: engine.FlagSOCKS}, client,
					func() error { close(ready); return nil })
			}()
			select {
			case <-ready:
			case err := <-served:
				b.Fatalf("ServeUDP: %v", err)
			}

			from, to := client, out
			if !tt.up {
				from, to = out, client
			}
			stop := make(chan struct{})
			fed := make(chan struct{})
			go func() {
				defer close(fed)
				for seq := uint64(0); ; seq++ {
					select {
					case from.in <- seq:
					case <-stop:
						return
					}
				}
			}()

			var seq uint64
			b.ReportAllocs()
			b.SetBytes(int64(tt.size))
			for b.Loop() {
				select {
				case d := <-to.got:
					if d.seq != seq || d.n != tt.size || d.addr != peer {
						b.Fatalf("datagram %d of %d octets for %v; want %d of %d for %v", d.seq, d.n, d.addr, seq, tt.size, peer)
					}
				case err := <-served:
					b.Fatalf("relay ended after %d datagrams: %v", seq, err)
				}
				seq++
			}
			b.StopTimer()

			close(stop)
			<-fed
			cancel()
			select {
			case err := <-served:
				if err != nil {
					b.Fatalf("ServeUDP: %v", err)
				}
			case <-time.After(5 * time.Second):
				b.Fatal("the relay did not end with its context")
			}
			// A write succeeds only once the benchmark took the datagram,
			// so the counts are exactly what arrived.
			m := eng.Registry().Metrics()
			moved, back := m.BytesUp, m.BytesDown
			if !tt.up {
				moved, back = back, moved
			}
			if want := seq * uint64(tt.size); moved != want || back != 0 {
				b.Fatalf("counted %d octets the way of the datagrams and %d back; want %d and 0", moved, back, want)
			}
		})
	}
}
