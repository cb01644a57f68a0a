package udpbatch

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reader reads batches of datagrams from one UDP socket. On a socket with
// UDP GRO (EnableGRO) one message may carry several datagrams of one
// sender, which Read hands out one by one.
type Reader struct {
	uc    *net.UDPConn
	rc    syscall.RawConn
	bufs  [Size]*[]byte // bufs[0] from the first Read on, the rest while busy
	hdrs  [Size]unix.Mmsghdr
	iovs  [Size]unix.Iovec
	names [Size]unix.RawSockaddrInet6 // room for either family's address
	oobs  [Size][groCmsgSpace]byte

	// segs are the datagrams of the last recvmmsg; Read hands out
	// segs[base:next].
	segs       []segment
	base, next int
	busy       bool
	zones      zoneCache

	// The state of one Read's system call, for readFn.
	readFn func(fd uintptr) bool
	vlen   int
	got    int
	errno  error
	waited bool
}

// segment is where one datagram of a batch is: message, offset, length.
type segment struct{ msg, off, n int }

// groCmsgSpace is the room of the UDP_GRO control message (an int).
const groCmsgSpace = 24

// NewReader returns a Reader of uc.
func NewReader(uc *net.UDPConn) (*Reader, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &Reader{uc: uc, rc: rc, segs: make([]segment, 0, Size)}
	r.readFn = r.read
	return r, nil
}

// EnableGRO asks the kernel to hand the datagrams of one sender that
// arrive together (a UDP GSO send) to the reader as one message, and
// reports whether it will. The socket must then be read only through a
// Reader.
func EnableGRO(uc *net.UDPConn) bool {
	rc, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) }); err != nil {
		return false
	}
	return serr == nil
}

// Read waits for a datagram and reads it with up to limit-1 more (the
// whole at most Size messages) that are already queued; it returns how
// many it read. Datagram gives each; they stay valid until the next Read.
// An error is the socket's (a pending ICMP error, a deadline,
// net.ErrClosed), as from net.UDPConn.ReadFromUDPAddrPort, with nothing
// read.
func (r *Reader) Read(limit int) (int, error) {
	limit = max(limit, 1)
	if r.next < len(r.segs) {
		// Datagrams of the last messages not handed out yet.
		r.base = r.next
		r.next = min(len(r.segs), r.base+limit)
		return r.next - r.base, nil
	}
	r.segs, r.base, r.next = r.segs[:0], 0, 0
	if r.bufs[0] == nil {
		r.bufs[0] = slots.Get().(*[]byte)
	}
	r.vlen = 1
	if r.busy {
		r.vlen = r.take(min(limit, Size))
	}
	r.waited, r.got = false, 0
	err := r.rc.Read(r.readFn)
	n, errno := r.got, r.errno
	r.errno = nil
	if err == nil && errno != nil {
		err = &net.OpError{Op: "read", Net: "udp", Source: r.uc.LocalAddr(), Err: os.NewSyscallError("recvmmsg", errno)}
	}
	if err != nil {
		// A Read that fails holds no buffer: the socket may be closed
		// and the Reader dropped.
		r.busy = false
		r.release(0)
		return 0, err
	}
	// Datagrams were waiting when Read was called: the sender is ahead
	// of this reader, and the next Read takes a whole batch.
	r.busy = !r.waited
	for i := range n {
		r.split(i)
	}
	r.next = min(len(r.segs), limit)
	return r.next, nil
}

// read is the RawConn callback of Read (a method value made once, so
// that a Read allocates nothing): one recvmmsg of vlen messages.
func (r *Reader) read(fd uintptr) bool {
	r.prepare(r.vlen)
	for {
		r.got, r.errno = recvmmsg(fd, r.hdrs[:r.vlen])
		if r.errno != unix.EINTR {
			break
		}
	}
	if r.errno == unix.EAGAIN {
		// Going idle: the extra buffers go back before the wait.
		r.busy = false
		r.release(1)
		r.vlen = 1
		r.waited = true
		return false
	}
	return true
}

// split adds the datagrams of message i to r.segs: one, or those of a
// GRO message, each of the size its control message gives but the last.
func (r *Reader) split(i int) {
	h := &r.hdrs[i]
	total := int(h.Len)
	size := 0
	if h.Hdr.Controllen > 0 {
		size = groSize(r.oobs[i][:min(int(h.Hdr.Controllen), groCmsgSpace)])
	}
	if size <= 0 || size >= total {
		r.segs = append(r.segs, segment{msg: i, n: total})
		return
	}
	for off := 0; off < total; off += size {
		r.segs = append(r.segs, segment{msg: i, off: off, n: min(size, total-off)})
	}
}

