package admin_test

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tungate/admin"
	"tungate/internal/engine"
	"tungate/internal/leaktest"
	"tungate/internal/users"
	"tungate/socks"
)

// checkLeaks fails t if the test leaves goroutines running.
func checkLeaks(t *testing.T) { leaktest.Check(t) }

// pipeListener is an in-memory net.Listener: Dial hands the server end of
// a net.Pipe to Accept, with the peer address the test chose.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return fakeAddr("admin.test:8080") }

// Dial connects as a client from peer ("192.0.2.1:40000").
func (l *pipeListener) Dial(peer string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- &peerConn{Conn: server, peer: fakeAddr(peer)}:
		return client, nil
	case <-l.done:
		client.Close()
		server.Close()
		return nil, net.ErrClosed
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "pipe" }
func (a fakeAddr) String() string  { return string(a) }

type peerConn struct {
	net.Conn
	peer net.Addr
}

func (c *peerConn) RemoteAddr() net.Addr { return c.peer }

// Credentials of the users every fixture starts with.
const (
	rootUser   = "root"
	rootPass   = "root-secret"
	aliceUser  = "alice" // a SOCKS5 user, not an admin
	alicePass  = "alice-secret"
	clientPeer = "192.0.2.10:40000"
)

// baseUsers is a users file with root (admin) and alice (user), made once:
// each fixture copies it, which spares the KDF runs of adding them.
var baseUsers = sync.OnceValues(func() ([]byte, error) {
	dir, err := os.MkdirTemp("", "admin-users-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "users")
	s, err := users.OpenOrCreate(path)
	if err != nil {
		return nil, err
	}
	if err := s.Add(rootUser, rootPass, users.RoleAdmin); err != nil {
		return nil, err
	}
	if err := s.Add(aliceUser, alicePass, users.RoleUser); err != nil {
		return nil, err
	}
	return os.ReadFile(path)
})

// fixture is a server on an in-memory listener, with an engine and a real
// user store in a temporary directory.
type fixture struct {
	t      testing.TB
	eng    *engine.Engine
	store  *users.Store
	path   string
	level  *slog.LevelVar
	logs   *lockedBuffer
	srv    *admin.Server
	ln     *pipeListener
	served chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// newFixture starts a server; opts adjust it before it serves. The server
// is closed when the test ends.
func newFixture(t testing.TB, opts ...func(*admin.Server)) *fixture {
	t.Helper()
	data, err := baseUsers()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := users.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return startFixture(t, path, store, opts...)
}

func startFixture(t testing.TB, path string, store *users.Store, opts ...func(*admin.Server)) *fixture {
	t.Helper()
	f := &fixture{t: t, store: store, path: path, level: new(slog.LevelVar), logs: &lockedBuffer{}}
	f.eng = engine.New(&engine.Direct{}, nil, nil)
	f.srv = &admin.Server{
		Engine: f.eng,
		Users:  store,
		Level:  f.level,
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(f.srv)
	}
	f.ln = newPipeListener()
	f.served = make(chan error, 1)
	go func() { f.served <- f.srv.Serve(f.ln) }()
	t.Cleanup(f.close)
	return f
}

// close closes the server and checks that Serve returned ErrServerClosed.
func (f *fixture) close() {
	f.srv.Close()
	if err := <-f.served; !errors.Is(err, admin.ErrServerClosed) {
		f.t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	f.served <- admin.ErrServerClosed // for a second close
}

// dial connects from peer without logging in.
func (f *fixture) dial(peer string) net.Conn {
	f.t.Helper()
	c, err := f.ln.Dial(peer)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

// login connects from peer and logs in as user.
func (f *fixture) login(peer, user, pass string) (*admin.Client, error) {
	c := f.dial(peer)
	cl := admin.NewClient(c)
	cl.Timeout = time.Minute
	if err := cl.Login(user, pass); err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

// root logs in as the root admin.
func (f *fixture) root() *admin.Client {
	f.t.Helper()
	cl, err := f.login(clientPeer, rootUser, rootPass)
	if err != nil {
		f.t.Fatalf("root login: %v", err)
	}
	return cl
}

// exchange sends a raw request and reads its reply.
func exchange(t testing.TB, c net.Conn, req admin.Request) admin.Reply {
	t.Helper()
	b, err := admin.AppendRequest(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatalf("sending %v: %v", req.Cmd, err)
	}
	rep, err := admin.ReadReply(c)
	if err != nil {
		t.Fatalf("reply to %v: %v", req.Cmd, err)
	}
	return rep
}

// rawLogin connects from peer, sends login bytes and returns the reply
// bytes (nil when the server sent none) and the connection.
func (f *fixture) rawLogin(peer string, login []byte) ([]byte, net.Conn) {
	f.t.Helper()
	c := f.dial(peer)
	// net.Pipe has no buffer: the server may answer before it has read
	// all of a burst, so the burst goes from its own goroutine.
	errc := make(chan error, 1)
	go func() { _, err := c.Write(login); errc <- err }()
	reply, _ := io.ReadAll(io.LimitReader(c, 64))
	c.Close()
	<-errc
	return reply, c
}

func loginBytes(user, pass string) []byte {
	b, err := admin.AppendLogin(nil, admin.Login{User: user, Password: pass})
	if err != nil {
		panic(err)
	}
	return b
}

// openFlow registers a flow in the engine's registry, as an ingress
// would; closing it through the registry calls its abort.
func openFlow(t testing.TB, eng *engine.Engine, user string, dst socks.Addr) (*engine.Flow, <-chan struct{}) {
	t.Helper()
	fl, err := eng.Registry().Open(engine.FlowSpec{
		Proto: engine.ProtoTCP,
		Src:   socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 50000},
		Dst:   dst,
		User:  user,
		Flags: engine.FlagSOCKS,
	})
	if err != nil {
		t.Fatal(err)
	}
	aborted := make(chan struct{})
	var once sync.Once
	fl.SetAbort(func() { once.Do(func() { close(aborted); fl.Close() }) })
	t.Cleanup(fl.Close)
	return fl, aborted
}

// socksGateway is a SOCKS5 server on loopback TCP, backed by the
// fixture's engine and user store, as the daemon wires them.
func (f *fixture) socksGateway(t *testing.T) socks.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := f.eng.Registry()
	f.eng.Settings().SetAuthRequired(true)
	srv := &socks.Server{
		Handler:     f.eng.SOCKSHandler(),
		RequireAuth: f.eng.Settings().AuthRequired,
		Authenticate: func(_ context.Context, user, pass string, _ netip.AddrPort) bool {
			if _, ok := f.store.Authenticate(user, pass); ok {
				return true
			}
			reg.CountFailedLogin()
			return false
		},
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	a, _ := socks.AddrFromNetAddr(l.Addr())
	return a
}

// echoServer echoes TCP on loopback until the test ends.
func echoServer(t *testing.T) socks.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { io.Copy(c, c); c.Close() })
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	a, _ := socks.AddrFromNetAddr(l.Addr())
	return a
}

// socksDial connects to dst through the gateway as user.
func socksDial(gw socks.Addr, user, pass string, dst socks.Addr) (net.Conn, error) {
	d := &socks.Dialer{Hops: []socks.Hop{{Addr: gw, Username: user, Password: pass}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.Dial(ctx, dst)
}

// echoOnce writes msg and reads it back.
func echoOnce(c net.Conn, msg string) error {
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// fakeStore is an in-memory UserStore without a KDF, for tests that need
// many users or a store that fails.
type fakeStore struct {
	mu    sync.Mutex
	users map[string]fakeUser
	fail  error // returned by every change when set
}

type fakeUser struct {
	pass string
	role users.Role
}

func newFakeStore() *fakeStore {
	return &fakeStore{users: map[string]fakeUser{rootUser: {rootPass, users.RoleAdmin}}}
}

func (s *fakeStore) Authenticate(name, password string) (users.Role, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[name]
	if subtle.ConstantTimeCompare([]byte(u.pass), []byte(password)) != 1 || !ok {
		return 0, false
	}
	return u.role, true
}

func (s *fakeStore) Get(name string) (users.User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[name]
	return users.User{Name: name, Role: u.role}, ok
}

func (s *fakeStore) List() []users.User {
	s.mu.Lock()
	defer s.mu.Unlock()
	var l []users.User
	for n, u := range s.users {
		l = append(l, users.User{Name: n, Role: u.role})
	}
	slices.SortFunc(l, func(a, b users.User) int { return strings.Compare(a.Name, b.Name) })
	return l
}

func (s *fakeStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.users)
}

func (s *fakeStore) Add(name, password string, role users.Role) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	if _, ok := s.users[name]; ok {
		return users.ErrExists
	}
	if strings.ContainsAny(name, ": \t\n") {
		return users.ErrInvalidName
	}
	s.users[name] = fakeUser{password, role}
	return nil
}

func (s *fakeStore) Delete(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	u, ok := s.users[name]
	if !ok {
		return users.ErrNotFound
	}
	if u.role == users.RoleAdmin {
		admins := 0
		for _, o := range s.users {
			if o.role == users.RoleAdmin {
				admins++
			}
		}
		if admins == 1 {
			return users.ErrLastAdmin
		}
	}
	delete(s.users, name)
	return nil
}

func (s *fakeStore) SetPassword(name, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	u, ok := s.users[name]
	if !ok {
		return users.ErrNotFound
	}
	u.pass = password
	s.users[name] = u
	return nil
}

// newFakeFixture is a fixture whose server uses a fakeStore.
func newFakeFixture(t testing.TB, store *fakeStore, opts ...func(*admin.Server)) *fixture {
	t.Helper()
	return startFixture(t, "", nil, append([]func(*admin.Server){func(s *admin.Server) { s.Users = store }}, opts...)...)
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
