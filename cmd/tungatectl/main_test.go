package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tungate/admin"
	"tungate/internal/engine"
	"tungate/internal/users"
	"tungate/socks"
)

// checkLeaks fails t if goroutines started during the test are still
// running when it ends. Call it first, so that its cleanup runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	startSignalLoop()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
		}
	})
}

// startSignalLoop starts os/signal's process-wide goroutine, which the
// first signal.Notify of a run starts for good: it is not a leak.
var startSignalLoop = sync.OnceFunc(func() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	signal.Stop(c)
})

// server is an admin server on TCP loopback (tungatectl's dialer is
// replaced to reach it: the host may have no SCTP, and scripts/vm-test
// runs tungatectl over the real thing).
type server struct {
	eng   *engine.Engine
	store *users.Store
	addr  string
	env   map[string]string
	flows []*engine.Flow
}

var baseUsers = sync.OnceValues(func() ([]byte, error) {
	dir, err := os.MkdirTemp("", "tungatectl-users-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "users")
	s, err := users.OpenOrCreate(path)
	if err != nil {
		return nil, err
	}
	if err := s.Add("admin", "admin-pw", users.RoleAdmin); err != nil {
		return nil, err
	}
	if err := s.Add("alice", "alice-pw", users.RoleUser); err != nil {
		return nil, err
	}
	return os.ReadFile(path)
})

func startServer(t *testing.T) *server {
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
	s := &server{eng: engine.New(&engine.Direct{}, nil, nil), store: store}
	srv := &admin.Server{Engine: s.eng, Users: store}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	s.addr = l.Addr().String()
	s.env = map[string]string{"TUNGATE_PASSWORD": "admin-pw"}

	oldDial, oldEnv := dialAdmin, getenv
	dialAdmin = func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", a.String())
	}
	getenv = func(k string) string { return s.env[k] }
	t.Cleanup(func() { dialAdmin, getenv = oldDial, oldEnv })

	// Two flows with traffic: one of alice's through SOCKS5, one from the
	// TUN side.
	for _, spec := range []engine.FlowSpec{
		{Proto: engine.ProtoTCP, Src: sa("127.0.0.1:40000"), Dst: socks.Addr{Name: "example.com", Port: 443}, User: "alice", Flags: engine.FlagSOCKS},
		{Proto: engine.ProtoUDP, Src: sa("10.0.0.2:5353"), Dst: sa("192.0.2.53:53"), Flags: engine.FlagTUN},
	} {
		f, err := s.eng.Registry().Open(spec)
		if err != nil {
			t.Fatal(err)
		}
		f.SetState(engine.StateEstablished)
		f.SetAbort(f.Close)
		f.AddUp(1000)
		f.AddDown(250000)
		t.Cleanup(f.Close)
		s.flows = append(s.flows, f)
	}
	return s
}

func sa(s string) socks.Addr { return socks.AddrFromAddrPort(netip.MustParseAddrPort(s)) }

// ctl runs tungatectl with --admin set to the server.
func (s *server) ctl(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(append([]string{"--admin", s.addr, "--timeout", "20s"}, args...), strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func (s *server) mustCtl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	code, out, errOut := s.ctl(t, stdin, args...)
	if code != 0 {
		t.Fatalf("tungatectl %q: exit %d, stderr %q", args, code, errOut)
	}
	return out
}

func TestMetrics(t *testing.T) {
	checkLeaks(t)
	s := startServer(t)
	out := s.mustCtl(t, "", "metrics")
	for _, want := range []string{"historic connections    2", "concurrent connections  2", "bytes transferred       502000 (490.2 KiB)", "TCP flows open          1", "uptime"} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics output lacks %q:\n%s", want, out)
		}
	}
	var m jsonMetrics
	if err := json.Unmarshal([]byte(s.mustCtl(t, "", "metrics", "--json")), &m); err != nil {
		t.Fatal(err)
	}
	if m.Historic != 2 || m.BytesUp != 2000 || m.BytesDown != 500000 || m.BytesTotal != 502000 || m.UDPOpen != 1 {
		t.Errorf("metrics --json = %+v", m)
	}
}

