package socks

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// ---------------------------------------------------------------------------
// Golden messages.

// RFC 1928 section 3, the version identifier/method selection message:
//
//	+----+----------+----------+
//	|VER | NMETHODS | METHODS  |
//	+----+----------+----------+
//	| 1  |    1     | 1 to 255 |
//	+----+----------+----------+
type greetingVector struct {
	name string
	wire string
	g    Greeting
}

// allMethodsHex is "00 01 02 ... fe": 255 method octets.
var allMethodsHex, allMethods = func() (string, []Method) {
	var sb strings.Builder
	var ms []Method
	for i := range 255 {
		fmt.Fprintf(&sb, "%02x", i)
		ms = append(ms, Method(i))
	}
	return sb.String(), ms
}()

var greetingVectors = []greetingVector{
	{"no auth", "05 01 00", Greeting{Methods: []Method{MethodNoAuth}}},
	{"user/pass", "05 01 02", Greeting{Methods: []Method{MethodUserPass}}},
	{"no auth and user/pass", "05 02 00 02", Greeting{Methods: []Method{MethodNoAuth, MethodUserPass}}},
	{"gssapi user/pass ff", "05 03 01 02 ff", Greeting{Methods: []Method{MethodGSSAPI, MethodUserPass, MethodNoAcceptable}}},
	{"private method 80", "05 01 80", Greeting{Methods: []Method{0x80}}},
	{"255 methods", "05 ff" + allMethodsHex, Greeting{Methods: allMethods}},
}

// RFC 1928 section 3, the METHOD selection message:
//
//	+----+--------+
//	|VER | METHOD |
//	+----+--------+
//	| 1  |   1    |
//	+----+--------+
type methodSelVector struct {
	name string
	wire string
	m    Method
}

var methodSelVectors = []methodSelVector{
	{"no auth", "05 00", MethodNoAuth},
	{"gssapi", "05 01", MethodGSSAPI},
	{"user/pass", "05 02", MethodUserPass},
	{"no acceptable", "05 ff", MethodNoAcceptable},
}

// RFC 1928 section 4, requests:
//
//	+----+-----+-------+------+----------+----------+
//	|VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
//	+----+-----+-------+------+----------+----------+
//	| 1  |  1  | X'00' |  1   | Variable |    2     |
//	+----+-----+-------+------+----------+----------+
type requestVector struct {
	name string
	wire string
	req  Request
}

var requestVectors = []requestVector{
	{"connect ipv4", "05 01 00 01 c6 33 64 01 00 50",
		Request{CmdConnect, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}}},
	{"connect ipv6", "05 01 00 04 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 01 bb",
		Request{CmdConnect, Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 443}}},
	{"connect domain", "05 01 00 03 0b 65 78 61 6d 70 6c 65 2e 63 6f 6d 01 bb",
		Request{CmdConnect, Addr{Name: "example.com", Port: 443}}},
	{"connect 255-octet domain", "05 01 00 03 ff" + hex255 + "00 50",
		Request{CmdConnect, Addr{Name: name255, Port: 80}}},
	{"connect port 65535", "05 01 00 01 0a 00 00 01 ff ff",
		Request{CmdConnect, Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 65535}}},
	{"bind ipv4", "05 02 00 01 c0 00 02 01 04 38",
		Request{CmdBind, Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080}}},
	{"bind ipv6", "05 02 00 04 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 1f 90",
		Request{CmdBind, Addr{IP: netip.MustParseAddr("::1"), Port: 8080}}},
	{"bind domain", "05 02 00 03 03 66 6f 6f 00 15",
		Request{CmdBind, Addr{Name: "foo", Port: 21}}},
	// Section 4/7: a client that does not know its UDP source sends zeros.
	{"udp associate ipv4 zero", "05 03 00 01 00 00 00 00 00 00",
		Request{CmdUDPAssociate, Addr{IP: netip.MustParseAddr("0.0.0.0"), Port: 0}}},
	{"udp associate ipv6", "05 03 00 04 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 13 88",
		Request{CmdUDPAssociate, Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 5000}}},
	{"udp associate domain", "05 03 00 03 09 6c 6f 63 61 6c 68 6f 73 74 13 88",
		Request{CmdUDPAssociate, Addr{Name: "localhost", Port: 5000}}},
	// An unknown CMD parses; the server answers it with X'07'.
	{"unknown command 09", "05 09 00 01 c6 33 64 01 00 50",
		Request{Command(0x09), Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}}},
}

// RFC 1928 section 6, replies:
//
//	+----+-----+-------+------+----------+----------+
//	|VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
//	+----+-----+-------+------+----------+----------+
//	| 1  |  1  | X'00' |  1   | Variable |    2     |
//	+----+-----+-------+------+----------+----------+
type responseVector struct {
	name string
	wire string
	resp Response
}

