package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"tungate/socks"

	"tungate/internal/udpbatch"
)

// Layout of struct sock_extended_err (linux/errqueue.h).
const (
	eeLen        = 16
	eeOriginOff  = 4
	eeTypeOff    = 5
	eeCodeOff    = 6
	eeInfoOff    = 8
	errQueueMax  = 16    // errors drained at once
	errQueueData = 65535 // payload kept of each offending datagram: all of it
)

// EnableErrQueue asks the kernel to queue the ICMP errors about what the
// socket sends, so that they can be passed on (IP_RECVERR, IPV6_RECVERR).
func EnableErrQueue(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var e4, e6 error
	if err := rc.Control(func(fd uintptr) {
		e6 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
		e4 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1)
	}); err != nil {
		return err
	}
	if e4 != nil && e6 != nil {
		return errors.Join(e4, e6)
	}
	return nil
}

// IsQueuedError reports whether a read failed because the kernel queued
// an ICMP error for the socket; DrainErrQueue then returns it.
func IsQueuedError(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case unix.ECONNREFUSED, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EHOSTDOWN,
		unix.EACCES, unix.EPERM, unix.EMSGSIZE, unix.ENOPROTOOPT, unix.ENETDOWN:
		return true
	}
	return false
}

// DrainErrQueue reads the socket's queued errors without blocking.
func DrainErrQueue(c *net.UDPConn) []*PacketError {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	var out []*PacketError
	buf := make([]byte, errQueueData)
	oob := make([]byte, 512)
	// Control, not Read: a reader blocked on the socket holds its read
	// lock, and the writer drains too. MSG_DONTWAIT needs no waiting.
	rc.Control(func(fd uintptr) {
		for len(out) < errQueueMax {
			n, oobn, _, from, err := unix.Recvmsg(int(fd), buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
			if err != nil {
				break
			}
			if pe := parseQueuedError(buf[:n], oob[:oobn], from); pe != nil {
				out = append(out, pe)
			}
		}
	})
	return out
}

// parseQueuedError decodes one message from the error queue: the
// extended error in the control message, the offender after it, the
// destination in the name and the offending payload in the data.
func parseQueuedError(data, oob []byte, from unix.Sockaddr) *PacketError {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		if !(m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR ||
			m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
			continue
		}
		if len(m.Data) < eeLen {
			continue
		}
		ee := m.Data
		pe := &PacketError{
			Type:    ee[eeTypeOff],
			Code:    ee[eeCodeOff],
			Info:    binary.NativeEndian.Uint32(ee[eeInfoOff:]),
			Payload: append([]byte(nil), data...),
		}
		switch ee[eeOriginOff] {
		case unix.SO_EE_ORIGIN_ICMP:
		case unix.SO_EE_ORIGIN_ICMP6:
			pe.V6 = true
		case unix.SO_EE_ORIGIN_LOCAL:
			// The kernel itself refused to send: too big for the path
			// MTU it knows. Tell it as the ICMP error a router would send.
			if binary.NativeEndian.Uint32(ee) != uint32(unix.EMSGSIZE) {
				return nil
			}
			pe.Type, pe.Code = 3, 4
		default:
			return nil
		}
		pe.Offender = sockaddrIP(ee[eeLen:])
		if ap, ok := sockaddrAddrPort(from); ok {
			pe.Dst = socks.AddrFromAddrPort(ap)
			if ee[eeOriginOff] == unix.SO_EE_ORIGIN_LOCAL && !ap.Addr().Unmap().Is4() {
				pe.V6, pe.Type, pe.Code = true, 2, 0
			}
		}
		return pe
	}
	return nil
}

// sockaddrIP decodes the IP of a raw struct sockaddr_in or sockaddr_in6.
func sockaddrIP(b []byte) netip.Addr {
	if len(b) < 2 {
		return netip.Addr{}
	}
	switch binary.NativeEndian.Uint16(b) {
	case unix.AF_INET:
		if len(b) >= 8 {
			return netip.AddrFrom4([4]byte(b[4:8]))
		}
	case unix.AF_INET6:
		if len(b) >= 24 {
			return netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		}
	}
	return netip.Addr{}
}

func sockaddrAddrPort(sa unix.Sockaddr) (netip.AddrPort, bool) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), true
	}
	return netip.AddrPort{}, false
}

