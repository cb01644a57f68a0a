package admin_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/ishidawataru/sctp"

	"tungate/admin"
)

// requireSCTP skips the test on a kernel without SCTP. scripts/vm-test
// runs these tests in a VM whose kernel has it.
func requireSCTP(t *testing.T) {
	t.Helper()
	l, err := admin.ListenSCTP([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")})
	if errors.Is(err, admin.ErrNoSCTP) {
		t.Skipf("%v; scripts/vm-test runs this test in a VM with SCTP", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}

func dialSCTP(t *testing.T, a netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := admin.DialSCTP(ctx, a)
	if err != nil {
		t.Fatalf("dial %s: %v", a, err)
	}
	return c
}

// TestSCTPTransport serves the protocol over kernel SCTP on one endpoint
// with two local addresses, and checks logins, pipelining, deadlines and
// that Close wakes a blocked Accept.
func TestSCTPTransport(t *testing.T) {
	checkLeaks(t)
	requireSCTP(t)
	l, err := admin.ListenSCTP([]netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:0"),
		netip.MustParseAddrPort("127.0.0.2:0"),
	})
	if err != nil {
		t.Fatal(err)
	}
	sa, ok := l.Addr().(*sctp.SCTPAddr)
	if !ok || len(sa.IPAddrs) != 2 {
		t.Fatalf("listener address %v (%T), want an SCTP address with two IPs", l.Addr(), l.Addr())
	}
	t.Logf("listening on %s", sa)
	p := uint16(sa.Port)
	f := newFakeFixture(t, newFakeStore(), func(s *admin.Server) { s.IdleTimeout = 300 * time.Millisecond })
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(l) }()

	// Both addresses reach the one endpoint; a request pipelined with the
	// login (as a raw client sends them) is answered.
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		a := netip.AddrPortFrom(netip.MustParseAddr(ip), p)
		c := dialSCTP(t, a)
		msg := loginBytes(rootUser, rootPass)
		msg, _ = admin.AppendRequest(msg, admin.Request{Cmd: admin.CmdPing, RID: 1, Data: []byte(ip)})
		msg, _ = admin.AppendRequest(msg, admin.Request{Cmd: admin.CmdBytes, RID: 2})
		msg, _ = admin.AppendRequest(msg, admin.Request{Cmd: admin.CmdQuit, RID: 3})
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("through %s: %v", a, err)
		}
		want := h("01 00")
		want, _ = admin.AppendReply(want, admin.Reply{Cmd: admin.CmdPing, RID: 1, Data: []byte(ip)})
		want, _ = admin.AppendReply(want, admin.Reply{Cmd: admin.CmdBytes, RID: 2, Data: admin.AppendCounter(nil, 0)})
		want, _ = admin.AppendReply(want, admin.Reply{Cmd: admin.CmdQuit, RID: 3})
		if !bytes.Equal(got, want) {
			t.Errorf("through %s: got %x, want %x", a, got, want)
		}
		c.Close()
	}

	// The client library over SCTP, and the idle timeout through the
	// kernel's socket (its deadlines work).
	c := dialSCTP(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p))
	cl := admin.NewClient(c)
	cl.Timeout = 10 * time.Second
	if err := cl.Login(rootUser, rootPass); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Metrics(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle session: %v, want EOF", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
		t.Errorf("idle session closed after %v, want about 300ms", d)
	}
	c.Close()

	// A wrong password gets its reply before the association closes.
	c = dialSCTP(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p))
	c.Write(loginBytes(rootUser, "wrong"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(c); err != nil || !bytes.Equal(got, h("01 01")) {
		t.Errorf("wrong password: %x, %v", got, err)
	}
	c.Close()

	// Close wakes the blocked Accept: Serve returns at once.
	start = time.Now()
	f.srv.Close()
	select {
	case err := <-served:
		if !errors.Is(err, admin.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still runs 5s after Close: Accept was not woken")
	}
	t.Logf("Close took %v", time.Since(start))

	// Nothing listens there now.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := admin.DialSCTP(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p)); err == nil {
		c.Close()
		t.Error("dial after Close works")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Logf("dial after Close: %v", err)
	}
}

// TestSCTPListenErrors checks the endpoint's address rules.
func TestSCTPListenErrors(t *testing.T) {
	requireSCTP(t)
	if _, err := admin.ListenSCTP(nil); err == nil {
		t.Error("ListenSCTP(nil) works")
	}
	_, err := admin.ListenSCTP([]netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:9001"), netip.MustParseAddrPort("127.0.0.2:9002"),
	})
	if err == nil {
		t.Error("an endpoint with two ports works")
	}
	l, err := admin.ListenSCTP([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0")})
	if err != nil {
		t.Logf("IPv4 and IPv6 on one endpoint: %v (no IPv6 loopback?)", err)
	} else {
		t.Logf("IPv4 and IPv6 on one endpoint: %s", l.Addr())
		l.Close()
	}
}
