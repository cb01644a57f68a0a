//go:build !linux

package admin

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
)

// ListenSCTP is only implemented on Linux.
func ListenSCTP(addrs []netip.AddrPort) (net.Listener, error) {
	return nil, fmt.Errorf("%w: not implemented on %s", ErrNoSCTP, runtime.GOOS)
}

// DialSCTP is only implemented on Linux.
func DialSCTP(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	return nil, fmt.Errorf("%w: not implemented on %s", ErrNoSCTP, runtime.GOOS)
}
