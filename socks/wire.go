package socks

import (
	"io"
	"strconv"
)

// Version5 is the VER octet of every RFC 1928 message.
const Version5 = 0x05

// UserPassVersion is the VER octet of the RFC 1929 subnegotiation.
const UserPassVersion = 0x01

// Method is an authentication method, RFC 1928 section 3.
type Method byte

// Methods, RFC 1928 section 3.
const (
	MethodNoAuth       Method = 0x00
	MethodGSSAPI       Method = 0x01
	MethodUserPass     Method = 0x02
	MethodNoAcceptable Method = 0xFF
)

func (m Method) String() string {
	switch m {
	case MethodNoAuth:
		return "no-auth"
	case MethodGSSAPI:
		return "gssapi"
	case MethodUserPass:
		return "username/password"
	case MethodNoAcceptable:
		return "no-acceptable-methods"
	}
	return "method(" + strconv.Itoa(int(m)) + ")"
}

// Command is the CMD field of a request, RFC 1928 section 4.
type Command byte

// Commands, RFC 1928 section 4.
const (
	CmdConnect      Command = 0x01
	CmdBind         Command = 0x02
	CmdUDPAssociate Command = 0x03
)

func (c Command) String() string {
	switch c {
	case CmdConnect:
		return "connect"
	case CmdBind:
		return "bind"
	case CmdUDPAssociate:
		return "udp-associate"
	}
	return "cmd(" + strconv.Itoa(int(c)) + ")"
}

// UserPass status values, RFC 1929 section 2: zero is success, anything
// else is failure.
const (
	UserPassSuccess byte = 0x00
	UserPassFailure byte = 0x01
)

// Sizes of the fixed parts of the messages.
const (
	greetingHdrLen   = 2 // VER NMETHODS
	methodSelLen     = 2 // VER METHOD
	requestHdrLen    = 3 // VER CMD RSV (then an address)
	userPassStatLen  = 2 // VER STATUS
	udpHdrFixedLen   = 3 // RSV RSV FRAG (then an address)
	maxCredentialLen = 255
	// MaxRequestLen is the longest request or reply on the wire.
	MaxRequestLen = requestHdrLen + MaxAddrLen
	// MaxUDPHeaderLen is the longest UDP request header.
	MaxUDPHeaderLen = udpHdrFixedLen + MaxAddrLen
	// MaxUserPassLen is the longest RFC 1929 request.
	MaxUserPassLen = 1 + 1 + maxCredentialLen + 1 + maxCredentialLen
)

// Greeting is the client's version identifier/method selection message,
// RFC 1928 section 3.
type Greeting struct {
	Methods []Method
}

// Has reports whether the client offered m.
func (g Greeting) Has(m Method) bool {
	for _, x := range g.Methods {
		if x == m {
			return true
		}
	}
	return false
}

// AppendGreeting appends the greeting; it offers 1 to 255 methods.
func AppendGreeting(b []byte, g Greeting) ([]byte, error) {
	if len(g.Methods) == 0 || len(g.Methods) > 255 {
		return b, ErrMalformed
	}
	b = append(b, Version5, byte(len(g.Methods)))
	for _, m := range g.Methods {
		b = append(b, byte(m))
	}
	return b, nil
}

// ParseGreeting parses a greeting at the start of b and returns the number of
// octets it took.
func ParseGreeting(b []byte) (Greeting, int, error) {
	if len(b) < greetingHdrLen {
		return Greeting{}, 0, ErrShort
	}
	if b[0] != Version5 {
		return Greeting{}, 0, &VersionError{Got: b[0]}
	}
	n := int(b[1])
	if n == 0 {
		return Greeting{}, 0, ErrMalformed
	}
	if len(b) < greetingHdrLen+n {
		return Greeting{}, 0, ErrShort
	}
	g := Greeting{Methods: make([]Method, n)}
	for i := range n {
		g.Methods[i] = Method(b[greetingHdrLen+i])
	}
	return g, greetingHdrLen + n, nil
}

// ReadGreeting reads a greeting from r.
func ReadGreeting(r io.Reader) (Greeting, error) {
	var buf [greetingHdrLen + 255]byte
	if _, err := io.ReadFull(r, buf[:greetingHdrLen]); err != nil {
		return Greeting{}, readErr(err)
	}
	if buf[0] != Version5 {
		return Greeting{}, &VersionError{Got: buf[0]}
	}
	n := int(buf[1])
	if _, err := io.ReadFull(r, buf[greetingHdrLen:greetingHdrLen+n]); err != nil {
		return Greeting{}, readMoreErr(err)
	}
	g, _, err := ParseGreeting(buf[:greetingHdrLen+n])
	return g, err
}

