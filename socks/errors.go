package socks

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"
)

// Reply is the REP field of a reply, RFC 1928 section 6. It is the one
// vocabulary for failures in tungate: socket errors map to a Reply
// (ReplyFromError), an upstream's Reply is kept as it came (ReplyError), and
// the TUN side turns a Reply into what the client's kernel expects.
type Reply byte

// Replies, RFC 1928 section 6.
const (
	ReplySucceeded            Reply = 0x00
	ReplyGeneralFailure       Reply = 0x01
	ReplyNotAllowed           Reply = 0x02
	ReplyNetworkUnreachable   Reply = 0x03
	ReplyHostUnreachable      Reply = 0x04
	ReplyConnectionRefused    Reply = 0x05
	ReplyTTLExpired           Reply = 0x06
	ReplyCommandNotSupported  Reply = 0x07
	ReplyAddrTypeNotSupported Reply = 0x08
)

func (r Reply) String() string {
	switch r {
	case ReplySucceeded:
		return "succeeded"
	case ReplyGeneralFailure:
		return "general SOCKS server failure"
	case ReplyNotAllowed:
		return "connection not allowed by ruleset"
	case ReplyNetworkUnreachable:
		return "network unreachable"
	case ReplyHostUnreachable:
		return "host unreachable"
	case ReplyConnectionRefused:
		return "connection refused"
	case ReplyTTLExpired:
		return "TTL expired"
	case ReplyCommandNotSupported:
		return "command not supported"
	case ReplyAddrTypeNotSupported:
		return "address type not supported"
	}
	return "unassigned reply " + strconv.Itoa(int(r))
}

// Sentinel errors of the codec and the protocol.
var (
	ErrShort            = errors.New("socks: message too short")
	ErrMalformed        = errors.New("socks: malformed message")
	ErrInvalidAddr      = errors.New("socks: invalid address")
	ErrNameLength       = errors.New("socks: domain name must be 1 to 255 octets")
	ErrCredentialLength = errors.New("socks: username and password must be 1 to 255 octets")
	ErrFragmented       = errors.New("socks: fragmented UDP datagram")
	ErrNoAcceptable     = errors.New("socks: no acceptable authentication method")
	ErrAuthFailed       = errors.New("socks: authentication failed")
	ErrServerClosed     = errors.New("socks: server closed")
)

// VersionError reports a VER octet other than the one expected.
type VersionError struct {
	Got byte
	Sub bool // in the RFC 1929 subnegotiation
}

func (e *VersionError) Error() string {
	if e.Sub {
		return "socks: unsupported username/password version " + strconv.Itoa(int(e.Got))
	}
	return "socks: unsupported version " + strconv.Itoa(int(e.Got))
}

// AddrTypeError reports an unknown ATYP.
type AddrTypeError struct{ Type AddrType }

func (e *AddrTypeError) Error() string {
	return "socks: unsupported address type " + strconv.Itoa(int(e.Type))
}

// Reply implements Replier: an unknown ATYP is answered with X'08'.
func (e *AddrTypeError) Reply() Reply { return ReplyAddrTypeNotSupported }

// ReplyError is a failure that carries the SOCKS5 reply code that describes
// it: one an upstream proxy sent, or one a local failure was translated to.
type ReplyError struct {
	Code Reply
	// Hop is the 1-based index of the upstream proxy that sent Code, or 0
	// when the failure is local.
	Hop int
	// Err is the underlying cause, if any.
	Err error
}

func (e *ReplyError) Error() string {
	s := "socks: " + e.Code.String()
	if e.Hop > 0 {
		s += " (from upstream hop " + strconv.Itoa(e.Hop) + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *ReplyError) Unwrap() error { return e.Err }

// Reply implements Replier.
func (e *ReplyError) Reply() Reply { return e.Code }

// Replier is implemented by errors that know their reply code.
type Replier interface {
	Reply() Reply
}

// ReplyFromError maps an error to the reply code a SOCKS5 server sends for
// it. A Replier in the chain wins; otherwise the socket error decides:
//
//	ECONNREFUSED, ECONNRESET             -> X'05' connection refused
//	EHOSTUNREACH, EHOSTDOWN              -> X'04' host unreachable
//	ENETUNREACH, ENETDOWN, EADDRNOTAVAIL -> X'03' network unreachable
//	timeout, ETIMEDOUT                   -> X'04' host unreachable (nothing answered)
//	DNS: no such host                    -> X'04' host unreachable
//	EACCES, EPERM                        -> X'02' not allowed by ruleset
//	anything else                        -> X'01' general failure
//
// A nil error maps to X'00'.
func ReplyFromError(err error) Reply {
	if err == nil {
		return ReplySucceeded
	}
	var r Replier
	if errors.As(err, &r) {
		return r.Reply()
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ECONNREFUSED, syscall.ECONNRESET:
			return ReplyConnectionRefused
		case syscall.EHOSTUNREACH, syscall.EHOSTDOWN:
			return ReplyHostUnreachable
		case syscall.ENETUNREACH, syscall.ENETDOWN, syscall.EADDRNOTAVAIL, syscall.EAFNOSUPPORT:
			return ReplyNetworkUnreachable
		case syscall.ETIMEDOUT:
			return ReplyHostUnreachable
		case syscall.EACCES, syscall.EPERM:
			return ReplyNotAllowed
		}
		return ReplyGeneralFailure
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsNotFound || dnsErr.IsTimeout {
			return ReplyHostUnreachable
		}
		return ReplyGeneralFailure
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return ReplyHostUnreachable
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ReplyHostUnreachable
	}
	return ReplyGeneralFailure
}

// AsReplyError returns err as a *ReplyError, translating it with
// ReplyFromError when it is not one already.
func AsReplyError(err error) *ReplyError {
	if err == nil {
		return nil
	}
	var re *ReplyError
	if errors.As(err, &re) {
		return re
	}
	return &ReplyError{Code: ReplyFromError(err), Err: err}
}
