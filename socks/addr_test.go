package socks

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
)

// mustHex decodes a hex string in which spaces and newlines are ignored, so
// golden messages can be written field by field.
func mustHex(s string) []byte {
	s = strings.NewReplacer(" ", "", "\n", "", "\t", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

var (
	name255 = strings.Repeat("a", 255)
	hex255  = strings.Repeat("61", 255) // name255 in hex
	name256 = strings.Repeat("a", 256)
)

// addrVector is a golden encoded address, RFC 1928 section 5:
//
//	+------+----------+----------+
//	| ATYP | DST.ADDR | DST.PORT |
//	+------+----------+----------+
//	|  1   | Variable |    2     |
//	+------+----------+----------+
//
// X'01' is a 4-octet IPv4 address, X'04' a 16-octet IPv6 address, X'03' a
// length octet followed by a domain name (no terminating NUL); the port is
// in network octet order.
type addrVector struct {
	name string
	wire string
	addr Addr
}

var addrVectors = []addrVector{
	// RFC 1928 section 5, ATYP X'01'.
	{"ipv4", "01 c6 33 64 01 00 50", Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}},
	{"ipv4 zero port 0", "01 00 00 00 00 00 00", Addr{IP: netip.MustParseAddr("0.0.0.0"), Port: 0}},
	{"ipv4 broadcast port 65535", "01 ff ff ff ff ff ff", Addr{IP: netip.MustParseAddr("255.255.255.255"), Port: 65535}},
	{"ipv4 port 1", "01 7f 00 00 01 00 01", Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1}},
	{"ipv4 port 255", "01 0a 00 00 01 00 ff", Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 255}},
	{"ipv4 port 256", "01 0a 00 00 01 01 00", Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 256}},
	{"ipv4 port 32768", "01 c0 00 02 01 80 00", Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 32768}},
	{"ipv4 port 1080", "01 c0 00 02 01 04 38", Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080}},
	// RFC 1928 section 5, ATYP X'04'.
	{"ipv6", "04 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 00 35",
		Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 53}},
	{"ipv6 unspecified port 0", "04 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
		Addr{IP: netip.MustParseAddr("::"), Port: 0}},
	{"ipv6 loopback port 65535", "04 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 ff ff",
		Addr{IP: netip.MustParseAddr("::1"), Port: 65535}},
	{"ipv6 all ones", "04 ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 01 bb",
		Addr{IP: netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), Port: 443}},
	// RFC 1928 section 5, ATYP X'03': length octet, then the name.
	{"domain", "03 0b 65 78 61 6d 70 6c 65 2e 63 6f 6d 01 bb", Addr{Name: "example.com", Port: 443}},
	{"domain 1 octet", "03 01 61 00 01", Addr{Name: "a", Port: 1}},
	{"domain port 0", "03 09 6c 6f 63 61 6c 68 6f 73 74 00 00", Addr{Name: "localhost", Port: 0}},
	{"domain port 65535", "03 03 66 6f 6f ff ff", Addr{Name: "foo", Port: 65535}},
	{"domain that looks like an ipv4", "03 0c 31 39 38 2e 35 31 2e 31 30 30 2e 31 00 50",
		Addr{Name: "198.51.100.1", Port: 80}},
	{"domain 255 octets", "03 ff" + hex255 + "1f 90", Addr{Name: name255, Port: 8080}},
}

