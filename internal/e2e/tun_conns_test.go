package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTUNUDPFullCone: the netstack's UDP mapping is endpoint-independent.
// A socket in gw (its datagrams enter the TUN) sends from one port to peer
// A; A sees the mapped address M (gw's uplink and tungate's outbound
// port). Peer B, never contacted, sends to M and the socket receives it
// from B; then the socket sends to B and B sees the same M. IPv4 and IPv6.
func TestTUNUDPFullCone(t *testing.T) {
	tw := newTunWorld(t)
	d := tw.startTun(t, "--udp-timeout", "2s")
	for _, c := range []struct {
		name, net, a, b, c, clientAddr, mappedIP string
	}{
		{"IPv4", "udp4", serverV4 + ":40001", tunPeerBV4 + ":40002", serverV4 + ":40003", tunAddrV4, tunGwUpV4},
		{"IPv6", "udp6", "[" + serverV6 + "]:40001", "[" + tunPeerBV6 + "]:40002", "[" + serverV6 + "]:40003", tunAddrV6, tunGwUpV6},
	} {
		t.Run(c.name, func(t *testing.T) {
			log := watch(t, d.Process)
			mark := d.Mark()
			listen := func(addr string) net.PacketConn {
				pc, err := tw.server.ListenPacket(c.net, addr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { pc.Close() })
				return pc
			}
			peerA, peerB, peerC := listen(c.a), listen(c.b), listen(c.c)
			client, err := tw.gw.ListenPacket(c.net, ":0")
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			clientPort := client.LocalAddr().(*net.UDPAddr).Port

			var up, down int64
			send := func(to net.PacketConn, payload string) {
				t.Helper()
				if _, err := client.WriteTo([]byte(payload), to.LocalAddr()); err != nil {
					t.Fatalf("client -> %s: %v", to.LocalAddr(), err)
				}
				up += int64(len(payload))
			}
			// recv reads one datagram on pc (bounded) and checks its payload.
			recv := func(pc net.PacketConn, who, want string) netip.AddrPort {
				t.Helper()
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 2048)
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					log.Fatalf(t, "%s: no datagram %q: %v", who, want, err)
				}
				if string(buf[:n]) != want {
					log.Fatalf(t, "%s: got %q, want %q", who, buf[:n], want)
				}
				return from.(*net.UDPAddr).AddrPort()
			}

			send(peerA, "client-to-A")
			m := recv(peerA, "peer A", "client-to-A")
			t.Logf("client %s -> A %s: A sees the mapping %s", net.JoinHostPort(c.clientAddr, fmt.Sprint(clientPort)), c.a, m)
			if m.Addr().Unmap().String() != c.mappedIP {
				log.Fatalf(t, "A saw %s, want gw's uplink %s (through tungate)", m, c.mappedIP)
			}

			// B was never contacted; it sends to the mapped address.
			if _, err := peerB.(*net.UDPConn).WriteToUDPAddrPort([]byte("B-unsolicited"), m); err != nil {
				t.Fatal(err)
			}
			down += int64(len("B-unsolicited"))
			from := recv(client, "client", "B-unsolicited")
			if from.String() != c.b {
				log.Errorf(t, "the client got B's datagram from %s, want %s", from, c.b)
			} else {
				t.Logf("B %s -> mapping %s: the client received it from %s", c.b, m, from)
			}
			if _, err := peerA.(*net.UDPConn).WriteToUDPAddrPort([]byte("A-reply"), m); err != nil {
				t.Fatal(err)
			}
			down += int64(len("A-reply"))
			if from := recv(client, "client", "A-reply"); from.String() != c.a {
				log.Errorf(t, "the client got A's reply from %s, want %s", from, c.a)
			}

			// The same mapping for every destination.
			send(peerB, "client-to-B")
			if mb := recv(peerB, "peer B", "client-to-B"); mb != m {
				log.Errorf(t, "B sees the client as %s, A saw %s: the mapping is not stable across destinations", mb, m)
			} else {
				t.Logf("client -> B: B sees the same mapping %s", mb)
			}
			send(peerC, "client-to-C")
			if mc := recv(peerC, "peer C", "client-to-C"); mc != m {
				log.Errorf(t, "C sees the client as %s, A saw %s", mc, m)
			} else {
				t.Logf("client -> C %s: C sees the same mapping %s", c.c, mc)
			}

			// One flow for the client's endpoint, with all of it.
			src := netip.AddrPortFrom(netip.MustParseAddr(c.clientAddr), uint16(clientPort))
			flows := waitFlows(d.Process, mark, 1, 10*time.Second, func(f flowClosed) bool {
				return f.Proto == "udp" && f.Src == src
			})
			if len(flows) != 1 {
				log.Fatalf(t, "want one UDP flow from %s in the registry, got %d", src, len(flows))
			}
			f := flows[0]
			t.Logf("registry: %s", f.Line[bytes.Index([]byte(f.Line), []byte("flow=")):])
			if f.Up != up || f.Down != down || f.PktsUp != 3 || f.PktsDown != 2 {
				log.Errorf(t, "registry: up=%d down=%d pkts_up=%d pkts_down=%d, want %d %d 3 2", f.Up, f.Down, f.PktsUp, f.PktsDown, up, down)
			}
		})
	}
}

