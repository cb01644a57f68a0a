package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"tungate/internal/engine"
	"tungate/socks"
)

// maxPingSockets bounds the ICMP sockets open at once (one per client
// address and echo identifier).
const maxPingSockets = 1024

// pingGroupRange is the sysctl that lets a group open unprivileged ICMP
// sockets (for IPv4 and IPv6 alike).
const pingGroupRange = "/proc/sys/net/ipv4/ping_group_range"

// pinger forwards echo requests with unprivileged ICMP sockets (SOCK_DGRAM,
// IPPROTO_ICMP / IPPROTO_ICMPV6): one socket per client address and echo
// identifier, whatever the destinations. The kernel gives each socket an
// identifier of its own; replies are rewritten to the client's.
type pinger struct {
	s    *Stack
	mark uint32

	mu     sync.Mutex
	socks  map[pingKey]*pingSock
	closed bool

	// restoreRange is the ping_group_range to put back at close, if the
	// pinger widened it.
	restoreRange string
	ourRange     string
}

type pingKey struct {
	client netip.Addr
	ident  uint16
}

func newPinger(s *Stack, mark uint32) *pinger {
	return &pinger{s: s, mark: mark, socks: make(map[pingKey]*pingSock)}
}

// forward sends req out and starts relaying what comes back.
func (p *pinger) forward(req echoRequest) {
	ps := p.socket(req)
	if ps == nil {
		return
	}
	v4 := req.dst.Is4()
	msg := make([]byte, echoHdrLen+len(req.data))
	msg[0] = icmp6Echo
	if v4 {
		msg[0] = icmp4Echo
	}
	// The kernel fills in the identifier and the checksum.
	binary.BigEndian.PutUint16(msg[echoSeqOff:], req.seq)
	copy(msg[echoHdrLen:], req.data)
	var oob []byte
	if req.ttl <= maxCarriedTTL {
		oob = engine.TTLControl(v4, int(req.ttl)-1)
	}
	ps.active.Store(time.Now().UnixNano())
	ps.flow.SetState(engine.StateEstablished)
	dst := netip.AddrPortFrom(req.dst, 0)
	_, _, err := ps.c.WriteMsgUDPAddrPort(msg, oob, dst)
	if err != nil && engine.IsQueuedError(err) {
		// The send may have failed with an error about an earlier
		// request (the socket's pending error): pass the queued errors
		// on and send again.
		if pes := engine.DrainErrQueue(ps.c); len(pes) > 0 {
			for _, pe := range pes {
				ps.reportError(pe)
			}
			_, _, err = ps.c.WriteMsgUDPAddrPort(msg, oob, dst)
		}
		// Refused outright (no route, prohibited): tell the client as a
		// router would.
		if pe := engine.LocalSendError(dst, msg, err); err != nil && pe != nil {
			ps.reportError(pe)
			return
		}
	}
	if err != nil {
		p.s.log.Debug("forwarding echo request", "dst", req.dst.String(), "err", err)
		return
	}
	ps.flow.AddUp(len(req.data))
}

// socket returns the socket for req's client and identifier, opening it.
func (p *pinger) socket(req echoRequest) *pingSock {
	key := pingKey{client: req.src, ident: req.ident}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ps, ok := p.socks[key]; ok {
		return ps
	}
	if p.closed || len(p.socks) >= maxPingSockets {
		return nil
	}
	c, err := p.open(req.dst.Is4())
	if err != nil {
		p.s.log.Debug("opening ICMP socket", "err", err)
		return nil
	}
	flow, err := p.s.eng.Registry().Open(engine.FlowSpec{
		Proto: pingProto(req.dst.Is4()),
		Src:   socks.Addr{IP: req.src, Port: req.ident},
		Dst:   socks.Addr{IP: req.dst},
		Flags: engine.FlagTUN,
	})
	if err != nil {
		c.Close()
		return nil
	}
	if !p.s.enter() {
		c.Close()
		flow.Close()
		return nil
	}
	ps := &pingSock{p: p, key: key, c: c, flow: flow}
	ps.active.Store(time.Now().UnixNano())
	flow.SetAbort(func() { c.Close() })
	p.socks[key] = ps
	go func() {
		defer p.s.flows.Done()
		ps.relay()
	}()
	return ps
}

func pingProto(v4 bool) engine.Proto {
	if v4 {
		return engine.ProtoICMP
	}
	return engine.ProtoICMPv6
}

// open makes an unprivileged ICMP socket, marked so that it bypasses the
// TUN device, with its errors queued.
func (p *pinger) open(v4 bool) (*net.UDPConn, error) {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if !v4 {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if errors.Is(err, unix.EACCES) && p.allowPing() {
		fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	}
	if err != nil {
		return nil, fmt.Errorf("netstack: ICMP socket: %w", err)
	}
	if p.mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(p.mark)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("netstack: ICMP socket mark: %w", err)
		}
	}
	f := os.NewFile(uintptr(fd), "icmp")
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("netstack: ICMP socket: %w", err)
	}
	c, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, errors.New("netstack: ICMP socket is not a datagram socket")
	}
	if err := engine.EnableErrQueue(c); err != nil {
		p.s.log.Debug("ICMP socket without error queue", "err", err)
	}
	return c, nil
}

