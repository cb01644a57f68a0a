package netstack

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"

	"tungate/internal/engine"
)

// patternBytes returns n bytes that differ from one offset to the next
// over a long period, so that a byte lost, repeated or moved shows.
func patternBytes(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// slowPeer serves one kind of connection on loopback: "up" reads
// everything in small reads with pauses (the gateway's socket, given a
// small send buffer, fills, and its writes come back short or would
// block), and replies with the SHA-256 of what it read; "down" writes
// data as fast as it can and closes.
func slowPeer(t *testing.T, up bool, data []byte) string {
	t.Helper()
	return loopbackServer(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if !up {
			c.Write(data)
			return
		}
		h := sha256.New()
		buf := make([]byte, 16<<10)
		for {
			n, err := c.Read(buf)
			h.Write(buf[:n])
			if err != nil {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		c.Write(h.Sum(nil))
	})
}

// TestTCPSlowPeers: bulk data through the gateway in each direction,
// with the receiving side slower than the sender, arrives whole and in
// order, and is counted. Going up, the gateway hands the stack's own
// buffers to its socket (engine.VectorReader) and the socket keeps
// refusing part of them; going down, the stack keeps running out of room.
func TestTCPSlowPeers(t *testing.T) {
	checkLeaks(t)
	data := patternBytes(4 << 20)
	sum := sha256.Sum256(data)
	for _, up := range []bool{true, false} {
		name := "down"
		if up {
			name = "up"
		}
		t.Run(name, func(t *testing.T) {
			r := newRig(t, &fakeOut{echo: slowPeer(t, up, data), sndBuf: 32 << 10})
			base := r.eng.Registry().Metrics()
			c := r.dialTCP(t, serverV4, 80)
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if up {
				if _, err := c.Write(data); err != nil {
					t.Fatal(err)
				}
				c.CloseWrite()
				got, err := io.ReadAll(c)
				if err != nil || !bytes.Equal(got, sum[:]) {
					t.Fatalf("the peer read other bytes than were sent (%v)", err)
				}
				waitCounts(t, r.eng, base.BytesUp+uint64(len(data)), base.BytesDown+uint64(len(sum)))
				return
			}
			h := sha256.New()
			buf := make([]byte, 8<<10)
			n := 0
			for {
				k, err := c.Read(buf)
				h.Write(buf[:k])
				n += k
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d bytes: %v", n, err)
				}
				time.Sleep(50 * time.Microsecond)
			}
			if n != len(data) || !bytes.Equal(h.Sum(nil), sum[:]) {
				t.Fatalf("read %d bytes, not the %d sent", n, len(data))
			}
			waitCounts(t, r.eng, base.BytesUp, base.BytesDown+uint64(len(data)))
		})
	}
}

// TestLenderStopsAtMaxVectors: the peek's writer hands fn what it has
// once it has the bytes asked for or engine.MaxVectors views, whichever
// comes first, and stops the peek there.
func TestLenderStopsAtMaxVectors(t *testing.T) {
	for _, tc := range []struct {
		name           string
		views, size    int
		want           int
		wantBufs       int
		wantTotalBytes int
	}{
		{"bytes first", 10, 100, 250, 3, 250},
		{"views first", engine.MaxVectors + 10, 10, 100000, engine.MaxVectors, engine.MaxVectors * 10},
		{"both at once", engine.MaxVectors, 10, engine.MaxVectors * 10, engine.MaxVectors, engine.MaxVectors * 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l lender
			var gotBufs, gotBytes int
			l.start(tc.want, func(bufs [][]byte) int {
				gotBufs = len(bufs)
				for _, b := range bufs {
					gotBytes += len(b)
				}
				return gotBytes
			})
			stopped := false
			for i := 0; i < tc.views && !stopped; i++ {
				if _, err := l.Write(make([]byte, tc.size)); err != nil {
					stopped = true
				}
			}
			took, called := l.end()
			if !called || !stopped || gotBufs != tc.wantBufs || gotBytes != tc.wantTotalBytes || took != gotBytes {
				t.Fatalf("fn called %v (peek stopped %v) with %d views, %d bytes (took %d); want %d views, %d bytes",
					called, stopped, gotBufs, gotBytes, took, tc.wantBufs, tc.wantTotalBytes)
			}
		})
	}
}
