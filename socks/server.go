package socks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tungate/internal/udpbatch"
)

// PacketConn is a datagram endpoint that addresses peers by SOCKS address,
// so that a name can be the destination of a datagram. Both sides of a UDP
// association are PacketConns: the relay socket that faces the SOCKS
// client, and the outbound socket (direct, or through upstream proxies).
type PacketConn interface {
	// ReadFrom reads one datagram's payload into b and returns its peer
	// address: the destination the client addressed, on the client side;
	// the source that sent it, on the outbound side.
	ReadFrom(b []byte) (n int, addr Addr, err error)
	// WriteTo sends one datagram. On the client side addr is the source the
	// client sees; on the outbound side it is the destination.
	WriteTo(b []byte, addr Addr) (n int, err error)
	// Close unblocks ReadFrom and releases the endpoint.
	Close() error
}

// BindListener is the passive side of a BIND request: the address where a
// peer may connect, and the wait for that one connection.
type BindListener interface {
	// Addr is the address the peer must connect to (BND of the first reply).
	Addr() Addr
	// Accept waits for the one incoming connection and returns it with the
	// peer's address (BND of the second reply).
	Accept(ctx context.Context) (net.Conn, Addr, error)
	Close() error
}

// Handler carries out the requests a Server has accepted. Each method is
// called on the session's goroutine and owns the session until it returns.
// A method that fails before it has replied returns an error; the server
// then sends the reply ReplyFromError gives for it.
type Handler interface {
	// Connect dials s.Request.Addr, replies with s.Reply, and relays.
	Connect(ctx context.Context, s *Session) error
	// Bind listens for one connection from s.Request.Addr, replies twice
	// (listening address, then the peer), and relays.
	Bind(ctx context.Context, s *Session) error
	// Associate relays datagrams between client, which filters and
	// decapsulates what the SOCKS client sends to s.UDPRelay, and the
	// outbound side. It replies with s.Reply(ReplySucceeded, s.UDPRelay)
	// once the outbound side is ready. ctx ends when the TCP control
	// connection does.
	Associate(ctx context.Context, s *Session, client PacketConn) error
}

// Session is one accepted SOCKS5 request.
type Session struct {
	Conn       net.Conn // the client's TCP connection
	Request    Request
	User       string // authenticated username, or "" with no-auth
	ClientAddr netip.AddrPort
	// UDPRelay is the relay address for a UDP ASSOCIATE request.
	UDPRelay Addr

	replies int
}

// Reply sends a reply for the request. A BIND session replies twice; any
// other once. A failure reply should be followed by returning.
func (s *Session) Reply(code Reply, bind Addr) error {
	var buf [MaxRequestLen]byte
	s.replies++
	_, err := s.Conn.Write(AppendResponse(buf[:0], Response{Reply: code, Bind: bind}))
	return err
}

// Replied reports whether a reply has been sent.
func (s *Session) Replied() bool { return s.replies > 0 }

// Server defaults.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	// maxUDPDatagram is the largest datagram the relay reads: the largest
	// IPv4/IPv6 UDP payload.
	maxUDPDatagram = 65535
)

// Server is a SOCKS5 server. Its fields must be set before Serve and not
// changed after, except through the functions they hold.
type Server struct {
	// Handler carries out requests. Required.
	Handler Handler
	// Authenticate checks RFC 1929 credentials. Nil means there are no
	// users, and only no-auth is offered.
	Authenticate func(ctx context.Context, user, password string, from netip.AddrPort) bool
	// RequireAuth reports whether username/password is required. It is
	// asked for every session, so the setting may change live. Nil means
	// not required.
	RequireAuth func() bool
	// HandshakeTimeout bounds the time from accept to a parsed request.
	// Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxSessions limits concurrent sessions; past it, new connections are
	// closed at once. Zero means no limit.
	MaxSessions int
	// Logger receives per-session messages at Debug. Nil discards them.
	Logger *slog.Logger

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	base      context.Context
	cancel    context.CancelFunc
	once      sync.Once
}

func (s *Server) init() {
	s.once.Do(func() {
		s.base, s.cancel = context.WithCancel(context.Background())
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[net.Conn]struct{})
	})
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve accepts connections on l until l fails or the server is closed, in
// which case it returns ErrServerClosed. Serve closes l.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if s.Handler == nil {
		return errors.New("socks: server has no handler")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAccept(err) {
				// Out of file descriptors and the like: wait and retry.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log().Warn("accept failed; retrying", "err", err, "delay", backoff)
				select {
				case <-time.After(backoff):
				case <-s.base.Done():
					return ErrServerClosed
				}
				continue
			}
			return fmt.Errorf("socks: accept: %w", err)
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serveConn(s.base, c)
		}()
	}
}

