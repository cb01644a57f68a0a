package socks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"time"

	"tungate/internal/udpbatch"
)

// Hop is one upstream SOCKS5 proxy of a chain.
type Hop struct {
	Addr     Addr // the proxy's address
	Username string
	Password string // used when Username is set
}

// String returns the hop as a URL without the password.
func (h Hop) String() string {
	u := url.URL{Scheme: "socks5", Host: h.Addr.String()}
	if h.Username != "" {
		u.User = url.User(h.Username)
	}
	return u.String()
}

// ParseProxyURL parses socks5://[user[:password]@]host:port. The scheme
// socks5h is accepted as a synonym: names are always sent to the proxy
// unresolved.
func ParseProxyURL(s string) (Hop, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Hop{}, fmt.Errorf("socks: proxy URL: %w", err)
	}
	if u.Scheme != "socks5" && u.Scheme != "socks5h" {
		return Hop{}, fmt.Errorf("socks: proxy URL %q: scheme must be socks5", redact(u))
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" {
		return Hop{}, fmt.Errorf("socks: proxy URL %q: unexpected path or query", redact(u))
	}
	if u.Port() == "" {
		return Hop{}, fmt.Errorf("socks: proxy URL %q: port missing", redact(u))
	}
	a, err := ParseHostPort(u.Host)
	if err != nil {
		return Hop{}, fmt.Errorf("socks: proxy URL %q: %w", redact(u), err)
	}
	if a.Port == 0 {
		return Hop{}, fmt.Errorf("socks: proxy URL %q: port 0", redact(u))
	}
	h := Hop{Addr: a}
	if u.User != nil {
		h.Username = u.User.Username()
		h.Password, _ = u.User.Password()
		if len(h.Username) == 0 || len(h.Username) > maxCredentialLen ||
			len(h.Password) == 0 || len(h.Password) > maxCredentialLen {
			return Hop{}, fmt.Errorf("socks: proxy URL %q: %w", redact(u), ErrCredentialLength)
		}
	}
	return h, nil
}

func redact(u *url.URL) string { return u.Redacted() }

// ForwardDialer dials the first hop of a chain.
type ForwardDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Dialer connects through a chain of upstream SOCKS5 proxies: CONNECT to
// hop 1, which connects to hop 2, and so on to the destination. UDP
// associations through the chain nest: the association with hop N is set
// up over the TCP path through hops 1..N-1, and datagrams for hop N travel
// inside the relay of hop N-1.
//
// Errors carry a *ReplyError. A reply the last hop sends about the
// destination keeps its code, so it passes through the chain unchanged;
// failures to reach or use an intermediate proxy are general failures
// (X'01'), since their codes describe a proxy, not the destination.
type Dialer struct {
	Hops []Hop
	// Forward dials hop 1. Nil means a net.Dialer.
	Forward ForwardDialer
	// ListenUDP opens the local UDP socket of associations. Nil means
	// net.ListenUDP.
	ListenUDP func(ctx context.Context, network string, laddr *net.UDPAddr) (*net.UDPConn, error)
}

// ErrNoHops is returned by a Dialer with an empty chain.
var ErrNoHops = errors.New("socks: dialer has no upstream proxies")

// DialContext connects to address ("host:port") through the chain. It
// implements the interface of golang.org/x/net/proxy.ContextDialer.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("socks: network %q not supported", network)
	}
	dst, err := ParseHostPort(address)
	if err != nil {
		return nil, err
	}
	return d.Dial(ctx, dst)
}

// Dial connects to dst through the chain.
func (d *Dialer) Dial(ctx context.Context, dst Addr) (net.Conn, error) {
	c, _, err := d.request(ctx, len(d.Hops), CmdConnect, dst)
	return c, err
}

// request opens a TCP path through hops[:n] and sends cmd for dst to hop n.
// It returns the connection and hop n's reply.
func (d *Dialer) request(ctx context.Context, n int, cmd Command, dst Addr) (net.Conn, Response, error) {
	var b [MaxRequestLen]byte
	req, err := AppendRequest(b[:0], Request{Cmd: cmd, Addr: dst})
	if err != nil {
		return nil, Response{}, hopFailure(ctx, n, err)
	}
	c, err := d.prepare(ctx, n)
	if err != nil {
		return nil, Response{}, err
	}
	resp, err := bounded(ctx, c, func() (Response, error) { return exchange(c, req) })
	if err != nil {
		c.Close()
		return nil, Response{}, d.lastHopFailure(ctx, n, err)
	}
	return c, resp, nil
}

