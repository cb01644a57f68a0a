package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tungate/socks"

	"tungate/internal/udpbatch"
)

// Outbound is where flows leave the gateway: straight to the destination
// (Direct) or through a chain of upstream SOCKS5 proxies (Upstream).
// Errors carry what socks.ReplyFromError needs to name the failure.
type Outbound interface {
	// DialTCP connects to dst.
	DialTCP(ctx context.Context, dst socks.Addr) (net.Conn, error)
	// ListenUDP opens one endpoint for a UDP association: every datagram
	// of the association leaves from it, whatever its destination, and
	// datagrams from any peer come back through it (endpoint-independent
	// mapping).
	ListenUDP(ctx context.Context) (socks.PacketConn, error)
	// Bind waits for one incoming connection from dst (SOCKS BIND).
	Bind(ctx context.Context, dst socks.Addr) (socks.BindListener, error)
	// Upstream reports whether flows leave through a SOCKS5 proxy.
	Upstream() bool
}

// Direct sends flows straight to their destinations from this host.
type Direct struct {
	// Control, when set, is applied to every outbound socket before it
	// connects or binds (for example to set SO_MARK so that the gateway's
	// own traffic is not routed back into its TUN device).
	Control func(network, address string, c syscall.RawConn) error
	// Resolver resolves names; nil means net.DefaultResolver.
	Resolver *net.Resolver
}

func (d *Direct) resolver() *net.Resolver {
	if d.Resolver != nil {
		return d.Resolver
	}
	return net.DefaultResolver
}

// Upstream implements Outbound.
func (d *Direct) Upstream() bool { return false }

// DialTCP implements Outbound.
// A client from another host is refused this host's loopback addresses
// (ErrLoopbackRefused), also when a name resolves to one.
func (d *Direct) DialTCP(ctx context.Context, dst socks.Addr) (net.Conn, error) {
	local := localClient(ctx)
	nd := net.Dialer{Resolver: d.Resolver, ControlContext: func(_ context.Context, network, address string, c syscall.RawConn) error {
		if ap, err := netip.ParseAddrPort(address); err == nil && !local && hostOnly(ap.Addr()) {
			return ErrLoopbackRefused
		}
		if d.Control != nil {
			return d.Control(network, address, c)
		}
		return nil
	}}
	return nd.DialContext(ctx, "tcp", dst.String())
}

// resolve returns an address for a, resolving a name.
func (d *Direct) resolve(ctx context.Context, a socks.Addr) (netip.AddrPort, error) {
	if ap, ok := a.AddrPort(); ok {
		return ap, nil
	}
	ips, err := d.resolver().LookupNetIP(ctx, "ip", a.Name)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, &net.DNSError{Err: "no addresses", Name: a.Name, IsNotFound: true}
	}
	// Prefer IPv4, which every host here can reach when it has both.
	best := ips[0]
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			best = ip
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), a.Port), nil
}

// ListenUDP implements Outbound with one dual-stack socket.
func (d *Direct) ListenUDP(ctx context.Context) (socks.PacketConn, error) {
	lc := net.ListenConfig{Control: d.Control}
	pc, err := lc.ListenPacket(ctx, "udp", ":0")
	if err != nil {
		return nil, err
	}
	uc := pc.(*net.UDPConn)
	socks.GrowUDPBuffers(uc)
	// Without the error queue the association still works; it only cannot
	// pass ICMP errors on.
	recvErr := EnableErrQueue(uc) == nil
	return &directPacketConn{uc: uc, d: d, recvErr: recvErr, names: make(map[string]netip.Addr), gsoDsts: make(map[netip.AddrPort]gsoDst), remote: !localClient(ctx)}, nil
}

// maxCachedNames bounds the names one UDP association remembers.
const maxCachedNames = 64

// nameResolveTimeout bounds the lookup of a datagram's destination name.
const nameResolveTimeout = 5 * time.Second

