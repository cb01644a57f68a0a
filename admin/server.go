package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"tungate/internal/engine"
	"tungate/internal/users"
)

// UserStore is what the server needs of the user store; *users.Store is
// one. Authenticate must take the same time whether or not the name
// exists, and compare secrets in constant time. Add, Delete and
// SetPassword must have made the change durable when they return.
type UserStore interface {
	Authenticate(name, password string) (users.Role, bool)
	Get(name string) (users.User, bool)
	List() []users.User
	Len() int
	Add(name, password string, role users.Role) error
	Delete(name string) error
	SetPassword(name, password string) error
}

// Server defaults, used for zero fields.
const (
	DefaultLoginTimeout = 10 * time.Second
	DefaultIdleTimeout  = 5 * time.Minute
	DefaultWriteTimeout = 10 * time.Second
	DefaultMaxSessions  = 16
	DefaultMaxUsers     = 10000
	DefaultBackoff      = 250 * time.Millisecond
	DefaultMaxBackoff   = 10 * time.Second
	// backoffForget is how long a peer's failures are remembered after
	// its last one.
	backoffForget = 10 * time.Minute
	// rejectTimeout bounds the exchange with a client turned away because
	// the server is full.
	rejectTimeout = time.Second
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("admin: server closed")

// Server serves the admin protocol. Its fields must be set before Serve
// and not changed after.
type Server struct {
	// Engine is where the counters, flows and live settings are. Required.
	Engine *engine.Engine
	// Users is the user store; only its admins may log in. Required.
	Users UserStore
	// Level is the daemon's log level, config KEY 05. Nil: the key is
	// unknown here.
	Level *slog.LevelVar
	// Logger receives the server's messages: failed logins and changes
	// at Info, sessions at Debug. Nil discards them. The caller adds the
	// component attribute.
	Logger *slog.Logger

	// LoginTimeout bounds the time from accept to a complete login
	// message; IdleTimeout the wait for each request (from the end of the
	// previous reply to the end of the request); WriteTimeout each reply.
	LoginTimeout, IdleTimeout, WriteTimeout time.Duration
	// MaxSessions limits concurrent sessions, logged in or not; a client
	// past it gets login STATUS X'03'.
	MaxSessions int
	// MaxUsers limits the users ADD USER may reach (X'08' past it).
	MaxUsers int
	// Backoff is the delay of a peer address's first failed login, doubled
	// at each further one up to MaxBackoff. A login from an address that
	// is still being delayed waits for the delay to end before its
	// credentials are checked.
	Backoff, MaxBackoff time.Duration

	once      sync.Once
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	rejecting int
	done      chan struct{} // closed by Close: ends the backoff waits
	wg        sync.WaitGroup
	userMu    sync.Mutex // serializes ADD USER's limit check with the add
	backoff   *failureBackoff
}

func (s *Server) init() {
	s.once.Do(func() {
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[net.Conn]struct{})
		s.done = make(chan struct{})
		s.backoff = &failureBackoff{
			base:   orDefault(s.Backoff, DefaultBackoff),
			max:    orDefault(s.MaxBackoff, DefaultMaxBackoff),
			forget: backoffForget,
			peers:  make(map[string]*peerFailures),
		}
	})
}

func orDefault[T time.Duration | int](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve accepts connections on l until l fails or the server is closed, in
// which case it returns ErrServerClosed. Serve closes l. It may be called
// for several listeners at once.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if s.Engine == nil || s.Users == nil {
		l.Close()
		return errors.New("admin: server needs an engine and a user store")
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

	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if isTemporaryAccept(err) {
				// Out of descriptors and the like: wait and retry.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log().Warn("accept failed; retrying", "err", err, "delay", delay)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-s.done:
					t.Stop()
					return ErrServerClosed
				}
				continue
			}
			return fmt.Errorf("admin: accept: %w", err)
		}
		delay = 0
		switch s.track(c) {
		case admitted:
			s.wg.Go(func() {
				defer s.untrack(c)
				s.serveConn(c)
			})
		case rejected:
			s.wg.Go(func() { s.reject(c) })
		default:
			c.Close()
		}
	}
}