// manyConns is how many concurrent TCP connections TestTUNManyConnections
// opens.
const manyConns = 1000

// The bytes connection i carries: a 4-byte index and a payload up, a
// reply down, all of lengths that depend on i.
func manyUp(i int) int64   { return 4 + 100 + int64(i) }
func manyDown(i int) int64 { return 1000 + 3*int64(i) }

// TestTUNManyConnections: 1,000 TCP connections from gw through the TUN,
// all open at once (the server counts them), each moving a distinct number
// of bytes. All succeed; the registry logs exactly 1,000 closed flows with
// each connection's bytes, and none more at shutdown (none was left open).
func TestTUNManyConnections(t *testing.T) {
	tw := newTunWorld(t)
	d := tw.startTun(t)
	log := watch(t, d.Process)
	addr := net.JoinHostPort(serverV4, manyPort)
	l, err := tw.server.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var open, peak, served atomic.Int64
	var srvErrs sync.Map
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if n := open.Add(1); n > peak.Load() {
				peak.Store(n) // only the accept loop raises it
			}
			go func() {
				defer open.Add(-1)
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				var hdr [4]byte
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					srvErrs.Store(c.RemoteAddr().String(), err)
					return
				}
				i := int(binary.BigEndian.Uint32(hdr[:]))
				if _, err := io.CopyN(io.Discard, c, manyUp(i)-4); err != nil {
					srvErrs.Store(c.RemoteAddr().String(), err)
					return
				}
				if _, err := c.Write(bytes.Repeat([]byte{byte(i)}, int(manyDown(i)))); err != nil {
					srvErrs.Store(c.RemoteAddr().String(), err)
					return
				}
				served.Add(1)
			}()
		}
	}()

	mark := d.Mark()
	start := time.Now()
	// Dial them all before any sends: 20 workers, each on a thread in gw.
	conns := make([]net.Conn, manyConns)
	var dialErrs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	const workers = 20
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tw.gw.Do(func() error {
				for i := w; i < manyConns; i += workers {
					ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
					var dl net.Dialer
					c, err := dl.DialContext(ctx, "tcp", addr)
					cancel()
					if err != nil {
						dialErrs.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("conn %d: %v", i, err))
						continue
					}
					conns[i] = c
				}
				return nil
			})
		}()
	}
	wg.Wait()
	dialed := time.Since(start)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if n := dialErrs.Load(); n > 0 {
		log.Fatalf(t, "%d of %d connections failed to connect; first: %v", n, manyConns, firstErr.Load())
	}
	// Every connection is accepted and waiting for its index.
	deadline := time.Now().Add(10 * time.Second)
	for peak.Load() < manyConns && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d connections through the TUN in %v; the server had %d open at once", manyConns, dialed.Round(time.Millisecond), peak.Load())
	if peak.Load() != manyConns {
		log.Fatalf(t, "the server saw at most %d connections open at once, want %d", peak.Load(), manyConns)
	}

	// Exchange on all of them at once.
	ports := map[uint16]int{}
	var exErrs atomic.Int64
	for i, c := range conns {
		ports[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = i
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := func() error {
				c.SetDeadline(time.Now().Add(30 * time.Second))
				msg := make([]byte, manyUp(i))
				binary.BigEndian.PutUint32(msg, uint32(i))
				if _, err := c.Write(msg); err != nil {
					return err
				}
				got, err := io.ReadAll(c)
				if err != nil {
					return err
				}
				if int64(len(got)) != manyDown(i) || !bytes.Equal(got, bytes.Repeat([]byte{byte(i)}, len(got))) {
					return fmt.Errorf("got %d bytes, want %d of %#x", len(got), manyDown(i), byte(i))
				}
				return c.Close()
			}()
			if err != nil {
				exErrs.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("conn %d: %v", i, err))
			}
		}()
	}
	wg.Wait()
	t.Logf("all %d exchanges done %v after the first dial", manyConns, time.Since(start).Round(time.Millisecond))
	if n := exErrs.Load(); n > 0 {
		log.Fatalf(t, "%d of %d exchanges failed; first: %v", n, manyConns, firstErr.Load())
	}
	if served.Load() != manyConns {
		srvErrs.Range(func(k, v any) bool { t.Logf("server: %v: %v", k, v); return true })
		log.Fatalf(t, "the server completed %d of %d", served.Load(), manyConns)
	}

	// The registry: 1,000 closed flows with each connection's bytes.
	dst := netip.MustParseAddrPort(addr)
	match := func(f flowClosed) bool { return f.Proto == "tcp" && f.Dst == dst }
	flows := waitFlows(d.Process, mark, manyConns, 20*time.Second, match)
	t.Logf("%d \"flow closed\" lines for %s", len(flows), addr)
	bad, seen := 0, map[uint16]bool{}
	for _, f := range flows {
		i, ok := ports[f.Src.Port()]
		switch {
		case !ok || !tunSrc(f.Src):
			log.Errorf(t, "a closed flow from an unknown source: %s", f.Line)
		case seen[f.Src.Port()]:
			log.Errorf(t, "flow from port %d closed twice: %s", f.Src.Port(), f.Line)
		case f.Up != manyUp(i) || f.Down != manyDown(i):
			bad++
			if bad <= 5 {
				log.Errorf(t, "conn %d: registry up=%d down=%d, want %d %d: %s", i, f.Up, f.Down, manyUp(i), manyDown(i), f.Line)
			}
		}
		seen[f.Src.Port()] = true
	}
	if len(flows) != manyConns || bad > 0 {
		log.Fatalf(t, "registry: %d closed flows (want %d), %d with wrong byte counts", len(flows), manyConns, bad)
	}

	// Nothing left open: a flow still in the registry would be closed (and
	// logged) at shutdown.
	if err := d.signal(t, syscall.SIGTERM, 10*time.Second); err != nil {
		log.Errorf(t, "tungate exited with %v after SIGTERM", err)
	}
	all := parseFlows(d.OutputSince(mark))
	after := 0
	for _, f := range all {
		if match(f) {
			after++
		}
	}
	t.Logf("after SIGTERM: %d \"flow closed\" lines in all since the test began, %d for %s", len(all), after, addr)
	if after != manyConns || len(all) != manyConns {
		log.Errorf(t, "after SIGTERM: %d closed flows in all, %d to %s; want exactly %d: flows were still open", len(all), after, addr, manyConns)
	}
}

