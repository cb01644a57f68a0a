package socks

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peek looks at the ready connection c without waiting: open with nothing
// to read, closed by the server (the end of its stream), or broken (a
// reset, an error, or bytes the server sent unasked, after which its reply
// could not be told apart). A connection it cannot look into is open.
func peek(c net.Conn) peekState {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return peekOpen
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peekBroken
	}
	st := peekBroken
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN:
			st = peekOpen
		case err == nil && n == 0:
			st = peekClosed
		}
		return true
	})
	if err != nil {
		return peekBroken
	}
	return st
}
