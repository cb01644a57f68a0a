package engine

import (
	"errors"
	"io"
	"net"
	"os"
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
// runtime's poller. A pipe is taken from a small pool once src has
// something to read, and given back empty after the step, so an idle
// relay holds none; a direction whose receiver is
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

// spliceMaxMSS is the largest segment size of the sending socket for
// which a direction splices. Spliced bytes leave as many small page
// fragments, which the receiver's kernel merges into fewer buffers as
// long as segments are small; segments of tens of KiB (a 64 KiB MTU)
// reach the reader in more, fuller buffers than copied ones, and it loses
// more than the copy saves (docs/performance.md, item 11).
const spliceMaxMSS = 16 << 10

// newSplicer returns a splicer from src to dst, or nil when they are not
// both the runtime's own TCP sockets (a wrapper may hold bytes of its own
// to return or send first) or dst's segments are larger than
// spliceMaxMSS.
func newSplicer(src, dst net.Conn) *splicer {
	srcRC, dstRC := tcpRawConn(src), tcpRawConn(dst)
	if srcRC == nil || dstRC == nil {
		return nil
	}
	mss, serr := 0, error(nil)
	if err := dstRC.Control(func(fd uintptr) { mss, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) }); err != nil || serr != nil || mss > spliceMaxMSS {
		return nil
	}
	s := &splicer{src: srcRC, dst: dstRC}
	s.fillFn, s.drainFn = s.fillRaw, s.drainRaw
	return s
}

// errSpliceCopy says that this step must copy: no pipe could be had,
// or the socket has bytes that splice does not move (below).
var errSpliceCopy = errors.New("engine: copy this step")

// fill splices up to max bytes that src has into a pipe from the pool,
// which it returns with them. The pipe is taken only once src has
// something, so that a direction waiting for data holds none. With wait
// false it returns errWouldBlock instead of waiting; EOF is io.EOF.
func (s *splicer) fill(max int, wait bool) (*pipe, int, error) {
	s.p, s.max, s.noWait, s.n, s.err = nil, max, !wait, 0, nil
	err := s.src.Read(s.fillFn)
	p := s.p
	s.p = nil
	if err != nil {
		if p != nil {
			putPipe(p)
		}
		return nil, 0, err
	}
	return p, s.n, s.err
}

func (s *splicer) fillRaw(fd uintptr) bool {
	if s.p == nil {
		if s.p = getPipe(); s.p == nil {
			s.err = errSpliceCopy
			return true
		}
	}
	for retried := false; ; {
		n, err := unix.Splice(int(fd), nil, s.p.w, nil, min(s.max, s.p.size), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN || err == nil && n == 0:
			// The pipe is empty, so it is the socket: it has nothing, or
			// it is at EOF. Or it has urgent data (MSG_OOB) next: splice
			// stops at the urgent mark for good, with EAGAIN or, after a
			// FIN, 0, while a read skips the mark and goes on. A peek
			// tells which; data that arrived after the splice gets one
			// more try.
			switch what, perr := pending(fd); what {
			case pendingData:
				if !retried {
					retried = true
					continue
				}
				s.err = errSpliceCopy
				return true
			case pendingEnd:
				s.err = perr
				return true
			}
			putPipe(s.p) // wait without a pipe
			s.p = nil
			if s.noWait {
				s.err = errWouldBlock
				return true
			}
			return false
		case err != nil:
			s.err = os.NewSyscallError("splice", err)
		default:
			s.n = int(n)
			s.p.n += int(n)
		}
		return true
	}
}

// What a socket has to read, by a peek.
const (
	pendingNothing = iota
	pendingData
	pendingEnd // EOF, or an error
)

// pending peeks at what fd has to read. At the end it returns io.EOF or
// the socket's error, which the peek took (a reset is reported once).
func pending(fd uintptr) (int, error) {
	var b [1]byte
	for {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return pendingNothing, nil
		case err != nil:
			return pendingEnd, os.NewSyscallError("recvfrom", err)
		case n == 0:
			return pendingEnd, io.EOF
		}
		return pendingData, nil
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
			s.err = os.NewSyscallError("splice", err)
			return true
		}
		s.p.n -= int(n)
	}
	return true
}

// stepSplice is step for a direction with a splicer. ok is false when
// this step must copy (no pipe could be had: out of descriptors; or urgent
// data is next); step then reads and writes as usual.
func (d *direction) stepSplice(wait bool) (more, idle, ok bool) {
	p, n, rerr := d.splice.fill(d.size, wait)
	switch rerr {
	case errSpliceCopy:
		if p != nil {
			putPipe(p)
		}
		return true, false, false
	case errWouldBlock:
		if p != nil {
			putPipe(p)
		}
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
	if p != nil {
		putPipe(p)
	}
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

// idlePipes bounds the empty pipes kept for the next steps: enough for
// the steps that run at once, few enough that the descriptors they hold
// (two each) do not matter.
const idlePipes = 16

// pipes holds empty pipes; one given back to a full pool is closed.
var pipes = make(chan *pipe, idlePipes)

// newPipeFn makes the pool's pipes; tests replace it.
var newPipeFn = newPipe

// getPipe returns an empty pipe, or nil when none can be made.
func getPipe() *pipe {
	select {
	case p := <-pipes:
		return p
	default:
		return newPipeFn()
	}
}

// putPipe gives a pipe back to the pool; one that still holds bytes (a
// write failed) is closed, so that they never reach another relay.
func putPipe(p *pipe) {
	if p.n != 0 {
		p.close()
		return
	}
	select {
	case pipes <- p:
	default:
		p.close()
	}
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
	return p
}

// close closes the pipe's descriptors; it is idempotent.
func (p *pipe) close() {
	if p.r < 0 {
		return
	}
	unix.Close(p.r)
	unix.Close(p.w)
	p.r, p.w = -1, -1
}