// groSize returns the segment size a UDP_GRO control message gives, or 0.
func groSize(oob []byte) int {
	if len(oob) < unix.CmsgLen(4) {
		return 0
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	if h.Level != unix.SOL_UDP || h.Type != unix.UDP_GRO || int(h.Len) < unix.CmsgLen(4) {
		return 0
	}
	return int(*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])))
}

// take makes sure the first n slots have a buffer and returns n: a Read
// for fewer datagrams than a batch (ReadFrom's one) borrows no more.
func (r *Reader) take(n int) int {
	for i := 1; i < n; i++ {
		if r.bufs[i] == nil {
			r.bufs[i] = slots.Get().(*[]byte)
		}
	}
	return n
}

// release gives back the buffers from index from on.
func (r *Reader) release(from int) {
	for i := from; i < Size; i++ {
		if r.bufs[i] != nil {
			slots.Put(r.bufs[i])
			r.bufs[i] = nil
		}
	}
}

func (r *Reader) prepare(vlen int) {
	for i := range vlen {
		b := *r.bufs[i]
		r.iovs[i].Base = &b[0]
		r.iovs[i].SetLen(len(b))
		h := &r.hdrs[i]
		h.Len = 0
		h.Hdr = unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&r.names[i])),
			Namelen: unix.SizeofSockaddrInet6,
			Iov:     &r.iovs[i],
			Control: &r.oobs[i][0],
		}
		h.Hdr.SetIovlen(1)
		h.Hdr.SetControllen(groCmsgSpace)
	}
}

// Datagram returns the i-th datagram of the last Read, i < n, and its
// source: for an IPv4 sender on an IPv6 socket, its IPv4-mapped address,
// as net.UDPConn gives it.
func (r *Reader) Datagram(i int) ([]byte, netip.AddrPort) {
	if i < 0 || r.base+i >= r.next {
		return nil, netip.AddrPort{}
	}
	sg := r.segs[r.base+i]
	b := (*r.bufs[sg.msg])[sg.off : sg.off+sg.n]
	sa := &r.names[sg.msg]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return b, netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port(&sa4.Port))
	case unix.AF_INET6:
		ip := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			ip = ip.WithZone(r.zones.name(sa.Scope_id))
		}
		return b, netip.AddrPortFrom(ip, port(&sa.Port))
	}
	return b, netip.AddrPort{}
}

// Writer sends batches of datagrams on one UDP socket. Consecutive
// datagrams to one destination, of one size (the last of them may be
// shorter) and without control messages leave as one UDP GSO send
// (UDP_SEGMENT): the kernel takes them through its stack as one packet
// and cuts it into the datagrams as late as it can, at the device or at
// the receiving socket. A socket whose path cannot take that (EIO, or
// EINVAL for a size) falls back to one datagram per message.
type Writer struct {
	uc    *net.UDPConn
	rc    syscall.RawConn
	v4    bool
	hdrs  [Size]unix.Mmsghdr
	count [Size]int // messages of each header: 1, or a GSO run's
	iovs  [2 * Size]unix.Iovec
	names [Size]unix.RawSockaddrInet6
	cmsgs [Size][gsoCmsgSpace]byte
	zones zoneCache

	// gsoMax is the largest segment GSO is tried with (0: never): a
	// segment too large for the path fails with EINVAL, and lowers it.
	gsoMax int
	send   func(fd uintptr, hs []unix.Mmsghdr) (int, error) // sendmmsg; tests wrap it

	// GSOFor, when set, says whether datagrams to a destination may go
	// as one GSO send (a destination that does not take them, a closed
	// port, answers a GSO send with one ICMP error for all of them).
	GSOFor func(to netip.AddrPort) bool

	// Short, when set, is called after a send that took fewer messages
	// than it was given without an error: the kernel then drops the error
	// of the first it did not take (which, for the socket's pending
	// error, clears it). The Writer sends the rest with the next call.
	Short func()

	// The state of one system call, for writeFn.
	writeFn func(fd uintptr) bool
	k       int
	wait    bool
	got     int
	errno   error
}

const (
	// gsoCmsgSpace is the room of a UDP_SEGMENT control message.
	gsoCmsgSpace = 24
	// gsoMaxBytes bounds a GSO send: the whole must fit one IP packet.
	gsoMaxBytes = 65000
)