// prepare opens a TCP path through hops[:n-1] and negotiates a method with
// hop n (authenticating there if it asks): what is left is the request.
func (d *Dialer) prepare(ctx context.Context, n int) (net.Conn, error) {
	if len(d.Hops) == 0 || n < 1 || n > len(d.Hops) {
		return nil, ErrNoHops
	}
	c, err := d.forward(ctx, d.Hops[0].Addr)
	if err != nil {
		return nil, hopFailure(ctx, 1, fmt.Errorf("upstream %s: %w", d.Hops[0], err))
	}
	var at int // the hop that failed, counted from 0
	_, err = bounded(ctx, c, func() (Response, error) {
		for at = 0; at < n; at++ {
			if err := negotiate(c, d.Hops[at]); err != nil {
				return Response{}, err
			}
			if at == n-1 {
				break
			}
			if _, err := sendRequest(c, CmdConnect, d.Hops[at+1].Addr); err != nil {
				return Response{}, err
			}
		}
		return Response{}, nil
	})
	if err == nil {
		return c, nil
	}
	c.Close()
	var re *ReplyError
	if errors.As(err, &re) && at < n-1 {
		return nil, hopFailure(ctx, at+1,
			fmt.Errorf("upstream %s could not reach %s: %w", d.Hops[at], d.Hops[at+1], err))
	}
	return nil, hopFailure(ctx, at+1, fmt.Errorf("upstream %s: %w", d.Hops[at], err))
}

// lastHopFailure is the error for err, returned by the exchange of the
// request with hop n. A reply hop n sent is its verdict on the destination
// and keeps its code.
func (d *Dialer) lastHopFailure(ctx context.Context, n int, err error) error {
	var re *ReplyError
	if errors.As(err, &re) {
		re.Hop = n
		return re
	}
	return hopFailure(ctx, n, fmt.Errorf("upstream %s: %w", d.Hops[n-1], err))
}

