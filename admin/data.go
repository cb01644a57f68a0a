package admin

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"tungate/socks"
)

// Sizes of the DATA fields.
const (
	counterLen     = 8
	flowIDLen      = 8
	usersQueryLen  = 4 + 2          // START MAX
	flowsQueryLen  = 8 + 2          // CURSOR MAX
	usersHeadLen   = 4 + 4 + 2      // TOTAL NEXT N
	flowsHeadLen   = 4 + 8 + 2      // TOTAL NEXT N
	userEntryFixed = lenLen + 1 + 4 // ULEN ROLE NCONN
	flowFixedHead  = 8 + 1 + 1 + 1  // FLOWID PROTO STATE FLAGS
	flowFixedTail  = 6*8 + lenLen   // counters, AGE, IDLE, ULEN
	capsHeadLen    = 2              // N
	keyCountLen    = 1              // K
	configHeadLen  = 1 + lenLen     // KEY VLEN
	maxFlowLen     = flowFixedHead + 2*socks.MaxAddrLen + flowFixedTail + MaxStringLen
	minFlowLen     = flowFixedHead + 2*7 + flowFixedTail // two IPv4 addresses, no user
	metricsHeadLen = 1                                   // NVAL
)

// UsersEnd is NEXT in the last page of LIST USERS.
const UsersEnd uint32 = 0xFFFFFFFF

// Role is a user's role, ROLE in ADD USER and LIST USERS.
type Role uint8

// Roles.
const (
	RoleUser  Role = 0x00 // may use the SOCKS5 server
	RoleAdmin Role = 0x01 // may also log in here
)

func (r Role) String() string {
	switch r {
	case RoleUser:
		return "user"
	case RoleAdmin:
		return "admin"
	}
	return "role(" + strconv.Itoa(int(r)) + ")"
}

// ParseRole parses "user" or "admin".
func ParseRole(s string) (Role, error) {
	switch s {
	case "user":
		return RoleUser, nil
	case "admin":
		return RoleAdmin, nil
	}
	return 0, fmt.Errorf("admin: unknown role %q (want user or admin)", s)
}

// AppendCounter appends a 64-bit counter: the reply DATA of BYTES
// TRANSFERRED, HISTORIC and CONCURRENT CONNECTIONS.
func AppendCounter(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// ParseCounter parses a counter, which must be exactly b.
func ParseCounter(b []byte) (uint64, error) {
	if err := exact(b, counterLen, "counter"); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// AppendFlowID appends FLOWID(8): the request DATA of GET FLOW and CLOSE
// FLOW.
func AppendFlowID(b []byte, id uint64) []byte { return binary.BigEndian.AppendUint64(b, id) }

// ParseFlowID parses FLOWID, which must be exactly b.
func ParseFlowID(b []byte) (uint64, error) {
	if err := exact(b, flowIDLen, "FLOWID"); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// UsersQuery is the request DATA of LIST USERS: START(4) MAX(2). START
// is an index into the users sorted by name.
type UsersQuery struct {
	Start uint32
	Max   uint16
}

// AppendUsersQuery appends q.
func AppendUsersQuery(b []byte, q UsersQuery) []byte {
	b = binary.BigEndian.AppendUint32(b, q.Start)
	return binary.BigEndian.AppendUint16(b, q.Max)
}

// ParseUsersQuery parses a UsersQuery, which must be exactly b.
func ParseUsersQuery(b []byte) (UsersQuery, error) {
	if err := exact(b, usersQueryLen, "LIST USERS request"); err != nil {
		return UsersQuery{}, err
	}
	return UsersQuery{Start: binary.BigEndian.Uint32(b), Max: binary.BigEndian.Uint16(b[4:])}, nil
}

// UserInfo is one entry of LIST USERS: ULEN UNAME ROLE(1) NCONN(4).
type UserInfo struct {
	Name  string
	Role  Role
	Flows uint32 // NCONN: the user's live flows
}

// UsersPage is the reply DATA of LIST USERS: TOTAL(4) NEXT(4) N(2) and N
// entries. Next is UsersEnd on the last page.
type UsersPage struct {
	Total uint32
	Next  uint32
	Users []UserInfo
}

// userEntryLen is the encoded size of u.
func userEntryLen(u UserInfo) int { return userEntryFixed + len(u.Name) }

// AppendUsersPage appends p.
func AppendUsersPage(b []byte, p UsersPage) ([]byte, error) {
	if len(p.Users) > 0xFFFF {
		return b, fmt.Errorf("%w: %d users in a page", ErrTooLong, len(p.Users))
	}
	for _, u := range p.Users {
		if err := checkString("user name", u.Name); err != nil {
			return b, err
		}
	}
	b = binary.BigEndian.AppendUint32(b, p.Total)
	b = binary.BigEndian.AppendUint32(b, p.Next)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.Users)))
	for _, u := range p.Users {
		b = appendString(b, u.Name)
		b = append(b, byte(u.Role))
		b = binary.BigEndian.AppendUint32(b, u.Flows)
	}
	return b, nil
}

