package admin_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"tungate/admin"
	"tungate/socks"
)

// h decodes hex written with spaces for readability.
func h(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestLoginGolden(t *testing.T) {
	l := admin.Login{User: "admin", Password: "secret"}
	want := h("01 05 61646d696e 06 736563726574")
	got, err := admin.AppendLogin(nil, l)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("AppendLogin = %x, %v; want %x", got, err, want)
	}
	p, n, err := admin.ParseLogin(append(want, 0xEE))
	if err != nil || n != len(want) || p != l {
		t.Fatalf("ParseLogin = %+v, %d, %v", p, n, err)
	}
	r, err := admin.ReadLogin(bytes.NewReader(append(want, 0xEE)))
	if err != nil || r != l {
		t.Fatalf("ReadLogin = %+v, %v", r, err)
	}

	for _, tc := range []struct {
		name string
		in   []byte
		err  error
	}{
		{"version", h("05 01 61 01 62"), admin.ErrVersion},
		{"version alone", h("02"), admin.ErrVersion},
		{"empty user", h("01 00 01 62"), admin.ErrStringLength},
		{"empty password", h("01 01 61 00"), admin.ErrStringLength},
		{"short user", h("01 05 6164"), admin.ErrShort},
		{"no plen", h("01 01 61"), admin.ErrShort},
		{"short password", h("01 01 61 03 6263"), admin.ErrShort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := admin.ParseLogin(tc.in)
			if !errors.Is(err, tc.err) {
				t.Errorf("ParseLogin(%x) = %v, want %v", tc.in, err, tc.err)
			}
			_, err = admin.ReadLogin(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.err) {
				t.Errorf("ReadLogin(%x) = %v, want %v", tc.in, err, tc.err)
			}
		})
	}
	if _, err := admin.ReadLogin(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("ReadLogin(empty) = %v, want io.EOF", err)
	}
	if _, err := admin.ReadLogin(bytes.NewReader(h("01 05 6164"))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadLogin(cut) = %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := admin.AppendLogin(nil, admin.Login{User: strings.Repeat("a", 256), Password: "x"}); !errors.Is(err, admin.ErrStringLength) {
		t.Errorf("AppendLogin(long user) = %v", err)
	}
	if _, err := admin.AppendLogin(nil, admin.Login{User: "a"}); !errors.Is(err, admin.ErrStringLength) {
		t.Errorf("AppendLogin(no password) = %v", err)
	}
}

func TestLoginReplyGolden(t *testing.T) {
	for st, want := range map[admin.LoginStatus]string{
		admin.LoginOK: "01 00", admin.LoginFailed: "01 01", admin.LoginInvalidVersion: "01 02", admin.LoginServerError: "01 03",
	} {
		if got := admin.AppendLoginReply(nil, st); !bytes.Equal(got, h(want)) {
			t.Errorf("AppendLoginReply(%v) = %x, want %s", st, got, want)
		}
		got, err := admin.ReadLoginReply(bytes.NewReader(h(want)))
		if err != nil || got != st {
			t.Errorf("ReadLoginReply(%s) = %v, %v", want, got, err)
		}
	}
	if _, err := admin.ParseLoginReply(h("02 00")); !errors.Is(err, admin.ErrVersion) {
		t.Errorf("ParseLoginReply(02 00) = %v", err)
	}
	if _, err := admin.ParseLoginReply(h("01")); !errors.Is(err, admin.ErrShort) {
		t.Errorf("ParseLoginReply(01) = %v", err)
	}
	if _, err := admin.ParseLoginReply(h("01 00 00")); !errors.Is(err, admin.ErrTrailing) {
		t.Errorf("ParseLoginReply(01 00 00) = %v", err)
	}
}

// flow7 and its encoding are a FLOW used by several golden tests.
var flow7 = admin.Flow{
	ID: 7, Proto: admin.ProtoTCP, State: admin.StateEstablished, Flags: admin.FlagSOCKS | admin.FlagDomain,
	Src:     socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 54321},
	Dst:     socks.Addr{Name: "example.com", Port: 443},
	BytesUp: 0x100, BytesDown: 0x2000, PktsUp: 2, PktsDown: 3, AgeMS: 1500, IdleMS: 20,
	User: "alice",
}

