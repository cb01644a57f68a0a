package netstack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
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
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := l.AcceptTCP()
		if err != nil {
			return
		}
		defer c.Close()
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
	}()
	return l.Addr().String()
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
			fa, proto := fullAddr(serverV4, 80)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := gonet.DialContextTCP(ctx, r.client, fa, proto)
			if err != nil {
				t.Fatal(err)
			}
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