var (
	zeroBind = Addr{IP: netip.MustParseAddr("0.0.0.0"), Port: 0}
	v4Bind   = Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080}
)

var responseVectors = []responseVector{
	{"succeeded ipv4", "05 00 00 01 c0 00 02 01 04 38", Response{ReplySucceeded, v4Bind}},
	{"succeeded ipv6", "05 00 00 04 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 04 38",
		Response{ReplySucceeded, Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 1080}}},
	{"succeeded domain", "05 00 00 03 0d 70 72 6f 78 79 2e 65 78 61 6d 70 6c 65 04 38",
		Response{ReplySucceeded, Addr{Name: "proxy.example", Port: 1080}}},
	{"general failure", "05 01 00 01 00 00 00 00 00 00", Response{ReplyGeneralFailure, zeroBind}},
	{"not allowed", "05 02 00 01 00 00 00 00 00 00", Response{ReplyNotAllowed, zeroBind}},
	{"network unreachable", "05 03 00 01 00 00 00 00 00 00", Response{ReplyNetworkUnreachable, zeroBind}},
	{"host unreachable", "05 04 00 01 00 00 00 00 00 00", Response{ReplyHostUnreachable, zeroBind}},
	{"connection refused", "05 05 00 01 00 00 00 00 00 00", Response{ReplyConnectionRefused, zeroBind}},
	{"ttl expired", "05 06 00 01 00 00 00 00 00 00", Response{ReplyTTLExpired, zeroBind}},
	{"command not supported", "05 07 00 01 00 00 00 00 00 00", Response{ReplyCommandNotSupported, zeroBind}},
	{"addr type not supported", "05 08 00 01 00 00 00 00 00 00", Response{ReplyAddrTypeNotSupported, zeroBind}},
	// X'09' to X'FF' are unassigned; they still parse.
	{"unassigned 09", "05 09 00 01 c0 00 02 01 04 38", Response{Reply(0x09), v4Bind}},
}

// RFC 1929 section 2, the username/password request:
//
//	+----+------+----------+------+----------+
//	|VER | ULEN |  UNAME   | PLEN |  PASSWD  |
//	+----+------+----------+------+----------+
//	| 1  |  1   | 1 to 255 |  1   | 1 to 255 |
//	+----+------+----------+------+----------+
type userPassVector struct {
	name string
	wire string
	up   UserPass
}

var userPassVectors = []userPassVector{
	{"alice", "01 05 61 6c 69 63 65 06 73 33 63 72 65 74", UserPass{"alice", "s3cret"}},
	{"1 octet each", "01 01 75 01 70", UserPass{"u", "p"}},
	{"binary password", "01 04 72 6f 6f 74 03 00 ff 0a", UserPass{"root", "\x00\xff\n"}},
	{"255 octets each", "01 ff" + hex255 + "ff" + strings.Repeat("62", 255),
		UserPass{name255, strings.Repeat("b", 255)}},
}

// RFC 1929 section 2, the server's response:
//
//	+----+--------+
//	|VER | STATUS |
//	+----+--------+
//	| 1  |   1    |
//	+----+--------+
//
// X'00' is success; any other STATUS is failure.
var statusVectors = []struct {
	name   string
	wire   string
	status byte
}{
	{"success", "01 00", UserPassSuccess},
	{"failure", "01 01", UserPassFailure},
	{"failure ff", "01 ff", 0xff},
}

// RFC 1928 section 7, the UDP request header:
//
//	+----+------+------+----------+----------+----------+
//	|RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//	+----+------+------+----------+----------+----------+
//	| 2  |  1   |  1   | Variable |    2     | Variable |
//	+----+------+------+----------+----------+----------+
type udpVector struct {
	name string
	wire string
	h    UDPHeader
}

var udpVectors = []udpVector{
	{"ipv4", "00 00 00 01 c6 33 64 01 00 35",
		UDPHeader{Addr: Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 53}}},
	{"ipv6", "00 00 00 04 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 00 35",
		UDPHeader{Addr: Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 53}}},
	{"domain", "00 00 00 03 0b 65 78 61 6d 70 6c 65 2e 63 6f 6d 00 35",
		UDPHeader{Addr: Addr{Name: "example.com", Port: 53}}},
	{"255-octet domain", "00 00 00 03 ff" + hex255 + "ff ff",
		UDPHeader{Addr: Addr{Name: name255, Port: 65535}}},
	{"ipv4 zero", "00 00 00 01 00 00 00 00 00 00",
		UDPHeader{Addr: Addr{IP: netip.MustParseAddr("0.0.0.0"), Port: 0}}},
}