const flow7Hex = "0000000000000007 06 01 0a" +
	" 01 7f000001 d431" +
	" 03 0b 6578616d706c652e636f6d 01bb" +
	" 0000000000000100 0000000000002000 0000000000000002 0000000000000003" +
	" 00000000000005dc 0000000000000014" +
	" 05 616c696365"

// flowV6 has IPv6 addresses, no user (a TUN flow) and a UDP proto.
var flowV6 = admin.Flow{
	ID: 0x0102030405060708, Proto: admin.ProtoUDP, State: admin.StateOpening, Flags: admin.FlagTUN | admin.FlagUpstream,
	Src: socks.Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 5353},
	Dst: socks.Addr{IP: netip.MustParseAddr("2001:db8::2"), Port: 53},
}

const flowV6Hex = "0102030405060708 11 00 05" +
	" 04 20010db8000000000000000000000001 14e9" +
	" 04 20010db8000000000000000000000002 0035" +
	" 0000000000000000 0000000000000000 0000000000000000 0000000000000000" +
	" 0000000000000000 0000000000000000" +
	" 00"

// TestRequestGolden encodes and decodes every request of the contract.
func TestRequestGolden(t *testing.T) {
	must := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		req   admin.Request
		wire  string
		check func(data []byte) (any, any, error) // parse DATA: got, want
	}{
		{"BYTES TRANSFERRED", admin.Request{Cmd: admin.CmdBytes, RID: 1}, "00 00 0001 0000", nil},
		{"HISTORIC CONNECTIONS", admin.Request{Cmd: admin.CmdHistoric, RID: 2}, "00 01 0002 0000", nil},
		{"CONCURRENT CONNECTIONS", admin.Request{Cmd: admin.CmdConcurrent, RID: 3}, "00 02 0003 0000", nil},
		{"LIST USERS", admin.Request{Cmd: admin.CmdListUsers, RID: 4,
			Data: admin.AppendUsersQuery(nil, admin.UsersQuery{Start: 2, Max: 16})},
			"00 03 0004 0006 00000002 0010",
			func(d []byte) (any, any, error) {
				q, err := admin.ParseUsersQuery(d)
				return q, admin.UsersQuery{Start: 2, Max: 16}, err
			}},
		{"METRICS", admin.Request{Cmd: admin.CmdMetrics, RID: 5}, "00 04 0005 0000", nil},
		{"GET CONFIG", admin.Request{Cmd: admin.CmdGetConfig, RID: 6, Data: admin.AppendKey(nil, admin.KeyLogLevel)},
			"00 05 0006 0001 05",
			func(d []byte) (any, any, error) {
				k, err := admin.ParseKeyData(d)
				return k, admin.KeyLogLevel, err
			}},
		{"LIST FLOWS", admin.Request{Cmd: admin.CmdListFlows, RID: 7,
			Data: admin.AppendFlowsQuery(nil, admin.FlowsQuery{Cursor: 0x1234, Max: 256})},
			"00 06 0007 000a 0000000000001234 0100",
			func(d []byte) (any, any, error) {
				q, err := admin.ParseFlowsQuery(d)
				return q, admin.FlowsQuery{Cursor: 0x1234, Max: 256}, err
			}},
		{"GET FLOW", admin.Request{Cmd: admin.CmdGetFlow, RID: 8, Data: admin.AppendFlowID(nil, 7)},
			"00 07 0008 0008 0000000000000007",
			func(d []byte) (any, any, error) {
				id, err := admin.ParseFlowID(d)
				return id, uint64(7), err
			}},
		{"ADD USER", admin.Request{Cmd: admin.CmdAddUser, RID: 9,
			Data: must(admin.AppendNewUser(nil, admin.NewUser{Name: "bob", Password: "pw", Role: admin.RoleAdmin}))},
			"01 00 0009 0008 03 626f62 02 7077 01",
			func(d []byte) (any, any, error) {
				u, err := admin.ParseNewUser(d)
				return u, admin.NewUser{Name: "bob", Password: "pw", Role: admin.RoleAdmin}, err
			}},
		{"DELETE USER", admin.Request{Cmd: admin.CmdDeleteUser, RID: 10, Data: must(admin.AppendUserName(nil, "bob"))},
			"01 01 000a 0004 03 626f62",
			func(d []byte) (any, any, error) {
				n, err := admin.ParseUserName(d)
				return n, "bob", err
			}},
		{"SET PASSWORD", admin.Request{Cmd: admin.CmdSetPassword, RID: 11,
			Data: must(admin.AppendCredentials(nil, admin.Credentials{Name: "bob", Password: "new"}))},
			"01 02 000b 0008 03 626f62 03 6e6577",
			func(d []byte) (any, any, error) {
				c, err := admin.ParseCredentials(d)
				return c, admin.Credentials{Name: "bob", Password: "new"}, err
			}},
		{"SET CONFIG", admin.Request{Cmd: admin.CmdSetConfig, RID: 12,
			Data: must(admin.AppendConfigValue(nil, admin.UintValue(admin.KeyRelayBuffer, 65536)))},
			"01 03 000c 0006 00 04 00010000",
			func(d []byte) (any, any, error) {
				v, err := admin.ParseConfigValue(d)
				return v, admin.ConfigValue{Key: admin.KeyRelayBuffer, Value: h("00010000")}, err
			}},
		{"CLOSE FLOW", admin.Request{Cmd: admin.CmdCloseFlow, RID: 13, Data: admin.AppendFlowID(nil, 0xFFFFFFFFFFFFFFFE)},
			"01 04 000d 0008 fffffffffffffffe",
			func(d []byte) (any, any, error) {
				id, err := admin.ParseFlowID(d)
				return id, uint64(0xFFFFFFFFFFFFFFFE), err
			}},
		{"QUIT", admin.Request{Cmd: admin.CmdQuit, RID: 14}, "02 00 000e 0000", nil},
		{"PING", admin.Request{Cmd: admin.CmdPing, RID: 0xFFFF, Data: []byte("abc")}, "02 01 ffff 0003 616263", nil},
		{"CAPABILITIES", admin.Request{Cmd: admin.CmdCaps, RID: 0}, "02 02 0000 0000", nil},
		{"unknown TYPE", admin.Request{Cmd: admin.MakeCommand(9, 1), RID: 1, Data: []byte{0}}, "09 01 0001 0001 00", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := h(tc.wire)
			got, err := admin.AppendRequest(nil, tc.req)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("AppendRequest = %x, %v\nwant             %x", got, err, want)
			}
			r, n, err := admin.ParseRequest(append(want, 0xAA))
			if err != nil || n != len(want) {
				t.Fatalf("ParseRequest = %d, %v", n, err)
			}
			if r.Cmd != tc.req.Cmd || r.RID != tc.req.RID || !bytes.Equal(r.Data, tc.req.Data) {
				t.Fatalf("ParseRequest = %+v, want %+v", r, tc.req)
			}
			rr, err := admin.ReadRequest(bytes.NewReader(append(want, 0xAA)))
			if err != nil || rr.Cmd != tc.req.Cmd || rr.RID != tc.req.RID || !bytes.Equal(rr.Data, tc.req.Data) {
				t.Fatalf("ReadRequest = %+v, %v", rr, err)
			}
			if tc.req.Cmd.Known() && tc.req.Cmd.String() != tc.name && !strings.HasSuffix(tc.name, tc.req.Cmd.String()) {
				t.Errorf("String() = %q, want %q", tc.req.Cmd.String(), tc.name)
			}
			if tc.check != nil {
				got, want, err := tc.check(r.Data)
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Errorf("DATA parses as %+v, %v; want %+v", got, err, want)
				}
			}
		})
	}
}