// NewWriter returns a Writer on uc.
func NewWriter(uc *net.UDPConn) (*Writer, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	w := &Writer{uc: uc, rc: rc, v4: isV4Socket(uc), gsoMax: gsoMaxBytes, send: sendmmsg}
	w.writeFn = w.writeOnce
	return w, nil
}

// Write sends ms in order, waiting while the socket's buffer is full, and
// returns how many it sent. When that is fewer than len(ms), err is the
// error of ms[n], which was not sent (the ones after it were not tried).
func (w *Writer) Write(ms []Message) (int, error) { return w.write(ms, true) }

// TryWrite is Write without the wait: when the socket's buffer is full it
// returns how many it sent before, and ErrWouldBlock.
func (w *Writer) TryWrite(ms []Message) (int, error) { return w.write(ms, false) }

func (w *Writer) write(ms []Message, wait bool) (int, error) {
	sent := 0
	for sent < len(ms) {
		k, perr := w.prepare(ms[sent:min(len(ms), sent+Size)])
		if k == 0 {
			return sent, perr
		}
		// k headers; with perr, they carry every message before the one
		// that failed.
		w.k, w.wait, w.got = k, wait, 0
		err := w.rc.Write(w.writeFn)
		n, errno := w.got, w.errno
		w.errno = nil
		for _, c := range w.count[:n] {
			sent += c
		}
		switch {
		case err != nil:
			return sent, err
		case errno == unix.EAGAIN:
			return sent, ErrWouldBlock
		case errno != nil && w.count[0] > 1 && w.gsoRefused(errno, len(ms[sent].Head)+len(ms[sent].Buf)):
			continue // again, without GSO for this size
		case errno != nil:
			// The first of the call failed. (A failure after it ends the
			// call early without an error: see Short.)
			return sent, &net.OpError{Op: "write", Net: "udp", Source: w.uc.LocalAddr(), Addr: net.UDPAddrFromAddrPort(ms[sent].Addr), Err: os.NewSyscallError("sendmmsg", errno)}
		}
		if n < k && w.Short != nil {
			w.Short()
		}
		if n == k && perr != nil {
			return sent, perr
		}
	}
	return sent, nil
}

// writeOnce is the RawConn callback of Write and TryWrite (a method value made
// once): one sendmmsg of k headers.
func (w *Writer) writeOnce(fd uintptr) bool {
	for {
		w.got, w.errno = w.send(fd, w.hdrs[:w.k])
		if w.errno != unix.EINTR {
			break
		}
	}
	return w.errno != unix.EAGAIN || !w.wait
}

// gsoRefused reports whether errno, from a GSO send of segments of seg
// bytes, says the path cannot take GSO (at that size), and takes note.
func (w *Writer) gsoRefused(errno error, seg int) bool {
	switch errno {
	case unix.EIO, unix.EOPNOTSUPP, unix.ENOPROTOOPT:
		// The device cannot checksum for us, or the kernel has no GSO.
		w.gsoMax = 0
		return true
	case unix.EINVAL:
		// A segment larger than the path's MTU. (Not EMSGSIZE: on a
		// socket with IP_RECVERR that may be a router's report about an
		// earlier datagram, pending on the socket.)
		w.gsoMax = min(w.gsoMax, seg-1)
		return true
	}
	return false
}

// gsoRun returns how many messages from ms[0] can go as one GSO send.
func (w *Writer) gsoRun(ms []Message) int {
	seg := len(ms[0].Head) + len(ms[0].Buf)
	if seg == 0 || seg > w.gsoMax || len(ms[0].OOB) > 0 || len(ms) < 2 || ms[1].Addr != ms[0].Addr {
		return 1
	}
	if w.GSOFor != nil && !w.GSOFor(ms[0].Addr) {
		return 1
	}
	n, total := 1, seg
	for n < len(ms) {
		m := &ms[n]
		size := len(m.Head) + len(m.Buf)
		if m.Addr != ms[0].Addr || len(m.OOB) > 0 || size == 0 || size > seg || total+size > gsoMaxBytes {
			break
		}
		n++
		total += size
		if size < seg {
			break // a shorter one ends the run
		}
	}
	return n
}

