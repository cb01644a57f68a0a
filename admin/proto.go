package admin

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Version is the VER octet of the login and of its reply.
const Version = 0x01

// Sizes of the protocol's fields.
const (
	verLen    = 1
	lenLen    = 1 // ULEN, PLEN, VLEN
	statusLen = 1
	ridLen    = 2
	dataLen   = 2 // LEN of a request or reply

	// MaxStringLen is the longest UNAME or PASSWD.
	MaxStringLen = 255
	// MaxDataLen is the longest DATA of a request or reply.
	MaxDataLen = 65535
	// LoginReplyLen is the size of the login reply.
	LoginReplyLen = verLen + statusLen
	// MaxLoginLen is the size of the longest login message.
	MaxLoginLen = verLen + 2*(lenLen+MaxStringLen)
	// RequestHeaderLen is TYPE CMD RID LEN.
	RequestHeaderLen = 1 + 1 + ridLen + dataLen
	// ReplyHeaderLen is TYPE CMD RID STATUS LEN.
	ReplyHeaderLen = 1 + 1 + ridLen + statusLen + dataLen
)

// Errors of the codec. Functions wrap them with details; test with
// errors.Is.
var (
	// ErrShort means that a message ends before its fields do.
	ErrShort = errors.New("admin: message too short")
	// ErrTrailing means that a message has octets after its last field.
	ErrTrailing = errors.New("admin: unexpected octets after the message")
	// ErrStringLength means that a name or password is not 1 to 255
	// octets.
	ErrStringLength = errors.New("admin: string must be 1 to 255 octets")
	// ErrTooLong means that DATA would exceed MaxDataLen, or a list more
	// entries than its count field holds.
	ErrTooLong = errors.New("admin: message too long")
	// ErrVersion means that a login's VER is not Version.
	ErrVersion = errors.New("admin: unsupported version")
)

// LoginStatus is the STATUS of the login reply.
type LoginStatus uint8

// Login statuses.
const (
	LoginOK             LoginStatus = 0x00
	LoginFailed         LoginStatus = 0x01 // wrong user or password, or not an admin
	LoginInvalidVersion LoginStatus = 0x02
	LoginServerError    LoginStatus = 0x03
)

func (s LoginStatus) String() string {
	switch s {
	case LoginOK:
		return "success"
	case LoginFailed:
		return "wrong user or password"
	case LoginInvalidVersion:
		return "invalid version"
	case LoginServerError:
		return "server error"
	}
	return "login status 0x" + hex8(uint8(s))
}

// Login is the login message.
type Login struct {
	User     string
	Password string
}

// AppendLogin appends the login message (VER ULEN UNAME PLEN PASSWD).
func AppendLogin(b []byte, l Login) ([]byte, error) {
	if err := checkString("user", l.User); err != nil {
		return b, err
	}
	if err := checkString("password", l.Password); err != nil {
		return b, err
	}
	b = append(b, Version)
	b = appendString(b, l.User)
	return appendString(b, l.Password), nil
}

// ParseLogin parses a login message at the start of b and returns it with
// the number of octets it took. A VER other than Version is an error
// wrapping ErrVersion, returned as soon as VER is seen; an empty UNAME or
// PASSWD is an error wrapping ErrStringLength, returned after the whole
// message (n is then its length, so that a caller can skip it).
func ParseLogin(b []byte) (l Login, n int, err error) {
	if len(b) < verLen {
		return Login{}, 0, fmt.Errorf("%w: login", ErrShort)
	}
	if b[0] != Version {
		return Login{}, 0, fmt.Errorf("%w: login VER 0x%02x", ErrVersion, b[0])
	}
	n = verLen
	user, m, err := parseString(b[n:], "login UNAME", 0)
	if err != nil {
		return Login{}, 0, err
	}
	n += m
	pass, m, err := parseString(b[n:], "login PASSWD", 0)
	if err != nil {
		return Login{}, 0, err
	}
	n += m
	l = Login{User: user, Password: pass}
	if user == "" || pass == "" {
		return l, n, fmt.Errorf("%w: login has an empty UNAME or PASSWD", ErrStringLength)
	}
	return l, n, nil
}