// AppendMethodSelection appends the server's METHOD selection message.
func AppendMethodSelection(b []byte, m Method) []byte {
	return append(b, Version5, byte(m))
}

// ParseMethodSelection parses the server's METHOD selection message.
func ParseMethodSelection(b []byte) (Method, error) {
	if len(b) < methodSelLen {
		return 0, ErrShort
	}
	if b[0] != Version5 {
		return 0, &VersionError{Got: b[0]}
	}
	return Method(b[1]), nil
}

// ReadMethodSelection reads the server's METHOD selection message.
func ReadMethodSelection(r io.Reader) (Method, error) {
	var buf [methodSelLen]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return 0, readErr(err)
	}
	return ParseMethodSelection(buf[:])
}

// Request is a SOCKS request, RFC 1928 section 4.
type Request struct {
	Cmd  Command
	Addr Addr // DST.ADDR and DST.PORT
}

// AppendRequest appends the request.
func AppendRequest(b []byte, r Request) ([]byte, error) {
	out, err := AppendAddr(append(b, Version5, byte(r.Cmd), 0), r.Addr)
	if err != nil {
		return b, err
	}
	return out, nil
}

// ParseRequest parses a request at the start of b and returns the number of
// octets it took. An unknown command is not an error here: the server
// answers it with ReplyCommandNotSupported.
func ParseRequest(b []byte) (Request, int, error) {
	if len(b) < requestHdrLen {
		return Request{}, 0, ErrShort
	}
	if b[0] != Version5 {
		return Request{}, 0, &VersionError{Got: b[0]}
	}
	a, n, err := ParseAddr(b[requestHdrLen:])
	if err != nil {
		return Request{}, 0, err
	}
	return Request{Cmd: Command(b[1]), Addr: a}, requestHdrLen + n, nil
}

// ReadRequest reads a request from r.
func ReadRequest(r io.Reader) (Request, error) {
	hdr, err := readAddrHeader(r)
	if err != nil {
		return Request{}, err
	}
	a, err := readAddrRest(r, [domainHdrLen]byte(hdr[requestHdrLen:]))
	if err != nil {
		return Request{}, err
	}
	return Request{Cmd: Command(hdr[1]), Addr: a}, nil
}

// readAddrHeader reads the header of a request or a reply with the first
// octets of its address, in one read: no valid message is shorter. A
// wrong version is reported when that read ends with the header in (all
// five octets, or the stream's end after three or four), as ParseRequest
// and ParseResponse report it; a peer that sends three octets of a wrong
// version and waits is answered at the handshake's deadline.
func readAddrHeader(r io.Reader) ([requestHdrLen + domainHdrLen]byte, error) {
	var hdr [requestHdrLen + domainHdrLen]byte
	n, err := io.ReadFull(r, hdr[:])
	if n >= requestHdrLen && hdr[0] != Version5 {
		return hdr, &VersionError{Got: hdr[0]}
	}
	if err != nil {
		return hdr, readErr(err)
	}
	return hdr, nil
}

// Response is the server's reply to a request, RFC 1928 section 6.
type Response struct {
	Reply Reply
	Bind  Addr // BND.ADDR and BND.PORT
}

// AppendResponse appends the reply. An invalid Bind address is sent as the
// IPv4 unspecified address, as servers do when they have none to give.
func AppendResponse(b []byte, r Response) []byte {
	b = append(b, Version5, byte(r.Reply), 0)
	if !r.Bind.IsValid() {
		return append(b, byte(AddrTypeIPv4), 0, 0, 0, 0, 0, 0)
	}
	out, err := AppendAddr(b, r.Bind)
	if err != nil {
		return append(b, byte(AddrTypeIPv4), 0, 0, 0, 0, 0, 0)
	}
	return out
}

// ParseResponse parses a reply at the start of b and returns the number of
// octets it took.
func ParseResponse(b []byte) (Response, int, error) {
	if len(b) < requestHdrLen {
		return Response{}, 0, ErrShort
	}
	if b[0] != Version5 {
		return Response{}, 0, &VersionError{Got: b[0]}
	}
	a, n, err := ParseAddr(b[requestHdrLen:])
	if err != nil {
		return Response{}, 0, err
	}
	return Response{Reply: Reply(b[1]), Bind: a}, requestHdrLen + n, nil
}

// ReadResponse reads a reply from r.
func ReadResponse(r io.Reader) (Response, error) {
	hdr, err := readAddrHeader(r)
	if err != nil {
		return Response{}, err
	}
	a, err := readAddrRest(r, [domainHdrLen]byte(hdr[requestHdrLen:]))
	if err != nil {
		return Response{}, err
	}
	return Response{Reply: Reply(hdr[1]), Bind: a}, nil
}

