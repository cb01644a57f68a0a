package socks

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// AddrType is the ATYP field of RFC 1928 section 4 and 5.
type AddrType byte

// Address types, RFC 1928 section 4.
const (
	AddrTypeIPv4   AddrType = 0x01
	AddrTypeDomain AddrType = 0x03
	AddrTypeIPv6   AddrType = 0x04
)

func (t AddrType) String() string {
	switch t {
	case AddrTypeIPv4:
		return "ipv4"
	case AddrTypeDomain:
		return "domain"
	case AddrTypeIPv6:
		return "ipv6"
	}
	return "atyp(" + strconv.Itoa(int(t)) + ")"
}

// Sizes of the address encodings, RFC 1928 section 5.
const (
	atypLen       = 1
	portLen       = 2
	ipv4Len       = 4
	ipv6Len       = 16
	domainLenLen  = 1
	MaxDomainLen  = 255                                             // longest name a domain ATYP carries
	MaxAddrLen    = atypLen + domainLenLen + MaxDomainLen + portLen // longest encoded address
	minAddrLen    = atypLen + ipv4Len + portLen                     // shortest valid encoded address
	ipv4AddrLen   = atypLen + ipv4Len + portLen
	ipv6AddrLen   = atypLen + ipv6Len + portLen
	domainHdrLen  = atypLen + domainLenLen
	domainMinBody = 1 // a domain name of zero octets names nothing
)

// Addr is a SOCKS address: either an IP address or a domain name, and a
// port. The zero Addr is invalid. Addr implements net.Addr.
type Addr struct {
	// IP is the address when Name is empty.
	IP netip.Addr
	// Name is a fully qualified domain name, 1 to 255 octets, or empty.
	Name string
	Port uint16
}

// AddrFromAddrPort returns the Addr for an IP address and port. IPv4-mapped
// IPv6 addresses are unmapped so that they encode as ATYP IPv4.
func AddrFromAddrPort(ap netip.AddrPort) Addr {
	return Addr{IP: ap.Addr().Unmap(), Port: ap.Port()}
}

// AddrFromNetAddr converts a *net.TCPAddr, *net.UDPAddr or Addr.
func AddrFromNetAddr(a net.Addr) (Addr, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		return AddrFromAddrPort(a.AddrPort()), true
	case *net.UDPAddr:
		return AddrFromAddrPort(a.AddrPort()), true
	case Addr:
		return a, true
	case *Addr:
		return *a, true
	}
	return Addr{}, false
}

// ParseHostPort parses "host:port" where host is an IP literal or a domain
// name. IPv6 literals are bracketed, as for net.SplitHostPort.
func ParseHostPort(s string) (Addr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("socks: address %q: %w", s, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return Addr{}, fmt.Errorf("socks: address %q: bad port", s)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return Addr{}, fmt.Errorf("socks: address %q: zones cannot be sent", s)
		}
		return Addr{IP: ip.Unmap(), Port: uint16(p)}, nil
	}
	if len(host) < domainMinBody || len(host) > MaxDomainLen {
		return Addr{}, fmt.Errorf("socks: address %q: %w", s, ErrNameLength)
	}
	return Addr{Name: host, Port: uint16(p)}, nil
}

// IsValid reports whether a names something: an IP or a non-empty name.
func (a Addr) IsValid() bool { return a.Name != "" || a.IP.IsValid() }

// IsName reports whether a holds a domain name rather than an IP.
func (a Addr) IsName() bool { return a.Name != "" }

// AddrPort returns the IP address and port; ok is false for names.
func (a Addr) AddrPort() (ap netip.AddrPort, ok bool) {
	if a.Name != "" || !a.IP.IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.IP, a.Port), true
}

// Type returns the ATYP a encodes as.
func (a Addr) Type() AddrType {
	switch {
	case a.Name != "":
		return AddrTypeDomain
	case a.IP.Is4():
		return AddrTypeIPv4
	default:
		return AddrTypeIPv6
	}
}

// Network implements net.Addr.
func (a Addr) Network() string { return "socks5" }

// String implements net.Addr; it returns "host:port".
func (a Addr) String() string {
	host := a.Name
	if host == "" {
		if !a.IP.IsValid() {
			return "<invalid>:" + strconv.Itoa(int(a.Port))
		}
		host = a.IP.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(a.Port)))
}

// EncodedLen returns the number of octets AppendAddr writes for a.
func (a Addr) EncodedLen() int {
	switch a.Type() {
	case AddrTypeDomain:
		return domainHdrLen + len(a.Name) + portLen
	case AddrTypeIPv4:
		return ipv4AddrLen
	}
	return ipv6AddrLen
}