// ReadLogin reads a login message from r, exactly its octets. Its errors
// are those of ParseLogin; a stream that ends inside the message gives an
// error wrapping ErrShort and io.ErrUnexpectedEOF, and one that ends
// before it io.EOF.
func ReadLogin(r io.Reader) (Login, error) {
	var buf [MaxLoginLen]byte
	// VER alone first, so that a wrong version is answered at once.
	if _, err := io.ReadFull(r, buf[:verLen]); err != nil {
		return Login{}, err
	}
	if buf[0] != Version {
		return Login{}, fmt.Errorf("%w: login VER 0x%02x", ErrVersion, buf[0])
	}
	n := verLen
	if _, err := io.ReadFull(r, buf[n:n+lenLen]); err != nil {
		return Login{}, readMoreErr(err, "login")
	}
	n += lenLen
	ulen := int(buf[n-1])
	if _, err := io.ReadFull(r, buf[n:n+ulen+lenLen]); err != nil {
		return Login{}, readMoreErr(err, "login")
	}
	n += ulen + lenLen
	plen := int(buf[n-1])
	if _, err := io.ReadFull(r, buf[n:n+plen]); err != nil {
		return Login{}, readMoreErr(err, "login")
	}
	l, _, err := ParseLogin(buf[:n+plen])
	return l, err
}

// AppendLoginReply appends the login reply (VER STATUS).
func AppendLoginReply(b []byte, s LoginStatus) []byte {
	return append(b, Version, byte(s))
}

// ParseLoginReply parses a login reply, which must be exactly b.
func ParseLoginReply(b []byte) (LoginStatus, error) {
	if len(b) < LoginReplyLen {
		return 0, fmt.Errorf("%w: login reply", ErrShort)
	}
	if len(b) > LoginReplyLen {
		return 0, fmt.Errorf("%w: login reply", ErrTrailing)
	}
	if b[0] != Version {
		return 0, fmt.Errorf("%w: login reply VER 0x%02x", ErrVersion, b[0])
	}
	return LoginStatus(b[1]), nil
}

// ReadLoginReply reads a login reply from r.
func ReadLoginReply(r io.Reader) (LoginStatus, error) {
	var buf [LoginReplyLen]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return 0, readErr(err, "login reply")
	}
	return ParseLoginReply(buf[:])
}

// Type is the TYPE of a request.
type Type uint8

// Request types.
const (
	TypeGet     Type = 0x00
	TypeSet     Type = 0x01
	TypeSession Type = 0x02
)

func (t Type) String() string {
	switch t {
	case TypeGet:
		return "GET"
	case TypeSet:
		return "SET"
	case TypeSession:
		return "SESSION"
	}
	return "TYPE 0x" + hex8(uint8(t))
}

// Command is a TYPE and CMD pair: TYPE in the high octet, CMD in the low.
type Command uint16

// MakeCommand returns the Command for TYPE t and CMD c.
func MakeCommand(t Type, c uint8) Command { return Command(t)<<8 | Command(c) }

// Type returns the command's TYPE.
func (c Command) Type() Type { return Type(c >> 8) }

// Code returns the command's CMD.
func (c Command) Code() uint8 { return uint8(c) }

// Commands of the contract: TYPE in the high octet, CMD in the low.
const (
	CmdBytes       Command = 0x0000 // GET BYTES TRANSFERRED
	CmdHistoric    Command = 0x0001 // GET HISTORIC CONNECTIONS
	CmdConcurrent  Command = 0x0002 // GET CONCURRENT CONNECTIONS
	CmdListUsers   Command = 0x0003 // GET LIST USERS
	CmdMetrics     Command = 0x0004 // GET METRICS
	CmdGetConfig   Command = 0x0005 // GET CONFIG
	CmdListFlows   Command = 0x0006 // GET LIST FLOWS
	CmdGetFlow     Command = 0x0007 // GET FLOW
	CmdAddUser     Command = 0x0100 // SET ADD USER
	CmdDeleteUser  Command = 0x0101 // SET DELETE USER
	CmdSetPassword Command = 0x0102 // SET PASSWORD
	CmdSetConfig   Command = 0x0103 // SET CONFIG
	CmdCloseFlow   Command = 0x0104 // SET CLOSE FLOW
	CmdQuit        Command = 0x0200 // SESSION QUIT
	CmdPing        Command = 0x0201 // SESSION PING
	CmdCaps        Command = 0x0202 // SESSION CAPABILITIES
)