// isTemporaryAccept reports accept errors that a busy server outlives:
// descriptor exhaustion, memory pressure, a connection gone before accept.
func isTemporaryAccept(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers c; it reports false when the server is closed or full.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.MaxSessions > 0 && len(s.conns) >= s.MaxSessions {
		s.log().Debug("session limit reached; closing connection", "src", c.RemoteAddr().String(), "limit", s.MaxSessions)
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Sessions returns the number of sessions being served.
func (s *Server) Sessions() int {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops the server: it closes the listeners so Serve returns, cancels
// every session's context, closes their connections so blocked reads end,
// and waits for the session goroutines. Close is idempotent.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	s.cancel()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	log := s.log().With("src", c.RemoteAddr().String())
	sess, err := s.handshake(c)
	if err != nil {
		log.Debug("handshake failed", "err", err)
		return
	}
	log = log.With("cmd", sess.Request.Cmd.String(), "dst", sess.Request.Addr.String())
	if sess.User != "" {
		log = log.With("user", sess.User)
	}
	switch sess.Request.Cmd {
	case CmdConnect:
		err = s.Handler.Connect(ctx, sess)
	case CmdBind:
		err = s.Handler.Bind(ctx, sess)
	case CmdUDPAssociate:
		err = s.associate(ctx, sess)
	default:
		err = &ReplyError{Code: ReplyCommandNotSupported}
	}
	if err != nil && !sess.Replied() {
		sess.Reply(ReplyFromError(err), Addr{})
	}
	if err != nil {
		log.Debug("request failed", "err", err)
		return
	}
	log.Debug("request done")
}

// handshake runs method negotiation, authentication and reads the request.
// Protocol errors it can answer are answered here (RFC 1928 section 6:
// the server closes the connection shortly after a failure reply).
func (s *Server) handshake(c net.Conn) (*Session, error) {
	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	c.SetDeadline(time.Now().Add(timeout))

	src, _ := AddrFromNetAddr(c.RemoteAddr())
	clientAP, _ := src.AddrPort()

	g, err := ReadGreeting(c)
	if err != nil {
		return nil, err
	}
	method := s.chooseMethod(g)
	var buf [MaxRequestLen]byte
	if _, err := c.Write(AppendMethodSelection(buf[:0], method)); err != nil {
		return nil, err
	}
	if method == MethodNoAcceptable {
		return nil, ErrNoAcceptable
	}

	sess := &Session{Conn: c, ClientAddr: clientAP}
	if method == MethodUserPass {
		up, err := ReadUserPass(c)
		if err != nil {
			// A malformed subnegotiation is a failed login too (RFC 1929:
			// any status other than X'00' is failure, then close).
			c.Write(AppendUserPassStatus(buf[:0], UserPassFailure))
			return nil, err
		}
		if !s.Authenticate(context.Background(), up.Username, up.Password, clientAP) {
			c.Write(AppendUserPassStatus(buf[:0], UserPassFailure))
			return nil, fmt.Errorf("%w: user %q", ErrAuthFailed, up.Username)
		}
		if _, err := c.Write(AppendUserPassStatus(buf[:0], UserPassSuccess)); err != nil {
			return nil, err
		}
		sess.User = up.Username
	}

	req, err := ReadRequest(c)
	if err != nil {
		var ate *AddrTypeError
		if errors.As(err, &ate) {
			sess.Reply(ReplyAddrTypeNotSupported, Addr{})
		} else if errors.Is(err, ErrNameLength) {
			sess.Reply(ReplyGeneralFailure, Addr{})
		}
		return nil, err
	}
	sess.Request = req
	c.SetDeadline(time.Time{})
	return sess, nil
}

// chooseMethod picks the method: username/password when it is required,
// or when the client offers it and there are users (so flows carry a
// user); otherwise no-auth if offered and allowed.
func (s *Server) chooseMethod(g Greeting) Method {
	required := s.RequireAuth != nil && s.RequireAuth()
	if s.Authenticate != nil && g.Has(MethodUserPass) {
		return MethodUserPass
	}
	if !required && g.Has(MethodNoAuth) {
		return MethodNoAuth
	}
	return MethodNoAcceptable
}

// associate sets up the client side of a UDP association and hands it to
// the handler. The association lives as long as the TCP control
// connection (RFC 1928 section 7).
func (s *Server) associate(ctx context.Context, sess *Session) error {
	local, ok := AddrFromNetAddr(sess.Conn.LocalAddr())
	if !ok || local.IsName() {
		return &ReplyError{Code: ReplyGeneralFailure, Err: errors.New("socks: control connection has no IP address")}
	}
	uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local.IP, 0)))
	if err != nil {
		return err
	}
	GrowUDPBuffers(uc)
	// A client that sends with UDP GSO (tungate's TUN side does) has its
	// datagrams read many to a system call.
	udpbatch.EnableGRO(uc)
	relay := newClientRelay(uc, sess)
	sess.UDPRelay = AddrFromAddrPort(uc.LocalAddr().(*net.UDPAddr).AddrPort())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		// The control connection carries nothing more; its end (EOF, reset
		// or close by Server.Close) ends the association.
		defer wg.Done()
		io.Copy(io.Discard, sess.Conn)
		cancel()
	}()
	stop := context.AfterFunc(ctx, func() { relay.Close() })
	err = s.Handler.Associate(ctx, sess, relay)
	if err != nil && !sess.Replied() {
		// The failure reply must go out before the control connection
		// closes below.
		sess.Reply(ReplyFromError(err), Addr{})
	}
	// Teardown order: the relay socket (so nothing more is read from the
	// client), then the control connection (so the reader above returns),
	// then wait for that reader.
	stop()
	relay.Close()
	sess.Conn.Close()
	wg.Wait()
	return err
}