// bounded runs f, the handshakes on c, under ctx: ctx's deadline is c's
// while f runs, and ctx's cancellation interrupts f's reads and writes.
// When ctx ended before f returned, the error says so first.
func bounded(ctx context.Context, c net.Conn, f func() (Response, error)) (Response, error) {
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	resp, err := f()
	if !stop() {
		// ctx ended: its function has run, or is running, and c's
		// deadline is past or about to be.
		if err == nil {
			return Response{}, ctx.Err()
		}
		return Response{}, fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	c.SetDeadline(time.Time{})
	if err != nil && hasDeadline && errors.Is(err, os.ErrDeadlineExceeded) {
		// c's deadline, which is ctx's, came before ctx's own timer.
		return Response{}, fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return resp, err
}

// hopFailure is the error for a failure to reach or use hop: a general
// failure, unless the dial ran out of time, which means that nothing
// answered in time (host unreachable), whichever hop was slow.
func hopFailure(ctx context.Context, hop int, err error) *ReplyError {
	code := ReplyGeneralFailure
	// The sockets' deadlines and net's own dial timer are ctx's deadline,
	// and any may fire first.
	if errors.Is(ctx.Err(), context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		code = ReplyHostUnreachable
	}
	return &ReplyError{Code: code, Hop: hop, Err: err}
}

func (d *Dialer) forward(ctx context.Context, a Addr) (net.Conn, error) {
	if d.Forward != nil {
		return d.Forward.DialContext(ctx, "tcp", a.String())
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", a.String())
}

// handshake negotiates a method with hop over c, authenticates, sends one
// request and reads its reply. A reply other than success is a *ReplyError.
func handshake(c net.Conn, hop Hop, cmd Command, dst Addr) (Response, error) {
	if err := negotiate(c, hop); err != nil {
		return Response{}, err
	}
	return sendRequest(c, cmd, dst)
}

// negotiate offers hop the one method its credentials call for and, when
// hop chooses username/password, authenticates (RFC 1929).
func negotiate(c net.Conn, hop Hop) error {
	var b [MaxUserPassLen]byte
	buf := b[:0]
	methods := []Method{MethodNoAuth}
	if hop.Username != "" {
		methods = []Method{MethodUserPass}
	}
	buf, _ = AppendGreeting(buf, Greeting{Methods: methods})
	if _, err := c.Write(buf); err != nil {
		return err
	}
	m, err := ReadMethodSelection(c)
	if err != nil {
		return err
	}
	switch {
	case m == MethodUserPass && hop.Username != "":
		buf, err = AppendUserPass(buf[:0], UserPass{Username: hop.Username, Password: hop.Password})
		if err != nil {
			return err
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
		st, err := ReadUserPassStatus(c)
		if err != nil {
			return err
		}
		if st != UserPassSuccess {
			return fmt.Errorf("%w: status %d", ErrAuthFailed, st)
		}
	case m == MethodNoAuth && hop.Username == "":
	default:
		return fmt.Errorf("%w: proxy chose %v", ErrNoAcceptable, m)
	}
	return nil
}

// sendRequest sends a request for cmd and dst over c, negotiated already,
// and reads its reply, as exchange does.
func sendRequest(c net.Conn, cmd Command, dst Addr) (Response, error) {
	var b [MaxRequestLen]byte
	req, err := AppendRequest(b[:0], Request{Cmd: cmd, Addr: dst})
	if err != nil {
		return Response{}, err
	}
	return exchange(c, req)
}

// exchange sends req, an encoded request, over c, negotiated already, and
// reads its reply. A reply other than success is a *ReplyError with only
// its code.
func exchange(c net.Conn, req []byte) (Response, error) {
	if _, err := c.Write(req); err != nil {
		return Response{}, err
	}
	resp, err := ReadResponse(c)
	if err != nil {
		return Response{}, err
	}
	if resp.Reply != ReplySucceeded {
		return resp, &ReplyError{Code: resp.Reply}
	}
	return resp, nil
}

// Bind asks the last hop to accept one connection from dst (RFC 1928 BIND).
func (d *Dialer) Bind(ctx context.Context, dst Addr) (BindListener, error) {
	c, resp, err := d.request(ctx, len(d.Hops), CmdBind, dst)
	if err != nil {
		return nil, err
	}
	bound := resp.Bind
	if bound.IP.IsValid() && bound.IP.IsUnspecified() {
		// The proxy listens on all its addresses: the one we reach it at
		// is the best guess for the peer too.
		if last := d.Hops[len(d.Hops)-1].Addr; !last.IsName() {
			bound.IP = last.IP
		}
	}
	return &upstreamBind{c: c, addr: bound, hop: len(d.Hops)}, nil
}

type upstreamBind struct {
	c    net.Conn
	addr Addr
	hop  int
}

func (b *upstreamBind) Addr() Addr { return b.addr }

func (b *upstreamBind) Accept(ctx context.Context) (net.Conn, Addr, error) {
	stop := context.AfterFunc(ctx, func() { b.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	resp, err := ReadResponse(b.c)
	if err != nil {
		return nil, Addr{}, err
	}
	if resp.Reply != ReplySucceeded {
		return nil, Addr{}, &ReplyError{Code: resp.Reply, Hop: b.hop}
	}
	b.c.SetReadDeadline(time.Time{})
	return b.c, resp.Bind, nil
}

func (b *upstreamBind) Close() error { return b.c.Close() }

// ListenPacket sets up a UDP association through the whole chain and
// returns its endpoint. The association ends when any hop closes its
// control connection or the endpoint is closed.
func (d *Dialer) ListenPacket(ctx context.Context) (PacketConn, error) {
	if len(d.Hops) == 0 {
		return nil, ErrNoHops
	}
	// The first control connection decides the local address: the UDP
	// socket uses the same source IP, so that hop 1 sees one client.
	p := &upstreamPacketConn{done: make(chan struct{})}
	fail := func(err error) (PacketConn, error) {
		p.Close()
		return nil, err
	}
	for i := range d.Hops {
		hop := i + 1
		var c net.Conn
		var err error
		var declared Addr
		if i == 0 {
			c, err = d.forward(ctx, d.Hops[0].Addr)
			if err != nil {
				return fail(hopFailure(ctx, 1, fmt.Errorf("upstream %s: %w", d.Hops[0], err)))
			}
			p.ctrl = append(p.ctrl, c)
			local, _ := AddrFromNetAddr(c.LocalAddr())
			listen := d.ListenUDP
			if listen == nil {
				listen = func(_ context.Context, network string, laddr *net.UDPAddr) (*net.UDPConn, error) {
					return net.ListenUDP(network, laddr)
				}
			}
			p.uc, err = listen(ctx, "udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local.IP, 0)))
			if err != nil {
				return fail(&ReplyError{Code: ReplyGeneralFailure, Err: err})
			}
			GrowUDPBuffers(p.uc)
			// Hop 1's relay may answer with UDP GSO (tungate's does): read
			// many datagrams to a system call.
			udpbatch.EnableGRO(p.uc)
			declared = AddrFromAddrPort(p.uc.LocalAddr().(*net.UDPAddr).AddrPort())
			if dl, ok := ctx.Deadline(); ok {
				c.SetDeadline(dl)
			}
		} else {
			// The control connection for hop i+1 runs through hops 1..i.
			sub := &Dialer{Hops: d.Hops[:i], Forward: d.Forward}
			c, err = sub.Dial(ctx, d.Hops[i].Addr)
			if err != nil {
				return fail(hopFailure(ctx, i, fmt.Errorf("upstream %s: %w", d.Hops[i], err)))
			}
			p.ctrl = append(p.ctrl, c)
			// Our datagrams reach this hop from hop i's relay, whose
			// address we cannot know: declare zeros, as RFC 1928 allows.
			declared = Addr{IP: netip.IPv4Unspecified()}
			if dl, ok := ctx.Deadline(); ok {
				c.SetDeadline(dl)
			}
		}
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
		resp, err := handshake(c, d.Hops[i], CmdUDPAssociate, declared)
		if !stop() && err == nil {
			err = ctx.Err()
		}
		if err != nil {
			var re *ReplyError
			if errors.As(err, &re) {
				return fail(&ReplyError{Code: re.Code, Hop: hop, Err: fmt.Errorf("upstream %s: UDP ASSOCIATE refused", d.Hops[i])})
			}
			return fail(hopFailure(ctx, hop, fmt.Errorf("upstream %s: %w", d.Hops[i], err)))
		}
		c.SetDeadline(time.Time{})
		relay := resp.Bind
		if relay.IP.IsValid() && relay.IP.IsUnspecified() {
			// "Send to the address you reach me at."
			if i == 0 {
				r, _ := AddrFromNetAddr(c.RemoteAddr())
				relay.IP = r.IP
			} else if !d.Hops[i].Addr.IsName() {
				relay.IP = d.Hops[i].Addr.IP
			} else {
				relay = Addr{Name: d.Hops[i].Addr.Name, Port: relay.Port}
			}
		}
		p.relays = append(p.relays, relay)
	}
	ap, ok := p.relays[0].AddrPort()
	if !ok {
		return fail(&ReplyError{Code: ReplyGeneralFailure, Hop: 1, Err: errors.New("socks: hop 1 gave a UDP relay name, not an address")})
	}
	p.first = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	// Each control connection must stay open for the association to live;
	// its end ends the association.
	for _, c := range p.ctrl {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			var b [1]byte
			c.Read(b[:])
			p.shutdown()
		}()
	}
	return p, nil
}

// upstreamPacketConn is a UDP association through a chain of proxies.
type upstreamPacketConn struct {
	uc     *net.UDPConn
	ctrl   []net.Conn
	relays []Addr         // relay of each hop, as that hop gave it
	first  netip.AddrPort // relays[0] as a socket address

	reader    *udpbatch.Reader // ReadBatch's, made by its first call
	sender    hopSender        // WriteBatch's
	trySender hopSender        // TryWriteBatch's

	once sync.Once
	done chan struct{}
	wg   sync.WaitGroup
}

// WriteTo implements PacketConn: it wraps b in one header per hop, the
// innermost naming dst, and sends it to hop 1's relay.
func (p *upstreamPacketConn) WriteTo(b []byte, dst Addr) (int, error) {
	bp := getPacketBuf()
	defer putPacketBuf(bp)
	pkt, err := p.encapsulate((*bp)[:0], b, dst)
	if err != nil {
		return 0, err
	}
	if _, err := p.uc.WriteToUDPAddrPort(pkt, p.first); err != nil {
		return 0, err
	}
	return len(b), nil
}

// encapsulate appends to pkt the datagram b to dst as hop 1's relay takes
// it: its headers, then b.
func (p *upstreamPacketConn) encapsulate(pkt, b []byte, dst Addr) ([]byte, error) {
	pkt, err := p.headers(pkt, len(b), dst)
	if err != nil {
		return nil, err
	}
	return append(pkt, b...), nil
}

// ReadFrom implements PacketConn: ReadBatch, one datagram at a time (the
// socket may have UDP GRO on, so it is read only through its Reader).
func (p *upstreamPacketConn) ReadFrom(b []byte) (int, Addr, error) {
	var ds [1]Datagram
	if _, err := p.ReadBatch(ds[:]); err != nil {
		return 0, Addr{}, err
	}
	return copy(b, ds[0].Buf), ds[0].Addr, nil
}

// Close ends the association and waits for the goroutines that watch the
// control connections.
func (p *upstreamPacketConn) Close() error {
	p.shutdown()
	p.wg.Wait()
	return nil
}

// shutdown closes the UDP socket first, so readers return, then the
// control connections, which makes every hop drop its relay.
func (p *upstreamPacketConn) shutdown() {
	p.once.Do(func() {
		close(p.done)
		if p.uc != nil {
			p.uc.Close()
		}
		for _, c := range p.ctrl {
			c.Close()
		}
	})
}