// TestAddrGolden checks AppendAddr, ParseAddr and ReadAddr against the
// golden encodings of RFC 1928 section 5.
func TestAddrGolden(t *testing.T) {
	for _, tc := range addrVectors {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)

			got, err := AppendAddr(nil, tc.addr)
			if err != nil || !bytes.Equal(got, wire) {
				t.Errorf("AppendAddr = %x, %v; want %x", got, err, wire)
			}
			prefix := []byte{0xaa, 0xbb}
			got, err = AppendAddr(prefix, tc.addr)
			if err != nil || !bytes.Equal(got, append([]byte{0xaa, 0xbb}, wire...)) {
				t.Errorf("AppendAddr(prefix) = %x, %v; want aabb%x", got, err, wire)
			}
			if n := tc.addr.EncodedLen(); n != len(wire) {
				t.Errorf("EncodedLen = %d, want %d", n, len(wire))
			}
			if typ := tc.addr.Type(); typ != AddrType(wire[0]) {
				t.Errorf("Type = %v, want %v", typ, AddrType(wire[0]))
			}

			// Trailing octets (a payload) are not part of the address.
			a, n, err := ParseAddr(append(append([]byte{}, wire...), 0xde, 0xad))
			if err != nil || a != tc.addr || n != len(wire) {
				t.Errorf("ParseAddr = %+v, %d, %v; want %+v, %d, nil", a, n, err, tc.addr, len(wire))
			}

			a, err = ReadAddr(bytes.NewReader(wire))
			if err != nil || a != tc.addr {
				t.Errorf("ReadAddr = %+v, %v; want %+v", a, err, tc.addr)
			}
			a, err = ReadAddr(iotest.OneByteReader(bytes.NewReader(wire)))
			if err != nil || a != tc.addr {
				t.Errorf("ReadAddr(one byte at a time) = %+v, %v; want %+v", a, err, tc.addr)
			}
		})
	}
}

// TestAddrEncodingConsistent checks that Type, EncodedLen and AppendAddr
// agree for every kind of IP, and that an address parsed from the wire
// encodes back to the same octets.
func TestAddrEncodingConsistent(t *testing.T) {
	tests := []struct {
		name string
		addr Addr
	}{
		{"ipv4", Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}},
		{"ipv6", Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 53}},
		{"domain", Addr{Name: "example.com", Port: 443}},
		// What ParseAddr returns for ATYP X'04' carrying ::ffff:198.51.100.1.
		{"ipv4-mapped ipv6", Addr{IP: netip.MustParseAddr("::ffff:198.51.100.1"), Port: 80}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := AppendAddr(nil, tc.addr)
			if err != nil {
				t.Fatalf("AppendAddr: %v", err)
			}
			if n := tc.addr.EncodedLen(); n != len(b) {
				t.Errorf("EncodedLen = %d, but AppendAddr wrote %d octets (%x)", n, len(b), b)
			}
			if typ := tc.addr.Type(); AddrType(b[0]) != typ {
				t.Errorf("Type = %v, but AppendAddr wrote ATYP %v", typ, AddrType(b[0]))
			}
		})
	}

	// RFC 1928 section 5: ATYP X'04' with the IPv4-mapped address
	// ::ffff:198.51.100.1. It is a valid 19-octet IPv6 address; parsing it
	// and encoding the result must give the same 19 octets back.
	t.Run("ipv4-mapped ipv6 wire round trip", func(t *testing.T) {
		wire := mustHex("04 00 00 00 00 00 00 00 00 00 00 ff ff c6 33 64 01 00 50")
		a, n, err := ParseAddr(wire)
		if err != nil || n != len(wire) {
			t.Fatalf("ParseAddr = %+v, %d, %v", a, n, err)
		}
		b, err := AppendAddr(nil, a)
		if err != nil || !bytes.Equal(b, wire) {
			t.Errorf("AppendAddr(ParseAddr(%x)) = %x, %v; want the input back", wire, b, err)
		}
		a2, n2, err := ParseAddr(b)
		if err != nil || a2 != a || n2 != n {
			t.Errorf("ParseAddr(AppendAddr(a)) = %+v, %d, %v; want %+v, %d", a2, n2, err, a, n)
		}
	})
}

// checkTruncations feeds every proper prefix of msg to parse and read (either
// may be nil). Parse
// must report ErrShort; read must report io.EOF for the empty input and an
// error wrapping io.ErrUnexpectedEOF (and ErrShort) when the stream ends in
// the middle of the message.
func checkTruncations(t *testing.T, msg []byte, parse func([]byte) error, read func(io.Reader) error) {
	t.Helper()
	for i := range len(msg) {
		p := msg[:i:i]
		if parse != nil {
			if err := parse(p); !errors.Is(err, ErrShort) {
				t.Errorf("Parse(%x) (%d of %d octets): err = %v, want ErrShort", p, i, len(msg), err)
			}
		}
		if read == nil {
			continue
		}
		err := read(bytes.NewReader(p))
		if i == 0 {
			if !errors.Is(err, io.EOF) {
				t.Errorf("Read(empty): err = %v, want io.EOF", err)
			}
			continue
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) || !errors.Is(err, ErrShort) {
			t.Errorf("Read(%x) (%d of %d octets): err = %v, want io.ErrUnexpectedEOF wrapped in ErrShort", p, i, len(msg), err)
		}
	}
}