// trailer is appended to golden messages given to Parse*: the octets after a
// message (the next message, or a datagram's DATA) are not part of it.
var trailer = []byte{0xde, 0xad, 0xbe, 0xef}

func withTrailer(b []byte) []byte { return append(append([]byte{}, b...), trailer...) }

// ---------------------------------------------------------------------------
// Greeting, RFC 1928 section 3.

func TestGreetingGolden(t *testing.T) {
	for _, tc := range greetingVectors {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			b, err := AppendGreeting([]byte{}, tc.g)
			if err != nil || !bytes.Equal(b, wire) {
				t.Errorf("AppendGreeting = %x, %v; want %x", b, err, wire)
			}
			g, n, err := ParseGreeting(withTrailer(wire))
			if err != nil || !slices.Equal(g.Methods, tc.g.Methods) || n != len(wire) {
				t.Errorf("ParseGreeting = %v, %d, %v; want %v, %d", g, n, err, tc.g, len(wire))
			}
			g, err = ReadGreeting(bytes.NewReader(wire))
			if err != nil || !slices.Equal(g.Methods, tc.g.Methods) {
				t.Errorf("ReadGreeting = %v, %v; want %v", g, err, tc.g)
			}
			g, err = ReadGreeting(iotest.OneByteReader(bytes.NewReader(wire)))
			if err != nil || !slices.Equal(g.Methods, tc.g.Methods) {
				t.Errorf("ReadGreeting(one byte at a time) = %v, %v; want %v", g, err, tc.g)
			}
		})
	}
}

func TestGreetingHas(t *testing.T) {
	g := Greeting{Methods: []Method{MethodNoAuth, MethodUserPass}}
	tests := []struct {
		m    Method
		want bool
	}{
		{MethodNoAuth, true},
		{MethodUserPass, true},
		{MethodGSSAPI, false},
		{MethodNoAcceptable, false},
	}
	for _, tc := range tests {
		t.Run(tc.m.String(), func(t *testing.T) {
			if got := g.Has(tc.m); got != tc.want {
				t.Errorf("Has(%v) = %v, want %v", tc.m, got, tc.want)
			}
		})
	}
}

func TestGreetingCorrupted(t *testing.T) {
	parse := func(b []byte) error { _, _, err := ParseGreeting(b); return err }
	read := func(r io.Reader) error { _, err := ReadGreeting(r); return err }

	t.Run("truncated", func(t *testing.T) {
		for _, tc := range greetingVectors {
			t.Run(tc.name, func(t *testing.T) { checkTruncations(t, mustHex(tc.wire), parse, read) })
		}
	})

	tests := []struct {
		name    string
		wire    string
		version int // >= 0: want *VersionError{Got: version}
		err     error
	}{
		{"socks4 version", "04 01 00", 4, nil},
		{"version 0", "00 01 00", 0, nil},
		{"version ff", "ff 01 00", 0xff, nil},
		// RFC 1928 section 3: NMETHODS is 1 to 255.
		{"nmethods 0", "05 00", -1, ErrMalformed},
		{"nmethods 0 with trailing octets", "05 00 00 02", -1, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			checkErr(t, "ParseGreeting", wire, parse(wire), tc.version, false, tc.err)
			checkErr(t, "ReadGreeting", wire, read(bytes.NewReader(wire)), tc.version, false, tc.err)
		})
	}

	appendTests := []struct {
		name    string
		methods []Method
	}{
		{"no methods", nil},
		{"256 methods", make([]Method, 256)},
	}
	for _, tc := range appendTests {
		t.Run("AppendGreeting "+tc.name, func(t *testing.T) {
			b, err := AppendGreeting([]byte{0xaa}, Greeting{Methods: tc.methods})
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("err = %v, want ErrMalformed", err)
			}
			if !bytes.Equal(b, []byte{0xaa}) {
				t.Errorf("returned %x on error, want aa", b)
			}
		})
	}
}

// checkErr checks err against either a *VersionError (version >= 0, with the
// given Sub) or a sentinel.
func checkErr(t *testing.T, fn string, in []byte, err error, version int, sub bool, want error) {
	t.Helper()
	if version >= 0 {
		var ve *VersionError
		if !errors.As(err, &ve) || int(ve.Got) != version || ve.Sub != sub {
			t.Errorf("%s(%x): err = %#v, want *VersionError{Got: %d, Sub: %v}", fn, in, err, version, sub)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Errorf("%s(%x): err = %v, want %v", fn, in, err, want)
	}
}

// ---------------------------------------------------------------------------
// Method selection, RFC 1928 section 3.

func TestMethodSelectionGolden(t *testing.T) {
	for _, tc := range methodSelVectors {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			if b := AppendMethodSelection(nil, tc.m); !bytes.Equal(b, wire) {
				t.Errorf("AppendMethodSelection = %x, want %x", b, wire)
			}
			if m, err := ParseMethodSelection(withTrailer(wire)); err != nil || m != tc.m {
				t.Errorf("ParseMethodSelection = %v, %v; want %v", m, err, tc.m)
			}
			if m, err := ReadMethodSelection(bytes.NewReader(wire)); err != nil || m != tc.m {
				t.Errorf("ReadMethodSelection = %v, %v; want %v", m, err, tc.m)
			}
		})
	}
}

