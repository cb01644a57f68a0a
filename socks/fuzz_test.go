package socks

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
)

// The fuzz targets are seeded with the golden messages of addr_test.go and
// wire_test.go and check, for any input:
//
//   - no panic;
//   - when Parse* succeeds, the message takes n <= len(input) octets,
//     Append* of the result gives back exactly those n octets, and Parse* of
//     that gives an equal value and the same n;
//   - Read* on the same input agrees with Parse*: both fail, or both give the
//     same value and Read* consumed exactly n octets.

// readAgrees runs read on b and checks it against what Parse returned.
func readAgrees[T any](t *testing.T, fn string, b []byte, read func(io.Reader) (T, error),
	parsed T, n int, perr error, eq func(a, b T) bool) {
	t.Helper()
	r := bytes.NewReader(b)
	got, rerr := read(r)
	switch {
	case perr != nil && rerr == nil:
		t.Fatalf("%s(%x) = %+v, but Parse failed: %v", fn, b, got, perr)
	case perr == nil && rerr != nil:
		t.Fatalf("%s(%x) failed: %v, but Parse gave %+v", fn, b, rerr, parsed)
	case perr == nil:
		if !eq(got, parsed) {
			t.Fatalf("%s(%x) = %+v, Parse gave %+v", fn, b, got, parsed)
		}
		if used := len(b) - r.Len(); used != n {
			t.Fatalf("%s(%x) consumed %d octets, Parse took %d", fn, b, used, n)
		}
	}
}

func checkN(t *testing.T, b []byte, n int) {
	t.Helper()
	if n <= 0 || n > len(b) {
		t.Fatalf("Parse(%x) took %d octets of %d", b, n, len(b))
	}
}

// checkReencode checks that the encoding of a parsed value is the octets it
// was parsed from.
func checkReencode(t *testing.T, b []byte, n int, enc []byte, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("Append of the value parsed from %x: %v", b[:n], err)
	}
	if !bytes.Equal(enc, b[:n]) {
		t.Fatalf("Append(Parse(%x)) = %x", b[:n], enc)
	}
}

func FuzzParseAddr(f *testing.F) {
	for _, v := range addrVectors {
		f.Add(mustHex(v.wire))
	}
	f.Add([]byte{})
	f.Add(mustHex("03 00 00 50"))
	f.Add(mustHex("02 c6 33 64 01 00 50"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, n, err := ParseAddr(b)
		readAgrees(t, "ReadAddr", b, ReadAddr, a, n, err, func(x, y Addr) bool { return x == y })
		if err != nil {
			return
		}
		checkN(t, b, n)
		if l := a.EncodedLen(); l != n {
			t.Fatalf("ParseAddr(%x) = %+v, %d: EncodedLen = %d", b, a, n, l)
		}
		enc, err := AppendAddr(nil, a)
		checkReencode(t, b, n, enc, err)
		a2, n2, err := ParseAddr(enc)
		if err != nil || a2 != a || n2 != n {
			t.Fatalf("ParseAddr(AppendAddr(%+v)) = %+v, %d, %v; want %+v, %d", a, a2, n2, err, a, n)
		}
	})
}

