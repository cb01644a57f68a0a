package engine

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Payload is what a PayloadWriter reads from: Len bytes, all of them
// there to read at once (gVisor's tcpip.Payloader has this shape).
type Payload interface {
	io.Reader
	Len() int
}

// PayloadWriter is implemented by client connections that can read what
// they are to send straight into their own buffers (the netstack's TCP
// connections: the stack reads it into its segments' chunks). A relay
// direction from a kernel socket to such a connection then reads the
// socket into those buffers, saving the copy out of a relay buffer.
type PayloadWriter interface {
	// WritePayload takes what it has room for of p now, without
	// waiting, reading it from p, and returns how much it took. With no
	// room at all it returns ErrNoRoom and reads nothing.
	WritePayload(p Payload) (int, error)
	// WaitRoom blocks until WritePayload would take something or the
	// connection is closed (an error).
	WaitRoom() error
}

// ErrNoRoom is what PayloadWriter.WritePayload returns when it has no
// room at all.
var ErrNoRoom = errors.New("engine: no room to write")

// socketFiller moves what a kernel socket has received into a
// PayloadWriter: it learns how much is queued (SIOCINQ) and lets the
// writer read that much, through the runtime's poller.
type socketFiller struct {
	dst PayloadWriter
	rc  syscall.RawConn
	fn  func(fd uintptr) bool // the RawConn callback, made once
	pay fdPayload

	// Per call.
	max  int
	n    int
	err  error
	none bool // the socket had no data queued
}

// newSocketFiller returns a filler from src to dst, or nil when one of
// them cannot take part: dst does not read payloads, or src is not a
// kernel stream socket of the runtime's own type (a wrapper may hold
// bytes of its own to return first).
func newSocketFiller(src, dst net.Conn) *socketFiller {
	pw, ok := dst.(PayloadWriter)
	if !ok {
		return nil
	}
	tc, ok := src.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	f := &socketFiller{dst: pw, rc: rc}
	f.fn = f.fill
	return f
}

// fillOnce hands up to max bytes of what the socket has queued to dst. It
// returns what dst took and dst's error (ErrNoRoom when it had no room);
// ok is false when the socket had nothing queued (data may come, or EOF
// or an error: a read of the socket says which).
func (f *socketFiller) fillOnce(max int) (n int, err error, ok bool) {
	f.max, f.n, f.err, f.none = max, 0, nil, false
	if err := f.rc.Read(f.fn); err != nil {
		return 0, err, true // closed: the relay is being torn down
	}
	if f.none {
		return 0, nil, false
	}
	return f.n, f.err, true
}

// fill is the RawConn callback. It never waits: what is queued is read,
// and an empty queue is for the caller's usual read to find out about.
func (f *socketFiller) fill(fd uintptr) bool {
	q, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil || q <= 0 {
		f.none = true
		return true
	}
	f.pay = fdPayload{fd: int(fd), left: min(q, f.max)}
	f.n, f.err = f.dst.WritePayload(&f.pay)
	if f.err == nil && f.pay.err != nil {
		f.err = f.pay.err
	}
	f.pay.fd = -1
	return true
}

// fdPayload is a Payload of bytes the socket fd has queued: its reads
// never wait, as the bytes are there.
type fdPayload struct {
	fd   int
	left int
	err  error // the socket's, should a read fail after all
}

// Len implements Payload.
func (p *fdPayload) Len() int { return p.left }

// Read implements io.Reader.
func (p *fdPayload) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	if len(b) == 0 {
		return 0, nil
	}
	b = b[:min(len(b), p.left)]
	for {
		n, err := unix.Read(p.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			// Only a reset can take queued bytes away: the connection is
			// gone, and what was read of this payload goes with it.
			p.err = &net.OpError{Op: "read", Net: "tcp", Err: err}
			p.left = 0
			return 0, p.err
		case n == 0:
			p.err = io.ErrUnexpectedEOF
			p.left = 0
			return 0, p.err
		}
		p.left -= n
		return n, nil
	}
}

// stepFill is step for a direction with a socketFiller: what the socket
// has queued is read straight into the client's buffers. ok is false when
// the socket had nothing queued; step then reads as usual.
func (d *direction) stepFill() (more, ok bool) {
	start := time.Now()
	n, err, ok := d.fill.fillOnce(d.size)
	if !ok {
		return true, false
	}
	if errors.Is(err, ErrNoRoom) {
		if err := d.fill.dst.WaitRoom(); err != nil {
			d.abort()
			return false, true
		}
		return true, true
	}
	if time.Since(start) > slowWrite {
		d.size = d.e.settings.RelayBufferSize()
	} else {
		d.adapt(n, d.size)
	}
	if n > 0 {
		d.count(n)
	}
	if err != nil {
		if isReset(err) {
			reset(d.dst)
		}
		d.abort()
		return false, true
	}
	return true, true
}