// ParseUsersPage parses a UsersPage, which must be exactly b.
func ParseUsersPage(b []byte) (UsersPage, error) {
	if len(b) < usersHeadLen {
		return UsersPage{}, fmt.Errorf("%w: LIST USERS reply", ErrShort)
	}
	p := UsersPage{Total: binary.BigEndian.Uint32(b), Next: binary.BigEndian.Uint32(b[4:])}
	n := int(binary.BigEndian.Uint16(b[8:]))
	b = b[usersHeadLen:]
	// Each entry takes at least userEntryFixed+1 octets: cap the
	// allocation by what b can hold.
	p.Users = make([]UserInfo, 0, min(n, len(b)/(userEntryFixed+1)))
	for i := range n {
		name, m, err := parseString(b, "LIST USERS UNAME", 1)
		if err != nil {
			return UsersPage{}, err
		}
		b = b[m:]
		if len(b) < 1+4 {
			return UsersPage{}, fmt.Errorf("%w: LIST USERS entry %d", ErrShort, i)
		}
		p.Users = append(p.Users, UserInfo{Name: name, Role: Role(b[0]), Flows: binary.BigEndian.Uint32(b[1:])})
		b = b[1+4:]
	}
	if len(b) > 0 {
		return UsersPage{}, fmt.Errorf("%w: LIST USERS reply", ErrTrailing)
	}
	return p, nil
}

// Metrics is the reply DATA of METRICS: NVAL(1) and NVAL values, in this
// order. A parser fills the fields it is sent and ignores values past
// them.
type Metrics struct {
	Historic       uint64 // flows ever accepted
	Concurrent     uint64 // flows open now
	BytesTotal     uint64
	BytesUp        uint64
	BytesDown      uint64
	PeakConcurrent uint64
	UptimeSeconds  uint64
	FailedLogins   uint64 // SOCKS5 and admin
	TCPOpen        uint64
	UDPOpen        uint64
	DialFailures   uint64 // upstream dial failures
}

// MetricsCount is the number of values in Metrics.
const MetricsCount = 11

func (m *Metrics) values() [MetricsCount]*uint64 {
	return [MetricsCount]*uint64{
		&m.Historic, &m.Concurrent, &m.BytesTotal, &m.BytesUp, &m.BytesDown,
		&m.PeakConcurrent, &m.UptimeSeconds, &m.FailedLogins, &m.TCPOpen, &m.UDPOpen, &m.DialFailures,
	}
}

// AppendMetrics appends m with NVAL = MetricsCount.
func AppendMetrics(b []byte, m Metrics) []byte {
	b = append(b, MetricsCount)
	for _, v := range m.values() {
		b = binary.BigEndian.AppendUint64(b, *v)
	}
	return b
}