// clientRelay is the relay socket of a UDP association as seen from the
// SOCKS client: it accepts datagrams only from the client, strips their
// header, and wraps replies in one.
type clientRelay struct {
	uc     *net.UDPConn
	ip     netip.Addr // the client's IP: the control connection's source
	mu     sync.Mutex
	client netip.AddrPort // the client's UDP source, once known
	// Dropped counts datagrams dropped: from strangers, fragmented or
	// malformed.
	dropped atomic.Uint64
	once    sync.Once

	reader *udpbatch.Reader // ReadBatch's, made by its first call
	writer *udpbatch.Writer // WriteBatch's, made by its first call
	msgs   [MaxBatch]udpbatch.Message
	heads  [MaxBatch][MaxUDPHeaderLen]byte // the headers of WriteBatch's datagrams
}

func newClientRelay(uc *net.UDPConn, sess *Session) *clientRelay {
	r := &clientRelay{uc: uc, ip: sess.ClientAddr.Addr().Unmap()}
	// RFC 1928: DST.ADDR/DST.PORT of the request say where the client will
	// send from, or are zero when it does not know. Only the port is used:
	// the IP must be the control connection's, whatever the client says,
	// so that nobody else can use the association.
	if ap, ok := sess.Request.Addr.AddrPort(); ok && ap.Port() != 0 {
		r.client = netip.AddrPortFrom(r.ip, ap.Port())
	}
	return r
}

// ReadFrom implements PacketConn: ReadBatch, one datagram at a time (the
// socket may have UDP GRO on, so it is read only through its Reader).
func (r *clientRelay) ReadFrom(b []byte) (int, Addr, error) {
	var ds [1]Datagram
	if _, err := r.ReadBatch(ds[:]); err != nil {
		return 0, Addr{}, err
	}
	return copy(b, ds[0].Buf), ds[0].Addr, nil
}

// admit reports whether a datagram from src belongs to the association,
// learning the client's port from the first datagram when the request did
// not give it.
func (r *clientRelay) admit(src netip.AddrPort) bool {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if src.Addr() != r.ip {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.client.IsValid() {
		r.client = src
		return true
	}
	return r.client == src
}

// WriteTo implements PacketConn: it sends b to the client with a header
// naming from as the source.
func (r *clientRelay) WriteTo(b []byte, from Addr) (int, error) {
	r.mu.Lock()
	dst := r.client
	r.mu.Unlock()
	if !dst.IsValid() {
		// The client has not sent anything yet, so its port is unknown.
		return 0, nil
	}
	bp := getPacketBuf()
	defer putPacketBuf(bp)
	pkt, err := AppendUDPHeader((*bp)[:0], UDPHeader{Addr: from})
	if err != nil {
		return 0, err
	}
	pkt = append(pkt, b...)
	if _, err := r.uc.WriteToUDPAddrPort(pkt, dst); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (r *clientRelay) Close() error {
	var err error
	r.once.Do(func() { err = r.uc.Close() })
	return err
}

// packetBufs holds buffers large enough for a maximal datagram and a header.
var packetBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, maxUDPDatagram+MaxUDPHeaderLen)
	return &b
}}

func getPacketBuf() *[]byte  { return packetBufs.Get().(*[]byte) }
func putPacketBuf(b *[]byte) { packetBufs.Put(b) }