// TTLControl returns the control message that sets the TTL (IPv4) or hop
// limit (IPv6) of one datagram.
func TTLControl(v4 bool, ttl int) []byte {
	b := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafePointer(&b[0]))
	if v4 {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TTL
	} else {
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT
	}
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(b[unix.CmsgLen(0):], uint32(ttl))
	return b
}

// setDontFragment switches IPv4 path MTU discovery between "do" (DF set,
// a datagram too big for the path fails with EMSGSIZE) and "want" (the
// kernel fragments), following what the client's datagram asked for. The
// socket keeps its setting until a datagram asks otherwise, so the call is
// rare. IPv6 is always "do": routers never fragment it either.
func (p *directPacketConn) setDontFragment(df bool) {
	if p.df.Load() == df && p.dfSet.Load() {
		return
	}
	mode := unix.IP_PMTUDISC_WANT
	if df {
		mode = unix.IP_PMTUDISC_DO
	}
	rc, err := p.uc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, mode) == nil {
			p.df.Store(df)
			p.dfSet.Store(true)
		}
		if !p.v6DO.Load() {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO)
			p.v6DO.Store(true)
		}
	})
}

// tooBig returns the error for a datagram to dst the kernel would not send
// because it exceeds the path MTU: the local error it queued carries the
// MTU. Other errors drained with it, which the reader would have passed
// on, are dropped: they would have to cross to the reader's goroutine,
// and losing one is what a lost ICMP error does anyway.
func (p *directPacketConn) tooBig(dst netip.AddrPort, b []byte) error {
	var found *PacketError
	for _, pe := range p.drainErrs() {
		if found == nil && (pe.Type == 3 && pe.Code == 4 && !pe.V6 || pe.Type == 2 && pe.V6) {
			found = pe
		}
	}
	if found == nil {
		return fmt.Errorf("engine: datagram of %d bytes to %s too big for the path: %w", len(b), dst, unix.EMSGSIZE)
	}
	found.Dst = socks.AddrFromAddrPort(dst)
	found.Payload = append([]byte(nil), b[:min(len(b), errQueueData)]...)
	return found
}

// LocalSendError returns the ICMP error a router would send about a
// datagram to dst that the kernel refused to send at once (no route,
// prohibited by a rule), or nil for other errors: so that the client hears
// what a network without the gateway would have told it.
func LocalSendError(dst netip.AddrPort, payload []byte, err error) *PacketError {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return nil
	}
	v6 := !dst.Addr().Unmap().Is4()
	pe := &PacketError{Dst: socks.AddrFromAddrPort(dst), V6: v6, Payload: append([]byte(nil), payload[:min(len(payload), errQueueData)]...)}
	switch errno {
	case unix.ENETUNREACH, unix.ENETDOWN:
		pe.Type, pe.Code = 3, 0
		if v6 {
			pe.Type, pe.Code = 1, 0
		}
	case unix.EHOSTUNREACH, unix.EHOSTDOWN:
		pe.Type, pe.Code = 3, 1
		if v6 {
			pe.Type, pe.Code = 1, 3
		}
	case unix.EACCES, unix.EPERM:
		pe.Type, pe.Code = 3, 13
		if v6 {
			pe.Type, pe.Code = 1, 1
		}
	default:
		return nil
	}
	return pe
}

// pendingRetries bounds how often a send is tried again after failing
// with the socket's pending error: each try may meet the error of another
// earlier datagram's ICMP report.
const pendingRetries = 4

// sendAgain reports whether a send that failed with err should be tried
// again, after handing the queued errors to the reader. A send fails with
// an error about an earlier datagram when an ICMP error set the socket's
// pending error: so it is when reports were queued, and always for
// ECONNREFUSED, which a UDP send never gets on its own account (the
// reader may have drained the port unreachable's report first).
func (p *directPacketConn) sendAgain(err error) bool {
	pes := p.drainErrs()
	if len(pes) > 0 {
		p.handOver(pes)
	}
	return len(pes) > 0 || errors.Is(err, unix.ECONNREFUSED)
}