// ParseMetrics parses a METRICS reply, which must be exactly b: NVAL and
// NVAL values. Values past MetricsCount are ignored; fields past NVAL stay
// zero, and n says how many values there were.
func ParseMetrics(b []byte) (m Metrics, n int, err error) {
	if len(b) < metricsHeadLen {
		return Metrics{}, 0, fmt.Errorf("%w: METRICS reply", ErrShort)
	}
	n = int(b[0])
	if err := exact(b[metricsHeadLen:], n*counterLen, "METRICS values"); err != nil {
		return Metrics{}, 0, err
	}
	for i, v := range m.values() {
		if i >= n {
			break
		}
		*v = binary.BigEndian.Uint64(b[metricsHeadLen+i*counterLen:])
	}
	return m, n, nil
}

// Key is a config KEY.
type Key uint8

// Config keys.
const (
	KeyRelayBuffer    Key = 0x00 // relay buffer size, bytes (4)
	KeyTCPIdleTimeout Key = 0x01 // TCP idle timeout, ms (4)
	KeyUDPIdleTimeout Key = 0x02 // UDP idle timeout, ms (4)
	KeyAuthRequired   Key = 0x03 // SOCKS5 authentication required, 0 or 1 (1)
	KeyMaxFlows       Key = 0x04 // maximum concurrent flows, 0 no limit (4)
	KeyLogLevel       Key = 0x05 // 0 debug, 1 info, 2 warn, 3 error (1)
	KeyConnectTimeout Key = 0x06 // upstream connect timeout, ms (4)
)

// Keys lists every config key of the contract.
var Keys = []Key{
	KeyRelayBuffer, KeyTCPIdleTimeout, KeyUDPIdleTimeout, KeyAuthRequired,
	KeyMaxFlows, KeyLogLevel, KeyConnectTimeout,
}

// keyNames are the names of the keys: those of tungate's flags.
var keyNames = [...]string{
	KeyRelayBuffer:    "relay-buffer",
	KeyTCPIdleTimeout: "tcp-idle-timeout",
	KeyUDPIdleTimeout: "udp-timeout",
	KeyAuthRequired:   "socks-auth",
	KeyMaxFlows:       "max-flows",
	KeyLogLevel:       "log-level",
	KeyConnectTimeout: "connect-timeout",
}

// String returns the key's name, that of the tungate flag it sets.
func (k Key) String() string {
	if int(k) < len(keyNames) {
		return keyNames[k]
	}
	return "key(0x" + hex8(uint8(k)) + ")"
}

// Size returns the length of the key's VALUE, or 0 for an unknown key.
func (k Key) Size() int {
	switch k {
	case KeyAuthRequired, KeyLogLevel:
		return 1
	case KeyRelayBuffer, KeyTCPIdleTimeout, KeyUDPIdleTimeout, KeyMaxFlows, KeyConnectTimeout:
		return 4
	}
	return 0
}

// Millis reports whether the key's value is a duration in milliseconds.
func (k Key) Millis() bool {
	return k == KeyTCPIdleTimeout || k == KeyUDPIdleTimeout || k == KeyConnectTimeout
}

// ParseKey parses a key's name, or its number in decimal or 0x hex.
func ParseKey(s string) (Key, error) {
	for i, n := range keyNames {
		if strings.EqualFold(s, n) {
			return Key(i), nil
		}
	}
	if v, err := strconv.ParseUint(s, 0, 8); err == nil {
		return Key(v), nil
	}
	return 0, fmt.Errorf("admin: unknown config key %q (want one of %s)", s, strings.Join(keyNames[:], ", "))
}

// AppendKey appends KEY(1): the request DATA of GET CONFIG.
func AppendKey(b []byte, k Key) []byte { return append(b, byte(k)) }

// ParseKeyData parses the request DATA of GET CONFIG, which must be
// exactly one KEY.
func ParseKeyData(b []byte) (Key, error) {
	if err := exact(b, 1, "GET CONFIG request"); err != nil {
		return 0, err
	}
	return Key(b[0]), nil
}

