// Package benchtest holds what the relay benchmarks of several packages
// share: a bulk stream through the path under test, measured and checked
// octet for octet. It is for tests only.
package benchtest

import (
	"io"
	"net"
	"testing"
)

// HalfCloser is a stream connection that can end its write side alone.
type HalfCloser interface {
	net.Conn
	CloseWrite() error
}

// Stream measures a bulk transfer from writer to reader, which are the two
// ends of the path under test: a goroutine writes 64 KiB blocks while each
// iteration of b.Loop reads chunk octets at the far end (b.SetBytes(chunk),
// so the benchmark reports MB/s). Then the writer half-closes, everything
// it wrote must arrive, the reader half-closes in turn and the writer must
// see that EOF, so both directions of the path end. It returns the octets
// written; any mismatch fails b.
func Stream(b *testing.B, writer, reader HalfCloser, chunk int) int64 {
	b.Helper()
	stop := make(chan struct{})
	wrote := make(chan int64, 1)
	go func() {
		var total int64
		defer func() {
			writer.CloseWrite()
			wrote <- total
		}()
		block := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, err := writer.Write(block)
			total += int64(n)
			if err != nil {
				return
			}
		}
	}()

	buf := make([]byte, chunk)
	var read int64
	b.ReportAllocs()
	b.SetBytes(int64(chunk))
	for b.Loop() {
		n, err := io.ReadFull(reader, buf)
		read += int64(n)
		if err != nil {
			b.Fatalf("after %d octets: %v", read, err)
		}
	}
	b.StopTimer()

	// The writer's FIN comes through once everything it wrote has: all
	// of it must arrive.
	close(stop)
	rest, err := io.Copy(io.Discard, reader)
	if err != nil {
		b.Fatalf("draining: %v", err)
	}
	read += rest
	written := <-wrote
	if read != written {
		b.Fatalf("read %d octets at the far end, %d were written", read, written)
	}
	reader.CloseWrite()
	if _, err := io.Copy(io.Discard, writer); err != nil {
		b.Fatalf("waiting for the writer's side to end: %v", err)
	}
	return written
}
