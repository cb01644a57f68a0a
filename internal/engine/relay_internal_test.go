package engine

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"tungate/socks"
)

// TestRelayBufferAdapts: a direction's buffer doubles after reads that fill
// it, up to relayGrowth times the configured size, and falls back after
// reads that use little of it, never below the configured size.
func TestRelayBufferAdapts(t *testing.T) {
	e := New(&Direct{}, nil, nil)
	base := e.settings.RelayBufferSize()
	d := &direction{e: e, size: base}
	read := func(n int) { d.adapt(n, d.size) }
	steps := []struct {
		n    int // bytes read, as a multiple of the buffer (-1: a few bytes)
		want int // size after, in units of base
	}{
		{1, 2}, {1, 4}, {1, 8}, {1, 8}, // full reads: grow to the cap
		{0, 8},                             // half-full: stay
		{-1, 4}, {-1, 2}, {-1, 1}, {-1, 1}, // small reads: shrink to base
	}
	for i, st := range steps {
		switch st.n {
		case 1:
			read(d.size)
		case 0:
			read(d.size / 2)
		default:
			read(10)
		}
		if d.size != st.want*base {
			t.Fatalf("step %d: size %d, want %d", i, d.size, st.want*base)
		}
	}
	if minRelayClass<<(relayClasses-1) != MaxRelayBufferSize {
		t.Errorf("%d classes from %d do not reach MaxRelayBufferSize %d", relayClasses, minRelayClass, MaxRelayBufferSize)
	}
	if c := relayClass(base); minRelayClass<<c != base {
		t.Errorf("class of %d holds %d", base, minRelayClass<<c)
	}
	for _, size := range []int{1, MinRelayBufferSize, 10000, MaxRelayBufferSize} {
		bp := getRelayBuf(size)
		if len(*bp) < size {
			t.Errorf("getRelayBuf(%d): %d bytes", size, len(*bp))
		}
		putRelayBuf(bp)
	}
}

// TestLoopbackRefusedUDP: through a direct outbound, a UDP client on
// another host cannot send to this host's loopback addresses (by the slow
// path or the non-blocking one); a client on this host can.
func TestLoopbackRefusedUDP(t *testing.T) {
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	to := socks.AddrFromAddrPort(peer.LocalAddr().(*net.UDPAddr).AddrPort())
	for _, tc := range []struct {
		src     string
		allowed bool
	}{{"198.18.0.5:4000", false}, {"127.0.0.1:4000", true}} {
		ctx := withClient(context.Background(), socks.AddrFromAddrPort(netip.MustParseAddrPort(tc.src)))
		out, err := (&Direct{}).ListenUDP(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, werr := out.WriteTo([]byte("x"), to)
		_, done, terr := out.(MetaTryWriter).TryWriteToMeta([]byte("y"), to, Meta{})
		out.Close()
		if tc.allowed != (werr == nil) || tc.allowed != (terr == nil) || !done {
			t.Errorf("UDP from %s to %s: WriteTo %v, TryWriteToMeta %v (done %v); allowed %v", tc.src, to, werr, terr, done, tc.allowed)
		}
		if !tc.allowed && (socks.ReplyFromError(werr) != socks.ReplyNotAllowed || socks.ReplyFromError(terr) != socks.ReplyNotAllowed) {
			t.Errorf("UDP from %s: %v / %v, want not allowed", tc.src, werr, terr)
		}
	}
}