// ConfigValue is KEY(1) VLEN(1) VALUE: the request DATA of SET CONFIG and
// the reply DATA of GET and SET CONFIG. Values are big-endian.
type ConfigValue struct {
	Key   Key
	Value []byte
}

// UintValue returns the ConfigValue of v for k, in k.Size() octets (4 for
// an unknown key). It does not check that v fits.
func UintValue(k Key, v uint32) ConfigValue {
	switch k.Size() {
	case 1:
		return ConfigValue{Key: k, Value: []byte{byte(v)}}
	default:
		return ConfigValue{Key: k, Value: binary.BigEndian.AppendUint32(nil, v)}
	}
}

// Uint returns VALUE as a big-endian number (of up to 8 octets; longer
// values are truncated to their last 8).
func (c ConfigValue) Uint() uint64 {
	var v uint64
	for _, o := range c.Value {
		v = v<<8 | uint64(o)
	}
	return v
}

// AppendConfigValue appends c.
func AppendConfigValue(b []byte, c ConfigValue) ([]byte, error) {
	if len(c.Value) > 0xFF {
		return b, fmt.Errorf("%w: config VALUE of %d octets", ErrTooLong, len(c.Value))
	}
	b = append(b, byte(c.Key), byte(len(c.Value)))
	return append(b, c.Value...), nil
}

// ParseConfigValue parses a ConfigValue, which must be exactly b. Value
// aliases b.
func ParseConfigValue(b []byte) (ConfigValue, error) {
	if len(b) < configHeadLen {
		return ConfigValue{}, fmt.Errorf("%w: config KEY VLEN", ErrShort)
	}
	c := ConfigValue{Key: Key(b[0])}
	if err := exact(b[configHeadLen:], int(b[1]), "config VALUE"); err != nil {
		return ConfigValue{}, err
	}
	c.Value = b[configHeadLen:len(b):len(b)]
	return c, nil
}

// FlowsQuery is the request DATA of LIST FLOWS: CURSOR(8) MAX(2). The page
// holds flows with IDs above Cursor.
type FlowsQuery struct {
	Cursor uint64
	Max    uint16
}

// AppendFlowsQuery appends q.
func AppendFlowsQuery(b []byte, q FlowsQuery) []byte {
	b = binary.BigEndian.AppendUint64(b, q.Cursor)
	return binary.BigEndian.AppendUint16(b, q.Max)
}

// ParseFlowsQuery parses a FlowsQuery, which must be exactly b.
func ParseFlowsQuery(b []byte) (FlowsQuery, error) {
	if err := exact(b, flowsQueryLen, "LIST FLOWS request"); err != nil {
		return FlowsQuery{}, err
	}
	return FlowsQuery{Cursor: binary.BigEndian.Uint64(b), Max: binary.BigEndian.Uint16(b[8:])}, nil
}

// Proto is a flow's PROTO, an IANA protocol number.
type Proto uint8

// Protocols.
const (
	ProtoICMP   Proto = 1
	ProtoTCP    Proto = 6
	ProtoUDP    Proto = 17
	ProtoICMPv6 Proto = 58
)