// Commands lists every command of the contract, in wire order.
var Commands = []Command{
	CmdBytes, CmdHistoric, CmdConcurrent, CmdListUsers, CmdMetrics, CmdGetConfig, CmdListFlows, CmdGetFlow,
	CmdAddUser, CmdDeleteUser, CmdSetPassword, CmdSetConfig, CmdCloseFlow,
	CmdQuit, CmdPing, CmdCaps,
}

var commandNames = map[Command]string{
	CmdBytes:       "BYTES TRANSFERRED",
	CmdHistoric:    "HISTORIC CONNECTIONS",
	CmdConcurrent:  "CONCURRENT CONNECTIONS",
	CmdListUsers:   "LIST USERS",
	CmdMetrics:     "METRICS",
	CmdGetConfig:   "GET CONFIG",
	CmdListFlows:   "LIST FLOWS",
	CmdGetFlow:     "GET FLOW",
	CmdAddUser:     "ADD USER",
	CmdDeleteUser:  "DELETE USER",
	CmdSetPassword: "SET PASSWORD",
	CmdSetConfig:   "SET CONFIG",
	CmdCloseFlow:   "CLOSE FLOW",
	CmdQuit:        "QUIT",
	CmdPing:        "PING",
	CmdCaps:        "CAPABILITIES",
}

// String returns the contract's name of the command, or its TYPE and CMD
// in hex for one it does not define.
func (c Command) String() string {
	if s, ok := commandNames[c]; ok {
		return s
	}
	return c.Type().String() + " CMD 0x" + hex8(c.Code())
}

// Known reports whether c is a command of the contract.
func (c Command) Known() bool {
	_, ok := commandNames[c]
	return ok
}

// Status is the STATUS of a reply.
type Status uint8

// Reply statuses.
const (
	StatusOK            Status = 0x00
	StatusServerFailure Status = 0x01
	StatusBadType       Status = 0x02 // unsupported TYPE
	StatusBadCommand    Status = 0x03 // unsupported CMD
	StatusMalformed     Status = 0x04
	StatusInvalidValue  Status = 0x05
	StatusNoSuchUser    Status = 0x06
	StatusUserExists    Status = 0x07
	StatusUserLimit     Status = 0x08
	StatusNoSuchFlow    Status = 0x09
	StatusUnknownKey    Status = 0x0A
	StatusNotPermitted  Status = 0x0B
)

var statusNames = [...]string{
	"ok", "server failure", "unsupported type", "unsupported command", "malformed request",
	"invalid value", "no such user", "user exists", "user limit reached", "no such flow",
	"unknown config key", "not permitted",
}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "status 0x" + hex8(uint8(s))
}

// Request is one request: TYPE CMD RID LEN DATA.
type Request struct {
	Cmd  Command
	RID  uint16
	Data []byte
}

// AppendRequest appends r. DATA longer than MaxDataLen is an error
// wrapping ErrTooLong.
func AppendRequest(b []byte, r Request) ([]byte, error) {
	if len(r.Data) > MaxDataLen {
		return b, fmt.Errorf("%w: %s DATA of %d octets", ErrTooLong, r.Cmd, len(r.Data))
	}
	b = append(b, byte(r.Cmd.Type()), r.Cmd.Code())
	b = binary.BigEndian.AppendUint16(b, r.RID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Data)))
	return append(b, r.Data...), nil
}

// ParseRequest parses a request at the start of b and returns it with the
// number of octets it took. Data aliases b.
func ParseRequest(b []byte) (Request, int, error) {
	if len(b) < RequestHeaderLen {
		return Request{}, 0, fmt.Errorf("%w: request header", ErrShort)
	}
	r := Request{
		Cmd: MakeCommand(Type(b[0]), b[1]),
		RID: binary.BigEndian.Uint16(b[2:4]),
	}
	l := int(binary.BigEndian.Uint16(b[4:6]))
	if len(b) < RequestHeaderLen+l {
		return Request{}, 0, fmt.Errorf("%w: %s request DATA", ErrShort, r.Cmd)
	}
	r.Data = b[RequestHeaderLen : RequestHeaderLen+l : RequestHeaderLen+l]
	return r, RequestHeaderLen + l, nil
}

// ReadRequest reads one request from r, exactly its octets. A stream that
// ends before it gives io.EOF; one that ends inside it an error wrapping
// ErrShort and io.ErrUnexpectedEOF.
func ReadRequest(r io.Reader) (Request, error) {
	var hdr [RequestHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, readErr(err, "request header")
	}
	cmd := MakeCommand(Type(hdr[0]), hdr[1])
	l := int(binary.BigEndian.Uint16(hdr[4:6]))
	data := make([]byte, l)
	if _, err := io.ReadFull(r, data); err != nil {
		return Request{}, readMoreErr(err, cmd.String()+" request DATA")
	}
	return Request{Cmd: cmd, RID: binary.BigEndian.Uint16(hdr[2:4]), Data: data}, nil
}