// UserPass is the RFC 1929 username/password request.
type UserPass struct {
	Username string
	Password string
}

// AppendUserPass appends the request. RFC 1929 allows 1 to 255 octets for
// each field.
func AppendUserPass(b []byte, u UserPass) ([]byte, error) {
	if len(u.Username) == 0 || len(u.Username) > maxCredentialLen ||
		len(u.Password) == 0 || len(u.Password) > maxCredentialLen {
		return b, ErrCredentialLength
	}
	b = append(b, UserPassVersion, byte(len(u.Username)))
	b = append(b, u.Username...)
	b = append(b, byte(len(u.Password)))
	return append(b, u.Password...), nil
}

// ParseUserPass parses an RFC 1929 request at the start of b and returns the
// number of octets it took. Empty fields, which RFC 1929 does not allow, are
// rejected with ErrCredentialLength.
func ParseUserPass(b []byte) (UserPass, int, error) {
	if len(b) < 2 {
		return UserPass{}, 0, ErrShort
	}
	if b[0] != UserPassVersion {
		return UserPass{}, 0, &VersionError{Got: b[0], Sub: true}
	}
	ulen := int(b[1])
	if len(b) < 2+ulen+1 {
		return UserPass{}, 0, ErrShort
	}
	plen := int(b[2+ulen])
	if len(b) < 2+ulen+1+plen {
		return UserPass{}, 0, ErrShort
	}
	if ulen == 0 || plen == 0 {
		return UserPass{}, 0, ErrCredentialLength
	}
	u := UserPass{Username: string(b[2 : 2+ulen]), Password: string(b[3+ulen : 3+ulen+plen])}
	return u, 3 + ulen + plen, nil
}

// ReadUserPass reads an RFC 1929 request from r.
func ReadUserPass(r io.Reader) (UserPass, error) {
	var buf [MaxUserPassLen]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return UserPass{}, readErr(err)
	}
	if buf[0] != UserPassVersion {
		return UserPass{}, &VersionError{Got: buf[0], Sub: true}
	}
	ulen := int(buf[1])
	if _, err := io.ReadFull(r, buf[2:2+ulen+1]); err != nil {
		return UserPass{}, readMoreErr(err)
	}
	plen := int(buf[2+ulen])
	if _, err := io.ReadFull(r, buf[3+ulen:3+ulen+plen]); err != nil {
		return UserPass{}, readMoreErr(err)
	}
	u, _, err := ParseUserPass(buf[:3+ulen+plen])
	return u, err
}

// AppendUserPassStatus appends the RFC 1929 reply.
func AppendUserPassStatus(b []byte, status byte) []byte {
	return append(b, UserPassVersion, status)
}

// ReadUserPassStatus reads the RFC 1929 reply and returns its STATUS.
func ReadUserPassStatus(r io.Reader) (byte, error) {
	var buf [userPassStatLen]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return 0, readErr(err)
	}
	if buf[0] != UserPassVersion {
		return 0, &VersionError{Got: buf[0], Sub: true}
	}
	return buf[1], nil
}

// UDPHeader is the header that precedes every datagram relayed after UDP
// ASSOCIATE, RFC 1928 section 7.
type UDPHeader struct {
	Frag byte
	Addr Addr // DST.ADDR/DST.PORT towards the relay, the source on the way back
}

// AppendUDPHeader appends the header; the payload follows it.
func AppendUDPHeader(b []byte, h UDPHeader) ([]byte, error) {
	out, err := AppendAddr(append(b, 0, 0, h.Frag), h.Addr)
	if err != nil {
		return b, err
	}
	return out, nil
}

// ParseUDPHeader parses the header at the start of a datagram and returns
// the offset of the payload. Fragments (FRAG != 0) are not supported, as
// RFC 1928 allows: they return ErrFragmented and must be dropped.
func ParseUDPHeader(b []byte) (UDPHeader, int, error) {
	if len(b) < udpHdrFixedLen {
		return UDPHeader{}, 0, ErrShort
	}
	if b[0] != 0 || b[1] != 0 {
		return UDPHeader{}, 0, ErrMalformed
	}
	if b[2] != 0 {
		return UDPHeader{Frag: b[2]}, 0, ErrFragmented
	}
	a, n, err := ParseAddr(b[udpHdrFixedLen:])
	if err != nil {
		return UDPHeader{}, 0, err
	}
	return UDPHeader{Addr: a}, udpHdrFixedLen + n, nil
}
