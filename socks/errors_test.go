package socks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// dialErr wraps errno the way net.Dial returns it: *net.OpError around an
// *os.SyscallError around the syscall.Errno.
func dialErr(errno syscall.Errno) error {
	return &net.OpError{
		Op:   "dial",
		Net:  "tcp",
		Addr: &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 80},
		Err:  os.NewSyscallError("connect", errno),
	}
}

// TestReplyFromError checks the mapping of RFC 1928 section 6 reply codes.
func TestReplyFromError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Reply
	}{
		{"nil", nil, ReplySucceeded},

		// X'05' connection refused.
		{"ECONNREFUSED", syscall.ECONNREFUSED, ReplyConnectionRefused},
		{"ECONNREFUSED in SyscallError", os.NewSyscallError("connect", syscall.ECONNREFUSED), ReplyConnectionRefused},
		{"ECONNREFUSED as net.Dial returns it", dialErr(syscall.ECONNREFUSED), ReplyConnectionRefused},
		{"ECONNREFUSED wrapped by fmt", fmt.Errorf("upstream: %w", dialErr(syscall.ECONNREFUSED)), ReplyConnectionRefused},
		{"ECONNRESET", dialErr(syscall.ECONNRESET), ReplyConnectionRefused},

		// X'04' host unreachable.
		{"EHOSTUNREACH", syscall.EHOSTUNREACH, ReplyHostUnreachable},
		{"EHOSTUNREACH as net.Dial returns it", dialErr(syscall.EHOSTUNREACH), ReplyHostUnreachable},
		{"EHOSTDOWN", dialErr(syscall.EHOSTDOWN), ReplyHostUnreachable},
		{"ETIMEDOUT", syscall.ETIMEDOUT, ReplyHostUnreachable},
		{"ETIMEDOUT as net.Dial returns it", dialErr(syscall.ETIMEDOUT), ReplyHostUnreachable},
		{"context.DeadlineExceeded", context.DeadlineExceeded, ReplyHostUnreachable},
		{"context.DeadlineExceeded in OpError", &net.OpError{Op: "dial", Net: "tcp", Err: context.DeadlineExceeded}, ReplyHostUnreachable},
		{"os.ErrDeadlineExceeded", os.ErrDeadlineExceeded, ReplyHostUnreachable},
		{"os.ErrDeadlineExceeded in OpError", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}, ReplyHostUnreachable},
		{"DNS not found", &net.DNSError{Err: "no such host", Name: "nx.example", IsNotFound: true}, ReplyHostUnreachable},
		{"DNS not found in OpError", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "nx.example", IsNotFound: true}}, ReplyHostUnreachable},
		{"DNS timeout", &net.DNSError{Err: "i/o timeout", Name: "slow.example", IsTimeout: true}, ReplyHostUnreachable},

		// X'03' network unreachable.
		{"ENETUNREACH", syscall.ENETUNREACH, ReplyNetworkUnreachable},
		{"ENETUNREACH as net.Dial returns it", dialErr(syscall.ENETUNREACH), ReplyNetworkUnreachable},
		{"ENETDOWN", dialErr(syscall.ENETDOWN), ReplyNetworkUnreachable},
		{"EADDRNOTAVAIL", dialErr(syscall.EADDRNOTAVAIL), ReplyNetworkUnreachable},

		// X'02' connection not allowed by ruleset.
		{"EACCES", syscall.EACCES, ReplyNotAllowed},
		{"EACCES as net.Dial returns it", dialErr(syscall.EACCES), ReplyNotAllowed},
		{"EPERM", dialErr(syscall.EPERM), ReplyNotAllowed},

		// A Replier in the chain wins.
		{"ReplyError TTL expired from hop 2 wrapped", fmt.Errorf("chain: %w", &ReplyError{Code: ReplyTTLExpired, Hop: 2}), ReplyTTLExpired},
		{"ReplyError wins over its cause", &ReplyError{Code: ReplyNotAllowed, Err: syscall.ECONNREFUSED}, ReplyNotAllowed},
		{"ReplyError unassigned code kept", &ReplyError{Code: Reply(0x42), Hop: 1}, Reply(0x42)},
		{"AddrTypeError", &AddrTypeError{Type: 0x02}, ReplyAddrTypeNotSupported},
		{"AddrTypeError wrapped", fmt.Errorf("request: %w", &AddrTypeError{Type: 0x02}), ReplyAddrTypeNotSupported},

		// X'01' general failure.
		{"errors.New", errors.New("something broke"), ReplyGeneralFailure},
		{"io.EOF", io.EOF, ReplyGeneralFailure},
		{"unlisted errno EINVAL", dialErr(syscall.EINVAL), ReplyGeneralFailure},
		{"DNS server misbehaving", &net.DNSError{Err: "server misbehaving", Name: "x.example"}, ReplyGeneralFailure},
		{"ErrMalformed", ErrMalformed, ReplyGeneralFailure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ReplyFromError(tc.err); got != tc.want {
				t.Errorf("ReplyFromError(%v) = %#02x (%v), want %#02x (%v)", tc.err, byte(got), got, byte(tc.want), tc.want)
			}
		})
	}
}

