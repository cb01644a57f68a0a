//go:build !linux

package socks

import (
	"net"
	"net/netip"
)

// TryWriteMsgUDP is the non-blocking send of udp_linux.go; elsewhere it
// never sends (done false), so callers take their ordinary path.
func TryWriteMsgUDP(uc *net.UDPConn, b, oob []byte, to netip.AddrPort) (n int, done bool, err error) {
	return 0, false, nil
}

// GrowUDPBuffers asks for UDPSocketBuffer bytes each way, within the
// system's limits.
func GrowUDPBuffers(uc *net.UDPConn) {
	uc.SetReadBuffer(UDPSocketBuffer)
	uc.SetWriteBuffer(UDPSocketBuffer)
}