// TestAddrCorrupted: truncations, unknown ATYP and bad lengths.
func TestAddrCorrupted(t *testing.T) {
	parse := func(b []byte) error { _, _, err := ParseAddr(b); return err }
	read := func(r io.Reader) error { _, err := ReadAddr(r); return err }

	t.Run("truncated", func(t *testing.T) {
		for _, tc := range addrVectors {
			t.Run(tc.name, func(t *testing.T) {
				checkTruncations(t, mustHex(tc.wire), parse, read)
			})
		}
	})

	// RFC 1928 section 5 defines X'01', X'03' and X'04' only; the server
	// answers anything else with X'08' (section 6).
	atypTests := []struct {
		name string
		wire string
		typ  AddrType
	}{
		{"atyp 00", "00 c6 33 64 01 00 50", 0x00},
		{"atyp 02", "02 c6 33 64 01 00 50", 0x02},
		{"atyp 05", "05 c6 33 64 01 00 50", 0x05},
		{"atyp ff", "ff c6 33 64 01 00 50", 0xff},
	}
	for _, tc := range atypTests {
		t.Run(tc.name, func(t *testing.T) {
			wire := mustHex(tc.wire)
			for _, step := range []struct {
				fn  string
				err error
			}{
				{"ParseAddr", parse(wire)},
				{"ReadAddr", read(bytes.NewReader(wire))},
			} {
				var ate *AddrTypeError
				if !errors.As(step.err, &ate) || ate.Type != tc.typ {
					t.Errorf("%s(%x): err = %v, want *AddrTypeError{%d}", step.fn, wire, step.err, tc.typ)
					continue
				}
				if r := ReplyFromError(step.err); r != ReplyAddrTypeNotSupported {
					t.Errorf("ReplyFromError(%v) = %v, want %v", step.err, r, ReplyAddrTypeNotSupported)
				}
			}
		})
	}

	// RFC 1928 section 5: a domain name of zero octets names nothing.
	t.Run("zero-length domain", func(t *testing.T) {
		wire := mustHex("03 00 00 50")
		if err := parse(wire); !errors.Is(err, ErrNameLength) {
			t.Errorf("ParseAddr(%x): err = %v, want ErrNameLength", wire, err)
		}
		if err := read(bytes.NewReader(wire)); !errors.Is(err, ErrNameLength) {
			t.Errorf("ReadAddr(%x): err = %v, want ErrNameLength", wire, err)
		}
	})

	appendTests := []struct {
		name string
		addr Addr
		want error
	}{
		{"256-octet name", Addr{Name: name256, Port: 80}, ErrNameLength},
		{"zero Addr", Addr{}, ErrInvalidAddr},
		{"zero Addr with port", Addr{Port: 80}, ErrInvalidAddr},
	}
	for _, tc := range appendTests {
		t.Run("AppendAddr "+tc.name, func(t *testing.T) {
			in := []byte{0xaa}
			b, err := AppendAddr(in, tc.addr)
			if !errors.Is(err, tc.want) {
				t.Errorf("AppendAddr: err = %v, want %v", err, tc.want)
			}
			if !bytes.Equal(b, []byte{0xaa}) {
				t.Errorf("AppendAddr on error returned %x, want the input aa unchanged", b)
			}
		})
	}
}