func TestMethodSelectionCorrupted(t *testing.T) {
	parse := func(b []byte) error { _, err := ParseMethodSelection(b); return err }
	read := func(r io.Reader) error { _, err := ReadMethodSelection(r); return err }

	t.Run("truncated", func(t *testing.T) {
		for _, tc := range methodSelVectors {
			t.Run(tc.name, func(t *testing.T) { checkTruncations(t, mustHex(tc.wire), parse, read) })
		}
	})
	tests := []struct {
		name    string
		wire    string
		version int
	}{
		{"socks4 version", "04 00", 4},
		// The RFC 1929 VER where the RFC 1928 one belongs.
		{"userpass version", "01 00", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			checkErr(t, "ParseMethodSelection", wire, parse(wire), tc.version, false, nil)
			checkErr(t, "ReadMethodSelection", wire, read(bytes.NewReader(wire)), tc.version, false, nil)
		})
	}
}

// ---------------------------------------------------------------------------
// Requests, RFC 1928 section 4.

func TestRequestGolden(t *testing.T) {
	for _, tc := range requestVectors {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			b, err := AppendRequest(nil, tc.req)
			if err != nil || !bytes.Equal(b, wire) {
				t.Errorf("AppendRequest = %x, %v; want %x", b, err, wire)
			}
			r, n, err := ParseRequest(withTrailer(wire))
			if err != nil || r != tc.req || n != len(wire) {
				t.Errorf("ParseRequest = %+v, %d, %v; want %+v, %d", r, n, err, tc.req, len(wire))
			}
			r, err = ReadRequest(bytes.NewReader(wire))
			if err != nil || r != tc.req {
				t.Errorf("ReadRequest = %+v, %v; want %+v", r, err, tc.req)
			}
			r, err = ReadRequest(iotest.OneByteReader(bytes.NewReader(wire)))
			if err != nil || r != tc.req {
				t.Errorf("ReadRequest(one byte at a time) = %+v, %v; want %+v", r, err, tc.req)
			}
		})
	}
}

