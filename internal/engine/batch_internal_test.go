package engine

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"tungate/socks"
)

// TestBatchSendLeavesICMPToReader: a batch send that meets the socket's
// pending error (here a port unreachable about an earlier datagram) sends
// its datagram all the same, and the report still reaches the reader, as
// with a single send: the batch call clears the pending error, so the
// report must be drained then, or it would wait in the error queue for
// nobody.
func TestBatchSendLeavesICMPToReader(t *testing.T) {
	for _, mode := range []string{"WriteBatch", "TryWriteBatchMeta"} {
		t.Run(mode, func(t *testing.T) {
			ctx := withClient(context.Background(), socks.AddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:1")))
			out, err := (&Direct{}).ListenUDP(ctx)
			if err != nil {
				t.Fatal(err)
			}
			p := out.(*directPacketConn)
			defer p.Close()
			if !p.recvErr {
				t.Skip("no IP_RECVERR on this socket")
			}
			gone, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			closed := socks.AddrFromAddrPort(gone.LocalAddr().(*net.UDPAddr).AddrPort())
			gone.Close()
			peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			live := socks.AddrFromAddrPort(peer.LocalAddr().(*net.UDPAddr).AddrPort())

			send := func(to socks.Addr) (int, error) {
				ds := []socks.Datagram{{Buf: []byte("x"), Addr: to}}
				if mode == "WriteBatch" {
					return p.WriteBatch(ds)
				}
				return p.TryWriteBatchMeta(ds, []Meta{{}})
			}
			if n, err := send(closed); n != 1 || err != nil {
				t.Fatalf("send to the closed port = %d, %v", n, err)
			}
			// The port unreachable comes back at once on loopback; the
			// socket now has it pending.
			time.Sleep(50 * time.Millisecond)
			if n, err := send(live); n != 1 || err != nil {
				t.Fatalf("send after the ICMP error = %d, %v", n, err)
			}
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			if _, _, err := peer.ReadFromUDPAddrPort(buf); err != nil {
				t.Fatalf("the datagram after the ICMP error did not arrive: %v", err)
			}

			type result struct {
				n   int
				err error
			}
			got := make(chan result, 1)
			go func() {
				var ds [socks.MaxBatch]socks.Datagram
				n, err := p.ReadBatch(ds[:])
				got <- result{n, err}
			}()
			select {
			case r := <-got:
				var pe *PacketError
				if !errors.As(r.err, &pe) || pe.Type != 3 || pe.Code != 3 || pe.Dst != closed {
					t.Errorf("ReadBatch = %d, %v; want the port unreachable about %v", r.n, r.err, closed)
				}
			case <-time.After(5 * time.Second):
				p.Close()
				<-got
				t.Fatal("the ICMP error never reached the reader")
			}
		})
	}
}

// TestGSOProbation: datagrams to a destination go as GSO sends only once
// it has been sent to for gsoProbation with no ICMP error about it.
func TestGSOProbation(t *testing.T) {
	p := &directPacketConn{gsoDsts: make(map[netip.AddrPort]gsoDst)}
	dst := netip.MustParseAddrPort("198.18.0.9:9")
	if p.gsoFor(dst) {
		t.Fatal("GSO for a destination never sent to")
	}
	if p.gsoFor(dst) {
		t.Fatal("GSO for a destination first sent to just now")
	}
	long := time.Now().Add(-2 * gsoProbation)
	p.gsoDsts[dst] = gsoDst{first: long}
	if !p.gsoFor(dst) {
		t.Fatal("no GSO for a destination sent to for twice the probation")
	}
	// Its IPv4-mapped form is the same destination.
	if !p.gsoFor(netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())) {
		t.Error("the mapped form of the destination is taken for another")
	}
	p.gsoDsts[dst] = gsoDst{first: long, lastErr: time.Now()}
	if p.gsoFor(dst) {
		t.Error("GSO for a destination with an ICMP error just now")
	}
	for i := range maxGSODsts + 1 {
		p.gsoFor(netip.AddrPortFrom(dst.Addr(), uint16(1000+i)))
	}
	if len(p.gsoDsts) > maxGSODsts {
		t.Errorf("%d destinations remembered, want at most %d", len(p.gsoDsts), maxGSODsts)
	}
}