// TestReadAddrStream: ReadAddr takes exactly the octets of one address, so
// two addresses back to back on a stream read as two.
func TestReadAddrStream(t *testing.T) {
	for i, first := range addrVectors {
		second := addrVectors[(i+1)%len(addrVectors)]
		t.Run(first.name+" then "+second.name, func(t *testing.T) {
			stream := append(mustHex(first.wire), mustHex(second.wire)...)
			r := bytes.NewReader(stream)
			a, err := ReadAddr(r)
			if err != nil || a != first.addr {
				t.Fatalf("first ReadAddr = %+v, %v; want %+v", a, err, first.addr)
			}
			if r.Len() != len(mustHex(second.wire)) {
				t.Fatalf("after first ReadAddr %d octets left, want %d", r.Len(), len(mustHex(second.wire)))
			}
			a, err = ReadAddr(r)
			if err != nil || a != second.addr {
				t.Fatalf("second ReadAddr = %+v, %v; want %+v", a, err, second.addr)
			}
			if _, err := ReadAddr(r); err != io.EOF {
				t.Errorf("third ReadAddr: err = %v, want io.EOF", err)
			}
		})
	}
}

func TestParseHostPort(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Addr
		wantErr bool
		errIs   error // checked with errors.Is when set
	}{
		{name: "ipv4", in: "198.51.100.1:80", want: Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}},
		{name: "ipv4 port 0", in: "0.0.0.0:0", want: Addr{IP: netip.MustParseAddr("0.0.0.0"), Port: 0}},
		{name: "ipv4 port 65535", in: "10.1.2.3:65535", want: Addr{IP: netip.MustParseAddr("10.1.2.3"), Port: 65535}},
		{name: "ipv6 bracketed", in: "[2001:db8::1]:53", want: Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 53}},
		{name: "ipv6 loopback", in: "[::1]:1080", want: Addr{IP: netip.MustParseAddr("::1"), Port: 1080}},
		{name: "ipv4-mapped ipv6 is unmapped", in: "[::ffff:198.51.100.1]:80", want: Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}},
		{name: "name", in: "example.com:443", want: Addr{Name: "example.com", Port: 443}},
		{name: "single label name", in: "localhost:8080", want: Addr{Name: "localhost", Port: 8080}},
		{name: "255-octet name", in: name255 + ":1", want: Addr{Name: name255, Port: 1}},
		{name: "256-octet name", in: name256 + ":1", wantErr: true, errIs: ErrNameLength},
		{name: "empty host", in: ":80", wantErr: true, errIs: ErrNameLength},
		{name: "empty", in: "", wantErr: true},
		{name: "no port", in: "example.com", wantErr: true},
		{name: "ipv6 unbracketed", in: "2001:db8::1:53", wantErr: true},
		{name: "empty port", in: "example.com:", wantErr: true},
		{name: "port too big", in: "example.com:65536", wantErr: true},
		{name: "negative port", in: "example.com:-1", wantErr: true},
		{name: "named port", in: "example.com:http", wantErr: true},
		{name: "ipv6 with zone", in: "[fe80::1%eth0]:80", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHostPort(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseHostPort(%q) = %+v, want an error", tc.in, got)
				}
				if tc.errIs != nil && !errors.Is(err, tc.errIs) {
					t.Errorf("ParseHostPort(%q): err = %v, want %v", tc.in, err, tc.errIs)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseHostPort(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestAddrTypeString(t *testing.T) {
	tests := []struct {
		typ  AddrType
		want string
	}{
		{AddrTypeIPv4, "ipv4"},
		{AddrTypeDomain, "domain"},
		{AddrTypeIPv6, "ipv6"},
		{0x00, "atyp(0)"},
		{0x02, "atyp(2)"},
		{0xff, "atyp(255)"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := tc.typ.String(); got != tc.want {
				t.Errorf("AddrType(%d).String() = %q, want %q", byte(tc.typ), got, tc.want)
			}
		})
	}
}

func TestAddrString(t *testing.T) {
	tests := []struct {
		name string
		addr Addr
		want string
	}{
		{"ipv4", Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}, "198.51.100.1:80"},
		{"ipv6", Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 53}, "[2001:db8::1]:53"},
		{"domain", Addr{Name: "example.com", Port: 443}, "example.com:443"},
		{"invalid", Addr{Port: 7}, "<invalid>:7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.addr.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			if got := tc.addr.Network(); got != "socks5" {
				t.Errorf("Network() = %q, want socks5", got)
			}
		})
	}
}
