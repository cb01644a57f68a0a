package engine

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// lazyReader reads a connection into a relay buffer that it takes from
// the pool only once there is something to read: a relay of an idle
// connection then holds no buffer. On a kernel socket (*net.TCPConn,
// *net.UnixConn) it reads through the runtime's poller (syscall.RawConn),
// so waiting costs no extra system call; any other connection is read
// with a buffer taken first.
type lazyReader struct {
	c    net.Conn
	size func() int
	rc   syscall.RawConn // nil: c is not a kernel socket

	// What the raw read callback found; the callbacks are made once, not
	// per read.
	bp     *[]byte
	n      int
	err    error
	noWait bool // this read must not wait: EAGAIN is errWouldBlock
	fn     func(fd uintptr) bool
	peekFn func(fd uintptr) bool
}

// errWouldBlock is what a read that must not wait returns when the socket
// has nothing to read.
var errWouldBlock = errors.New("engine: would block")

func (l *lazyReader) init(c net.Conn, size func() int) {
	l.c, l.size = c, size
	// Only the runtime's own socket types: a wrapper that embeds one may
	// have bytes of its own to return first (a buffered handshake).
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	l.rc = rc
	l.fn = l.readRaw
	l.peekFn = l.peekRaw
}

// canWait reports whether wait works: the connection is a kernel socket.
func (l *lazyReader) canWait() bool { return l.rc != nil }

// wait blocks until the socket has something to read (data, EOF or an
// error), reading nothing, or it is closed.
func (l *lazyReader) wait() error { return l.rc.Read(l.peekFn) }

func (l *lazyReader) peekRaw(fd uintptr) bool {
	what, _ := pending(fd)
	return what != pendingNothing
}

// read returns what one read of the connection got, in a pooled buffer
// the caller gives back (nil when nothing was read). With wait false, on
// a kernel socket, it returns errWouldBlock instead of waiting for data.
func (l *lazyReader) read(wait bool) (*[]byte, int, error) {
	if l.rc == nil {
		bp := getRelayBuf(l.size())
		n, err := l.c.Read(*bp)
		return bp, n, err
	}
	l.bp, l.n, l.err, l.noWait = nil, 0, nil, !wait
	if err := l.rc.Read(l.fn); err != nil {
		// Closed, or a deadline: the callback did not finish a read.
		if l.bp != nil {
			putRelayBuf(l.bp)
			l.bp = nil
		}
		return nil, 0, err
	}
	bp := l.bp
	l.bp = nil
	return bp, l.n, l.err
}

// readRaw is the RawConn callback: it reports false (wait for the poller)
// when the socket has nothing, after giving the buffer back.
func (l *lazyReader) readRaw(fd uintptr) bool {
	if l.bp == nil {
		l.bp = getRelayBuf(l.size())
	}
	for {
		n, err := unix.Read(int(fd), *l.bp)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			putRelayBuf(l.bp)
			l.bp = nil
			if l.noWait {
				l.err = errWouldBlock
				return true
			}
			return false
		case err != nil:
			l.err = os.NewSyscallError("read", err)
		case n == 0:
			l.err = io.EOF
		default:
			l.n = n
		}
		return true
	}
}