// send sends one datagram. With the error queue on, a send can fail with
// an error that is about an earlier datagram (the socket's pending error,
// set by an ICMP error): then the queued errors go to the reader and the
// datagram is sent again. A send the kernel refuses outright comes back
// as the *PacketError a router would have sent.
func (p *directPacketConn) send(b, oob []byte, ap netip.AddrPort) (int, error) {
	n, _, err := p.uc.WriteMsgUDPAddrPort(b, oob, ap)
	if err == nil || !p.recvErr || !IsQueuedError(err) || errors.Is(err, unix.EMSGSIZE) {
		// EMSGSIZE is about this datagram (too big for the path), and
		// WriteToMeta answers it.
		return n, err
	}
	for range pendingRetries {
		if !p.sendAgain(err) {
			break
		}
		if n, _, err = p.uc.WriteMsgUDPAddrPort(b, oob, ap); err == nil {
			return n, nil
		}
		if !IsQueuedError(err) || errors.Is(err, unix.EMSGSIZE) {
			break
		}
	}
	if pe := LocalSendError(ap, b, err); pe != nil {
		return 0, pe
	}
	return 0, err
}

// TryWriteToMeta implements MetaTryWriter: WriteToMeta when the socket
// takes the datagram at once. Destinations given by name are left to
// WriteToMeta (done false), which resolves them.
func (p *directPacketConn) TryWriteToMeta(b []byte, dst socks.Addr, meta Meta) (int, bool, error) {
	ap, ok := dst.AddrPort()
	if !ok {
		return 0, false, nil
	}
	if p.remote && hostOnly(ap.Addr()) {
		return 0, true, ErrLoopbackRefused
	}
	oob := p.applyMeta(ap, meta)
	n, done, err := socks.TryWriteMsgUDP(p.uc, b, oob, ap)
	if !done || err == nil {
		return n, done, err
	}
	if errors.Is(err, syscall.EMSGSIZE) {
		return 0, true, p.tooBig(ap, b)
	}
	if !p.recvErr || !IsQueuedError(err) {
		return 0, true, err
	}
	// As in send: the error may be about an earlier datagram.
	for range pendingRetries {
		if !p.sendAgain(err) {
			break
		}
		if n, done, err = socks.TryWriteMsgUDP(p.uc, b, oob, ap); !done || err == nil {
			return n, done, err
		}
		if errors.Is(err, syscall.EMSGSIZE) {
			return 0, true, p.tooBig(ap, b)
		}
		if !IsQueuedError(err) {
			break
		}
	}
	if pe := LocalSendError(ap, b, err); pe != nil {
		return 0, true, pe
	}
	return 0, true, err
}

// TryWriteBatchMeta implements MetaBatchTryWriter: TryWriteToMeta for a
// batch, with one system call for each run of datagrams that share a
// don't-fragment setting (a socket option, not a per-datagram one). A
// datagram the batch call refused is tried again on its own by
// TryWriteToMeta, which knows what the socket's errors mean.
func (p *directPacketConn) TryWriteBatchMeta(ds []socks.Datagram, metas []Meta) (int, error) {
	if p.tryWriter == nil {
		var err error
		if p.tryWriter, err = p.newWriter(); err != nil {
			return 0, err
		}
	}
	taken := 0
	for taken < len(ds) {
		// The run: IP destinations (names need WriteToMeta, which
		// resolves), allowed ones, one don't-fragment setting.
		df := metas[taken].DontFragment
		ms := p.tryMsgs[:0]
		var stop error
		for i := taken; i < len(ds) && len(ms) < socks.MaxBatch && metas[i].DontFragment == df; i++ {
			ap, ok := ds[i].Addr.AddrPort()
			if !ok {
				break
			}
			if p.remote && hostOnly(ap.Addr()) {
				stop = ErrLoopbackRefused
				break
			}
			var oob []byte
			if metas[i].TTL > 0 {
				oob = TTLControl(ap.Addr().Unmap().Is4(), metas[i].TTL)
			}
			ms = append(ms, udpbatch.Message{Buf: ds[i].Buf, OOB: oob, Addr: ap})
		}
		if len(ms) == 0 {
			return taken, stop // nil: ds[taken] goes the ordinary way
		}
		p.setDontFragment(df)
		n, err := p.tryWriter.TryWrite(ms)
		taken += n
		switch {
		case errors.Is(err, udpbatch.ErrWouldBlock):
			return taken, nil
		case err != nil:
			p.batchFailed(err)
			_, done, serr := p.TryWriteToMeta(ds[taken].Buf, ds[taken].Addr, metas[taken])
			if !done {
				return taken, nil
			}
			if serr != nil {
				return taken, serr
			}
			p.retried(err)
			taken++
		}
	}
	return taken, nil
}