// allowPing widens net.ipv4.ping_group_range to the process's group when
// it does not cover it, remembering the old value for close. It reports
// whether it changed anything. Called with p.mu held.
func (p *pinger) allowPing() bool {
	old, err := os.ReadFile(pingGroupRange)
	if err != nil {
		return false
	}
	f := strings.Fields(string(old))
	if len(f) != 2 {
		return false
	}
	lo, err1 := strconv.ParseInt(f[0], 10, 64)
	hi, err2 := strconv.ParseInt(f[1], 10, 64)
	gid := int64(os.Getegid())
	if err1 != nil || err2 != nil || lo <= gid && gid <= hi {
		return false
	}
	if lo > hi { // the empty range, "1 0": nobody
		lo, hi = gid, gid
	} else {
		lo, hi = min(lo, gid), max(hi, gid)
	}
	ours := fmt.Sprintf("%d\t%d", lo, hi)
	if err := os.WriteFile(pingGroupRange, []byte(ours), 0o644); err != nil {
		return false
	}
	p.s.log.Info("widened net.ipv4.ping_group_range for ICMP forwarding; restored at exit", "old", strings.TrimSpace(string(old)), "new", ours)
	if p.restoreRange == "" {
		p.restoreRange = strings.TrimSpace(string(old))
	}
	p.ourRange = ours
	return true
}

// closeAll closes every socket and puts ping_group_range back if the
// pinger changed it and nobody changed it since.
func (p *pinger) closeAll() {
	p.mu.Lock()
	p.closed = true
	all := p.socks
	p.socks = make(map[pingKey]*pingSock)
	restore, ours := p.restoreRange, p.ourRange
	p.mu.Unlock()
	for _, ps := range all {
		ps.c.Close()
	}
	if restore == "" {
		return
	}
	if cur, err := os.ReadFile(pingGroupRange); err == nil && strings.Join(strings.Fields(string(cur)), "\t") == ours {
		os.WriteFile(pingGroupRange, []byte(restore), 0o644)
	}
}

// pingSock is the socket of one client address and echo identifier.
type pingSock struct {
	p      *pinger
	key    pingKey
	c      *net.UDPConn
	flow   *engine.Flow
	active atomic.Int64 // unix nanoseconds of the last request or reply
}

// relay passes replies and errors back to the client until the socket is
// idle for the UDP timeout or closed.
func (ps *pingSock) relay() {
	s := ps.p.s
	defer func() {
		ps.c.Close()
		ps.p.mu.Lock()
		if ps.p.socks[ps.key] == ps {
			delete(ps.p.socks, ps.key)
		}
		ps.p.mu.Unlock()
		ps.flow.Close()
	}()
	buf := make([]byte, maxPacket)
	for {
		idle := s.eng.Settings().UDPIdleTimeout()
		ps.c.SetReadDeadline(time.Unix(0, ps.active.Load()).Add(idle))
		n, from, err := ps.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if engine.IsQueuedError(err) {
				for _, pe := range engine.DrainErrQueue(ps.c) {
					ps.reportError(pe)
				}
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, ps.active.Load())) < idle {
				continue
			}
			return
		}
		if n < echoHdrLen || buf[0] != icmp4Reply && buf[0] != icmp6Reply {
			continue
		}
		ps.active.Store(time.Now().UnixNano())
		seq := binary.BigEndian.Uint16(buf[echoSeqOff:])
		s.writeEcho(true, from.Addr().Unmap(), ps.key.client, ps.key.ident, seq, buf[echoHdrLen:n])
		ps.flow.AddDown(n - echoHdrLen)
	}
}

// reportError passes an ICMP error about a forwarded request to the
// client, quoting the request as the client sent it.
func (ps *pingSock) reportError(pe *engine.PacketError) {
	dst, ok := pe.Dst.AddrPort()
	if !ok || len(pe.Payload) < echoHdrLen || dst.Addr().Is4() != ps.key.client.Is4() {
		return
	}
	s := ps.p.s
	seq := binary.BigEndian.Uint16(pe.Payload[echoSeqOff:])
	bp := getDatagram()
	defer putDatagram(bp)
	orig := appendEcho((*bp)[:0], false, ps.key.client, dst.Addr(), ps.key.ident, seq, pe.Payload[echoHdrLen:])
	from := pe.Offender
	if !from.IsValid() || from.Is4() != dst.Addr().Is4() {
		from = dst.Addr()
	}
	if pe.V6 == dst.Addr().Is6() {
		s.sendICMP(orig, from, pe.Type, pe.Code, pe.Info)
		return
	}
	s.sendICMPError(orig, from, AnswerFor(pe.Reply()), pe.Info)
}
