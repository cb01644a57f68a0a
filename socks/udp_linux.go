package socks

import (
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// TryWriteMsgUDP sends b, with the control messages oob, to `to` on uc if
// the socket takes it at once (MSG_DONTWAIT): done is false when it would
// have blocked, or for a destination with a zone (left to the ordinary
// send), and nothing was sent. An IPv4 destination on an IPv6
// (dual-stack) socket is sent as its IPv4-mapped address, as
// net.UDPConn.WriteMsgUDPAddrPort does.
func TryWriteMsgUDP(uc *net.UDPConn, b, oob []byte, to netip.AddrPort) (n int, done bool, err error) {
	if to.Addr().Zone() != "" {
		// A scoped address needs its interface index: the runtime's send
		// looks it up.
		return 0, false, nil
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, true, err
	}
	var sa unix.Sockaddr
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() != nil && to.Addr().Unmap().Is4() {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().Unmap().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	}
	var serr error
	cerr := rc.Write(func(fd uintptr) bool {
		for {
			n, serr = unix.SendmsgN(int(fd), b, oob, sa, unix.MSG_DONTWAIT)
			if serr != unix.EINTR {
				return true
			}
		}
	})
	switch {
	case cerr != nil:
		return 0, true, cerr
	case serr == unix.EAGAIN:
		return 0, false, nil
	case serr != nil:
		return 0, true, &net.OpError{Op: "write", Net: "udp", Addr: net.UDPAddrFromAddrPort(to), Err: os.NewSyscallError("sendmsg", serr)}
	}
	return n, true, nil
}

// GrowUDPBuffers gives a relay's UDP socket kernel buffers of
// UDPSocketBuffer bytes each way, past the system's limit where the
// process may (CAP_NET_ADMIN), else as far as the limit allows. A relay
// takes bursts from a fast sender while its reader waits for a CPU; the
// default (about 200 KiB, 150 full-size datagrams) loses them. The memory
// is the kernel's, taken only while datagrams wait, and all UDP sockets
// together stay within net.ipv4.udp_mem; the number of associations is
// bounded by the flow and session limits.
func GrowUDPBuffers(uc *net.UDPConn) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, UDPSocketBuffer) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, UDPSocketBuffer)
		}
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, UDPSocketBuffer) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, UDPSocketBuffer)
		}
	})
}