func TestRequestCorrupted(t *testing.T) {
	parse := func(b []byte) error { _, _, err := ParseRequest(b); return err }
	read := func(r io.Reader) error { _, err := ReadRequest(r); return err }

	t.Run("truncated", func(t *testing.T) {
		for _, tc := range requestVectors {
			t.Run(tc.name, func(t *testing.T) { checkTruncations(t, mustHex(tc.wire), parse, read) })
		}
	})

	tests := []struct {
		name    string
		wire    string
		version int
		err     error
		atyp    int // >= 0: want *AddrTypeError{Type: atyp}
	}{
		// A SOCKS4 CONNECT to 198.51.100.1:80.
		{"socks4 request", "04 01 00 50 c6 33 64 01 00", 4, nil, -1},
		{"version 0", "00 01 00 01 c6 33 64 01 00 50", 0, nil, -1},
		{"atyp 00", "05 01 00 00 c6 33 64 01 00 50", -1, nil, 0x00},
		{"atyp 02", "05 01 00 02 c6 33 64 01 00 50", -1, nil, 0x02},
		{"atyp 05", "05 01 00 05 c6 33 64 01 00 50", -1, nil, 0x05},
		{"zero-length domain", "05 01 00 03 00 00 50", -1, ErrNameLength, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			for _, step := range []struct {
				fn  string
				err error
			}{
				{"ParseRequest", parse(wire)},
				{"ReadRequest", read(bytes.NewReader(wire))},
			} {
				if tc.atyp >= 0 {
					checkAddrTypeErr(t, step.fn, wire, step.err, AddrType(tc.atyp))
					continue
				}
				checkErr(t, step.fn, wire, step.err, tc.version, false, tc.err)
			}
		})
	}

	appendTests := []struct {
		name string
		req  Request
		want error
	}{
		{"256-octet name", Request{CmdConnect, Addr{Name: name256, Port: 80}}, ErrNameLength},
		{"zero Addr", Request{CmdConnect, Addr{}}, ErrInvalidAddr},
	}
	for _, tc := range appendTests {
		t.Run("AppendRequest "+tc.name, func(t *testing.T) {
			if _, err := AppendRequest(nil, tc.req); !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func checkAddrTypeErr(t *testing.T, fn string, in []byte, err error, typ AddrType) {
	t.Helper()
	var ate *AddrTypeError
	if !errors.As(err, &ate) || ate.Type != typ {
		t.Errorf("%s(%x): err = %v, want *AddrTypeError{%d}", fn, in, err, typ)
		return
	}
	if r := ReplyFromError(err); r != ReplyAddrTypeNotSupported {
		t.Errorf("ReplyFromError(%s error) = %v, want %v", fn, r, ReplyAddrTypeNotSupported)
	}
}

// ---------------------------------------------------------------------------
// Replies, RFC 1928 section 6.

func TestResponseGolden(t *testing.T) {
	for _, tc := range responseVectors {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			if b := AppendResponse(nil, tc.resp); !bytes.Equal(b, wire) {
				t.Errorf("AppendResponse = %x, want %x", b, wire)
			}
			r, n, err := ParseResponse(withTrailer(wire))
			if err != nil || r != tc.resp || n != len(wire) {
				t.Errorf("ParseResponse = %+v, %d, %v; want %+v, %d", r, n, err, tc.resp, len(wire))
			}
			r, err = ReadResponse(bytes.NewReader(wire))
			if err != nil || r != tc.resp {
				t.Errorf("ReadResponse = %+v, %v; want %+v", r, err, tc.resp)
			}
			r, err = ReadResponse(iotest.OneByteReader(bytes.NewReader(wire)))
			if err != nil || r != tc.resp {
				t.Errorf("ReadResponse(one byte at a time) = %+v, %v; want %+v", r, err, tc.resp)
			}
		})
	}
}

// TestResponseInvalidBind: a reply without a usable BND.ADDR is sent with
// ATYP X'01' and BND.ADDR/BND.PORT all zero.
func TestResponseInvalidBind(t *testing.T) {
	tests := []struct {
		name string
		resp Response
		wire string
	}{
		{"zero bind", Response{Reply: ReplyGeneralFailure}, "05 01 00 01 00 00 00 00 00 00"},
		{"zero bind succeeded", Response{Reply: ReplySucceeded}, "05 00 00 01 00 00 00 00 00 00"},
		{"bind with port but no ip", Response{Reply: ReplyHostUnreachable, Bind: Addr{Port: 1080}},
			"05 04 00 01 00 00 00 00 00 00"},
		{"256-octet name", Response{Reply: ReplyConnectionRefused, Bind: Addr{Name: name256, Port: 1080}},
			"05 05 00 01 00 00 00 00 00 00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			if b := AppendResponse([]byte{}, tc.resp); !bytes.Equal(b, wire) {
				t.Errorf("AppendResponse = %x, want %x", b, wire)
			}
		})
	}
}