func isTemporaryAccept(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

type admission int

const (
	dropped  admission = iota // closed at once
	admitted                  // served
	rejected                  // told X'03' and closed
)

// track registers c as a session, or as one being turned away when the
// server is full.
func (s *Server) track(c net.Conn) admission {
	s.mu.Lock()
	defer s.mu.Unlock()
	limit := orDefault(s.MaxSessions, DefaultMaxSessions)
	switch {
	case s.closed:
		return dropped
	case len(s.conns) < limit:
		s.conns[c] = struct{}{}
		return admitted
	case s.rejecting < limit:
		// Those being turned away are bounded too, so that a flood costs
		// at most twice the limit in goroutines.
		s.rejecting++
		s.conns[c] = struct{}{}
		return rejected
	}
	return dropped
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// reject reads the login of a client past MaxSessions, within
// rejectTimeout, and answers it X'03' (server error). Reading first keeps
// to the protocol's order, and spares a client whose login is still in
// flight an abort.
func (s *Server) reject(c net.Conn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		s.rejecting--
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	s.log().Warn("admin session limit reached; turning a client away", "peer", peerOf(c.RemoteAddr()), "limit", orDefault(s.MaxSessions, DefaultMaxSessions))
	c.SetDeadline(time.Now().Add(rejectTimeout))
	if _, err := ReadLogin(c); err != nil && !errors.Is(err, ErrStringLength) && !errors.Is(err, ErrVersion) {
		return
	}
	c.Write(AppendLoginReply(nil, LoginServerError))
}

// Sessions returns the number of connections being served, logged in or
// not.
func (s *Server) Sessions() int {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops the server and waits for its sessions to end. It is
// idempotent. Teardown order: mark the server closed so that nothing new
// is tracked; close the listeners so that Serve returns; close done so
// that logins waiting out a backoff give up; close every connection so
// that blocked reads and writes return; then wait for the session
// goroutines. A session in the middle of a user change finishes writing
// the user store before it sees its connection closed.
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
	close(s.done)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// sleep waits for d, or until the server closes; it reports whether d
// passed.
func (s *Server) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
		return false
	}
}

// peerOf returns the address that failed logins are counted against: the
// peer's IP address without the port (an SCTP association's primary
// address), or the whole address when it is not an IP one.
func peerOf(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap().String()
	case interface{ AddrPort() netip.AddrPort }:
		return a.AddrPort().Addr().Unmap().String()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap().String()
	}
	return a.String()
}

// failureBackoff remembers failed logins per peer address and says how
// long to hold each one up.
type failureBackoff struct {
	base, max, forget time.Duration

	mu    sync.Mutex
	peers map[string]*peerFailures
}

type peerFailures struct {
	n     int       // failures since the peer was last forgiven
	last  time.Time // of the last failure
	until time.Time // end of the current delay
}

// maxBackoffPeers bounds the peers remembered; past it the stalest are
// forgotten.
const maxBackoffPeers = 4096

// wait returns how long a login from peer must wait before its
// credentials are checked: what is left of the delay of its last failure.
func (b *failureBackoff) wait(peer string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.peers[peer]; p != nil && p.until.After(now) {
		return p.until.Sub(now)
	}
	return 0
}

// fail counts a failed login from peer and returns the delay before its
// failure reply: base for the first failure, doubling up to max.
func (b *failureBackoff) fail(peer string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.peers[peer]
	if p == nil || now.Sub(p.last) > b.forget {
		if p == nil && len(b.peers) >= maxBackoffPeers {
			b.prune(now)
		}
		p = &peerFailures{}
		b.peers[peer] = p
	}
	p.n++
	d := b.max
	if shift := p.n - 1; shift < 32 && b.base<<shift < b.max && b.base<<shift > 0 {
		d = b.base << shift
	}
	p.last = now
	p.until = now.Add(d)
	return d
}

// prune forgets peers whose failures are old, or, when none are, the one
// whose last failure is the oldest. The caller holds b.mu.
func (b *failureBackoff) prune(now time.Time) {
	var oldest string
	var oldestAt time.Time
	for k, p := range b.peers {
		if now.Sub(p.last) > b.forget {
			delete(b.peers, k)
			continue
		}
		if oldest == "" || p.last.Before(oldestAt) {
			oldest, oldestAt = k, p.last
		}
	}
	if len(b.peers) >= maxBackoffPeers {
		delete(b.peers, oldest)
	}
}

// succeed forgives peer its failures.
func (b *failureBackoff) succeed(peer string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.peers, peer)
}