// TestReplyFromErrorRealDial dials a port on 127.0.0.1 that nothing listens
// on and maps the error net.Dial really returns.
func TestReplyFromErrorRealDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("cannot listen on loopback: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()

	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		conn.Close()
		t.Skipf("something took %s between Close and Dial", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Logf("dial %s: %v (not ECONNREFUSED)", addr, err)
	}
	if got := ReplyFromError(err); got != ReplyConnectionRefused {
		t.Errorf("ReplyFromError(%v) = %v, want %v", err, got, ReplyConnectionRefused)
	}
}

func TestAsReplyError(t *testing.T) {
	re := &ReplyError{Code: ReplyTTLExpired, Hop: 2}
	tests := []struct {
		name     string
		err      error
		wantNil  bool
		wantSame *ReplyError // when set, the very pointer is returned
		wantCode Reply
	}{
		{name: "nil", err: nil, wantNil: true},
		{name: "ReplyError", err: re, wantSame: re, wantCode: ReplyTTLExpired},
		{name: "wrapped ReplyError", err: fmt.Errorf("x: %w", re), wantSame: re, wantCode: ReplyTTLExpired},
		{name: "dial error", err: dialErr(syscall.ECONNREFUSED), wantCode: ReplyConnectionRefused},
		{name: "plain error", err: errors.New("boom"), wantCode: ReplyGeneralFailure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := AsReplyError(tc.err)
			if tc.wantNil {
				if got != nil {
					t.Fatalf("AsReplyError(nil) = %v, want nil", got)
				}
				return
			}
			if got == nil {
				t.Fatalf("AsReplyError(%v) = nil", tc.err)
			}
			if tc.wantSame != nil && got != tc.wantSame {
				t.Errorf("AsReplyError returned a new *ReplyError, want the one in the chain")
			}
			if got.Code != tc.wantCode {
				t.Errorf("Code = %v, want %v", got.Code, tc.wantCode)
			}
			if tc.wantSame == nil && !errors.Is(got, tc.err) {
				t.Errorf("AsReplyError(%v) does not wrap its input", tc.err)
			}
		})
	}
}

func TestErrorStrings(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"VersionError", &VersionError{Got: 4}, "socks: unsupported version 4"},
		{"VersionError sub", &VersionError{Got: 5, Sub: true}, "socks: unsupported username/password version 5"},
		{"AddrTypeError", &AddrTypeError{Type: 2}, "socks: unsupported address type 2"},
		{"ReplyError local", &ReplyError{Code: ReplyConnectionRefused}, "socks: connection refused"},
		{"ReplyError hop", &ReplyError{Code: ReplyTTLExpired, Hop: 2}, "socks: TTL expired (from upstream hop 2)"},
		{"ReplyError cause", &ReplyError{Code: ReplyGeneralFailure, Err: errors.New("boom")}, "socks: general SOCKS server failure: boom"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReplyString(t *testing.T) {
	tests := []struct {
		r    Reply
		want string
	}{
		{ReplySucceeded, "succeeded"},
		{ReplyGeneralFailure, "general SOCKS server failure"},
		{ReplyNotAllowed, "connection not allowed by ruleset"},
		{ReplyNetworkUnreachable, "network unreachable"},
		{ReplyHostUnreachable, "host unreachable"},
		{ReplyConnectionRefused, "connection refused"},
		{ReplyTTLExpired, "TTL expired"},
		{ReplyCommandNotSupported, "command not supported"},
		{ReplyAddrTypeNotSupported, "address type not supported"},
		{0x09, "unassigned reply 9"},
		{0xff, "unassigned reply 255"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := tc.r.String(); got != tc.want {
				t.Errorf("Reply(%#02x).String() = %q, want %q", byte(tc.r), got, tc.want)
			}
		})
	}
}