func TestResponseCorrupted(t *testing.T) {
	parse := func(b []byte) error { _, _, err := ParseResponse(b); return err }
	read := func(r io.Reader) error { _, err := ReadResponse(r); return err }

	t.Run("truncated", func(t *testing.T) {
		for _, tc := range responseVectors {
			t.Run(tc.name, func(t *testing.T) { checkTruncations(t, mustHex(tc.wire), parse, read) })
		}
	})

	tests := []struct {
		name    string
		wire    string
		version int
		err     error
		atyp    int
	}{
		// A SOCKS4 reply: VN 0, CD 90 (granted).
		{"socks4 reply", "00 5a 00 50 c6 33 64 01", 0, nil, -1},
		{"version 4", "04 00 00 01 c0 00 02 01 04 38", 4, nil, -1},
		{"atyp 00", "05 00 00 00 c0 00 02 01 04 38", -1, nil, 0x00},
		{"atyp ff", "05 00 00 ff c0 00 02 01 04 38", -1, nil, 0xff},
		{"zero-length domain", "05 00 00 03 00 04 38", -1, ErrNameLength, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			for _, step := range []struct {
				fn  string
				err error
			}{
				{"ParseResponse", parse(wire)},
				{"ReadResponse", read(bytes.NewReader(wire))},
			} {
				if tc.atyp >= 0 {
					checkAddrTypeErr(t, step.fn, wire, step.err, AddrType(tc.atyp))
					continue
				}
				checkErr(t, step.fn, wire, step.err, tc.version, false, tc.err)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Username/password, RFC 1929 section 2.

func TestUserPassGolden(t *testing.T) {
	for _, tc := range userPassVectors {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			b, err := AppendUserPass(nil, tc.up)
			if err != nil || !bytes.Equal(b, wire) {
				t.Errorf("AppendUserPass = %x, %v; want %x", b, err, wire)
			}
			u, n, err := ParseUserPass(withTrailer(wire))
			if err != nil || u != tc.up || n != len(wire) {
				t.Errorf("ParseUserPass = %q, %d, %v; want %q, %d", u, n, err, tc.up, len(wire))
			}
			u, err = ReadUserPass(bytes.NewReader(wire))
			if err != nil || u != tc.up {
				t.Errorf("ReadUserPass = %q, %v; want %q", u, err, tc.up)
			}
			u, err = ReadUserPass(iotest.OneByteReader(bytes.NewReader(wire)))
			if err != nil || u != tc.up {
				t.Errorf("ReadUserPass(one byte at a time) = %q, %v; want %q", u, err, tc.up)
			}
		})
	}
}

func TestUserPassCorrupted(t *testing.T) {
	parse := func(b []byte) error { _, _, err := ParseUserPass(b); return err }
	read := func(r io.Reader) error { _, err := ReadUserPass(r); return err }

	t.Run("truncated", func(t *testing.T) {
		for _, tc := range userPassVectors {
			t.Run(tc.name, func(t *testing.T) { checkTruncations(t, mustHex(tc.wire), parse, read) })
		}
	})

	tests := []struct {
		name    string
		wire    string
		version int // RFC 1929 VER errors have Sub set
		err     error
	}{
		// The RFC 1928 VER where the RFC 1929 one belongs.
		{"socks5 version", "05 05 61 6c 69 63 65 06 73 33 63 72 65 74", 5, nil},
		{"version 0", "00 01 75 01 70", 0, nil},
		// RFC 1929 section 2: UNAME and PASSWD are 1 to 255 octets.
		{"empty username", "01 00 06 73 33 63 72 65 74", -1, ErrCredentialLength},
		{"empty password", "01 05 61 6c 69 63 65 00", -1, ErrCredentialLength},
		{"both empty", "01 00 00", -1, ErrCredentialLength},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			checkErr(t, "ParseUserPass", wire, parse(wire), tc.version, true, tc.err)
			checkErr(t, "ReadUserPass", wire, read(bytes.NewReader(wire)), tc.version, true, tc.err)
		})
	}

	appendTests := []struct {
		name string
		up   UserPass
	}{
		{"empty username", UserPass{"", "secret"}},
		{"empty password", UserPass{"alice", ""}},
		{"both empty", UserPass{}},
		{"256-octet username", UserPass{name256, "p"}},
		{"256-octet password", UserPass{"u", name256}},
	}
	for _, tc := range appendTests {
		t.Run("AppendUserPass "+tc.name, func(t *testing.T) {
			b, err := AppendUserPass([]byte{0xaa}, tc.up)
			if !errors.Is(err, ErrCredentialLength) {
				t.Errorf("err = %v, want ErrCredentialLength", err)
			}
			if !bytes.Equal(b, []byte{0xaa}) {
				t.Errorf("returned %x on error, want aa", b)
			}
		})
	}
}

func TestUserPassStatus(t *testing.T) {
	read := func(r io.Reader) error { _, err := ReadUserPassStatus(r); return err }
	for _, tc := range statusVectors {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			if b := AppendUserPassStatus(nil, tc.status); !bytes.Equal(b, wire) {
				t.Errorf("AppendUserPassStatus = %x, want %x", b, wire)
			}
			if s, err := ReadUserPassStatus(bytes.NewReader(wire)); err != nil || s != tc.status {
				t.Errorf("ReadUserPassStatus = %#x, %v; want %#x", s, err, tc.status)
			}
			// There is no ParseUserPassStatus: only the Read side.
			checkTruncations(t, wire, nil, read)
		})
	}
	t.Run("socks5 version", func(t *testing.T) {
		wire := mustHex("05 00")
		checkErr(t, "ReadUserPassStatus", wire, read(bytes.NewReader(wire)), 5, true, nil)
	})
}

// ---------------------------------------------------------------------------
// UDP request header, RFC 1928 section 7.

func TestUDPHeaderGolden(t *testing.T) {
	payload := []byte("DATA")
	for _, tc := range udpVectors {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			b, err := AppendUDPHeader(nil, tc.h)
			if err != nil || !bytes.Equal(b, wire) {
				t.Errorf("AppendUDPHeader = %x, %v; want %x", b, err, wire)
			}
			dgram := append(append([]byte{}, wire...), payload...)
			h, n, err := ParseUDPHeader(dgram)
			if err != nil || h != tc.h || n != len(wire) {
				t.Errorf("ParseUDPHeader = %+v, %d, %v; want %+v, %d", h, n, err, tc.h, len(wire))
			}
			if err == nil && !bytes.Equal(dgram[n:], payload) {
				t.Errorf("payload = %q, want %q", dgram[n:], payload)
			}
		})
	}
}