// TestReplyGolden encodes and decodes every reply of the contract.
func TestReplyGolden(t *testing.T) {
	must := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	metrics := admin.Metrics{
		Historic: 1, Concurrent: 2, BytesTotal: 3, BytesUp: 4, BytesDown: 5, PeakConcurrent: 6,
		UptimeSeconds: 7, FailedLogins: 8, TCPOpen: 9, UDPOpen: 10, DialFailures: 11,
	}
	metricsHex := "0b"
	for i := 1; i <= 11; i++ {
		metricsHex += " 00000000000000" + hex.EncodeToString([]byte{byte(i)})
	}
	usersPage := admin.UsersPage{Total: 2, Next: admin.UsersEnd, Users: []admin.UserInfo{
		{Name: "alice", Role: admin.RoleUser, Flows: 1},
		{Name: "bob", Role: admin.RoleAdmin, Flows: 0},
	}}
	flowsPage := admin.FlowsPage{Total: 3, Next: 0x0102030405060708, Flows: []admin.Flow{flow7, flowV6}}
	caps := admin.Capabilities{Commands: admin.Commands, Keys: admin.Keys}
	capsHex := "0010 0000 0001 0002 0003 0004 0005 0006 0007 0100 0101 0102 0103 0104 0200 0201 0202 07 00 01 02 03 04 05 06"

	for _, tc := range []struct {
		name  string
		rep   admin.Reply
		wire  string
		check func(data []byte) (any, any, error)
	}{
		{"BYTES TRANSFERRED", admin.Reply{Cmd: admin.CmdBytes, RID: 1, Data: admin.AppendCounter(nil, 0x1234)},
			"00 00 0001 00 0008 0000000000001234",
			func(d []byte) (any, any, error) { v, err := admin.ParseCounter(d); return v, uint64(0x1234), err }},
		{"HISTORIC CONNECTIONS", admin.Reply{Cmd: admin.CmdHistoric, RID: 2, Data: admin.AppendCounter(nil, 1<<40)},
			"00 01 0002 00 0008 0000010000000000",
			func(d []byte) (any, any, error) { v, err := admin.ParseCounter(d); return v, uint64(1 << 40), err }},
		{"CONCURRENT CONNECTIONS", admin.Reply{Cmd: admin.CmdConcurrent, RID: 3, Data: admin.AppendCounter(nil, 5)},
			"00 02 0003 00 0008 0000000000000005",
			func(d []byte) (any, any, error) { v, err := admin.ParseCounter(d); return v, uint64(5), err }},
		{"LIST USERS", admin.Reply{Cmd: admin.CmdListUsers, RID: 4, Data: must(admin.AppendUsersPage(nil, usersPage))},
			"00 03 0004 00 001e 00000002 ffffffff 0002 05 616c696365 00 00000001 03 626f62 01 00000000",
			func(d []byte) (any, any, error) { p, err := admin.ParseUsersPage(d); return p, usersPage, err }},
		{"METRICS", admin.Reply{Cmd: admin.CmdMetrics, RID: 5, Data: admin.AppendMetrics(nil, metrics)},
			"00 04 0005 00 0059 " + metricsHex,
			func(d []byte) (any, any, error) { m, _, err := admin.ParseMetrics(d); return m, metrics, err }},
		{"GET CONFIG", admin.Reply{Cmd: admin.CmdGetConfig, RID: 6, Data: must(admin.AppendConfigValue(nil, admin.UintValue(admin.KeyLogLevel, 1)))},
			"00 05 0006 00 0003 05 01 01",
			func(d []byte) (any, any, error) {
				v, err := admin.ParseConfigValue(d)
				return v, admin.ConfigValue{Key: admin.KeyLogLevel, Value: []byte{1}}, err
			}},
		{"LIST FLOWS", admin.Reply{Cmd: admin.CmdListFlows, RID: 7, Data: must(admin.AppendFlowsPage(nil, flowsPage))},
			"00 06 0007 00 00c7 00000003 0102030405060708 0002 " + flow7Hex + " " + flowV6Hex,
			func(d []byte) (any, any, error) { p, err := admin.ParseFlowsPage(d); return p, flowsPage, err }},
		{"GET FLOW", admin.Reply{Cmd: admin.CmdGetFlow, RID: 8, Data: must(admin.AppendFlow(nil, flow7))},
			"00 07 0008 00 0057 " + flow7Hex,
			func(d []byte) (any, any, error) { f, err := admin.ParseFlowData(d); return f, flow7, err }},
		{"ADD USER", admin.Reply{Cmd: admin.CmdAddUser, RID: 9}, "01 00 0009 00 0000", nil},
		{"ADD USER exists", admin.Reply{Cmd: admin.CmdAddUser, RID: 9, Status: admin.StatusUserExists}, "01 00 0009 07 0000", nil},
		{"ADD USER limit", admin.Reply{Cmd: admin.CmdAddUser, RID: 9, Status: admin.StatusUserLimit}, "01 00 0009 08 0000", nil},
		{"DELETE USER", admin.Reply{Cmd: admin.CmdDeleteUser, RID: 10}, "01 01 000a 00 0000", nil},
		{"DELETE USER no such user", admin.Reply{Cmd: admin.CmdDeleteUser, RID: 10, Status: admin.StatusNoSuchUser}, "01 01 000a 06 0000", nil},
		{"DELETE USER last admin", admin.Reply{Cmd: admin.CmdDeleteUser, RID: 10, Status: admin.StatusNotPermitted}, "01 01 000a 0b 0000", nil},
		{"SET PASSWORD", admin.Reply{Cmd: admin.CmdSetPassword, RID: 11}, "01 02 000b 00 0000", nil},
		{"SET CONFIG", admin.Reply{Cmd: admin.CmdSetConfig, RID: 12, Data: must(admin.AppendConfigValue(nil, admin.UintValue(admin.KeyConnectTimeout, 5000)))},
			"01 03 000c 00 0006 06 04 00001388",
			func(d []byte) (any, any, error) {
				v, err := admin.ParseConfigValue(d)
				return v.Uint(), uint64(5000), err
			}},
		{"SET CONFIG unknown key", admin.Reply{Cmd: admin.CmdSetConfig, RID: 12, Status: admin.StatusUnknownKey}, "01 03 000c 0a 0000", nil},
		{"SET CONFIG out of range", admin.Reply{Cmd: admin.CmdSetConfig, RID: 12, Status: admin.StatusInvalidValue}, "01 03 000c 05 0000", nil},
		{"CLOSE FLOW", admin.Reply{Cmd: admin.CmdCloseFlow, RID: 13}, "01 04 000d 00 0000", nil},
		{"CLOSE FLOW no such flow", admin.Reply{Cmd: admin.CmdCloseFlow, RID: 13, Status: admin.StatusNoSuchFlow}, "01 04 000d 09 0000", nil},
		{"QUIT", admin.Reply{Cmd: admin.CmdQuit, RID: 14}, "02 00 000e 00 0000", nil},
		{"PING", admin.Reply{Cmd: admin.CmdPing, RID: 15, Data: []byte("abc")}, "02 01 000f 00 0003 616263", nil},
		{"CAPABILITIES", admin.Reply{Cmd: admin.CmdCaps, RID: 16, Data: must(admin.AppendCapabilities(nil, caps))},
			"02 02 0010 00 002a " + capsHex,
			func(d []byte) (any, any, error) { c, err := admin.ParseCapabilities(d); return c, caps, err }},
		{"unsupported TYPE", admin.Reply{Cmd: admin.MakeCommand(9, 0), RID: 17, Status: admin.StatusBadType}, "09 00 0011 02 0000", nil},
		{"unsupported CMD", admin.Reply{Cmd: admin.MakeCommand(admin.TypeGet, 0x42), RID: 18, Status: admin.StatusBadCommand}, "00 42 0012 03 0000", nil},
		{"malformed", admin.Reply{Cmd: admin.CmdGetFlow, RID: 19, Status: admin.StatusMalformed}, "00 07 0013 04 0000", nil},
		{"server failure", admin.Reply{Cmd: admin.CmdAddUser, RID: 20, Status: admin.StatusServerFailure}, "01 00 0014 01 0000", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := h(tc.wire)
			got, err := admin.AppendReply(nil, tc.rep)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("AppendReply = %x, %v\nwant           %x", got, err, want)
			}
			r, n, err := admin.ParseReply(append(want, 0xAA))
			if err != nil || n != len(want) || r.Cmd != tc.rep.Cmd || r.RID != tc.rep.RID || r.Status != tc.rep.Status || !bytes.Equal(r.Data, tc.rep.Data) {
				t.Fatalf("ParseReply = %+v, %d, %v; want %+v", r, n, err, tc.rep)
			}
			rr, err := admin.ReadReply(bytes.NewReader(want))
			if err != nil || rr.Cmd != tc.rep.Cmd || rr.RID != tc.rep.RID || rr.Status != tc.rep.Status || !bytes.Equal(rr.Data, tc.rep.Data) {
				t.Fatalf("ReadReply = %+v, %v", rr, err)
			}
			if tc.check != nil {
				got, want, err := tc.check(r.Data)
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Errorf("DATA parses as %+v, %v\nwant %+v", got, err, want)
				}
			}
		})
	}
}

func TestDataErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"counter short", second(admin.ParseCounter(h("00"))), admin.ErrShort},
		{"counter long", second(admin.ParseCounter(h("000000000000000000"))), admin.ErrTrailing},
		{"users query short", second(admin.ParseUsersQuery(h("0000"))), admin.ErrShort},
		{"users page N past data", second(admin.ParseUsersPage(h("00000001 ffffffff 0002 01 61 00 00000000"))), admin.ErrShort},
		{"users page trailing", second(admin.ParseUsersPage(h("00000000 ffffffff 0000 00"))), admin.ErrTrailing},
		{"users page empty name", second(admin.ParseUsersPage(h("00000001 ffffffff 0001 00 00 00000000"))), admin.ErrStringLength},
		{"metrics NVAL past data", third(admin.ParseMetrics(h("02 0000000000000001"))), admin.ErrShort},
		{"metrics empty", third(admin.ParseMetrics(nil)), admin.ErrShort},
		{"config value VLEN past data", second(admin.ParseConfigValue(h("00 04 0000"))), admin.ErrShort},
		{"config value trailing", second(admin.ParseConfigValue(h("05 01 01 00"))), admin.ErrTrailing},
		{"get config empty", second(admin.ParseKeyData(nil)), admin.ErrShort},
		{"flows query long", second(admin.ParseFlowsQuery(h("0000000000000000 0001 00"))), admin.ErrTrailing},
		{"flow cut in DST", second(admin.ParseFlowData(h("0000000000000007 06 01 0a 01 7f000001 d431 03 0b 6578"))), admin.ErrShort},
		{"flow trailing", second(admin.ParseFlowData(append(h(flow7Hex), 0))), admin.ErrTrailing},
		{"flow bad ATYP", second(admin.ParseFlowData(h("0000000000000007 06 01 0a 02 7f000001 d431"))), nil},
		{"flows page N past data", second(admin.ParseFlowsPage(h("00000001 0000000000000000 0001"))), admin.ErrShort},
		{"new user empty name", second(admin.ParseNewUser(h("00 01 61 00"))), admin.ErrStringLength},
		{"new user no role", second(admin.ParseNewUser(h("01 61 01 61"))), admin.ErrShort},
		{"new user trailing", second(admin.ParseNewUser(h("01 61 01 61 00 00"))), admin.ErrTrailing},
		{"credentials empty password", second(admin.ParseCredentials(h("01 61 00"))), admin.ErrStringLength},
		{"credentials cut", second(admin.ParseCredentials(h("01 61 05 61"))), admin.ErrShort},
		{"user name empty", second(admin.ParseUserName(h("00"))), admin.ErrStringLength},
		{"user name trailing", second(admin.ParseUserName(h("01 61 62"))), admin.ErrTrailing},
		{"caps N past data", second(admin.ParseCapabilities(h("0002 0000 00"))), admin.ErrShort},
		{"caps K past data", second(admin.ParseCapabilities(h("0000 02 00"))), admin.ErrShort},
		{"request cut", third(admin.ParseRequest(h("00 00 0001 0002 00"))), admin.ErrShort},
		{"reply cut", third(admin.ParseReply(h("00 00 0001 00"))), admin.ErrShort},
		{"request too long", second(admin.AppendRequest(nil, admin.Request{Data: make([]byte, 65536)})), admin.ErrTooLong},
		{"reply too long", second(admin.AppendReply(nil, admin.Reply{Data: make([]byte, 65536)})), admin.ErrTooLong},
		{"append user empty name", second(admin.AppendUserName(nil, "")), admin.ErrStringLength},
		{"append new user long password", second(admin.AppendNewUser(nil, admin.NewUser{Name: "a", Password: strings.Repeat("p", 256)})), admin.ErrStringLength},
		{"append flow invalid src", second(admin.AppendFlow(nil, admin.Flow{Dst: flow7.Dst})), socks.ErrInvalidAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				t.Fatal("no error")
			}
			if tc.want != nil && !errors.Is(tc.err, tc.want) {
				t.Errorf("error %v, want %v", tc.err, tc.want)
			}
		})
	}
	if _, err := admin.ReadRequest(bytes.NewReader(h("00 00 0001 0002 00"))); !errors.Is(err, io.ErrUnexpectedEOF) || !errors.Is(err, admin.ErrShort) {
		t.Errorf("ReadRequest(cut DATA) = %v", err)
	}
	if _, err := admin.ReadRequest(bytes.NewReader(h("00 00"))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadRequest(cut header) = %v", err)
	}
	if _, err := admin.ReadRequest(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("ReadRequest(nothing) = %v, want io.EOF", err)
	}
	if _, err := admin.ReadReply(bytes.NewReader(h("00 00 0001 00 0008 00"))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadReply(cut) = %v", err)
	}
}