type directPacketConn struct {
	uc      *net.UDPConn
	d       *Direct
	recvErr bool
	remote  bool           // the client is on another host: no loopback destinations
	pending []*PacketError // drained from the error queue, not yet returned

	df    atomic.Bool // IPv4 path MTU discovery is "do" (DF set, never fragment)
	dfSet atomic.Bool // df has been applied to the socket
	v6DO  atomic.Bool // IPv6 path MTU discovery set to "do"

	reader *udpbatch.Reader // ReadBatch's, made by its first call
	writer *udpbatch.Writer // WriteBatch's, made by its first call
	msgs   [socks.MaxBatch]udpbatch.Message
	// TryWriteBatchMeta's: the netstack's goroutine pushes while the
	// relay's writes the datagrams that had to wait.
	tryWriter *udpbatch.Writer
	tryMsgs   [socks.MaxBatch]udpbatch.Message

	gmu     sync.Mutex
	gsoDsts map[netip.AddrPort]gsoDst // destinations' GSO standing (gsoFor)

	mu     sync.Mutex
	names  map[string]netip.Addr // names this association sent to
	handed []*PacketError        // drained by the writer, for the reader
}

// ReadFrom implements socks.PacketConn. An ICMP error about a datagram
// sent earlier comes back as a *PacketError; the endpoint stays usable.
func (p *directPacketConn) ReadFrom(b []byte) (int, socks.Addr, error) {
	for {
		if len(p.pending) > 0 {
			pe := p.pending[0]
			p.pending = p.pending[1:]
			return 0, socks.Addr{}, pe
		}
		n, from, err := p.uc.ReadFromUDPAddrPort(b)
		if err == nil {
			return n, socks.AddrFromAddrPort(from), nil
		}
		if !p.readError(err) {
			return 0, socks.Addr{}, err
		}
	}
}

// ReadBatch implements socks.BatchReader, as ReadFrom does: an ICMP error
// comes back alone, as the error.
func (p *directPacketConn) ReadBatch(ds []socks.Datagram) (int, error) {
	if p.reader == nil {
		var err error
		if p.reader, err = udpbatch.NewReader(p.uc); err != nil {
			return 0, err
		}
	}
	for {
		if len(p.pending) > 0 {
			pe := p.pending[0]
			p.pending = p.pending[1:]
			return 0, pe
		}
		n, err := p.reader.Read(len(ds))
		if err == nil {
			for i := range n {
				b, from := p.reader.Datagram(i)
				ds[i] = socks.Datagram{Buf: b, Addr: socks.AddrFromAddrPort(from)}
			}
			return n, nil
		}
		if !p.readError(err) {
			return 0, err
		}
	}
}

// readError takes in what a failed read means and reports whether to read
// again: the writer's wake-up (a deadline in the past, set by handOver)
// and the socket's pending ICMP error put errors in p.pending; anything
// else ends the read.
func (p *directPacketConn) readError(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		p.uc.SetReadDeadline(time.Time{})
		p.pending = append(p.pending, p.takeHanded()...)
		return true
	}
	if !p.recvErr || !IsQueuedError(err) {
		return false
	}
	p.pending = p.drainErrs()
	return true
}

func (p *directPacketConn) WriteTo(b []byte, dst socks.Addr) (int, error) {
	ap, err := p.resolveDst(dst)
	if err != nil {
		return 0, err
	}
	// On a dual-stack socket the runtime maps IPv4 destinations.
	return p.send(b, nil, ap)
}

