package admin_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tungate/admin"
	"tungate/internal/engine"
	"tungate/internal/users"
	"tungate/socks"
)

// TestEveryCommand runs each command of the contract against a server
// whose engine carries real SOCKS5 flows.
func TestEveryCommand(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	gw := f.socksGateway(t)
	echo := echoServer(t)

	// Two flows of alice, with bytes through them, and one failed SOCKS5
	// login.
	var conns []io.Closer
	for i := range 2 {
		c, err := socksDial(gw, aliceUser, alicePass, echo)
		if err != nil {
			t.Fatalf("SOCKS5 as alice: %v", err)
		}
		conns = append(conns, c)
		if err := echoOnce(c, strings.Repeat("x", 100*(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if _, err := socksDial(gw, aliceUser, "wrong", echo); err == nil {
		t.Fatal("SOCKS5 with a wrong password worked")
	}

	cl := f.root()

	// GET: the counters.
	bytesTotal, err := cl.BytesTransferred()
	if err != nil || bytesTotal != 600 {
		t.Errorf("BYTES TRANSFERRED = %d, %v; want 600 (300 each way)", bytesTotal, err)
	}
	if v, err := cl.Historic(); err != nil || v != 2 {
		t.Errorf("HISTORIC = %d, %v; want 2", v, err)
	}
	if v, err := cl.Concurrent(); err != nil || v != 2 {
		t.Errorf("CONCURRENT = %d, %v; want 2", v, err)
	}
	m, err := cl.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	want := admin.Metrics{
		Historic: 2, Concurrent: 2, BytesTotal: 600, BytesUp: 300, BytesDown: 300, PeakConcurrent: 2,
		UptimeSeconds: m.UptimeSeconds, FailedLogins: 1, TCPOpen: 2, UDPOpen: 0, DialFailures: 0,
	}
	if m != want {
		t.Errorf("METRICS = %+v\nwant %+v", m, want)
	}

	// LIST USERS, with alice's live flows.
	us, err := cl.Users()
	if err != nil {
		t.Fatal(err)
	}
	wantUsers := []admin.UserInfo{{Name: aliceUser, Role: admin.RoleUser, Flows: 2}, {Name: rootUser, Role: admin.RoleAdmin}}
	if fmt.Sprint(us) != fmt.Sprint(wantUsers) {
		t.Errorf("LIST USERS = %+v, want %+v", us, wantUsers)
	}

	// LIST FLOWS, one per page, and GET FLOW.
	p1, err := cl.FlowsPage(admin.FlowsQuery{Max: 1})
	if err != nil || len(p1.Flows) != 1 || p1.Total != 2 || p1.Next != p1.Flows[0].ID {
		t.Fatalf("LIST FLOWS page 1 = %+v, %v", p1, err)
	}
	p2, err := cl.FlowsPage(admin.FlowsQuery{Cursor: p1.Next, Max: 1})
	if err != nil || len(p2.Flows) != 1 || p2.Next != 0 || p2.Flows[0].ID <= p1.Flows[0].ID {
		t.Fatalf("LIST FLOWS page 2 = %+v, %v", p2, err)
	}
	for i, fl := range []admin.Flow{p1.Flows[0], p2.Flows[0]} {
		if fl.Proto != admin.ProtoTCP || fl.Flags != admin.FlagSOCKS || fl.User != aliceUser ||
			fl.Dst != echo || fl.State != admin.StateEstablished ||
			fl.BytesUp != uint64(100*(i+1)) || fl.BytesDown != uint64(100*(i+1)) || fl.PktsUp == 0 {
			t.Errorf("flow %d = %+v", i, fl)
		}
		got, err := cl.Flow(fl.ID)
		if err != nil || got.ID != fl.ID || got.Dst != fl.Dst || got.User != aliceUser {
			t.Errorf("GET FLOW %d = %+v, %v", fl.ID, got, err)
		}
	}
	all, err := cl.Flows()
	if err != nil || len(all) != 2 {
		t.Errorf("Flows() = %d flows, %v", len(all), err)
	}

	// SET: users.
	if err := cl.AddUser(admin.NewUser{Name: "bob", Password: "bob-pw", Role: admin.RoleUser}); err != nil {
		t.Errorf("ADD USER: %v", err)
	}
	if u, ok := f.store.Get("bob"); !ok || u.Role != users.RoleUser {
		t.Errorf("after ADD USER the store has %+v, %v", u, ok)
	}
	if err := cl.SetPassword("bob", "bob-pw2"); err != nil {
		t.Errorf("SET PASSWORD: %v", err)
	}
	if _, ok := f.store.Authenticate("bob", "bob-pw2"); !ok {
		t.Error("after SET PASSWORD the new password does not work")
	}
	if err := cl.DeleteUser("bob"); err != nil {
		t.Errorf("DELETE USER: %v", err)
	}
	if _, ok := f.store.Get("bob"); ok {
		t.Error("after DELETE USER bob is still there")
	}

	// GET and SET CONFIG, every key, applied live.
	st := f.eng.Settings()
	for _, tc := range []struct {
		key   admin.Key
		get   uint64 // before
		set   uint32
		check func() bool
	}{
		{admin.KeyRelayBuffer, engine.DefaultRelayBufferSize, 65536, func() bool { return st.RelayBufferSize() == 65536 }},
		{admin.KeyTCPIdleTimeout, uint64(engine.DefaultTCPIdleTimeout / time.Millisecond), 0, func() bool { return st.TCPIdleTimeout() == 0 }},
		{admin.KeyUDPIdleTimeout, uint64(engine.DefaultUDPIdleTimeout / time.Millisecond), 1500, func() bool { return st.UDPIdleTimeout() == 1500*time.Millisecond }},
		{admin.KeyAuthRequired, 1, 0, func() bool { return !st.AuthRequired() }},
		{admin.KeyMaxFlows, 0, 100, func() bool { return st.MaxFlows() == 100 }},
		{admin.KeyLogLevel, 1, 3, func() bool { return f.level.Level() == slog.LevelError }},
		{admin.KeyConnectTimeout, uint64(engine.DefaultConnectTimeout / time.Millisecond), 2000, func() bool { return st.ConnectTimeout() == 2*time.Second }},
	} {
		v, err := cl.Config(tc.key)
		if err != nil || v.Uint() != tc.get || len(v.Value) != tc.key.Size() {
			t.Errorf("GET CONFIG %v = %x, %v; want %d", tc.key, v.Value, err, tc.get)
		}
		v, err = cl.SetConfig(admin.UintValue(tc.key, tc.set))
		if err != nil || v.Uint() != uint64(tc.set) || v.Key != tc.key {
			t.Errorf("SET CONFIG %v %d = %+v, %v", tc.key, tc.set, v, err)
		}
		if !tc.check() {
			t.Errorf("SET CONFIG %v %d was not applied", tc.key, tc.set)
		}
	}

	// CLOSE FLOW ends alice's first connection.
	if err := cl.CloseFlow(p1.Flows[0].ID); err != nil {
		t.Fatalf("CLOSE FLOW: %v", err)
	}
	conns[0].(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns[0].(io.Reader).Read(make([]byte, 1)); err == nil {
		t.Error("the closed flow's client connection still reads")
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, ok := f.eng.Registry().Flow(p1.Flows[0].ID); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the closed flow is still in the registry")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// SESSION.
	if err := cl.Ping([]byte("hello")); err != nil {
		t.Errorf("PING: %v", err)
	}
	if err := cl.Ping(nil); err != nil {
		t.Errorf("empty PING: %v", err)
	}
	caps, err := cl.Capabilities()
	if err != nil || fmt.Sprint(caps.Commands) != fmt.Sprint(admin.Commands) || fmt.Sprint(caps.Keys) != fmt.Sprint(admin.Keys) {
		t.Errorf("CAPABILITIES = %+v, %v", caps, err)
	}
	if err := cl.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	waitSessions(t, f.srv, 0)
}

// waitSessions waits until the server serves n connections.
func waitSessions(t *testing.T, srv *admin.Server, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); srv.Sessions() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions, want %d", srv.Sessions(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestQuitClosesAssociation checks that the server closes after QUIT.
func TestQuitClosesAssociation(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	// rawLogin reads until the server closes.
	reply, _ := f.rawLogin(clientPeer, append(loginBytes(rootUser, rootPass), h("02 00 0007 0000")...))
	want := h("01 00  02 00 0007 00 0000")
	if !bytes.Equal(reply, want) {
		t.Errorf("login and QUIT got %x, want %x then EOF", reply, want)
	}
}

// TestStatusCodes provokes every STATUS of the contract.
func TestStatusCodes(t *testing.T) {
	checkLeaks(t)
	store := newFakeStore()
	f := newFakeFixture(t, store, func(s *admin.Server) { s.MaxUsers = 3 })
	fl, _ := openFlow(t, f.eng, "", socks.Addr{IP: mustAddr("192.0.2.1"), Port: 80})
	opening, err := f.eng.Registry().Open(engine.FlowSpec{Proto: engine.ProtoTCP, Dst: socks.Addr{Name: "example.com", Port: 80}})
	if err != nil {
		t.Fatal(err)
	}
	defer opening.Close()
	c := f.dial(clientPeer)
	if _, err := c.Write(loginBytes(rootUser, rootPass)); err != nil {
		t.Fatal(err)
	}
	if st, err := admin.ReadLoginReply(c); err != nil || st != admin.LoginOK {
		t.Fatalf("login: %v, %v", st, err)
	}
	id := func(v uint64) []byte { return admin.AppendFlowID(nil, v) }
	newUser := func(name string, role byte) []byte {
		return append([]byte{byte(len(name))}, append([]byte(name), 2, 'p', 'w', role)...)
	}
	for _, tc := range []struct {
		name string
		cmd  admin.Command
		data []byte
		want admin.Status
	}{
		{"ok", admin.CmdBytes, nil, admin.StatusOK},
		{"unsupported TYPE", admin.MakeCommand(3, 0), nil, admin.StatusBadType},
		{"unsupported TYPE with DATA", admin.MakeCommand(0xFF, 0xFF), []byte("skip me"), admin.StatusBadType},
		{"unsupported GET CMD", admin.MakeCommand(admin.TypeGet, 8), nil, admin.StatusBadCommand},
		{"unsupported SET CMD", admin.MakeCommand(admin.TypeSet, 5), h("00"), admin.StatusBadCommand},
		{"unsupported SESSION CMD", admin.MakeCommand(admin.TypeSession, 3), nil, admin.StatusBadCommand},
		{"BYTES with DATA", admin.CmdBytes, h("00"), admin.StatusMalformed},
		{"GET FLOW short", admin.CmdGetFlow, h("0000"), admin.StatusMalformed},
		{"LIST USERS long", admin.CmdListUsers, h("00000000 0001 00"), admin.StatusMalformed},
		{"LIST USERS MAX 0", admin.CmdListUsers, h("00000000 0000"), admin.StatusInvalidValue},
		{"LIST FLOWS MAX 0", admin.CmdListFlows, h("0000000000000000 0000"), admin.StatusInvalidValue},
		{"ADD USER cut", admin.CmdAddUser, h("03 626f"), admin.StatusMalformed},
		{"ADD USER empty name", admin.CmdAddUser, h("00 02 7077 00"), admin.StatusInvalidValue},
		{"ADD USER bad role", admin.CmdAddUser, newUser("bob", 2), admin.StatusInvalidValue},
		{"ADD USER bad name", admin.CmdAddUser, newUser("b:b", 0), admin.StatusInvalidValue},
		{"ADD USER", admin.CmdAddUser, newUser("bob", 0), admin.StatusOK},
		{"ADD USER exists", admin.CmdAddUser, newUser("bob", 0), admin.StatusUserExists},
		{"ADD USER third", admin.CmdAddUser, newUser("carol", 1), admin.StatusOK},
		{"ADD USER limit", admin.CmdAddUser, newUser("dave", 0), admin.StatusUserLimit},
		{"DELETE USER none", admin.CmdDeleteUser, h("04 64617665"), admin.StatusNoSuchUser},
		{"DELETE USER empty", admin.CmdDeleteUser, h("00"), admin.StatusInvalidValue},
		{"SET PASSWORD none", admin.CmdSetPassword, h("04 64617665 02 7077"), admin.StatusNoSuchUser},
		{"SET PASSWORD empty", admin.CmdSetPassword, h("03 626f62 00"), admin.StatusInvalidValue},
		{"GET CONFIG unknown", admin.CmdGetConfig, h("07"), admin.StatusUnknownKey},
		{"SET CONFIG unknown", admin.CmdSetConfig, h("ff 01 00"), admin.StatusUnknownKey},
		{"SET CONFIG VLEN", admin.CmdSetConfig, h("00 01 ff"), admin.StatusInvalidValue},
		{"SET CONFIG cut", admin.CmdSetConfig, h("00 04 ff"), admin.StatusMalformed},
		{"SET CONFIG buffer too small", admin.CmdSetConfig, h("00 04 00000001"), admin.StatusInvalidValue},
		{"SET CONFIG buffer too big", admin.CmdSetConfig, h("00 04 ffffffff"), admin.StatusInvalidValue},
		{"SET CONFIG UDP idle 0", admin.CmdSetConfig, h("02 04 00000000"), admin.StatusInvalidValue},
		{"SET CONFIG auth 2", admin.CmdSetConfig, h("03 01 02"), admin.StatusInvalidValue},
		{"SET CONFIG log level 4", admin.CmdSetConfig, h("05 01 04"), admin.StatusInvalidValue},
		{"SET CONFIG connect timeout 0", admin.CmdSetConfig, h("06 04 00000000"), admin.StatusInvalidValue},
		{"GET FLOW none", admin.CmdGetFlow, id(999), admin.StatusNoSuchFlow},
		{"CLOSE FLOW none", admin.CmdCloseFlow, id(999), admin.StatusNoSuchFlow},
		{"CLOSE FLOW still dialing", admin.CmdCloseFlow, id(opening.ID), admin.StatusNotPermitted},
		{"CLOSE FLOW", admin.CmdCloseFlow, id(fl.ID), admin.StatusOK},
		{"DELETE USER last admin", admin.CmdDeleteUser, h("04 726f6f74"), admin.StatusNotPermitted},
		{"still going", admin.CmdPing, h("01"), admin.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "DELETE USER last admin" {
				// carol is an admin too: remove her first so that root is
				// the last one.
				if rep := exchange(t, c, admin.Request{Cmd: admin.CmdDeleteUser, RID: 1, Data: h("05 6361726f6c")}); rep.Status != admin.StatusOK {
					t.Fatalf("DELETE carol: %v", rep.Status)
				}
			}
			rep := exchange(t, c, admin.Request{Cmd: tc.cmd, RID: 0xBEEF, Data: tc.data})
			if rep.Status != tc.want || rep.Cmd != tc.cmd || rep.RID != 0xBEEF {
				t.Errorf("reply %v %v RID %x, want %v", rep.Cmd, rep.Status, rep.RID, tc.want)
			}
			if rep.Status != admin.StatusOK && len(rep.Data) != 0 {
				t.Errorf("failure reply has DATA %x", rep.Data)
			}
		})
	}

	// X'01': the store fails to write.
	store.fail = errors.New("disk full")
	if rep := exchange(t, c, admin.Request{Cmd: admin.CmdSetPassword, RID: 2, Data: h("03 626f62 02 7077")}); rep.Status != admin.StatusServerFailure {
		t.Errorf("SET PASSWORD on a failing store: %v, want server failure", rep.Status)
	}
	if !strings.Contains(f.logs.String(), "disk full") {
		t.Errorf("the store failure is not logged:\n%s", f.logs)
	}
}

// TestServerFailureRealStore checks X'01' when the real user store cannot
// write its file, and that nothing changed then.
func TestServerFailureRealStore(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	cl := f.root()
	if err := os.RemoveAll(filepath.Dir(f.path)); err != nil {
		t.Fatal(err)
	}
	err := cl.AddUser(admin.NewUser{Name: "bob", Password: "pw", Role: admin.RoleUser})
	var se *admin.StatusError
	if !errors.As(err, &se) || se.Status != admin.StatusServerFailure {
		t.Fatalf("ADD USER with the store's directory gone: %v, want server failure", err)
	}
	if _, ok := f.store.Get("bob"); ok {
		t.Error("bob was added although the file was not written")
	}
}

// TestPipelined sends many requests in one write, known and not, and
// checks that the replies come in order with their RIDs.
func TestPipelined(t *testing.T) {
	checkLeaks(t)
	f := newFakeFixture(t, newFakeStore())
	c := f.dial(clientPeer)
	reqs := []admin.Request{
		{Cmd: admin.CmdPing, RID: 100, Data: []byte("one")},
		{Cmd: admin.MakeCommand(7, 7), RID: 101, Data: []byte("unknown type")},
		{Cmd: admin.CmdHistoric, RID: 102},
		{Cmd: admin.CmdGetFlow, RID: 103, Data: []byte("bad")},
		{Cmd: admin.MakeCommand(admin.TypeGet, 0x77), RID: 104},
		{Cmd: admin.CmdGetConfig, RID: 105, Data: []byte{byte(admin.KeyMaxFlows)}},
		{Cmd: admin.CmdPing, RID: 106, Data: bytes.Repeat([]byte("z"), 3000)},
		{Cmd: admin.CmdQuit, RID: 107},
		{Cmd: admin.CmdPing, RID: 108}, // after QUIT: never answered
	}
	wantStatus := []admin.Status{
		admin.StatusOK, admin.StatusBadType, admin.StatusOK, admin.StatusMalformed,
		admin.StatusBadCommand, admin.StatusOK, admin.StatusOK, admin.StatusOK,
	}
	msg := loginBytes(rootUser, rootPass)
	for _, r := range reqs {
		msg, _ = admin.AppendRequest(msg, r)
	}
	// The whole burst goes in one write, as a client may pipeline; the
	// server reads it while it answers.
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	if st, err := admin.ReadLoginReply(c); err != nil || st != admin.LoginOK {
		t.Fatalf("login: %v, %v", st, err)
	}
	for i, want := range wantStatus {
		rep, err := admin.ReadReply(c)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if rep.RID != reqs[i].RID || rep.Cmd != reqs[i].Cmd || rep.Status != want {
			t.Errorf("reply %d: %v RID %d status %v, want %v RID %d status %v", i, rep.Cmd, rep.RID, rep.Status, reqs[i].Cmd, reqs[i].RID, want)
		}
		if reqs[i].Cmd == admin.CmdPing && !bytes.Equal(rep.Data, reqs[i].Data) {
			t.Errorf("PING %d came back with %d octets", i, len(rep.Data))
		}
	}
	if _, err := admin.ReadReply(c); err != io.EOF {
		t.Errorf("after QUIT: %v, want EOF", err)
	}
	c.Close()
	<-errc
}

// TestLogin checks the login replies: one answer for an unknown user, a
// wrong password and a user who is not an admin, all counted as failed
// logins, and the association closed after any failure.
func TestLogin(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, func(s *admin.Server) { s.Backoff = time.Millisecond; s.MaxBackoff = time.Millisecond })
	for i, tc := range []struct {
		name  string
		login []byte
		want  []byte
	}{
		{"ok", append(loginBytes(rootUser, rootPass), h("02 00 0001 0000")...), h("01 00 02 00 0001 00 0000")},
		{"wrong password", loginBytes(rootUser, "nope"), h("01 01")},
		{"unknown user", loginBytes("nobody", rootPass), h("01 01")},
		{"not an admin", loginBytes(aliceUser, alicePass), h("01 01")},
		{"empty user", h("01 00 04 70617373"), h("01 01")},
		{"empty password", h("01 04 726f6f74 00"), h("01 01")},
		{"version 5", h("05 01 00"), h("01 02")},
		{"version 0 alone", h("00"), h("01 02")},
		{"unknown user, pipelined request", append(loginBytes("nobody", "x"), h("00 00 0001 0000")...), h("01 01")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each from its own address, so that the backoff of one does
			// not slow the next. rawLogin reads until the server closes.
			got, _ := f.rawLogin(fmt.Sprintf("198.51.100.%d:1000", i+1), tc.login)
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("reply %x, want %x then EOF", got, tc.want)
			}
		})
	}
	if m := f.eng.Registry().Metrics(); m.FailedLogins != 6 {
		t.Errorf("failed logins = %d, want 6", m.FailedLogins)
	}
	logs := f.logs.String()
	if !strings.Contains(logs, "not an admin") || !strings.Contains(logs, "wrong user or password") {
		t.Errorf("the log does not say why logins failed:\n%s", logs)
	}
}

// TestVanishingClients checks that a client that goes mid-login or
// mid-request costs nothing: its session ends and nothing leaks.
func TestVanishingClients(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	cases := [][]byte{
		nil,             // connects and goes
		h("01 04 726f"), // mid-login
		loginBytes(rootUser, rootPass),
		append(loginBytes(rootUser, rootPass), h("00 00 00")...),           // mid-header
		append(loginBytes(rootUser, rootPass), h("02 01 0001 0010 61")...), // mid-DATA
	}
	for i, msg := range cases {
		c := f.dial(clientPeer)
		go func() {
			// Drain whatever the server answers; net.Pipe has no buffer.
			io.Copy(io.Discard, c)
		}()
		if len(msg) > 0 {
			if _, err := c.Write(msg); err != nil {
				t.Fatalf("case %d: %v", i, err)
			}
		}
		c.Close()
	}
	waitSessions(t, f.srv, 0)
	// The server still serves.
	cl := f.root()
	if err := cl.Ping([]byte("still here")); err != nil {
		t.Fatal(err)
	}
}

// TestMaxSessions checks that a client past the limit gets X'03' and that
// a freed slot is used again.
func TestMaxSessions(t *testing.T) {
	checkLeaks(t)
	f := newFakeFixture(t, newFakeStore(), func(s *admin.Server) { s.MaxSessions = 2 })
	a, b := f.root(), f.root()
	_, err := f.login(clientPeer, rootUser, rootPass)
	var le *admin.LoginError
	if !errors.As(err, &le) || le.Status != admin.LoginServerError {
		t.Fatalf("third login: %v, want server error", err)
	}
	if !strings.Contains(f.logs.String(), "session limit") {
		t.Errorf("the refusal is not logged:\n%s", f.logs)
	}
	a.Quit()
	waitSessions(t, f.srv, 1)
	c := f.root()
	if err := c.Ping(nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Ping(nil); err != nil {
		t.Fatal(err)
	}
}

// TestDeletedAdminLosesSession checks that an admin deleted by another
// loses its session at its next request.
func TestDeletedAdminLosesSession(t *testing.T) {
	checkLeaks(t)
	store := newFakeStore()
	store.users["other"] = fakeUser{"other-pw", users.RoleAdmin}
	f := newFakeFixture(t, store)
	root := f.root()
	other, err := f.login(clientPeer, "other", "other-pw")
	if err != nil {
		t.Fatal(err)
	}
	if err := root.DeleteUser("other"); err != nil {
		t.Fatal(err)
	}
	err = other.Ping(nil)
	var se *admin.StatusError
	if !errors.As(err, &se) || se.Status != admin.StatusNotPermitted {
		t.Fatalf("PING of a deleted admin: %v, want not permitted", err)
	}
	if err := other.Ping(nil); err == nil {
		t.Fatal("the deleted admin's session goes on")
	}
}

// TestUsersOverSOCKS checks that users managed over the protocol are the
// ones the SOCKS5 server lets in: added, re-passworded, deleted.
func TestUsersOverSOCKS(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	gw := f.socksGateway(t)
	echo := echoServer(t)
	cl := f.root()

	if c, err := socksDial(gw, "bob", "bob-pw", echo); err == nil {
		c.Close()
		t.Fatal("bob logs in over SOCKS5 before he exists")
	}
	if err := cl.AddUser(admin.NewUser{Name: "bob", Password: "bob-pw", Role: admin.RoleUser}); err != nil {
		t.Fatal(err)
	}
	c, err := socksDial(gw, "bob", "bob-pw", echo)
	if err != nil {
		t.Fatalf("bob, added over the protocol, cannot log in over SOCKS5: %v", err)
	}
	if err := echoOnce(c, "hi"); err != nil {
		t.Fatal(err)
	}
	us, err := cl.Users()
	if err != nil || fmt.Sprint(us) != fmt.Sprint([]admin.UserInfo{{aliceUser, admin.RoleUser, 0}, {"bob", admin.RoleUser, 1}, {rootUser, admin.RoleAdmin, 0}}) {
		t.Errorf("LIST USERS = %+v, %v", us, err)
	}
	c.Close()

	if err := cl.SetPassword("bob", "bob-new"); err != nil {
		t.Fatal(err)
	}
	if c, err := socksDial(gw, "bob", "bob-pw", echo); err == nil {
		c.Close()
		t.Error("bob's old password still works")
	}
	if c, err := socksDial(gw, "bob", "bob-new", echo); err != nil {
		t.Errorf("bob's new password: %v", err)
	} else {
		c.Close()
	}

	if err := cl.DeleteUser("bob"); err != nil {
		t.Fatal(err)
	}
	if c, err := socksDial(gw, "bob", "bob-new", echo); err == nil {
		c.Close()
		t.Error("bob logs in over SOCKS5 after he was deleted")
	}
	// A new admin added over the protocol can log in here.
	if err := cl.AddUser(admin.NewUser{Name: "ops", Password: "ops-pw", Role: admin.RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	ops, err := f.login("192.0.2.99:1", "ops", "ops-pw")
	if err != nil {
		t.Fatalf("a new admin cannot log in: %v", err)
	}
	ops.Quit()
}

// TestRestartKeepsUsers checks that user changes are in the file when the
// reply comes, and survive a restart.
func TestRestartKeepsUsers(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	cl := f.root()
	if err := cl.AddUser(admin.NewUser{Name: "bob", Password: "bob-pw", Role: admin.RoleUser}); err != nil {
		t.Fatal(err)
	}
	if err := cl.AddUser(admin.NewUser{Name: "ops", Password: "ops-pw", Role: admin.RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	if err := cl.SetPassword(rootUser, "root-new"); err != nil {
		t.Fatal(err)
	}
	if err := cl.DeleteUser(aliceUser); err != nil {
		t.Fatal(err)
	}
	// Durable before the reply: the file says so already.
	data, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "\nbob:user:") || strings.Contains(string(data), "\nalice:") {
		t.Errorf("the users file after the changes:\n%s", data)
	}
	cl.Quit()
	f.close()

	// Restart: a new store from the file, a new server.
	store, err := users.Open(f.path)
	if err != nil {
		t.Fatal(err)
	}
	g := startFixture(t, f.path, store)
	if _, err := g.login(clientPeer, rootUser, rootPass); err == nil {
		t.Error("root's old password works after the restart")
	}
	if _, err := g.login("192.0.2.11:1", rootUser, "root-new"); err != nil {
		t.Errorf("root's new password after the restart: %v", err)
	}
	ops, err := g.login("192.0.2.12:1", "ops", "ops-pw")
	if err != nil {
		t.Fatalf("ops after the restart: %v", err)
	}
	us, err := ops.Users()
	want := []admin.UserInfo{{"bob", admin.RoleUser, 0}, {"ops", admin.RoleAdmin, 0}, {rootUser, admin.RoleAdmin, 0}}
	if err != nil || fmt.Sprint(us) != fmt.Sprint(want) {
		t.Errorf("users after the restart: %+v, %v; want %+v", us, err, want)
	}
	if _, ok := store.Authenticate("bob", "bob-pw"); !ok {
		t.Error("bob cannot authenticate after the restart")
	}
}

// TestPagingLimits fills pages past the 65535-octet reply limit, with
// long user names and long flow destinations.
func TestPagingLimits(t *testing.T) {
	checkLeaks(t)
	store := newFakeStore()
	const nUsers = 400 // 400 × 261 octets > 65535
	for i := range nUsers {
		store.users[fmt.Sprintf("%03d%s", i, strings.Repeat("u", 252))] = fakeUser{"pw", users.RoleUser}
	}
	f := newFakeFixture(t, store)
	cl := f.root()

	p, err := cl.UsersPage(admin.UsersQuery{Max: 0xFFFF})
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != nUsers+1 || len(p.Users) == 0 || len(p.Users) >= nUsers || p.Next != uint32(len(p.Users)) {
		t.Fatalf("first page: total %d, %d users, next %d", p.Total, len(p.Users), p.Next)
	}
	all, err := cl.Users()
	if err != nil || len(all) != nUsers+1 || all[nUsers].Name != rootUser {
		t.Fatalf("all users: %d, %v", len(all), err)
	}
	p, err = cl.UsersPage(admin.UsersQuery{Start: nUsers + 5, Max: 10})
	if err != nil || len(p.Users) != 0 || p.Next != admin.UsersEnd {
		t.Errorf("page past the end: %+v, %v", p, err)
	}
	p, err = cl.UsersPage(admin.UsersQuery{Start: 3, Max: 2})
	if err != nil || len(p.Users) != 2 || p.Next != 5 || !strings.HasPrefix(p.Users[0].Name, "003") {
		t.Errorf("page 3+2: %+v, %v", p, err)
	}

	const nFlows = 200 // 200 × ~600 octets > 65535
	long := strings.Repeat("d", 250) + ".test"
	for i := range nFlows {
		openFlow(t, f.eng, fmt.Sprintf("user%03d%s", i, strings.Repeat("x", 248)), socks.Addr{Name: long, Port: uint16(i)})
	}
	fp, err := cl.FlowsPage(admin.FlowsQuery{Max: 0xFFFF})
	if err != nil {
		t.Fatal(err)
	}
	if fp.Total != nFlows || len(fp.Flows) == 0 || len(fp.Flows) >= nFlows || fp.Next != fp.Flows[len(fp.Flows)-1].ID {
		t.Fatalf("first flow page: total %d, %d flows, next %d", fp.Total, len(fp.Flows), fp.Next)
	}
	flows, err := cl.Flows()
	if err != nil || len(flows) != nFlows {
		t.Fatalf("all flows: %d, %v", len(flows), err)
	}
	for i, fl := range flows {
		if fl.Dst.Name != long || fl.Dst.Port != uint16(i) || fl.Flags != admin.FlagSOCKS|admin.FlagDomain {
			t.Fatalf("flow %d: %+v", i, fl)
		}
	}
}

// TestUDPFlowWithoutDestination checks the 0.0.0.0:0 sent for a UDP
// association that has not sent a datagram yet.
func TestUDPFlowWithoutDestination(t *testing.T) {
	checkLeaks(t)
	f := newFakeFixture(t, newFakeStore())
	fl, err := f.eng.Registry().Open(engine.FlowSpec{Proto: engine.ProtoUDP, Flags: engine.FlagTUN})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	got, err := f.root().Flow(fl.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Proto != admin.ProtoUDP || got.Dst.String() != "0.0.0.0:0" || got.Src.String() != "0.0.0.0:0" || got.User != "" || got.Flags != admin.FlagTUN {
		t.Errorf("GET FLOW = %+v", got)
	}
}

// TestNoLevel checks that without a LevelVar the log level key is unknown
// and not listed.
func TestNoLevel(t *testing.T) {
	checkLeaks(t)
	f := newFakeFixture(t, newFakeStore(), func(s *admin.Server) { s.Level = nil })
	cl := f.root()
	_, err := cl.Config(admin.KeyLogLevel)
	var se *admin.StatusError
	if !errors.As(err, &se) || se.Status != admin.StatusUnknownKey {
		t.Errorf("GET CONFIG log-level without a level: %v", err)
	}
	caps, err := cl.Capabilities()
	if err != nil || len(caps.Keys) != len(admin.Keys)-1 {
		t.Errorf("CAPABILITIES = %+v, %v", caps, err)
	}
}

// TestClose checks that Close is idempotent, ends live sessions, and that
// Serve after Close returns at once.
func TestClose(t *testing.T) {
	checkLeaks(t)
	f := newFakeFixture(t, newFakeStore())
	cl := f.root()
	f.srv.Close()
	f.srv.Close()
	if err := cl.Ping(nil); err == nil {
		t.Error("a session survived Close")
	}
	if err := f.srv.Serve(newPipeListener()); !errors.Is(err, admin.ErrServerClosed) {
		t.Errorf("Serve after Close = %v", err)
	}
	if err := (&admin.Server{}).Serve(newPipeListener()); err == nil {
		t.Error("Serve without an engine works")
	}
}