// prepare fills the headers for ms and returns how many it filled; they
// carry all of ms, or the messages up to the first whose address the
// socket cannot take, and then err is that message's error.
func (w *Writer) prepare(ms []Message) (int, error) {
	h, iv, i := 0, 0, 0
	for i < len(ms) {
		m := &ms[i]
		namelen, err := w.name(h, m.Addr)
		if err != nil {
			return h, &net.OpError{Op: "write", Net: "udp", Source: w.uc.LocalAddr(), Addr: net.UDPAddrFromAddrPort(m.Addr), Err: err}
		}
		run := w.gsoRun(ms[i:])
		first := iv
		for _, r := range ms[i : i+run] {
			for _, b := range [2][]byte{r.Head, r.Buf} {
				if len(b) > 0 {
					w.iovs[iv] = unix.Iovec{Base: &b[0]}
					w.iovs[iv].SetLen(len(b))
					iv++
				}
			}
		}
		hdr := &w.hdrs[h]
		hdr.Len = 0
		hdr.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&w.names[h])), Namelen: namelen}
		if iv > first {
			hdr.Hdr.Iov = &w.iovs[first]
			hdr.Hdr.SetIovlen(iv - first)
		}
		switch {
		case run > 1:
			c := w.cmsgs[h][:]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
			ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			ch.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&c[unix.CmsgLen(0)])) = uint16(len(m.Head) + len(m.Buf))
			hdr.Hdr.Control = &c[0]
			hdr.Hdr.SetControllen(unix.CmsgSpace(2))
		case len(m.OOB) > 0:
			hdr.Hdr.Control = &m.OOB[0]
			hdr.Hdr.SetControllen(len(m.OOB))
		}
		w.count[h] = run
		h++
		i += run
	}
	return h, nil
}

// name writes ap as the socket's family needs it into names[i].
func (w *Writer) name(i int, ap netip.AddrPort) (uint32, error) {
	ip := ap.Addr()
	if w.v4 {
		if !ip.Unmap().Is4() {
			return 0, &net.AddrError{Err: "non-IPv4 address", Addr: ip.String()}
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&w.names[i]))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip.Unmap().As4()}
		setPort(&sa4.Port, ap.Port())
		return unix.SizeofSockaddrInet4, nil
	}
	if !ip.IsValid() {
		return 0, &net.AddrError{Err: "invalid address", Addr: ip.String()}
	}
	sa := &w.names[i]
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip.As16()}
	if z := ip.Zone(); z != "" {
		idx, err := w.zones.index(z)
		if err != nil {
			return 0, err
		}
		sa.Scope_id = idx
	}
	setPort(&sa.Port, ap.Port())
	return unix.SizeofSockaddrInet6, nil
}

// port reads a port in network byte order.
func port(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

func setPort(p *uint16, v uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(v>>8), byte(v)
}

// zoneCache remembers the last interface a Reader or Writer looked up:
// the peers of one socket with a zone (link-local IPv6) are mostly on one
// link, and each lookup is a netlink request.
type zoneCache struct {
	idx  uint32
	zone string
}

func (c *zoneCache) name(idx uint32) string {
	if c.zone == "" || c.idx != idx {
		c.idx, c.zone = idx, zoneName(idx)
	}
	return c.zone
}

func (c *zoneCache) index(zone string) (uint32, error) {
	if c.zone != zone {
		idx, err := zoneIndex(zone)
		if err != nil {
			return 0, err
		}
		c.idx, c.zone = idx, zone
	}
	return c.idx, nil
}

// zoneName names an interface index as net.UDPConn does: the interface's
// name, or the number when there is no such interface.
func zoneName(idx uint32) string {
	if ifi, err := net.InterfaceByIndex(int(idx)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(idx), 10)
}

// zoneIndex is zoneName's inverse.
func zoneIndex(zone string) (uint32, error) {
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index), nil
	}
	n, err := strconv.ParseUint(zone, 10, 32)
	if err != nil {
		return 0, &net.AddrError{Err: "unknown zone", Addr: zone}
	}
	return uint32(n), nil
}

func recvmmsg(fd uintptr, hs []unix.Mmsghdr) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func sendmmsg(fd uintptr, hs []unix.Mmsghdr) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// slots holds the extra buffers of busy Readers.
var slots = sync.Pool{New: func() any {
	b := make([]byte, SlotSize)
	return &b
}}

// isV4Socket reports whether uc is an IPv4 socket, which takes only IPv4
// addresses; on an IPv6 (dual-stack) socket an IPv4 address is sent as
// its IPv4-mapped form, as the runtime does.
func isV4Socket(uc *net.UDPConn) bool {
	la, ok := uc.LocalAddr().(*net.UDPAddr)
	return ok && la.IP.To4() != nil
}