// WriteBatch implements socks.BatchWriter. A datagram the batch could not
// send is tried once more on its own, the way WriteTo sends, which knows
// what the socket's pending errors mean.
func (p *directPacketConn) WriteBatch(ds []socks.Datagram) (int, error) {
	if p.writer == nil {
		var err error
		if p.writer, err = p.newWriter(); err != nil {
			return 0, err
		}
	}
	sent := 0
	for sent < len(ds) {
		ms := p.msgs[:0]
		var rerr error
		for _, d := range ds[sent:min(len(ds), sent+socks.MaxBatch)] {
			ap, err := p.resolveDst(d.Addr)
			if err != nil {
				rerr = err
				break
			}
			ms = append(ms, udpbatch.Message{Buf: d.Buf, Addr: ap})
		}
		n, err := p.writer.Write(ms)
		sent += n
		if err != nil {
			p.batchFailed(err)
			if _, serr := p.send(ds[sent].Buf, nil, ms[n].Addr); serr != nil {
				return sent, serr
			}
			p.retried(err)
			sent++
			continue
		}
		if rerr != nil {
			return sent, rerr
		}
	}
	return sent, nil
}

// WriteToMeta implements MetaWriter: the TTL goes with the datagram, and
// with DontFragment a datagram too big for the path is not fragmented but
// comes back as a *PacketError carrying the path MTU.
func (p *directPacketConn) WriteToMeta(b []byte, dst socks.Addr, meta Meta) (int, error) {
	ap, err := p.resolveDst(dst)
	if err != nil {
		return 0, err
	}
	n, err := p.send(b, p.applyMeta(ap, meta), ap)
	if err != nil && errors.Is(err, syscall.EMSGSIZE) {
		return 0, p.tooBig(ap, b)
	}
	return n, err
}

// applyMeta sets the socket's don't-fragment mode for a datagram to ap as
// meta asks, and returns the control message for its TTL, if any.
func (p *directPacketConn) applyMeta(ap netip.AddrPort, meta Meta) (oob []byte) {
	v4 := ap.Addr().Unmap().Is4()
	if v4 {
		p.setDontFragment(meta.DontFragment)
	}
	if meta.TTL > 0 {
		oob = TTLControl(v4, meta.TTL)
	}
	return oob
}

func (p *directPacketConn) resolveDst(dst socks.Addr) (netip.AddrPort, error) {
	ap, ok := dst.AddrPort()
	if !ok {
		var err error
		if ap, err = p.lookup(dst); err != nil {
			return netip.AddrPort{}, err
		}
	}
	if p.remote && hostOnly(ap.Addr()) {
		return netip.AddrPort{}, ErrLoopbackRefused
	}
	return ap, nil
}

func (p *directPacketConn) lookup(dst socks.Addr) (netip.AddrPort, error) {
	p.mu.Lock()
	ip, ok := p.names[dst.Name]
	p.mu.Unlock()
	if ok {
		return netip.AddrPortFrom(ip, dst.Port), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), nameResolveTimeout)
	defer cancel()
	ap, err := p.d.resolve(ctx, dst)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p.mu.Lock()
	if len(p.names) < maxCachedNames {
		p.names[dst.Name] = ap.Addr()
	}
	p.mu.Unlock()
	return ap, nil
}

func (p *directPacketConn) Close() error { return p.uc.Close() }

// Bind implements Outbound: it listens on the local address that routes to
// dst and accepts one connection from dst's IP.
func (d *Direct) Bind(ctx context.Context, dst socks.Addr) (socks.BindListener, error) {
	var peer netip.Addr
	laddr := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	if dst.IsName() || !dst.IP.IsUnspecified() {
		ap, err := d.resolve(ctx, dst)
		if err != nil {
			return nil, err
		}
		peer = ap.Addr()
		// A connected UDP socket sends nothing but tells which source
		// address the kernel would use towards peer.
		probe, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer, max(ap.Port(), 9))))
		if err != nil {
			return nil, err
		}
		laddr = netip.AddrPortFrom(probe.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), 0)
		probe.Close()
	}
	lc := net.ListenConfig{Control: d.Control}
	l, err := lc.Listen(ctx, "tcp", laddr.String())
	if err != nil {
		return nil, err
	}
	return &directBind{l: l.(*net.TCPListener), peer: peer}, nil
}

