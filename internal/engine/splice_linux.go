package engine

import (
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// splicer moves a relay direction's bytes from one kernel TCP socket to
// another with splice(2) through a pipe: the kernel passes the pages of
// the segments it received on to the socket that sends them, and nothing
// is copied to user space or back. It serves the directions whose two
// ends are the runtime's TCP sockets (the SOCKS5 server's relays, out
// directly or to an upstream). Both sockets are waited on through the
// runtime's poller. A pipe is taken from a pool for one step and given
// back empty, so an idle relay holds none; a direction whose receiver is
// slow holds one (two descriptors, and the pages in it, as the copying
// path holds its buffer) until the receiver has taken what it holds.
// When no pipe can be made (out of descriptors) the direction copies.
type splicer struct {
	src, dst syscall.RawConn
	// The RawConn callbacks, made once, and what they found.
	fillFn, drainFn func(fd uintptr) bool
	p               *pipe
	max             int
	noWait          bool
	n               int // fill: bytes spliced into the pipe
	err             error
	moved           int64 // bytes dst took through the pipe, for tests
}

// newSplicer returns a splicer from src to dst, or nil when they are not
// both the runtime's own TCP sockets (a wrapper may hold bytes of its own
// to return or send first).
func newSplicer(src, dst net.Conn) *splicer {
	sc, ok := src.(*net.TCPConn)
	if !ok {
		return nil
	}
	dc, ok := dst.(*net.TCPConn)
	if !ok {
		return nil
	}
	srcRC, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	dstRC, err := dc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &splicer{src: srcRC, dst: dstRC}
	s.fillFn, s.drainFn = s.fillRaw, s.drainRaw
	return s
}

// fill splices up to max bytes that src has into p. With wait false it
// returns errWouldBlock instead of waiting for data; EOF is io.EOF.
func (s *splicer) fill(p *pipe, max int, wait bool) (int, error) {
	s.p, s.max, s.noWait, s.n, s.err = p, min(max, p.size), !wait, 0, nil
	err := s.src.Read(s.fillFn)
	s.p = nil
	if err != nil {
		return 0, err
	}
	return s.n, s.err
}

func (s *splicer) fillRaw(fd uintptr) bool {
	for {
		n, err := unix.Splice(int(fd), nil, s.p.w, nil, s.max, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			// The pipe is empty, so it is the socket that has nothing.
			if s.noWait {
				s.err = errWouldBlock
				return true
			}
			return false
		case err != nil:
			s.err = err
		case n == 0:
			s.err = io.EOF
		default:
			s.n = int(n)
			s.p.n += int(n)
		}
		return true
	}
}

// drain splices everything in p to dst, waiting for room as a write
// does. It returns how many bytes dst took; on an error p may still hold
// some.
func (s *splicer) drain(p *pipe) (int, error) {
	s.p, s.err = p, nil
	before := p.n
	err := s.dst.Write(s.drainFn)
	s.p = nil
	if err == nil {
		err = s.err
	}
	return before - p.n, err
}

func (s *splicer) drainRaw(fd uintptr) bool {
	for s.p.n > 0 {
		n, err := unix.Splice(s.p.r, nil, int(fd), nil, s.p.n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false // the socket is full: wait for room
		case err != nil:
			s.err = err
			return true
		}
		s.p.n -= int(n)
	}
	return true
}

// stepSplice is step for a direction with a splicer. ok is false when no
// pipe could be had (out of descriptors); step then copies as usual.
func (d *direction) stepSplice(wait bool) (more, idle, ok bool) {
	p := getPipe()
	if p == nil {
		return true, false, false
	}
	n, rerr := d.splice.fill(p, d.size, wait)
	if rerr == errWouldBlock {
		putPipe(p)
		return true, true, true
	}
	if n > 0 {
		start := time.Now()
		wrote, werr := d.splice.drain(p)
		if wrote > 0 {
			d.count(wrote)
			d.splice.moved += int64(wrote)
		}
		if werr != nil {
			p.close() // it may hold bytes that will never be sent
			d.writeFailed(werr)
			return false, false, true
		}
		if time.Since(start) > slowWrite {
			d.size = d.e.settings.RelayBufferSize()
		} else {
			d.adapt(n, min(d.size, p.size))
		}
	}
	putPipe(p)
	if rerr == nil {
		return true, false, true
	}
	d.readEnded(rerr)
	return false, false, true
}

// pipe is a pipe for splice, with the count of bytes in it.
type pipe struct {
	r, w int
	size int // its capacity
	n    int
}

// spliceMax is the capacity a pipe is given: a relay direction's largest
// step (the default buffer grown relayGrowth times).
const spliceMax = DefaultRelayBufferSize * relayGrowth

// pipes holds empty pipes. One dropped from the pool is closed by its
// finalizer.
var pipes = sync.Pool{New: func() any { return newPipeFn() }}

// newPipeFn makes the pool's pipes; tests replace it.
var newPipeFn = newPipe

// getPipe returns an empty pipe, or nil when none can be made.
func getPipe() *pipe {
	p, _ := pipes.Get().(*pipe)
	return p
}

// putPipe gives an empty pipe back to the pool.
func putPipe(p *pipe) {
	if p.n != 0 {
		p.close()
		return
	}
	pipes.Put(p)
}

func newPipe() *pipe {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil
	}
	p := &pipe{r: fds[0], w: fds[1]}
	// A larger pipe moves a bulk transfer in fewer steps. The kernel may
	// refuse (past fs.pipe-max-size or the user's pipe pages); the pipe
	// keeps the size it was made with then.
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, spliceMax)
	if err != nil {
		size, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil || size <= 0 {
		unix.Close(p.r)
		unix.Close(p.w)
		return nil
	}
	p.size = size
	runtime.SetFinalizer(p, (*pipe).close)
	return p
}

// close closes the pipe's descriptors; it is idempotent.
func (p *pipe) close() {
	if p.r < 0 {
		return
	}
	runtime.SetFinalizer(p, nil)
	unix.Close(p.r)
	unix.Close(p.w)
	p.r, p.w = -1, -1
}
