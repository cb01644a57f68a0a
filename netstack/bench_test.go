package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"tungate/internal/benchtest"
	"tungate/internal/leaktest"
	"tungate/socks"
)

// benchDeadline bounds every blocking step of a benchmark, so that a
// broken path fails it instead of hanging until the test binary's timeout.
const benchDeadline = 2 * time.Minute

// newBenchRig is newRigOn with an in-memory link of the given MTU.
func newBenchRig(tb testing.TB, out *fakeOut, mtu int) *rig {
	tb.Helper()
	gwDev, clientDev := newPipe(mtu)
	return newRigOn(tb, out, gwDev, clientDev)
}

// BenchmarkStackTCP measures bulk TCP through the gateway: a connection
// from the client gVisor stack, over the in-memory link, terminated by the
// gateway's stack, relayed by the engine and out through the fake
// outbound to a loopback sink. One op is one chunk read at the far end
// while a writer streams.
func BenchmarkStackTCP(b *testing.B) {
	const chunk = 64 << 10
	tests := []struct {
		name string
		dst  netip.Addr
		up   bool // client -> sink; else sink -> client
		mtu  int
	}{
		{"v4/up/mtu=1500", serverV4, true, 1500},
		{"v4/down/mtu=1500", serverV4, false, 1500},
		{"v6/up/mtu=1500", serverV6, true, 1500},
		{"v4/up/mtu=9000", serverV4, true, 9000},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			leaktest.Check(b)
			sinkL, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer sinkL.Close()
			r := newBenchRig(b, &fakeOut{echo: sinkL.Addr().String()}, tt.mtu)

			fa, proto := fullAddr(tt.dst, 80)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			client, err := gonet.DialContextTCP(ctx, r.client, fa, proto)
			if err != nil {
				b.Fatal(err)
			}
			defer client.Close()
			sinkL.SetDeadline(time.Now().Add(5 * time.Second))
			sink, err := sinkL.AcceptTCP()
			if err != nil {
				b.Fatal(err)
			}
			defer sink.Close()

			var writer, reader benchtest.HalfCloser = client, sink
			if !tt.up {
				writer, reader = sink, client
			}
			writer.SetDeadline(time.Now().Add(benchDeadline))
			reader.SetDeadline(time.Now().Add(benchDeadline))
			written := benchtest.Stream(b, writer, reader, chunk)
			if tt.up {
				waitCounts(b, r.eng, uint64(written), 0)
			} else {
				waitCounts(b, r.eng, 0, uint64(written))
			}
		})
	}
}

// BenchmarkStackUDP measures datagrams from a client UDP endpoint on the
// client stack, over the in-memory link, through the gateway's UDP mapper
// and the engine's relay to the fake outbound. One op is one datagram;
// up to benchUDPWindow are in flight, fewer than the mapper's queue holds,
// so none should be dropped. Drops, if any, are reported as drops/op.
func BenchmarkStackUDP(b *testing.B) {
	const benchUDPWindow = 64
	tests := []struct {
		name   string
		client netip.Addr
		server netip.Addr
		size   int
	}{
		{"v4/1400", clientV4, serverV4, 1400},
		{"v6/1400", clientV6, serverV6, 1400},
		{"v4/64", clientV4, serverV4, 64},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			leaktest.Check(b)
			out := &fakeOut{newPC: make(chan *fakePC, 1)}
			r := newBenchRig(b, out, 1500)
			src := netip.AddrPortFrom(tt.client, 5000)
			dst := socks.AddrFromAddrPort(netip.AddrPortFrom(tt.server, 9000))
			la, proto := fullAddr(src.Addr(), src.Port())
			ra, _ := fullAddr(tt.server, dst.Port)
			c, err := gonet.DialUDP(r.client, &la, &ra, proto)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(benchDeadline))
			payload := make([]byte, tt.size)
			for i := range payload {
				payload[i] = byte(i)
			}

			// The first datagram opens the mapping and its association.
			if _, err := c.Write(payload); err != nil {
				b.Fatal(err)
			}
			var pc *fakePC
			select {
			case pc = <-out.newPC:
			case <-time.After(5 * time.Second):
				b.Fatal("no association opened")
			}
			check := func(d fakeDatagram) {
				if len(d.data) != tt.size || d.addr != dst || d.data[tt.size-1] != payload[tt.size-1] {
					b.Fatalf("outbound got %d octets for %v, want %d for %v", len(d.data), d.addr, tt.size, dst)
				}
			}
			select {
			case d := <-pc.sent:
				check(d)
			case <-time.After(5 * time.Second):
				b.Fatal("the first datagram did not arrive")
			}
			r.gw.udp.mu.Lock()
			m := r.gw.udp.maps[src]
			r.gw.udp.mu.Unlock()
			if m == nil {
				b.Fatalf("no mapping for %v", src)
			}
			base := r.eng.Registry().Metrics()

			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			var sent, received, dropped uint64
			stalls := 0
			// recv takes one datagram at the outbound, or learns that the
			// mapper dropped some.
			recv := func() {
				for {
					select {
					case d := <-pc.sent:
						check(d)
						received++
						stalls = 0
						return
					case <-tick.C:
						if n := m.dropped.Load(); n > dropped {
							dropped = n
							return
						}
						if stalls++; stalls > 50 {
							b.Fatalf("nothing arrived for 5 s: sent %d, received %d, dropped %d", sent, received, dropped)
						}
					}
				}
			}

			b.ReportAllocs()
			b.SetBytes(int64(tt.size))
			for b.Loop() {
				if _, err := c.Write(payload); err != nil {
					b.Fatal(err)
				}
				sent++
				for sent-received-dropped > benchUDPWindow {
					recv()
				}
			}
			b.StopTimer()

			for sent > received+dropped {
				recv()
			}
			if sent != received+dropped {
				b.Fatalf("sent %d datagrams, %d arrived and %d were dropped", sent, received, dropped)
			}
			b.ReportMetric(float64(dropped)/float64(sent), "drops/op")
			waitCounts(b, r.eng, base.BytesUp+received*uint64(tt.size), base.BytesDown)
		})
	}
}

// BenchmarkStackConnect measures a short connection through the gateway:
// the client stack's SYN over the in-memory link, the engine's dial (to a
// loopback echo server), the SYN-ACK, one byte each way and the close.
// One op is one connection, one at a time, so the figure is the
// gateway's cost per connection with none of it shared between
// connections.
func BenchmarkStackConnect(b *testing.B) {
	leaktest.Check(b)
	echo := loopbackServer(b, func(c net.Conn) { io.Copy(c, c) })
	r := newBenchRig(b, &fakeOut{echo: echo}, 1500)
	fa, proto := fullAddr(serverV4, 80)
	buf := make([]byte, 1)
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), benchDeadline)
		c, err := gonet.DialContextTCP(ctx, r.client, fa, proto)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(benchDeadline))
		if _, err := c.Write([]byte{'x'}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'x' {
			b.Fatalf("echo: %q, %v", buf, err)
		}
		c.Close()
	}
}