// Reply is one reply: TYPE CMD RID STATUS LEN DATA.
type Reply struct {
	Cmd    Command
	RID    uint16
	Status Status
	Data   []byte
}

// AppendReply appends r. DATA longer than MaxDataLen is an error wrapping
// ErrTooLong.
func AppendReply(b []byte, r Reply) ([]byte, error) {
	if len(r.Data) > MaxDataLen {
		return b, fmt.Errorf("%w: %s reply DATA of %d octets", ErrTooLong, r.Cmd, len(r.Data))
	}
	b = append(b, byte(r.Cmd.Type()), r.Cmd.Code())
	b = binary.BigEndian.AppendUint16(b, r.RID)
	b = append(b, byte(r.Status))
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Data)))
	return append(b, r.Data...), nil
}

// ParseReply parses a reply at the start of b and returns it with the
// number of octets it took. Data aliases b.
func ParseReply(b []byte) (Reply, int, error) {
	if len(b) < ReplyHeaderLen {
		return Reply{}, 0, fmt.Errorf("%w: reply header", ErrShort)
	}
	r := Reply{
		Cmd:    MakeCommand(Type(b[0]), b[1]),
		RID:    binary.BigEndian.Uint16(b[2:4]),
		Status: Status(b[4]),
	}
	l := int(binary.BigEndian.Uint16(b[5:7]))
	if len(b) < ReplyHeaderLen+l {
		return Reply{}, 0, fmt.Errorf("%w: %s reply DATA", ErrShort, r.Cmd)
	}
	r.Data = b[ReplyHeaderLen : ReplyHeaderLen+l : ReplyHeaderLen+l]
	return r, ReplyHeaderLen + l, nil
}

// ReadReply reads one reply from r, exactly its octets. A stream that ends
// before it gives io.EOF; one that ends inside it an error wrapping
// ErrShort and io.ErrUnexpectedEOF.
func ReadReply(r io.Reader) (Reply, error) {
	var hdr [ReplyHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Reply{}, readErr(err, "reply header")
	}
	rep := Reply{
		Cmd:    MakeCommand(Type(hdr[0]), hdr[1]),
		RID:    binary.BigEndian.Uint16(hdr[2:4]),
		Status: Status(hdr[4]),
	}
	rep.Data = make([]byte, binary.BigEndian.Uint16(hdr[5:7]))
	if _, err := io.ReadFull(r, rep.Data); err != nil {
		return Reply{}, readMoreErr(err, rep.Cmd.String()+" reply DATA")
	}
	return rep, nil
}

// readErr is for the first read of a message: an EOF before any octet is
// a peer that hung up between messages (io.EOF, as it came); one inside
// the read cut the message short.
func readErr(err error, what string) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: %w", ErrShort, what, err)
	}
	return err
}

// readMoreErr is for every later read of a message: any EOF there cut the
// message short.
func readMoreErr(err error, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: %w", ErrShort, what, io.ErrUnexpectedEOF)
	}
	return err
}

func checkString(what, s string) error {
	if len(s) < 1 || len(s) > MaxStringLen {
		return fmt.Errorf("%w: %s is %d octets", ErrStringLength, what, len(s))
	}
	return nil
}

// appendString appends LEN(1) and s; s must be at most 255 octets.
func appendString(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// parseString parses LEN(1) and that many octets, at least minLen.
func parseString(b []byte, what string, minLen int) (string, int, error) {
	if len(b) < lenLen {
		return "", 0, fmt.Errorf("%w: %s length", ErrShort, what)
	}
	l := int(b[0])
	if len(b) < lenLen+l {
		return "", 0, fmt.Errorf("%w: %s", ErrShort, what)
	}
	if l < minLen {
		return "", 0, fmt.Errorf("%w: %s is empty", ErrStringLength, what)
	}
	return string(b[lenLen : lenLen+l]), lenLen + l, nil
}

func hex8(v uint8) string {
	s := strconv.FormatUint(uint64(v), 16)
	if len(s) == 1 {
		s = "0" + s
	}
	return s
}
