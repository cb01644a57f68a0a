package engine

import (
	"context"
	"errors"
	"net/netip"

	"tungate/socks"
)

// ErrLoopbackRefused is the error of a flow from a client that is not on
// this host to one of this host's own loopback (or unspecified) addresses:
// through the gateway, a remote client could otherwise reach services that
// listen only on loopback because they trust it (the profiling endpoint, a
// local resolver, databases). SOCKS5 clients are told REP 2 (not allowed by
// the ruleset); TUN clients an administratively prohibited ICMP error.
var ErrLoopbackRefused = &socks.ReplyError{
	Code: socks.ReplyNotAllowed,
	Err:  errors.New("engine: a client from another host may not reach this host's loopback addresses"),
}

// srcKey is the context key of the flow's client address, which Direct
// reads to decide whether loopback destinations are allowed.
type srcKey struct{}

// withClient returns ctx carrying the flow's client address.
func withClient(ctx context.Context, src socks.Addr) context.Context {
	return context.WithValue(ctx, srcKey{}, src)
}

// localClient reports whether the flow in ctx comes from this host (a
// loopback client address), or carries no client at all (a caller outside
// the engine, which decides for itself).
func localClient(ctx context.Context) bool {
	src, ok := ctx.Value(srcKey{}).(socks.Addr)
	if !ok {
		return true
	}
	ap, ok := src.AddrPort()
	return ok && ap.Addr().Unmap().IsLoopback()
}

// hostOnly reports whether ip reaches this host itself whatever the
// routes: a loopback address, or the unspecified one (connecting to
// 0.0.0.0 or :: reaches a local listener).
func hostOnly(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsUnspecified()
}