func (p Proto) String() string {
	switch p {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "icmpv6"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// FlowState is a flow's STATE.
type FlowState uint8

// Flow states.
const (
	StateOpening     FlowState = 0x00
	StateEstablished FlowState = 0x01
	StateHalfClosed  FlowState = 0x02
	StateClosing     FlowState = 0x03
)

func (s FlowState) String() string {
	switch s {
	case StateOpening:
		return "opening"
	case StateEstablished:
		return "established"
	case StateHalfClosed:
		return "half-closed"
	case StateClosing:
		return "closing"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// FlowFlags are a flow's FLAGS.
type FlowFlags uint8

// Flow flags.
const (
	FlagTUN      FlowFlags = 1 << 0 // came in through the TUN device
	FlagSOCKS    FlowFlags = 1 << 1 // came in through the SOCKS5 listener
	FlagUpstream FlowFlags = 1 << 2 // left through an upstream SOCKS5 proxy
	FlagDomain   FlowFlags = 1 << 3 // destination given as a domain name
)

var flagNames = [...]string{"tun", "socks", "upstream", "domain"}

// String returns the names of the flags set, joined by '|', bits without a
// name as hex, or "-" for none.
func (f FlowFlags) String() string {
	if f == 0 {
		return "-"
	}
	var parts []string
	for i, n := range flagNames {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if rest := f &^ (1<<len(flagNames) - 1); rest != 0 {
		parts = append(parts, "0x"+hex8(uint8(rest)))
	}
	return strings.Join(parts, "|")
}

// Flow is FLOW: a snapshot of one live flow.
type Flow struct {
	ID                 uint64
	Proto              Proto
	State              FlowState
	Flags              FlowFlags
	Src, Dst           socks.Addr
	BytesUp, BytesDown uint64 // up is client to destination
	PktsUp, PktsDown   uint64
	AgeMS, IdleMS      uint64
	User               string // "" for flows without a SOCKS5 user
}

// AppendFlow appends f. Src and Dst must be valid addresses (a server
// sends 0.0.0.0:0 for one it does not know yet).
func AppendFlow(b []byte, f Flow) ([]byte, error) {
	if len(f.User) > MaxStringLen {
		return b, fmt.Errorf("%w: flow user is %d octets", ErrStringLength, len(f.User))
	}
	b0 := b
	b = binary.BigEndian.AppendUint64(b, f.ID)
	b = append(b, byte(f.Proto), byte(f.State), byte(f.Flags))
	var err error
	if b, err = socks.AppendAddr(b, f.Src); err != nil {
		return b0, fmt.Errorf("admin: flow %d SRC: %w", f.ID, err)
	}
	if b, err = socks.AppendAddr(b, f.Dst); err != nil {
		return b0, fmt.Errorf("admin: flow %d DST: %w", f.ID, err)
	}
	for _, v := range [...]uint64{f.BytesUp, f.BytesDown, f.PktsUp, f.PktsDown, f.AgeMS, f.IdleMS} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return appendString(b, f.User), nil
}

// ParseFlow parses a FLOW at the start of b and returns it with the number
// of octets it took.
func ParseFlow(b []byte) (Flow, int, error) {
	if len(b) < flowFixedHead {
		return Flow{}, 0, fmt.Errorf("%w: FLOW", ErrShort)
	}
	f := Flow{
		ID:    binary.BigEndian.Uint64(b),
		Proto: Proto(b[8]), State: FlowState(b[9]), Flags: FlowFlags(b[10]),
	}
	n := flowFixedHead
	var m int
	var err error
	if f.Src, m, err = socks.ParseAddr(b[n:]); err != nil {
		return Flow{}, 0, fmt.Errorf("admin: FLOW SRC: %w", addrErr(err))
	}
	n += m
	if f.Dst, m, err = socks.ParseAddr(b[n:]); err != nil {
		return Flow{}, 0, fmt.Errorf("admin: FLOW DST: %w", addrErr(err))
	}
	n += m
	if len(b) < n+flowFixedTail {
		return Flow{}, 0, fmt.Errorf("%w: FLOW counters", ErrShort)
	}
	for _, v := range [...]*uint64{&f.BytesUp, &f.BytesDown, &f.PktsUp, &f.PktsDown, &f.AgeMS, &f.IdleMS} {
		*v = binary.BigEndian.Uint64(b[n:])
		n += 8
	}
	if f.User, m, err = parseString(b[n:], "FLOW UNAME", 0); err != nil {
		return Flow{}, 0, err
	}
	return f, n + m, nil
}

// ParseFlowData parses the reply DATA of GET FLOW, which must be exactly
// one FLOW.
func ParseFlowData(b []byte) (Flow, error) {
	f, n, err := ParseFlow(b)
	if err != nil {
		return Flow{}, err
	}
	if n != len(b) {
		return Flow{}, fmt.Errorf("%w: GET FLOW reply", ErrTrailing)
	}
	return f, nil
}

// addrErr makes a socks address error one of ours: a short address is
// ErrShort, anything else stays as it is (wrapped by the caller).
func addrErr(err error) error {
	if errors.Is(err, socks.ErrShort) {
		return ErrShort
	}
	return err
}

// FlowsPage is the reply DATA of LIST FLOWS: TOTAL(4) NEXT(8) N(2) and N
// flows. Next is 0 on the last page.
type FlowsPage struct {
	Total uint32
	Next  uint64
	Flows []Flow
}

// AppendFlowsPage appends p.
func AppendFlowsPage(b []byte, p FlowsPage) ([]byte, error) {
	if len(p.Flows) > 0xFFFF {
		return b, fmt.Errorf("%w: %d flows in a page", ErrTooLong, len(p.Flows))
	}
	b0 := b
	b = binary.BigEndian.AppendUint32(b, p.Total)
	b = binary.BigEndian.AppendUint64(b, p.Next)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.Flows)))
	for _, f := range p.Flows {
		var err error
		if b, err = AppendFlow(b, f); err != nil {
			return b0, err
		}
	}
	return b, nil
}

// ParseFlowsPage parses a FlowsPage, which must be exactly b.
func ParseFlowsPage(b []byte) (FlowsPage, error) {
	if len(b) < flowsHeadLen {
		return FlowsPage{}, fmt.Errorf("%w: LIST FLOWS reply", ErrShort)
	}
	p := FlowsPage{Total: binary.BigEndian.Uint32(b), Next: binary.BigEndian.Uint64(b[4:])}
	n := int(binary.BigEndian.Uint16(b[12:]))
	b = b[flowsHeadLen:]
	p.Flows = make([]Flow, 0, min(n, len(b)/minFlowLen))
	for range n {
		f, m, err := ParseFlow(b)
		if err != nil {
			return FlowsPage{}, err
		}
		p.Flows = append(p.Flows, f)
		b = b[m:]
	}
	if len(b) > 0 {
		return FlowsPage{}, fmt.Errorf("%w: LIST FLOWS reply", ErrTrailing)
	}
	return p, nil
}

// NewUser is the request DATA of ADD USER: ULEN UNAME PLEN PASSWD ROLE(1).
type NewUser struct {
	Name     string
	Password string
	Role     Role
}

// AppendNewUser appends u.
func AppendNewUser(b []byte, u NewUser) ([]byte, error) {
	b, err := AppendCredentials(b, Credentials{Name: u.Name, Password: u.Password})
	if err != nil {
		return b, err
	}
	return append(b, byte(u.Role)), nil
}

// ParseNewUser parses a NewUser, which must be exactly b. An empty name or
// password is an error wrapping ErrStringLength.
func ParseNewUser(b []byte) (NewUser, error) {
	c, n, err := parseCredentials(b, "ADD USER")
	if err != nil {
		return NewUser{}, err
	}
	if err := exact(b[n:], 1, "ADD USER ROLE"); err != nil {
		return NewUser{}, err
	}
	return NewUser{Name: c.Name, Password: c.Password, Role: Role(b[n])}, checkCredentials(c, "ADD USER")
}

// Credentials is the request DATA of SET PASSWORD: ULEN UNAME PLEN PASSWD.
type Credentials struct {
	Name     string
	Password string
}

// AppendCredentials appends c.
func AppendCredentials(b []byte, c Credentials) ([]byte, error) {
	if err := checkString("user name", c.Name); err != nil {
		return b, err
	}
	if err := checkString("password", c.Password); err != nil {
		return b, err
	}
	b = appendString(b, c.Name)
	return appendString(b, c.Password), nil
}

// ParseCredentials parses Credentials, which must be exactly b. An empty
// name or password is an error wrapping ErrStringLength.
func ParseCredentials(b []byte) (Credentials, error) {
	c, n, err := parseCredentials(b, "SET PASSWORD")
	if err != nil {
		return Credentials{}, err
	}
	if n != len(b) {
		return Credentials{}, fmt.Errorf("%w: SET PASSWORD request", ErrTrailing)
	}
	return c, checkCredentials(c, "SET PASSWORD")
}

func parseCredentials(b []byte, what string) (Credentials, int, error) {
	name, n, err := parseString(b, what+" UNAME", 0)
	if err != nil {
		return Credentials{}, 0, err
	}
	pass, m, err := parseString(b[n:], what+" PASSWD", 0)
	if err != nil {
		return Credentials{}, 0, err
	}
	return Credentials{Name: name, Password: pass}, n + m, nil
}

func checkCredentials(c Credentials, what string) error {
	if c.Name == "" || c.Password == "" {
		return fmt.Errorf("%w: %s has an empty UNAME or PASSWD", ErrStringLength, what)
	}
	return nil
}

// AppendUserName appends ULEN UNAME: the request DATA of DELETE USER.
func AppendUserName(b []byte, name string) ([]byte, error) {
	if err := checkString("user name", name); err != nil {
		return b, err
	}
	return appendString(b, name), nil
}

// ParseUserName parses ULEN UNAME, which must be exactly b. An empty name
// is an error wrapping ErrStringLength.
func ParseUserName(b []byte) (string, error) {
	name, n, err := parseString(b, "DELETE USER UNAME", 1)
	if err != nil {
		return "", err
	}
	if n != len(b) {
		return "", fmt.Errorf("%w: DELETE USER request", ErrTrailing)
	}
	return name, nil
}

// Capabilities is the reply DATA of CAPABILITIES: N(2), N × (TYPE CMD),
// K(1), K × KEY.
type Capabilities struct {
	Commands []Command
	Keys     []Key
}

// AppendCapabilities appends c.
func AppendCapabilities(b []byte, c Capabilities) ([]byte, error) {
	if len(c.Commands) > 0xFFFF || len(c.Keys) > 0xFF {
		return b, fmt.Errorf("%w: %d commands and %d keys", ErrTooLong, len(c.Commands), len(c.Keys))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(c.Commands)))
	for _, cmd := range c.Commands {
		b = append(b, byte(cmd.Type()), cmd.Code())
	}
	b = append(b, byte(len(c.Keys)))
	for _, k := range c.Keys {
		b = append(b, byte(k))
	}
	return b, nil
}

// ParseCapabilities parses Capabilities, which must be exactly b.
func ParseCapabilities(b []byte) (Capabilities, error) {
	if len(b) < capsHeadLen {
		return Capabilities{}, fmt.Errorf("%w: CAPABILITIES reply", ErrShort)
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[capsHeadLen:]
	if len(b) < 2*n+keyCountLen {
		return Capabilities{}, fmt.Errorf("%w: CAPABILITIES commands", ErrShort)
	}
	var c Capabilities
	c.Commands = make([]Command, n)
	for i := range c.Commands {
		c.Commands[i] = MakeCommand(Type(b[2*i]), b[2*i+1])
	}
	b = b[2*n:]
	k := int(b[0])
	if err := exact(b[keyCountLen:], k, "CAPABILITIES keys"); err != nil {
		return Capabilities{}, err
	}
	c.Keys = make([]Key, k)
	for i := range c.Keys {
		c.Keys[i] = Key(b[keyCountLen+i])
	}
	return c, nil
}

// exact checks that b is n octets.
func exact(b []byte, n int, what string) error {
	switch {
	case len(b) < n:
		return fmt.Errorf("%w: %s", ErrShort, what)
	case len(b) > n:
		return fmt.Errorf("%w: %s", ErrTrailing, what)
	}
	return nil
}
