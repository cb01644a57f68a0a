//go:build linux

package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/ishidawataru/sctp"
	"golang.org/x/sys/unix"
)

// listenBacklog is the queue of associations not yet accepted.
const listenBacklog = 64

// ListenSCTP listens for SCTP associations, one-to-one style, on one
// endpoint bound to every address in addrs (multi-homing: a client
// reaches it through any of them, and the association survives the loss
// of one path). The addresses must share one port; port 0 picks one. The
// listener is driven by the Go runtime's poller: Close interrupts Accept,
// and its connections honor deadlines. A kernel without SCTP gives an
// error wrapping ErrNoSCTP.
func ListenSCTP(addrs []netip.AddrPort) (net.Listener, error) {
	if len(addrs) == 0 {
		return nil, errors.New("admin: listen SCTP: no address")
	}
	port := addrs[0].Port()
	family := unix.AF_INET
	for _, a := range addrs {
		if a.Port() != port {
			return nil, fmt.Errorf("admin: listen SCTP: the addresses of one endpoint share a port, not %d and %d", port, a.Port())
		}
		if !a.Addr().Unmap().Is4() {
			family = unix.AF_INET6
		}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, socketErr(err)
	}
	keep := false
	defer func() {
		if !keep {
			unix.Close(fd)
		}
	}()
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, fmt.Errorf("admin: listen SCTP: SO_REUSEADDR: %w", err)
	}
	if family == unix.AF_INET6 {
		// IPv4 addresses may share the endpoint with IPv6 ones.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return nil, fmt.Errorf("admin: listen SCTP: IPV6_V6ONLY: %w", err)
		}
	}
	sa := sctpAddr(addrs)
	if err := sctp.SCTPBind(fd, sa, sctp.SCTP_BINDX_ADD_ADDR); err != nil {
		return nil, fmt.Errorf("admin: listen SCTP: bind %s: %w", sa, err)
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		return nil, fmt.Errorf("admin: listen SCTP %s: %w", sa, err)
	}
	// net.FileListener takes a duplicate and registers it with the
	// poller (it sees a stream socket of an IP family, so it makes a
	// *net.TCPListener: only Accept and Close are used); the original is
	// closed with f.
	f := os.NewFile(uintptr(fd), "sctp:"+sa.String())
	keep = true
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("admin: listen SCTP %s: %w", sa, err)
	}
	if ta, ok := l.Addr().(*net.TCPAddr); ok {
		sa.Port = ta.Port
	}
	return &sctpListener{Listener: l, addr: sa}, nil
}

// sctpListener reports its address as SCTP, with all its local addresses.
type sctpListener struct {
	net.Listener
	addr *sctp.SCTPAddr
}

func (l *sctpListener) Addr() net.Addr { return l.addr }

func sctpAddr(addrs []netip.AddrPort) *sctp.SCTPAddr {
	sa := &sctp.SCTPAddr{Port: int(addrs[0].Port())}
	for _, a := range addrs {
		ip := a.Addr().Unmap()
		sa.IPAddrs = append(sa.IPAddrs, net.IPAddr{IP: ip.AsSlice(), Zone: ip.Zone()})
	}
	return sa
}

// DialSCTP opens an SCTP association, one-to-one style, to addr. ctx
// bounds the handshake. The connection is driven by the Go runtime's
// poller and honors deadlines. A kernel without SCTP gives an error
// wrapping ErrNoSCTP.
func DialSCTP(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	ip := addr.Addr().Unmap()
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ip.Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: ip.As4()}
	} else {
		family = unix.AF_INET6
		sa6 := &unix.SockaddrInet6{Port: int(addr.Port()), Addr: ip.As16()}
		if z := ip.Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				sa6.ZoneId = uint32(ifi.Index)
			}
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, socketErr(err)
	}
	// f owns fd from here; it is registered with the poller because fd is
	// non-blocking.
	f := os.NewFile(uintptr(fd), "sctp:"+addr.String())
	defer f.Close()
	if err := connect(ctx, f, fd, sa); err != nil {
		return nil, fmt.Errorf("admin: connect SCTP %s: %w", addr, err)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("admin: connect SCTP %s: %w", addr, err)
	}
	return c, nil
}

// connect runs a non-blocking connect on fd and waits, through f's poller
// registration, until it completes, fails, or ctx ends.
func connect(ctx context.Context, f *os.File, fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINPROGRESS) && !errors.Is(err, unix.EINTR) {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	werr := rc.Write(func(uintptr) bool {
		n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			cerr = err
			return true
		case n != 0:
			cerr = unix.Errno(n)
			return true
		}
		// No error yet: connected, or still connecting (the first call
		// comes before any wait).
		if _, err := unix.Getpeername(fd); err == nil {
			return true
		}
		return false
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr
	}
	f.SetWriteDeadline(time.Time{})
	return cerr
}

// socketErr names the cause when the kernel has no SCTP.
func socketErr(err error) error {
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT) {
		return fmt.Errorf("%w: socket: %w", ErrNoSCTP, err)
	}
	return fmt.Errorf("admin: SCTP socket: %w", err)
}
