package engine

import (
	"errors"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VectorReader is implemented by client connections that can lend what
// they have buffered instead of copying it out (the netstack's TCP
// connections, whose data sits in the stack's own packet buffers). A
// relay direction from such a connection to a kernel socket hands the
// socket those buffers with one writev, saving the copy into a relay
// buffer.
type VectorReader interface {
	// Buffered reports how many bytes a Read would return at once.
	Buffered() int
	// ReadVectors calls fn once with up to max bytes of what is
	// buffered, in order, in at most MaxVectors slices of the connection's
	// own buffers that are valid only during the call and must not be
	// written. fn returns
	// how many of those bytes it took; they are consumed, the rest stay
	// buffered. ReadVectors returns that count, or ErrNotBuffered, with
	// fn not called, when nothing is buffered (then a Read says why:
	// EOF, a reset or a close). Any other error comes after fn, with
	// what fn took: the connection broke, and nothing may follow.
	ReadVectors(max int, fn func(bufs [][]byte) int) (int, error)
}

// ErrNotBuffered is what VectorReader.ReadVectors returns when it has
// nothing to lend.
var ErrNotBuffered = errors.New("engine: nothing buffered")

// MaxVectors bounds the buffers of one writev: enough for a relay
// buffer's worth of large segments, few enough that a flow of small ones
// moves in several calls rather than one huge iovec.
const MaxVectors = 64

// vectorWriter writes what a VectorReader lends to a kernel socket with
// writev, through the runtime's poller: a full socket waits for room
// without holding the lender's buffers or locks.
type vectorWriter struct {
	src VectorReader
	rc  syscall.RawConn
	fn  func(fd uintptr) bool // the RawConn callback, made once
	put func([][]byte) int    // the ReadVectors callback, made once
	iov []unix.Iovec

	// Per call.
	fd   int
	max  int
	n    int
	err  error
	none bool // src had nothing to lend
}

// tcpRawConn returns c's RawConn when c is the runtime's own TCP socket,
// else nil: a wrapper that embeds one may hold bytes of its own to return
// or send first.
func tcpRawConn(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// newVectorWriter returns a writer from src to dst, or nil when one of
// them cannot take part: src lends no buffers, or dst is not a kernel
// stream socket of the runtime's own type (a wrapper may hold bytes of
// its own to send first).
func newVectorWriter(src, dst net.Conn) *vectorWriter {
	vr, ok := src.(VectorReader)
	if !ok {
		return nil
	}
	rc := tcpRawConn(dst)
	if rc == nil {
		return nil
	}
	w := &vectorWriter{src: vr, rc: rc, iov: make([]unix.Iovec, 0, MaxVectors)}
	w.fn = w.write
	w.put = w.writev
	return w
}

// writeTo writes up to max bytes of what src has buffered to the socket,
// waiting for room in it if it has none. It returns what the socket took
// and its error; ok is false when src had nothing to lend (nothing was
// written; a Read of src says why).
func (w *vectorWriter) writeTo(max int) (n int, err error, ok bool) {
	w.max, w.n, w.err, w.none = max, 0, nil, false
	if err := w.rc.Write(w.fn); err != nil {
		return 0, err, true // closed: the relay is being torn down
	}
	if w.none {
		return 0, nil, false
	}
	return w.n, w.err, true
}

// write is the RawConn callback: false (wait until writable) when the
// socket took nothing for want of room.
func (w *vectorWriter) write(fd uintptr) bool {
	w.fd = int(fd)
	n, err := w.src.ReadVectors(w.max, w.put)
	if errors.Is(err, ErrNotBuffered) {
		w.none = true
		return true
	}
	w.n = n
	if err != nil && w.err == nil {
		w.err = err // src broke after the write: the relay ends
	}
	return !(n == 0 && w.err == unix.EAGAIN)
}

// writev is the ReadVectors callback: one non-blocking writev of bufs.
// It keeps no reference to bufs once it returns.
func (w *vectorWriter) writev(bufs [][]byte) int {
	iov := w.iov[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if len(iov) == cap(iov) {
			break
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	defer clear(iov)
	w.err = nil
	if len(iov) == 0 {
		return 0
	}
	for {
		n, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(w.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		switch e {
		case 0:
			return int(n)
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			w.err = unix.EAGAIN
			return 0
		default:
			w.err = &net.OpError{Op: "writev", Net: "tcp", Err: e}
			return 0
		}
	}
}

// stepVector is step for a direction with a vectorWriter: what the
// client has buffered goes to the socket without a relay buffer. ok is
// false when there was nothing to lend; step then reads as usual.
func (d *direction) stepVector() (more, ok bool) {
	start := time.Now()
	n, err, ok := d.vec.writeTo(d.size)
	if !ok {
		return true, false
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
		d.writeFailed(err)
		return false, true
	}
	return true, true
}