func TestUDPHeaderCorrupted(t *testing.T) {
	parse := func(b []byte) error { _, _, err := ParseUDPHeader(b); return err }

	t.Run("truncated", func(t *testing.T) {
		for _, tc := range udpVectors {
			t.Run(tc.name, func(t *testing.T) { checkTruncations(t, mustHex(tc.wire), parse, nil) })
		}
	})

	tests := []struct {
		name string
		wire string
		err  error
		frag byte
		atyp int
	}{
		// Section 7: fragments are not supported and are dropped.
		{"frag 01", "00 00 01 01 c6 33 64 01 00 35", ErrFragmented, 0x01, -1},
		{"frag 7f", "00 00 7f 01 c6 33 64 01 00 35", ErrFragmented, 0x7f, -1},
		{"frag 81 end of sequence", "00 00 81 01 c6 33 64 01 00 35", ErrFragmented, 0x81, -1},
		// Section 7: RSV is X'0000'.
		{"rsv 0001", "00 01 00 01 c6 33 64 01 00 35", ErrMalformed, 0, -1},
		{"rsv 0100", "01 00 00 01 c6 33 64 01 00 35", ErrMalformed, 0, -1},
		{"rsv ffff", "ff ff 00 01 c6 33 64 01 00 35", ErrMalformed, 0, -1},
		{"rsv 0001 short", "00 01 00", ErrMalformed, 0, -1},
		{"atyp 02", "00 00 00 02 c6 33 64 01 00 35", nil, 0, 0x02},
		{"zero-length domain", "00 00 00 03 00 00 35", ErrNameLength, 0, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			h, _, err := ParseUDPHeader(wire)
			if tc.atyp >= 0 {
				checkAddrTypeErr(t, "ParseUDPHeader", wire, err, AddrType(tc.atyp))
				return
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("ParseUDPHeader(%x): err = %v, want %v", wire, err, tc.err)
			}
			if tc.err == ErrFragmented && h.Frag != tc.frag {
				t.Errorf("ParseUDPHeader(%x): Frag = %#x, want %#x", wire, h.Frag, tc.frag)
			}
		})
	}

	appendTests := []struct {
		name string
		h    UDPHeader
		want error
	}{
		{"256-octet name", UDPHeader{Addr: Addr{Name: name256, Port: 53}}, ErrNameLength},
		{"zero Addr", UDPHeader{}, ErrInvalidAddr},
	}
	for _, tc := range appendTests {
		t.Run("AppendUDPHeader "+tc.name, func(t *testing.T) {
			if _, err := AppendUDPHeader(nil, tc.h); !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestAppendErrorKeepsBuffer: like AppendAddr, AppendGreeting and
// AppendUserPass, an Append* that fails returns the buffer it was given, not
// one with half a message appended.
func TestAppendErrorKeepsBuffer(t *testing.T) {
	in := []byte{0xaa}
	tests := []struct {
		name string
		fn   func() ([]byte, error)
	}{
		{"AppendAddr", func() ([]byte, error) { return AppendAddr(in, Addr{}) }},
		{"AppendGreeting", func() ([]byte, error) { return AppendGreeting(in, Greeting{}) }},
		{"AppendUserPass", func() ([]byte, error) { return AppendUserPass(in, UserPass{}) }},
		{"AppendRequest", func() ([]byte, error) { return AppendRequest(in, Request{Cmd: CmdConnect}) }},
		{"AppendUDPHeader", func() ([]byte, error) { return AppendUDPHeader(in, UDPHeader{}) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.fn()
			if err == nil {
				t.Fatalf("no error")
			}
			if !bytes.Equal(b, []byte{0xaa}) {
				t.Errorf("returned %x on error, want the input aa unchanged", b)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Streams: each Read* takes exactly one message's octets.

type streamCase[T any] struct {
	name string
	wire []byte
	want T
}

// checkReadStream reads every message followed by the next one from a single
// stream, and checks that the first read leaves exactly the second message.
func checkReadStream[T any](t *testing.T, cases []streamCase[T], read func(io.Reader) (T, error), eq func(a, b T) bool) {
	t.Helper()
	for i, first := range cases {
		second := cases[(i+1)%len(cases)]
		t.Run(first.name+" then "+second.name, func(t *testing.T) {
			stream := append(append([]byte{}, first.wire...), second.wire...)
			for _, mode := range []string{"bytes.Reader", "one byte at a time"} {
				br := bytes.NewReader(stream)
				var r io.Reader = br
				if mode != "bytes.Reader" {
					r = iotest.OneByteReader(br)
				}
				got, err := read(r)
				if err != nil || !eq(got, first.want) {
					t.Fatalf("%s: first read = %+v, %v; want %+v", mode, got, err, first.want)
				}
				if br.Len() != len(second.wire) {
					t.Fatalf("%s: first read left %d octets, want %d", mode, br.Len(), len(second.wire))
				}
				got, err = read(r)
				if err != nil || !eq(got, second.want) {
					t.Fatalf("%s: second read = %+v, %v; want %+v", mode, got, err, second.want)
				}
				if _, err := read(r); err != io.EOF {
					t.Errorf("%s: third read: err = %v, want io.EOF", mode, err)
				}
			}
		})
	}
}

func eqComparable[T comparable](a, b T) bool { return a == b }

func TestReadStream(t *testing.T) {
	t.Run("greeting", func(t *testing.T) {
		var cases []streamCase[Greeting]
		for _, v := range greetingVectors {
			cases = append(cases, streamCase[Greeting]{v.name, mustHex(v.wire), v.g})
		}
		checkReadStream(t, cases, ReadGreeting, func(a, b Greeting) bool { return slices.Equal(a.Methods, b.Methods) })
	})
	t.Run("method selection", func(t *testing.T) {
		var cases []streamCase[Method]
		for _, v := range methodSelVectors {
			cases = append(cases, streamCase[Method]{v.name, mustHex(v.wire), v.m})
		}
		checkReadStream(t, cases, ReadMethodSelection, eqComparable[Method])
	})
	t.Run("request", func(t *testing.T) {
		var cases []streamCase[Request]
		for _, v := range requestVectors {
			cases = append(cases, streamCase[Request]{v.name, mustHex(v.wire), v.req})
		}
		checkReadStream(t, cases, ReadRequest, eqComparable[Request])
	})
	t.Run("response", func(t *testing.T) {
		var cases []streamCase[Response]
		for _, v := range responseVectors {
			cases = append(cases, streamCase[Response]{v.name, mustHex(v.wire), v.resp})
		}
		checkReadStream(t, cases, ReadResponse, eqComparable[Response])
	})
	t.Run("userpass", func(t *testing.T) {
		var cases []streamCase[UserPass]
		for _, v := range userPassVectors {
			cases = append(cases, streamCase[UserPass]{v.name, mustHex(v.wire), v.up})
		}
		checkReadStream(t, cases, ReadUserPass, eqComparable[UserPass])
	})
	t.Run("userpass status", func(t *testing.T) {
		var cases []streamCase[byte]
		for _, v := range statusVectors {
			cases = append(cases, streamCase[byte]{v.name, mustHex(v.wire), v.status})
		}
		checkReadStream(t, cases, ReadUserPassStatus, eqComparable[byte])
	})
	// A whole client conversation on one stream: greeting, RFC 1929
	// request, CONNECT.
	t.Run("client conversation", func(t *testing.T) {
		stream := mustHex("05 02 00 02" +
			"01 05 61 6c 69 63 65 06 73 33 63 72 65 74" +
			"05 01 00 01 c6 33 64 01 00 50")
		r := bytes.NewReader(stream)
		g, err := ReadGreeting(r)
		if err != nil || !slices.Equal(g.Methods, []Method{MethodNoAuth, MethodUserPass}) {
			t.Fatalf("ReadGreeting = %v, %v", g, err)
		}
		u, err := ReadUserPass(r)
		if err != nil || u != (UserPass{"alice", "s3cret"}) {
			t.Fatalf("ReadUserPass = %q, %v", u, err)
		}
		req, err := ReadRequest(r)
		want := Request{CmdConnect, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}}
		if err != nil || req != want {
			t.Fatalf("ReadRequest = %+v, %v; want %+v", req, err, want)
		}
		if r.Len() != 0 {
			t.Errorf("%d octets left", r.Len())
		}
	})
}

// ---------------------------------------------------------------------------
// String methods.

func TestMethodString(t *testing.T) {
	tests := []struct {
		m    Method
		want string
	}{
		{MethodNoAuth, "no-auth"},
		{MethodGSSAPI, "gssapi"},
		{MethodUserPass, "username/password"},
		{MethodNoAcceptable, "no-acceptable-methods"},
		{0x03, "method(3)"},
		{0x80, "method(128)"},
		{0xfe, "method(254)"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := tc.m.String(); got != tc.want {
				t.Errorf("Method(%d).String() = %q, want %q", byte(tc.m), got, tc.want)
			}
		})
	}
}

func TestCommandString(t *testing.T) {
	tests := []struct {
		c    Command
		want string
	}{
		{CmdConnect, "connect"},
		{CmdBind, "bind"},
		{CmdUDPAssociate, "udp-associate"},
		{0x00, "cmd(0)"},
		{0x04, "cmd(4)"},
		{0xff, "cmd(255)"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := tc.c.String(); got != tc.want {
				t.Errorf("Command(%d).String() = %q, want %q", byte(tc.c), got, tc.want)
			}
		})
	}
}