type directBind struct {
	l    *net.TCPListener
	peer netip.Addr // the only IP allowed to connect; invalid: anyone
}

func (b *directBind) Addr() socks.Addr {
	a, _ := socks.AddrFromNetAddr(b.l.Addr())
	return a
}

func (b *directBind) Accept(ctx context.Context) (net.Conn, socks.Addr, error) {
	stop := context.AfterFunc(ctx, func() { b.l.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		c, err := b.l.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil {
				return nil, socks.Addr{}, ctx.Err()
			}
			return nil, socks.Addr{}, err
		}
		from := socks.AddrFromAddrPort(c.RemoteAddr().(*net.TCPAddr).AddrPort())
		if b.peer.IsValid() && from.IP != b.peer.Unmap() {
			// Not the host the client announced: RFC 1928 lets the server
			// use DST.ADDR to evaluate the BIND, so strangers are refused.
			c.SetLinger(0)
			c.Close()
			continue
		}
		return c, from, nil
	}
}

func (b *directBind) Close() error { return b.l.Close() }

// Upstream sends flows through a chain of SOCKS5 proxies.
type Upstream struct {
	Dialer *socks.Dialer
	warm   *socks.WarmDialer // TCP dials, when set by Warm
}

// NewUpstream returns the outbound for the chain hops; control, when set,
// is applied to the sockets towards hop 1 (see Direct.Control).
func NewUpstream(hops []socks.Hop, control func(network, address string, c syscall.RawConn) error) (*Upstream, error) {
	if len(hops) == 0 {
		return nil, errors.New("engine: an upstream chain needs at least one proxy")
	}
	d := &socks.Dialer{Hops: hops, Forward: &net.Dialer{Control: control}}
	if control != nil {
		d.ListenUDP = func(ctx context.Context, network string, laddr *net.UDPAddr) (*net.UDPConn, error) {
			lc := net.ListenConfig{Control: control}
			pc, err := lc.ListenPacket(ctx, network, laddr.String())
			if err != nil {
				return nil, err
			}
			return pc.(*net.UDPConn), nil
		}
	}
	return &Upstream{Dialer: d}, nil
}

// Warm has u keep up to n connections ready for its TCP dials, each for at
// most idle, while dials come often enough (socks.WarmDialer). Call it
// before the first dial, at most once; Close stops it.
func (u *Upstream) Warm(n int, idle time.Duration) error {
	if u.warm != nil {
		return errors.New("engine: upstream already warm")
	}
	w, err := socks.NewWarmDialer(u.Dialer, n, idle)
	if err != nil {
		return err
	}
	u.warm = w
	return nil
}

// WarmStats returns the counts of the ready connections (zero when u
// keeps none).
func (u *Upstream) WarmStats() socks.WarmStats {
	if u.warm == nil {
		return socks.WarmStats{}
	}
	return u.warm.Stats()
}

// Close closes the connections u keeps ready. Dials after it make their
// own. It is safe to call more than once.
func (u *Upstream) Close() error {
	if u.warm == nil {
		return nil
	}
	return u.warm.Close()
}

// Upstream implements Outbound.
func (u *Upstream) Upstream() bool { return true }

// DialTCP implements Outbound.
func (u *Upstream) DialTCP(ctx context.Context, dst socks.Addr) (net.Conn, error) {
	if u.warm != nil {
		return u.warm.Dial(ctx, dst)
	}
	return u.Dialer.Dial(ctx, dst)
}

// ListenUDP implements Outbound.
func (u *Upstream) ListenUDP(ctx context.Context) (socks.PacketConn, error) {
	return u.Dialer.ListenPacket(ctx)
}

// Bind implements Outbound.
func (u *Upstream) Bind(ctx context.Context, dst socks.Addr) (socks.BindListener, error) {
	return u.Dialer.Bind(ctx, dst)
}

// String describes the outbound for logs.
func (u *Upstream) String() string { return fmt.Sprint(u.Dialer.Hops) }
