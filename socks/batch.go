package socks

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"tungate/internal/udpbatch"
)

// MaxBatch is the most datagrams a BatchReader returns at once, and a
// BatchWriter sends with one system call.
const MaxBatch = udpbatch.Size

// Datagram is one datagram of a batch: its payload, and its peer (the
// destination when sending, the source when reading).
type Datagram struct {
	Buf  []byte
	Addr Addr
}

// BatchReader is implemented by packet endpoints that can read several
// datagrams with one system call.
type BatchReader interface {
	// ReadBatch waits for a datagram and returns it with up to
	// len(ds)-1 more that are already there: ds[i].Buf is the endpoint's
	// memory, valid until the next ReadBatch. An error, with n == 0, is
	// what ReadFrom would have returned. One goroutine reads.
	ReadBatch(ds []Datagram) (n int, err error)
}

// BatchWriter is implemented by packet endpoints that can send several
// datagrams with one system call.
type BatchWriter interface {
	// WriteBatch sends ds in order and returns how many it sent. When
	// that is fewer than len(ds), err is what WriteTo would have returned
	// for ds[n], which was not sent, and the ones after it were not
	// tried. One goroutine writes.
	WriteBatch(ds []Datagram) (n int, err error)
}

// BatchTryWriter is implemented by packet endpoints that can send a batch
// of datagrams without blocking (an upstream association). It returns how
// many it sent, in order; when that is fewer than len(ds), err is the
// error of ds[n], which is done with, or nil when ds[n] was not sent
// because the socket was full.
type BatchTryWriter interface {
	TryWriteBatch(ds []Datagram) (n int, err error)
}

// ReadBatch implements BatchReader: datagrams from strangers, fragmented
// or malformed ones are dropped, as by ReadFrom.
func (r *clientRelay) ReadBatch(ds []Datagram) (int, error) {
	if r.reader == nil {
		var err error
		if r.reader, err = udpbatch.NewReader(r.uc); err != nil {
			return 0, err
		}
	}
	for {
		n, err := r.reader.Read(len(ds))
		if err != nil {
			return 0, err
		}
		k := 0
		for i := 0; i < n && k < len(ds); i++ {
			b, from := r.reader.Datagram(i)
			if !r.admit(from) {
				r.dropped.Add(1)
				continue
			}
			h, off, err := ParseUDPHeader(b)
			if err != nil {
				r.dropped.Add(1)
				continue
			}
			ds[k] = Datagram{Buf: b[off:], Addr: h.Addr}
			k++
		}
		if k > 0 {
			return k, nil
		}
	}
}

// WriteBatch implements BatchWriter: each datagram goes to the client
// with a header naming its source. Until the client has sent anything its
// port is unknown, and the datagrams are dropped, as by WriteTo.
func (r *clientRelay) WriteBatch(ds []Datagram) (int, error) {
	r.mu.Lock()
	dst := r.client
	r.mu.Unlock()
	if !dst.IsValid() {
		return len(ds), nil
	}
	if r.writer == nil {
		var err error
		if r.writer, err = udpbatch.NewWriter(r.uc); err != nil {
			return 0, err
		}
	}
	return sendBatch(r.writer, &r.msgs, ds, dst, true, func(i int, d Datagram) ([]byte, error) {
		return AppendUDPHeader(r.heads[i][:0], UDPHeader{Addr: d.Addr})
	})
}

// ReadBatch implements BatchReader: only datagrams from hop 1's relay are
// taken, each unwrapped of one header per hop, as by ReadFrom.
func (p *upstreamPacketConn) ReadBatch(ds []Datagram) (int, error) {
	if p.reader == nil {
		var err error
		if p.reader, err = udpbatch.NewReader(p.uc); err != nil {
			return 0, err
		}
	}
	for {
		n, err := p.reader.Read(len(ds))
		if err != nil {
			select {
			case <-p.done:
				return 0, net.ErrClosed
			default:
			}
			return 0, err
		}
		k := 0
		for i := 0; i < n && k < len(ds); i++ {
			b, from := p.reader.Datagram(i)
			if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != p.first {
				continue
			}
			if payload, src, ok := p.decapsulate(b); ok {
				ds[k] = Datagram{Buf: payload, Addr: src}
				k++
			}
		}
		if k > 0 {
			return k, nil
		}
	}
}

