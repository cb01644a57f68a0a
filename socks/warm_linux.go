package socks

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// usable reports whether the ready connection c is still open with
// nothing to read: a server that closed it, reset it or sent something
// before the request is not to be asked. It looks without waiting (a
// peek); a connection it cannot look into is taken to be usable.
func usable(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = true
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		// Data (n > 0) or the end (0) both make it unusable.
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = err == unix.EAGAIN
		return true
	})
	return err == nil && ok
}