func FuzzParseGreeting(f *testing.F) {
	for _, v := range greetingVectors {
		f.Add(mustHex(v.wire))
	}
	f.Add([]byte{})
	f.Add(mustHex("05 00"))
	f.Add(mustHex("04 01 00"))
	eq := func(x, y Greeting) bool { return slices.Equal(x.Methods, y.Methods) }
	f.Fuzz(func(t *testing.T, b []byte) {
		g, n, err := ParseGreeting(b)
		readAgrees(t, "ReadGreeting", b, ReadGreeting, g, n, err, eq)
		if err != nil {
			return
		}
		checkN(t, b, n)
		enc, err := AppendGreeting(nil, g)
		checkReencode(t, b, n, enc, err)
		g2, n2, err := ParseGreeting(enc)
		if err != nil || !eq(g2, g) || n2 != n {
			t.Fatalf("ParseGreeting(AppendGreeting(%v)) = %v, %d, %v; want %d", g, g2, n2, err, n)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, v := range requestVectors {
		f.Add(mustHex(v.wire))
	}
	f.Add([]byte{})
	f.Add(mustHex("04 01 00 50 c6 33 64 01 00"))
	f.Add(mustHex("05 01 00 03 00 00 50"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, n, err := ParseRequest(b)
		readAgrees(t, "ReadRequest", b, ReadRequest, req, n, err, func(x, y Request) bool { return x == y })
		if err != nil {
			return
		}
		checkN(t, b, n)
		if b[2] != 0 {
			// RSV is not checked by ParseRequest, so it does not survive
			// the round trip; compare everything else.
			b = append([]byte{b[0], b[1], 0}, b[3:]...)
		}
		enc, err := AppendRequest(nil, req)
		checkReencode(t, b, n, enc, err)
		req2, n2, err := ParseRequest(enc)
		if err != nil || req2 != req || n2 != n {
			t.Fatalf("ParseRequest(AppendRequest(%+v)) = %+v, %d, %v; want %d", req, req2, n2, err, n)
		}
	})
}

func FuzzParseResponse(f *testing.F) {
	for _, v := range responseVectors {
		f.Add(mustHex(v.wire))
	}
	f.Add([]byte{})
	f.Add(mustHex("00 5a 00 50 c6 33 64 01"))
	f.Add(mustHex("05 00 00 ff c0 00 02 01 04 38"))
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, n, err := ParseResponse(b)
		readAgrees(t, "ReadResponse", b, ReadResponse, resp, n, err, func(x, y Response) bool { return x == y })
		if err != nil {
			return
		}
		checkN(t, b, n)
		if b[2] != 0 {
			// RSV is not checked; see FuzzParseRequest.
			b = append([]byte{b[0], b[1], 0}, b[3:]...)
		}
		enc := AppendResponse(nil, resp)
		checkReencode(t, b, n, enc, nil)
		resp2, n2, err := ParseResponse(enc)
		if err != nil || resp2 != resp || n2 != n {
			t.Fatalf("ParseResponse(AppendResponse(%+v)) = %+v, %d, %v; want %d", resp, resp2, n2, err, n)
		}
	})
}

func FuzzParseUserPass(f *testing.F) {
	for _, v := range userPassVectors {
		f.Add(mustHex(v.wire))
	}
	f.Add([]byte{})
	f.Add(mustHex("01 00 06 73 33 63 72 65 74"))
	f.Add(mustHex("01 05 61 6c 69 63 65 00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, n, err := ParseUserPass(b)
		readAgrees(t, "ReadUserPass", b, ReadUserPass, u, n, err, func(x, y UserPass) bool { return x == y })
		if err != nil {
			return
		}
		checkN(t, b, n)
		enc, err := AppendUserPass(nil, u)
		checkReencode(t, b, n, enc, err)
		u2, n2, err := ParseUserPass(enc)
		if err != nil || u2 != u || n2 != n {
			t.Fatalf("ParseUserPass(AppendUserPass(%q)) = %q, %d, %v; want %d", u, u2, n2, err, n)
		}
	})
}

func FuzzParseUDPHeader(f *testing.F) {
	for _, v := range udpVectors {
		f.Add(mustHex(v.wire))
		f.Add(append(mustHex(v.wire), "payload"...))
	}
	f.Add([]byte{})
	f.Add(mustHex("00 00 01 01 c6 33 64 01 00 35"))
	f.Add(mustHex("00 01 00 01 c6 33 64 01 00 35"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseUDPHeader(b)
		if errors.Is(err, ErrFragmented) && h.Frag == 0 {
			t.Fatalf("ParseUDPHeader(%x): ErrFragmented with Frag 0", b)
		}
		if err != nil {
			return
		}
		checkN(t, b, n)
		if h.Frag != 0 {
			t.Fatalf("ParseUDPHeader(%x) accepted Frag %#x", b, h.Frag)
		}
		enc, err := AppendUDPHeader(nil, h)
		checkReencode(t, b, n, enc, err)
		h2, n2, err := ParseUDPHeader(enc)
		if err != nil || h2 != h || n2 != n {
			t.Fatalf("ParseUDPHeader(AppendUDPHeader(%+v)) = %+v, %d, %v; want %d", h, h2, n2, err, n)
		}
	})
}

// chunkReader returns at most size octets per Read, as a TCP stream may.
type chunkReader struct {
	r    io.Reader
	size int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.size {
		p = p[:c.size]
	}
	return c.r.Read(p)
}

// FuzzReadRequest drives the stream reader with arbitrary input cut into
// arbitrary chunks. Besides agreeing with ParseRequest and consuming exactly
// the request, ReadRequest must tell a stream that ended before the request
// (io.EOF) from one that ended inside it (io.ErrUnexpectedEOF).
func FuzzReadRequest(f *testing.F) {
	for _, v := range requestVectors {
		f.Add(mustHex(v.wire), uint8(1))
		f.Add(mustHex(v.wire), uint8(255))
	}
	f.Add([]byte{}, uint8(1))
	f.Add(mustHex("05 01 00 01 c6 33"), uint8(3))
	f.Add(mustHex("04 01 00 50 c6 33 64 01 00"), uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, chunk uint8) {
		size := max(int(chunk), 1)
		req, n, perr := ParseRequest(b)

		br := bytes.NewReader(b)
		got, rerr := ReadRequest(&chunkReader{br, size})
		used := len(b) - br.Len()

		switch {
		case perr == nil && rerr == nil:
			if got != req {
				t.Fatalf("ReadRequest(%x) = %+v, ParseRequest gave %+v", b, got, req)
			}
			if used != n {
				t.Fatalf("ReadRequest(%x) consumed %d octets, ParseRequest took %d", b, used, n)
			}
		case perr == nil:
			t.Fatalf("ReadRequest(%x) failed: %v, but ParseRequest gave %+v", b, rerr, req)
		case rerr == nil:
			t.Fatalf("ReadRequest(%x) = %+v, but ParseRequest failed: %v", b, got, perr)
		case errors.Is(perr, ErrShort):
			// The whole input is a proper prefix of a request.
			if len(b) == 0 {
				if rerr != io.EOF {
					t.Fatalf("ReadRequest(empty): err = %v, want io.EOF", rerr)
				}
			} else if !errors.Is(rerr, io.ErrUnexpectedEOF) {
				t.Fatalf("ReadRequest(%x) (a truncated request): err = %v, want io.ErrUnexpectedEOF", b, rerr)
			}
		}

		// The request is followed by more data on a real stream: the result
		// must not change, nor may ReadRequest read past the request.
		if perr == nil {
			stream := append(append([]byte{}, b[:n]...), 0x05, 0x01)
			br := bytes.NewReader(stream)
			got, err := ReadRequest(&chunkReader{br, size})
			if err != nil || got != req || br.Len() != 2 {
				t.Fatalf("ReadRequest(%x) = %+v, %v, left %d; want %+v, 2 left", stream, got, err, br.Len(), req)
			}
		}
	})
}