// WriteBatch implements BatchWriter: each datagram is wrapped as by
// WriteTo, the headers apart from the payload, which is not copied.
func (p *upstreamPacketConn) WriteBatch(ds []Datagram) (int, error) { return p.writeBatch(ds, true) }

// TryWriteBatch implements BatchTryWriter: WriteBatch as far as hop 1's
// relay socket takes the datagrams at once.
func (p *upstreamPacketConn) TryWriteBatch(ds []Datagram) (int, error) {
	n, err := p.writeBatch(ds, false)
	if errors.Is(err, udpbatch.ErrWouldBlock) {
		err = nil
	}
	return n, err
}

// hopSender is the state of one of an upstream association's batch
// writers: WriteBatch's and TryWriteBatch's, which may run on different
// goroutines.
type hopSender struct {
	w     *udpbatch.Writer
	msgs  [MaxBatch]udpbatch.Message
	heads [MaxBatch][]byte // the headers of the datagrams
}

func (p *upstreamPacketConn) writeBatch(ds []Datagram, wait bool) (int, error) {
	hs := &p.trySender
	if wait {
		hs = &p.sender
	}
	if hs.w == nil {
		var err error
		if hs.w, err = udpbatch.NewWriter(p.uc); err != nil {
			return 0, err
		}
	}
	return sendBatch(hs.w, &hs.msgs, ds, p.first, wait, func(i int, d Datagram) ([]byte, error) {
		hdr, err := p.headers(hs.heads[i][:0], len(d.Buf), d.Addr)
		hs.heads[i] = hdr[:0] // keeps what the headers grew
		return hdr, err
	})
}

// sendBatch sends ds to `to` through w, each datagram behind the header
// head gives it for its place in the batch (i < MaxBatch), MaxBatch at a
// time; without wait, only as far as the socket takes them at once. It
// returns how many it sent, and when fewer than len(ds), the error of
// ds[n].
func sendBatch(w *udpbatch.Writer, msgs *[MaxBatch]udpbatch.Message, ds []Datagram, to netip.AddrPort, wait bool, head func(i int, d Datagram) ([]byte, error)) (int, error) {
	sent := 0
	for sent < len(ds) {
		ms := msgs[:0]
		var herr error
		for i, d := range ds[sent:min(len(ds), sent+MaxBatch)] {
			hdr, err := head(i, d)
			if err != nil {
				herr = err
				break
			}
			ms = append(ms, udpbatch.Message{Head: hdr, Buf: d.Buf, Addr: to})
		}
		var n int
		var err error
		if wait {
			n, err = w.Write(ms)
		} else {
			n, err = w.TryWrite(ms)
		}
		clear(ms)
		sent += n
		if err != nil {
			return sent, err
		}
		if herr != nil {
			return sent, herr
		}
	}
	return sent, nil
}

// headers appends the headers that wrap a datagram of size bytes to dst:
// one per hop, outermost first (hop 1 must forward to relay 2, ..., hop N
// to dst).
func (p *upstreamPacketConn) headers(hdr []byte, size int, dst Addr) ([]byte, error) {
	var err error
	for i := 1; i < len(p.relays); i++ {
		if hdr, err = AppendUDPHeader(hdr, UDPHeader{Addr: p.relays[i]}); err != nil {
			return nil, err
		}
	}
	if hdr, err = AppendUDPHeader(hdr, UDPHeader{Addr: dst}); err != nil {
		return nil, err
	}
	if len(hdr)+size > maxUDPDatagram+MaxUDPHeaderLen {
		return nil, fmt.Errorf("socks: datagram of %d bytes too large to encapsulate", size)
	}
	return hdr, nil
}

// decapsulate unwraps one header per hop from a datagram of hop 1's relay
// and returns the payload and its source, the innermost header's.
func (p *upstreamPacketConn) decapsulate(b []byte) (payload []byte, src Addr, ok bool) {
	off := 0
	for range p.relays {
		h, m, err := ParseUDPHeader(b[off:])
		if err != nil {
			return nil, Addr{}, false
		}
		off += m
		src = h.Addr
	}
	return b[off:], src, true
}
