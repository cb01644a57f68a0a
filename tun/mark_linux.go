package tun

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// MarkControl returns a Control function for net.Dialer and
// net.ListenConfig that sets SO_MARK to mark on each socket, so that the
// gateway's own outbound traffic bypasses the TUN device (see the rule
// set in the package documentation). A zero mark leaves sockets alone.
// Setting SO_MARK needs CAP_NET_ADMIN.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if mark == 0 {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return fmt.Errorf("tun: setting SO_MARK %#x on a %s socket for %s: %w", mark, network, address, err)
		}
		if serr != nil {
			return fmt.Errorf("tun: setting SO_MARK %#x on a %s socket for %s (needs CAP_NET_ADMIN): %w", mark, network, address, serr)
		}
		return nil
	}
}
