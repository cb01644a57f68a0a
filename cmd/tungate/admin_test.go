package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tungate/admin"
	"tungate/internal/engine"
	"tungate/internal/users"
)

// kernelSCTP reports whether this kernel can open SCTP sockets.
var kernelSCTP = sync.OnceValue(func() bool {
	l, err := admin.ListenSCTP([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		return !errors.Is(err, admin.ErrNoSCTP)
	}
	l.Close()
	return true
})

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// adminTestDeps returns deps with a store holding admin "root" (password
// "root-pw"), and the log they write to.
func adminTestDeps(t *testing.T, addrs ...string) (adminDeps, *logBuffer) {
	t.Helper()
	store, err := users.OpenOrCreate(filepath.Join(t.TempDir(), "users"))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Add("root", "root-pw", users.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	d := adminDeps{
		Engine: engine.New(&engine.Direct{}, nil, nil),
		Users:  store,
		Level:  new(slog.LevelVar),
		Log:    slog.New(slog.NewTextHandler(logs, nil)).With("component", "admin"),
	}
	for _, a := range addrs {
		d.Addrs = append(d.Addrs, netip.MustParseAddrPort(a))
	}
	return d, logs
}

func TestStartAdminDisabled(t *testing.T) {
	d, logs := adminTestDeps(t)
	stop, err := startAdmin(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if !strings.Contains(logs.String(), "admin server disabled") {
		t.Errorf("log: %s", logs)
	}
}

func TestStartAdminWithoutUsers(t *testing.T) {
	d, logs := adminTestDeps(t, "127.0.0.1:8080")
	d.Users = nil
	stop, err := startAdmin(context.Background(), d)
	if err != nil {
		t.Fatalf("implicit --admin without users: %v", err)
	}
	stop()
	if got := logs.String(); !strings.Contains(got, "level=WARN") || !strings.Contains(got, "no user store") || !strings.Contains(got, "--users FILE") {
		t.Errorf("the warning does not say why and what to do: %s", got)
	}
	d.Explicit = true
	_, err = startAdmin(context.Background(), d)
	if !isUsage(err) || !strings.Contains(err.Error(), "no user store") {
		t.Errorf("explicit --admin without users: %v, want a usage error naming the cause", err)
	}
}

// TestStartAdminNoSCTP checks the one warning (or, with --admin given, the
// error) on a kernel without SCTP.
func TestStartAdminNoSCTP(t *testing.T) {
	if kernelSCTP() {
		t.Skip("this kernel has SCTP; TestStartAdminSCTP runs instead")
	}
	d, logs := adminTestDeps(t, "127.0.0.1:8080")
	stop, err := startAdmin(context.Background(), d)
	if err != nil {
		t.Fatalf("implicit --admin without SCTP: %v", err)
	}
	stop()
	got := logs.String()
	if strings.Count(got, "level=WARN") != 1 || !strings.Contains(got, "no SCTP") || !strings.Contains(got, "modprobe sctp") {
		t.Errorf("want one warning naming the cause and the fix, got: %s", got)
	}
	d.Explicit = true
	_, err = startAdmin(context.Background(), d)
	if !errors.Is(err, admin.ErrNoSCTP) || !strings.Contains(err.Error(), "modprobe sctp") || !strings.Contains(err.Error(), "--admin 127.0.0.1:8080") {
		t.Errorf("explicit --admin without SCTP: %v", err)
	}
}

// TestRunAdminNoSCTP runs the daemon with --admin given: without SCTP it
// must not start.
func TestRunAdminNoSCTP(t *testing.T) {
	if kernelSCTP() {
		t.Skip("this kernel has SCTP: the daemon would start (scripts/vm-test runs it)")
	}
	d, _ := adminTestDeps(t)
	var out, errOut bytes.Buffer
	code := run([]string{"--socks", "off", "--users", d.Users.Path(), "--admin", "127.0.0.1:8080"}, nil, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "modprobe sctp") {
		t.Errorf("exit %d, stderr %q", code, errOut.String())
	}
}

// TestStartAdminSCTP serves over the kernel's SCTP, on two local addresses
// of one endpoint (multi-homing).
func TestStartAdminSCTP(t *testing.T) {
	if !kernelSCTP() {
		t.Skip("this kernel has no SCTP (load the sctp module); scripts/vm-test runs this in a VM")
	}
	port := 20000 + int(time.Now().UnixNano()%20000)
	a1 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	a2 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(port))
	d, logs := adminTestDeps(t, a1.String(), a2.String())
	d.Explicit = true
	stop, err := startAdmin(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, a := range []netip.AddrPort{a1, a2} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := admin.DialSCTP(ctx, a)
		cancel()
		if err != nil {
			t.Fatalf("dial %s: %v", a, err)
		}
		cl := admin.NewClient(c)
		cl.Timeout = 10 * time.Second
		if err := cl.Login("root", "root-pw"); err != nil {
			t.Fatalf("login through %s: %v", a, err)
		}
		if _, err := cl.SetConfig(admin.UintValue(admin.KeyLogLevel, 0)); err != nil {
			t.Fatal(err)
		}
		cl.Quit()
	}
	if d.Level.Level() != slog.LevelDebug {
		t.Errorf("log level %v after SET CONFIG log-level 0", d.Level.Level())
	}
	stop()
	stop()
	if !strings.Contains(logs.String(), "admin server listening") {
		t.Errorf("log: %s", logs)
	}
}

// TestAdminServerWiring checks what newAdminServer connects, over TCP
// loopback (the server takes any listener): the LevelVar and the engine's
// settings, live.
func TestAdminServerWiring(t *testing.T) {
	d, _ := adminTestDeps(t)
	srv := newAdminServer(d)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		if err := <-done; !errors.Is(err, admin.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cl := admin.NewClient(c)
	cl.Timeout = 10 * time.Second
	defer cl.Close()
	if err := cl.Login("root", "root-pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.SetConfig(admin.UintValue(admin.KeyLogLevel, 2)); err != nil {
		t.Fatal(err)
	}
	if d.Level.Level() != slog.LevelWarn {
		t.Errorf("level %v, want WARN", d.Level.Level())
	}
	if _, err := cl.SetConfig(admin.UintValue(admin.KeyMaxFlows, 7)); err != nil {
		t.Fatal(err)
	}
	if d.Engine.Settings().MaxFlows() != 7 {
		t.Errorf("max flows %d, want 7", d.Engine.Settings().MaxFlows())
	}
}