func TestFlowsAndClose(t *testing.T) {
	checkLeaks(t)
	s := startServer(t)
	out := s.mustCtl(t, "", "flows")
	for _, want := range []string{"ID", "DESTINATION", "example.com:443", "alice", "socks|domain", "192.0.2.53:53", "tun", "244.1 KiB", "2 flows"} {
		if !strings.Contains(out, want) {
			t.Errorf("flows output lacks %q:\n%s", want, out)
		}
	}
	var flows []jsonFlow
	if err := json.Unmarshal([]byte(s.mustCtl(t, "", "--json", "flows")), &flows); err != nil {
		t.Fatal(err)
	}
	if len(flows) != 2 || flows[0].Dst != "example.com:443" || flows[0].User != "alice" || flows[1].Proto != "udp" ||
		strings.Join(flows[0].Flags, ",") != "socks,domain" || flows[0].BytesDown != 250000 {
		t.Errorf("flows --json = %+v", flows)
	}

	id := s.flows[0].ID
	if out := s.mustCtl(t, "", "flow", "close", itoa(id)); !strings.Contains(out, "closed flow") {
		t.Errorf("flow close: %q", out)
	}
	if _, ok := s.eng.Registry().Flow(id); ok {
		t.Error("the flow is still there")
	}
	code, _, errOut := s.ctl(t, "", "flow", "close", itoa(id))
	if code != 1 || !strings.Contains(errOut, "no such flow") {
		t.Errorf("closing it again: exit %d, %q", code, errOut)
	}
	code, _, errOut = s.ctl(t, "", "flow", "close", "x")
	if code != 2 || !strings.Contains(errOut, "not a number") {
		t.Errorf("flow close x: exit %d, %q", code, errOut)
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

func TestUsers(t *testing.T) {
	checkLeaks(t)
	s := startServer(t)
	out := s.mustCtl(t, "", "users")
	if !strings.Contains(out, "NAME   ROLE   FLOWS") || !strings.Contains(out, "alice  user   1") || !strings.Contains(out, "admin  admin  0") {
		t.Errorf("users:\n%s", out)
	}

	// user add: the password is the first line of stdin.
	if out := s.mustCtl(t, "bob-pw\n", "user", "add", "bob", "--role", "admin"); !strings.Contains(out, `added admin "bob"`) {
		t.Errorf("user add: %q", out)
	}
	if role, ok := s.store.Authenticate("bob", "bob-pw"); !ok || role != users.RoleAdmin {
		t.Error("bob was not added as an admin with his password")
	}
	code, _, errOut := s.ctl(t, "x\n", "user", "add", "bob")
	if code != 1 || !strings.Contains(errOut, "user add bob: the server said no: user exists") {
		t.Errorf("adding bob again: exit %d, %q", code, errOut)
	}
	code, _, errOut = s.ctl(t, "x\n", "user", "add", "b:b")
	if code != 1 || !strings.Contains(errOut, "invalid name or password") {
		t.Errorf("adding b:b: exit %d, %q", code, errOut)
	}
	code, _, errOut = s.ctl(t, "", "user", "add", "carol")
	if code != 2 || !strings.Contains(errOut, "first line of standard input") {
		t.Errorf("adding carol without a password: exit %d, %q", code, errOut)
	}

	s.mustCtl(t, "bob-new\n", "user", "passwd", "bob")
	if _, ok := s.store.Authenticate("bob", "bob-new"); !ok {
		t.Error("bob's new password does not work")
	}
	var list []struct {
		Name  string `json:"name"`
		Role  string `json:"role"`
		Flows int    `json:"flows"`
	}
	if err := json.Unmarshal([]byte(s.mustCtl(t, "", "users", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[1].Name != "alice" || list[1].Flows != 1 || list[2].Name != "bob" || list[2].Role != "admin" {
		t.Errorf("users --json = %+v", list)
	}

	s.mustCtl(t, "", "user", "del", "bob")
	if _, ok := s.store.Get("bob"); ok {
		t.Error("bob is still there")
	}
	code, _, errOut = s.ctl(t, "", "user", "del", "bob")
	if code != 1 || !strings.Contains(errOut, "no such user") {
		t.Errorf("deleting bob again: exit %d, %q", code, errOut)
	}
	code, _, errOut = s.ctl(t, "", "user", "del", "admin")
	if code != 1 || !strings.Contains(errOut, "last admin") {
		t.Errorf("deleting the last admin: exit %d, %q", code, errOut)
	}
	code, _, errOut = s.ctl(t, "", "user", "passwd", "nobody")
	if code != 2 {
		t.Errorf("passwd without a password: exit %d, %q", code, errOut)
	}
}

func TestConfig(t *testing.T) {
	checkLeaks(t)
	s := startServer(t)
	out := s.mustCtl(t, "", "config", "get")
	for _, want := range []string{"relay-buffer      32768 (32.0 KiB)", "tcp-idle-timeout  10m0s", "udp-timeout       1m0s", "socks-auth        false", "max-flows         0 (no limit)", "connect-timeout   10s"} {
		if !strings.Contains(out, want) {
			t.Errorf("config get lacks %q:\n%s", want, out)
		}
	}
	st := s.eng.Settings()
	for _, tc := range []struct {
		args  []string
		out   string
		check func() bool
	}{
		{[]string{"tcp-idle-timeout", "90s"}, "tcp-idle-timeout = 1m30s", func() bool { return st.TCPIdleTimeout() == 90*time.Second }},
		{[]string{"udp-timeout", "2500"}, "udp-timeout = 2.5s", func() bool { return st.UDPIdleTimeout() == 2500*time.Millisecond }},
		{[]string{"connect-timeout", "3s"}, "connect-timeout = 3s", func() bool { return st.ConnectTimeout() == 3*time.Second }},
		{[]string{"relay-buffer", "64k"}, "relay-buffer = 65536", func() bool { return st.RelayBufferSize() == 65536 }},
		{[]string{"socks-auth", "on"}, "socks-auth = true", func() bool { return st.AuthRequired() }},
		{[]string{"max-flows", "10"}, "max-flows = 10", func() bool { return st.MaxFlows() == 10 }},
		{[]string{"tcp-idle-timeout", "0"}, "tcp-idle-timeout = 0 (never)", func() bool { return st.TCPIdleTimeout() == 0 }},
	} {
		out := s.mustCtl(t, "", append([]string{"config", "set"}, tc.args...)...)
		if !strings.Contains(out, tc.out) || !tc.check() {
			t.Errorf("config set %q: %q, applied: %v", tc.args, out, tc.check())
		}
	}
	if out := s.mustCtl(t, "", "config", "get", "max-flows"); strings.TrimSpace(out) != "max-flows  10" {
		t.Errorf("config get max-flows: %q", out)
	}
	var all map[string]uint64
	if err := json.Unmarshal([]byte(s.mustCtl(t, "", "config", "get", "--json")), &all); err != nil {
		t.Fatal(err)
	}
	if all["relay-buffer"] != 65536 || all["socks-auth"] != 1 || len(all) != 6 {
		t.Errorf("config get --json = %v (log-level is not served without a LevelVar)", all)
	}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"relay-buffer", "1"}, 1, "value out of range"},
		{[]string{"udp-timeout", "0"}, 1, "value out of range"},
		{[]string{"log-level", "info"}, 1, "unknown config key"},
		{[]string{"nope", "1"}, 2, `unknown setting "nope"`},
		{[]string{"socks-auth", "maybe"}, 2, "want true or false"},
		{[]string{"connect-timeout", "soon"}, 2, "a duration"},
		{[]string{"max-flows"}, 2, "missing KEY and VALUE"},
	} {
		code, _, errOut := s.ctl(t, "", append([]string{"config", "set"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.msg) {
			t.Errorf("config set %q: exit %d, %q; want %d, %q", tc.args, code, errOut, tc.code, tc.msg)
		}
	}
}

func TestPing(t *testing.T) {
	checkLeaks(t)
	s := startServer(t)
	if out := s.mustCtl(t, "", "ping"); !strings.HasPrefix(out, "pong from "+s.addr) {
		t.Errorf("ping: %q", out)
	}
}

func TestTop(t *testing.T) {
	checkLeaks(t)
	s := startServer(t)
	out := s.mustCtl(t, "", "top", "--count", "2", "--interval", "20ms")
	if n := strings.Count(out, "ID  PROTO"); n != 2 {
		t.Errorf("top --count 2 printed %d frames:\n%s", n, out)
	}
	for _, want := range []string{"flows 2 (tcp 1, udp 1)", "example.com:443", "UP/s", "rate up"} {
		if !strings.Contains(out, want) {
			t.Errorf("top lacks %q:\n%s", want, out)
		}
	}

	// With --json, one object per refresh; traffic between refreshes
	// shows as a rate.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			s.flows[1].AddDown(100000)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	out = s.mustCtl(t, "", "top", "--json", "--count", "3", "--interval", "30ms")
	<-done
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("top --json printed %d lines:\n%s", len(lines), out)
	}
	var last jsonFrame
	if err := json.Unmarshal([]byte(lines[2]), &last); err != nil {
		t.Fatal(err)
	}
	if len(last.Flows) != 2 || last.Flows[0].RateDown == nil || last.Metrics.Concurrent != 2 {
		t.Fatalf("last frame: %+v", last)
	}
	var total float64
	for _, l := range lines[1:] {
		var fr jsonFrame
		json.Unmarshal([]byte(l), &fr)
		total += fr.RateDown
	}
	if total <= 0 {
		t.Errorf("no down rate seen while the flow moved bytes:\n%s", out)
	}
}

func TestRates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	prev := snapshot{at: t0, metrics: admin.Metrics{BytesUp: 100, BytesDown: 1000}, flows: []admin.Flow{
		{ID: 1, BytesUp: 100, BytesDown: 1000, AgeMS: 5000},
	}}
	cur := snapshot{at: t0.Add(2 * time.Second), metrics: admin.Metrics{BytesUp: 300, BytesDown: 5000}, flows: []admin.Flow{
		{ID: 1, BytesUp: 200, BytesDown: 2000, AgeMS: 7000},
		{ID: 2, BytesUp: 100, BytesDown: 3000, AgeMS: 1000},
	}}
	flows, up, down := rates(prev, cur)
	if up != 100 || down != 2000 {
		t.Errorf("total rates %v, %v; want 100, 2000", up, down)
	}
	if len(flows) != 2 || flows[0].ID != 2 || flows[0].down != 3000 || flows[1].up != 50 || flows[1].down != 500 {
		t.Errorf("flow rates %+v", flows)
	}
}

func TestErrors(t *testing.T) {
	checkLeaks(t)
	s := startServer(t)

	// The server says no: exit 1.
	s.env["TUNGATE_PASSWORD"] = "wrong"
	code, _, errOut := s.ctl(t, "", "metrics")
	if code != 1 || !strings.Contains(errOut, "login as admin at "+s.addr+" refused: wrong user or password") {
		t.Errorf("wrong password: exit %d, %q", code, errOut)
	}
	code, _, errOut = s.ctl(t, "", "--user", "alice", "metrics")
	if code != 1 || !strings.Contains(errOut, "refused") {
		t.Errorf("a user who is not an admin: exit %d, %q", code, errOut)
	}

	// --password-file wins over the environment.
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("admin-pw\r\nignored\n"), 0o600)
	if code, _, errOut := s.ctl(t, "", "--password-file", pwFile, "ping"); code != 0 {
		t.Errorf("--password-file: exit %d, %q", code, errOut)
	}
	code, _, errOut = s.ctl(t, "", "--password-file", filepath.Join(t.TempDir(), "none"), "ping")
	if code != 2 || !strings.Contains(errOut, "--password-file") {
		t.Errorf("missing --password-file: exit %d, %q", code, errOut)
	}

	// Usage and connection errors: exit 2.
	delete(s.env, "TUNGATE_PASSWORD")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"ping"}, "no password for admin: give --password-file FILE or set TUNGATE_PASSWORD"},
		{[]string{}, "missing command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"metrics", "extra"}, `unexpected argument "extra"`},
		{[]string{"user", "add"}, "missing NAME"},
		{[]string{"user", "zap", "x"}, `unknown command "zap"`},
		{[]string{"users", "--role", "admin"}, "--role is only valid with user add"},
		{[]string{"user", "add", "x", "--role", "root"}, "want user or admin"},
		{[]string{"flow", "open", "1"}, "want flow close ID"},
		{[]string{"--bogus"}, "flag provided but not defined"},
		{[]string{"--timeout", "0", "ping"}, "--timeout must be positive"},
	} {
		code, _, errOut := s.ctl(t, "", tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.msg) {
			t.Errorf("%q: exit %d, %q; want 2, %q", tc.args, code, errOut, tc.msg)
		}
	}
	s.env["TUNGATE_PASSWORD"] = "admin-pw"
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l.Addr().String()
	l.Close()
	var out, errBuf bytes.Buffer
	code = run([]string{"--admin", closed, "ping"}, strings.NewReader(""), &out, &errBuf)
	if code != 2 || !strings.Contains(errBuf.String(), "connecting to the admin server "+closed+" over SCTP") || !strings.Contains(errBuf.String(), "is tungate running") {
		t.Errorf("nothing listening: exit %d, %q", code, errBuf.String())
	}
	errBuf.Reset()
	code = run([]string{"--admin", "nonsense", "ping"}, strings.NewReader(""), &out, &errBuf)
	if code != 2 || !strings.Contains(errBuf.String(), "want host:port") {
		t.Errorf("bad --admin: exit %d, %q", code, errBuf.String())
	}
	out.Reset()
	if code := run([]string{"--help"}, nil, &out, &errBuf); code != 0 || !strings.Contains(out.String(), "Usage: tungatectl") {
		t.Errorf("--help: exit %d", code)
	}
}

// TestNoSCTP checks the message when the kernel has no SCTP.
func TestNoSCTP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := admin.DialSCTP(ctx, netip.MustParseAddrPort("127.0.0.1:1"))
	if err == nil {
		c.Close()
	}
	if !errors.Is(err, admin.ErrNoSCTP) {
		t.Skip("this kernel has SCTP")
	}
	t.Setenv("TUNGATE_PASSWORD", "x")
	var out, errBuf bytes.Buffer
	code := run([]string{"--admin", "127.0.0.1:1", "ping"}, strings.NewReader(""), &out, &errBuf)
	if code != 2 || !strings.Contains(errBuf.String(), "modprobe sctp") {
		t.Errorf("exit %d, %q", code, errBuf.String())
	}
}
