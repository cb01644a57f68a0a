//go:build !linux

package udpbatch

import (
	"net"
	"net/netip"
)

// Reader reads datagrams from one UDP socket, one per Read on systems
// without recvmmsg.
type Reader struct {
	uc   *net.UDPConn
	buf  []byte
	n    int
	from netip.AddrPort
}

// NewReader returns a Reader of uc.
func NewReader(uc *net.UDPConn) (*Reader, error) {
	return &Reader{uc: uc, buf: make([]byte, SlotSize)}, nil
}

// Read waits for a datagram and reads it (whatever limit); it returns 1, or 0 and the
// socket's error.
func (r *Reader) Read(limit int) (int, error) {
	n, from, err := r.uc.ReadFromUDPAddrPort(r.buf)
	if err != nil {
		r.n = -1
		return 0, err
	}
	r.n, r.from = n, from
	return 1, nil
}

// Datagram returns the datagram of the last Read (i == 0) and its source.
func (r *Reader) Datagram(i int) ([]byte, netip.AddrPort) {
	if i != 0 || r.n < 0 {
		return nil, netip.AddrPort{}
	}
	return r.buf[:r.n], r.from
}

// EnableGRO reports false: there is no UDP GRO here.
func EnableGRO(uc *net.UDPConn) bool { return false }

// Writer sends datagrams on one UDP socket, one per system call.
type Writer struct {
	uc  *net.UDPConn
	buf []byte
}

// NewWriter returns a Writer on uc.
func NewWriter(uc *net.UDPConn) (*Writer, error) { return &Writer{uc: uc}, nil }

// Write sends ms in order and returns how many it sent; when fewer than
// len(ms), err is the error of ms[n].
func (w *Writer) Write(ms []Message) (int, error) {
	for i, m := range ms {
		b := m.Buf
		if len(m.Head) > 0 {
			w.buf = append(append(w.buf[:0], m.Head...), m.Buf...)
			b = w.buf
		}
		if _, _, err := w.uc.WriteMsgUDPAddrPort(b, m.OOB, m.Addr); err != nil {
			return i, err
		}
	}
	return len(ms), nil
}

// TryWrite is Write; the socket's buffer is not looked at here.
func (w *Writer) TryWrite(ms []Message) (int, error) { return w.Write(ms) }
