package engine

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// readWaiter is implemented by connections that can wait until a Read
// would not block, without a buffer (the netstack's TCP connections).
type readWaiter interface {
	WaitRead() error
}

// waitReadable blocks until c has something to read (data, EOF or an
// error), holding no buffer meanwhile: a relay of an idle connection then
// costs no memory for its buffer. Connections it cannot wait on return at
// once, and the Read that follows blocks as before.
func waitReadable(c net.Conn) error {
	switch c := c.(type) {
	case readWaiter:
		return c.WaitRead()
	case syscall.Conn:
		rc, err := c.SyscallConn()
		if err != nil {
			return nil
		}
		var b [1]byte
		return rc.Read(func(fd uintptr) bool {
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			return err != unix.EAGAIN
		})
	}
	return nil
}