// AppendAddr appends the ATYP, address and port of a (RFC 1928 section 5).
func AppendAddr(b []byte, a Addr) ([]byte, error) {
	switch {
	case a.Name != "":
		if len(a.Name) > MaxDomainLen {
			return b, ErrNameLength
		}
		b = append(b, byte(AddrTypeDomain), byte(len(a.Name)))
		b = append(b, a.Name...)
	case a.IP.Is4():
		// An IPv4-mapped IPv6 address stays IPv6 on the wire, so that
		// EncodedLen and Type describe what is written.
		ip := a.IP.As4()
		b = append(b, byte(AddrTypeIPv4))
		b = append(b, ip[:]...)
	case a.IP.Is6():
		ip := a.IP.As16()
		b = append(b, byte(AddrTypeIPv6))
		b = append(b, ip[:]...)
	default:
		return b, ErrInvalidAddr
	}
	return append(b, byte(a.Port>>8), byte(a.Port)), nil
}

// ParseAddr parses an encoded address at the start of b and returns it with
// the number of octets it took.
func ParseAddr(b []byte) (Addr, int, error) {
	if len(b) < atypLen {
		return Addr{}, 0, ErrShort
	}
	var a Addr
	var n int
	switch AddrType(b[0]) {
	case AddrTypeIPv4:
		if len(b) < ipv4AddrLen {
			return Addr{}, 0, ErrShort
		}
		a.IP = netip.AddrFrom4([ipv4Len]byte(b[atypLen : atypLen+ipv4Len]))
		n = atypLen + ipv4Len
	case AddrTypeIPv6:
		if len(b) < ipv6AddrLen {
			return Addr{}, 0, ErrShort
		}
		a.IP = netip.AddrFrom16([ipv6Len]byte(b[atypLen : atypLen+ipv6Len]))
		n = atypLen + ipv6Len
	case AddrTypeDomain:
		if len(b) < domainHdrLen {
			return Addr{}, 0, ErrShort
		}
		l := int(b[atypLen])
		if l < domainMinBody {
			return Addr{}, 0, ErrNameLength
		}
		if len(b) < domainHdrLen+l+portLen {
			return Addr{}, 0, ErrShort
		}
		a.Name = string(b[domainHdrLen : domainHdrLen+l])
		n = domainHdrLen + l
	default:
		return Addr{}, 0, &AddrTypeError{Type: AddrType(b[0])}
	}
	a.Port = uint16(b[n])<<8 | uint16(b[n+1])
	return a, n + portLen, nil
}

// ReadAddr reads an encoded address from r. It reads exactly the octets of
// the address, so r may be an unbuffered stream. An EOF before its first
// octet is a clean io.EOF.
func ReadAddr(r io.Reader) (Addr, error) {
	var head [domainHdrLen]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return Addr{}, readErr(err)
	}
	return readAddrRest(r, head)
}

// readAddrRest reads the rest of an address whose first domainHdrLen
// octets (the type, and the name's length or the first octet of an IP)
// are read already, as head. The messages that end in an address read
// their header and head in one read, so that a request or a reply takes
// two reads, not three.
func readAddrRest(r io.Reader, head [domainHdrLen]byte) (Addr, error) {
	var buf [MaxAddrLen]byte
	copy(buf[:], head[:])
	var rest int
	switch AddrType(buf[0]) {
	case AddrTypeIPv4:
		rest = ipv4AddrLen - domainHdrLen
	case AddrTypeIPv6:
		rest = ipv6AddrLen - domainHdrLen
	case AddrTypeDomain:
		if buf[1] < domainMinBody {
			return Addr{}, ErrNameLength
		}
		rest = int(buf[1]) + portLen
	default:
		return Addr{}, &AddrTypeError{Type: AddrType(buf[0])}
	}
	if _, err := io.ReadFull(r, buf[domainHdrLen:domainHdrLen+rest]); err != nil {
		return Addr{}, readMoreErr(err)
	}
	a, _, err := ParseAddr(buf[:domainHdrLen+rest])
	return a, err
}

// readErr is for the first read of a message: an EOF before any octet is
// a peer that hung up between messages (io.EOF, as it came); one inside
// the read cut the message short.
func readErr(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %w", ErrShort, err)
	}
	return err
}

// readMoreErr is for every later read of a message: any EOF there cut the
// message short, so it becomes ErrShort wrapping io.ErrUnexpectedEOF.
func readMoreErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %w", ErrShort, io.ErrUnexpectedEOF)
	}
	return err
}
