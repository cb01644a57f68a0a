package udpbatch

import (
	"net"
	"testing"
	"time"
)

// BenchmarkLoopback moves 1400-byte datagrams over loopback between two
// sockets, one op per datagram sent and read back: one system call per
// datagram each way (net.UDPConn, the reference), batches of Size
// (sendmmsg, recvmmsg), and batches sent as one GSO send and read as one
// GRO message.
func BenchmarkLoopback(b *testing.B) {
	for _, tc := range []struct {
		name         string
		batch, gro   bool
		disableGSOTx bool
	}{
		{name: "per-datagram"},
		{name: "batch", batch: true, disableGSOTx: true},
		{name: "gso+gro", batch: true, gro: true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer rx.Close()
			tx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer tx.Close()
			if tc.gro && !EnableGRO(rx) {
				b.Skip("no UDP_GRO")
			}
			to := addrOf(rx)
			payload := make([]byte, 1400)
			w, _ := NewWriter(tx)
			if tc.disableGSOTx {
				w.gsoMax = 0
			}
			r, _ := NewReader(rx)
			ms := make([]Message, Size)
			for i := range ms {
				ms[i] = Message{Buf: payload, Addr: to}
			}
			buf := make([]byte, SlotSize)
			rx.SetReadDeadline(time.Now().Add(time.Minute))
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			got := 0
			for b.Loop() {
				if !tc.batch {
					if _, err := tx.WriteToUDPAddrPort(payload, to); err != nil {
						b.Fatal(err)
					}
					if n, _, err := rx.ReadFromUDPAddrPort(buf); err != nil || n != len(payload) {
						b.Fatalf("read %d, %v", n, err)
					}
					got++
					continue
				}
				// One op per datagram: a batch goes out every Size ops.
				if got%Size == 0 {
					if n, err := w.Write(ms); n != Size || err != nil {
						b.Fatalf("Write = %d, %v", n, err)
					}
					for k := 0; k < Size; {
						n, err := r.Read(Size)
						if err != nil {
							b.Fatal(err)
						}
						for i := range n {
							if d, _ := r.Datagram(i); len(d) != len(payload) {
								b.Fatalf("datagram of %d bytes", len(d))
							}
						}
						k += n
					}
				}
				got++
			}
		})
	}
}