// TestTUNUDPGSO: a datagram sent with UDP GSO (UDP_SEGMENT) reaches the
// TUN device as one USO super-packet, which the gateway takes whole from
// the device and splits itself: the peer gets each segment as its own
// datagram, with its bytes, in order.
func TestTUNUDPGSO(t *testing.T) {
	tw := newTunWorld(t)
	tw.startTun(t)
	for _, c := range []struct{ name, net, peer string }{
		{"IPv4", "udp4", serverV4 + ":40011"},
		{"IPv6", "udp6", "[" + serverV6 + "]:40011"},
	} {
		t.Run(c.name, func(t *testing.T) {
			peer, err := tw.server.ListenPacket(c.net, c.peer)
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			client, err := tw.gw.ListenPacket(c.net, ":0")
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			rc, err := client.(*net.UDPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			const seg = 500
			var serr error
			rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, seg) })
			if serr != nil {
				t.Skipf("the kernel has no UDP_SEGMENT: %v", serr)
			}
			big := make([]byte, 3*seg-100)
			for i := range big {
				big[i] = byte(i * 7)
			}
			if _, err := client.WriteTo(big, peer.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2048)
			var got []byte
			for i, want := range []int{seg, seg, seg - 100} {
				peer.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _, err := peer.ReadFrom(buf)
				if err != nil {
					t.Fatalf("segment %d: %v", i, err)
				}
				if n != want {
					t.Fatalf("segment %d: %d bytes, want %d", i, n, want)
				}
				got = append(got, buf[:n]...)
			}
			if !bytes.Equal(got, big) {
				t.Fatal("the segments do not add up to what was sent")
			}
		})
	}
}