// gsoProbation is how long a destination must have been sent to, and
// without an ICMP error about it, before datagrams to it go as UDP GSO
// sends: a GSO send that a destination does not take (a closed port) is
// answered with one ICMP error for all its datagrams, where the client
// must see one per datagram, as the network would send it.
const gsoProbation = time.Second

// maxGSODsts bounds the destinations an association remembers for GSO;
// past it they start over.
const maxGSODsts = 256

// gsoDst is what an association knows of a destination, for GSO.
type gsoDst struct{ first, lastErr time.Time }

// gsoFor is the batch writers' udpbatch.Writer.GSOFor: a destination takes
// GSO sends once it has been sent to for gsoProbation with no ICMP error
// about it for as long.
func (p *directPacketConn) gsoFor(to netip.AddrPort) bool {
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	now := time.Now()
	p.gmu.Lock()
	defer p.gmu.Unlock()
	d, ok := p.gsoDsts[to]
	if !ok {
		if len(p.gsoDsts) >= maxGSODsts {
			clear(p.gsoDsts)
		}
		p.gsoDsts[to] = gsoDst{first: now}
		return false
	}
	return now.Sub(d.first) >= gsoProbation && now.Sub(d.lastErr) >= gsoProbation
}

// drainErrs drains the socket's queued errors, noting their destinations
// as not taking GSO sends for a while.
func (p *directPacketConn) drainErrs() []*PacketError {
	pes := DrainErrQueue(p.uc)
	if len(pes) == 0 {
		return nil
	}
	now := time.Now()
	p.gmu.Lock()
	for _, pe := range pes {
		if ap, ok := pe.Dst.AddrPort(); ok {
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			d, seen := p.gsoDsts[ap]
			if !seen {
				d.first = now
			}
			d.lastErr = now
			if seen || len(p.gsoDsts) < maxGSODsts {
				p.gsoDsts[ap] = d
			}
		}
	}
	p.gmu.Unlock()
	return pes
}

// newWriter returns a batch writer on p's socket. A send that took fewer
// datagrams than it was given, without an error, may have met the
// socket's pending error on one after the first: the kernel clears it and
// drops the code, so the reports it stood for are drained then.
func (p *directPacketConn) newWriter() (*udpbatch.Writer, error) {
	w, err := udpbatch.NewWriter(p.uc)
	if err != nil {
		return nil, err
	}
	w.GSOFor = p.gsoFor
	if p.recvErr {
		w.Short = p.drainToReader
	}
	return w, nil
}

// batchFailed runs before a datagram whose batch send failed with err is
// sent again on its own. If err was the socket's pending error (an ICMP
// error about an earlier datagram), the batch call has cleared it, so the
// single send would not meet it and drain the reports: they are drained
// now. EMSGSIZE may be this datagram's own (too big for the path), which
// the single send answers; retried sees to the other case.
func (p *directPacketConn) batchFailed(err error) {
	if p.recvErr && IsQueuedError(err) && !errors.Is(err, unix.EMSGSIZE) {
		p.drainToReader()
	}
}

// retried runs once a datagram whose batch send failed with err was sent
// on its own: an EMSGSIZE was then not about it but pending, from a
// router's "fragmentation needed" about an earlier one, whose report is
// drained now.
func (p *directPacketConn) retried(err error) {
	if p.recvErr && errors.Is(err, unix.EMSGSIZE) {
		p.drainToReader()
	}
}

// drainToReader hands the socket's queued errors to the reader.
func (p *directPacketConn) drainToReader() {
	if pes := p.drainErrs(); len(pes) > 0 {
		p.handOver(pes)
	}
}

// maxHandedOver bounds the errors waiting for the reader.
const maxHandedOver = 64

// handOver gives errors the writer drained to the reader, and wakes the
// reader (blocked in a read that the errors did not wake, since the write
// took the pending error) with a deadline in the past.
func (p *directPacketConn) handOver(pes []*PacketError) {
	p.mu.Lock()
	room := maxHandedOver - len(p.handed)
	p.handed = append(p.handed, pes[:min(len(pes), max(room, 0))]...)
	p.mu.Unlock()
	p.uc.SetReadDeadline(time.Unix(1, 0))
}

// takeHanded returns the errors the writer handed over.
func (p *directPacketConn) takeHanded() []*PacketError {
	p.mu.Lock()
	defer p.mu.Unlock()
	pes := p.handed
	p.handed = nil
	return pes
}