// TestMetricsExtraValues checks that a client ignores values past those it
// knows, and that fewer values leave the rest zero.
func TestMetricsExtraValues(t *testing.T) {
	b := admin.AppendMetrics(nil, admin.Metrics{Historic: 1, DialFailures: 11})
	b[0]++
	b = append(b, h("00000000000000ff")...)
	m, n, err := admin.ParseMetrics(b)
	if err != nil || n != 12 || m.Historic != 1 || m.DialFailures != 11 {
		t.Errorf("ParseMetrics(12 values) = %+v, %d, %v", m, n, err)
	}
	m, n, err = admin.ParseMetrics(h("02 0000000000000003 0000000000000004"))
	if err != nil || n != 2 || m.Historic != 3 || m.Concurrent != 4 || m.BytesTotal != 0 {
		t.Errorf("ParseMetrics(2 values) = %+v, %d, %v", m, n, err)
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{admin.CmdListFlows.String(), "LIST FLOWS"},
		{admin.MakeCommand(admin.TypeSet, 9).String(), "SET CMD 0x09"},
		{admin.MakeCommand(7, 1).String(), "TYPE 0x07 CMD 0x01"},
		{admin.StatusNoSuchFlow.String(), "no such flow"},
		{admin.Status(0x0C).String(), "status 0x0c"},
		{admin.LoginFailed.String(), "wrong user or password"},
		{admin.LoginStatus(9).String(), "login status 0x09"},
		{admin.KeyUDPIdleTimeout.String(), "udp-timeout"},
		{admin.Key(0x20).String(), "key(0x20)"},
		{admin.ProtoICMPv6.String(), "icmpv6"},
		{admin.StateHalfClosed.String(), "half-closed"},
		{(admin.FlagSOCKS | admin.FlagDomain | 0x80).String(), "socks|domain|0x80"},
		{admin.FlowFlags(0).String(), "-"},
		{admin.RoleAdmin.String(), "admin"},
		{admin.TypeSession.String(), "SESSION"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	for _, k := range admin.Keys {
		got, err := admin.ParseKey(k.String())
		if err != nil || got != k {
			t.Errorf("ParseKey(%q) = %v, %v", k.String(), got, err)
		}
		if k.Size() == 0 {
			t.Errorf("%v has no size", k)
		}
	}
	if k, err := admin.ParseKey("0x06"); err != nil || k != admin.KeyConnectTimeout {
		t.Errorf("ParseKey(0x06) = %v, %v", k, err)
	}
	if _, err := admin.ParseKey("nope"); err == nil {
		t.Error("ParseKey(nope) works")
	}
}

func second[T any](_ T, err error) error            { return err }
func third[T any, U any](_ T, _ U, err error) error { return err }
