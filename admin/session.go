package admin

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"time"

	"tungate/internal/engine"
	"tungate/internal/users"
	"tungate/socks"
)

// serveConn runs one connection: the login, then the session.
func (s *Server) serveConn(c net.Conn) {
	peer := peerOf(c.RemoteAddr())
	log := s.log().With("peer", peer)
	user, ok := s.login(c, peer, log)
	if !ok {
		return
	}
	ss := &session{srv: s, conn: c, user: user, log: log.With("user", user)}
	ss.log.Debug("admin session started")
	err := ss.run()
	switch {
	case err == nil:
		ss.log.Debug("admin session ended")
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		ss.log.Debug("admin session ended by the peer")
	case errors.Is(err, os.ErrDeadlineExceeded):
		ss.log.Debug("admin session timed out", "err", err)
	default:
		ss.log.Debug("admin session ended", "err", err)
	}
}

// login reads and checks the login, and answers it. It reports the user's
// name when the session may go on.
func (s *Server) login(c net.Conn, peer string, log *slog.Logger) (string, bool) {
	c.SetReadDeadline(time.Now().Add(orDefault(s.LoginTimeout, DefaultLoginTimeout)))
	l, err := ReadLogin(c)
	c.SetReadDeadline(time.Time{})
	switch {
	case errors.Is(err, ErrVersion):
		log.Debug("admin login refused", "err", err)
		s.writeLoginReply(c, LoginInvalidVersion)
		return "", false
	case errors.Is(err, ErrStringLength):
		// An empty name or password fails like any wrong one, in the same
		// time: Authenticate runs against a dummy hash.
	case err != nil:
		// The client vanished or stalled mid-login: nothing to answer.
		log.Debug("admin login not received", "err", err)
		return "", false
	}

	// A peer that failed before waits out its delay first, so that
	// parallel connections do not get around it.
	if !s.sleep(s.backoff.wait(peer, time.Now())) {
		return "", false
	}
	role, ok := s.Users.Authenticate(l.User, l.Password)
	if !ok || role != users.RoleAdmin {
		// One reply for an unknown user, a wrong password and a user who
		// is not an admin; the log says which for the operator only.
		s.Engine.Registry().CountFailedLogin()
		d := s.backoff.fail(peer, time.Now())
		log.Info("admin login failed", "user", l.User, "reason", failReason(ok), "delay", d)
		if !s.sleep(d) {
			return "", false
		}
		s.writeLoginReply(c, LoginFailed)
		return "", false
	}
	s.backoff.succeed(peer)
	if err := s.writeLoginReply(c, LoginOK); err != nil {
		log.Debug("admin login reply not sent", "err", err)
		return "", false
	}
	log.Info("admin logged in", "user", l.User)
	return l.User, true
}

func failReason(authenticated bool) string {
	if authenticated {
		return "not an admin"
	}
	return "wrong user or password"
}

func (s *Server) writeLoginReply(c net.Conn, st LoginStatus) error {
	c.SetWriteDeadline(time.Now().Add(orDefault(s.WriteTimeout, DefaultWriteTimeout)))
	_, err := c.Write(AppendLoginReply(nil, st))
	return err
}

// session is one logged-in admin's connection.
type session struct {
	srv  *Server
	conn net.Conn
	user string
	log  *slog.Logger
}

// run answers requests in order until the client quits or goes, the idle
// timeout passes, or the admin is no longer one. It returns why it ended
// (nil for QUIT).
func (ss *session) run() error {
	s := ss.srv
	br := bufio.NewReader(ss.conn)
	idle := orDefault(s.IdleTimeout, DefaultIdleTimeout)
	write := orDefault(s.WriteTimeout, DefaultWriteTimeout)
	var out []byte
	for {
		ss.conn.SetReadDeadline(time.Now().Add(idle))
		req, err := ReadRequest(br)
		if err != nil {
			return err
		}
		rep, end := ss.handle(req)
		out, err = AppendReply(out[:0], rep)
		if err != nil {
			// A handler built a reply too long to send: a bug, but the
			// client still gets an answer.
			ss.log.Error("admin reply too long", "cmd", req.Cmd.String(), "err", err)
			out, _ = AppendReply(out[:0], Reply{Cmd: req.Cmd, RID: req.RID, Status: StatusServerFailure})
		}
		ss.conn.SetWriteDeadline(time.Now().Add(write))
		if _, err := ss.conn.Write(out); err != nil {
			return err
		}
		if end {
			if req.Cmd == CmdQuit {
				return nil
			}
			return errNoLongerAdmin
		}
	}
}

var errNoLongerAdmin = errors.New("admin: the user is no longer an admin")

// handle answers one request; end says that the session ends after the
// reply.
func (ss *session) handle(req Request) (rep Reply, end bool) {
	rep = Reply{Cmd: req.Cmd, RID: req.RID}
	switch req.Cmd.Type() {
	case TypeGet, TypeSet, TypeSession:
	default:
		rep.Status = StatusBadType
		return rep, false
	}
	if !req.Cmd.Known() {
		rep.Status = StatusBadCommand
		return rep, false
	}
	// An admin deleted or demoted meanwhile loses the session.
	if u, ok := ss.srv.Users.Get(ss.user); !ok || u.Role != users.RoleAdmin {
		ss.log.Info("admin session ended: the user is no longer an admin")
		rep.Status = StatusNotPermitted
		return rep, true
	}
	rep.Data, rep.Status = ss.dispatch(req)
	if rep.Status != StatusOK {
		rep.Data = nil
	}
	return rep, req.Cmd == CmdQuit && rep.Status == StatusOK
}

// dispatch runs a known command.
func (ss *session) dispatch(req Request) ([]byte, Status) {
	reg := ss.srv.Engine.Registry()
	switch req.Cmd {
	case CmdBytes, CmdHistoric, CmdConcurrent, CmdMetrics, CmdQuit, CmdCaps:
		if len(req.Data) != 0 {
			return nil, StatusMalformed
		}
	}
	switch req.Cmd {
	case CmdBytes:
		return AppendCounter(nil, reg.Metrics().BytesTotal()), StatusOK
	case CmdHistoric:
		return AppendCounter(nil, reg.Metrics().Historic), StatusOK
	case CmdConcurrent:
		return AppendCounter(nil, reg.Metrics().Concurrent), StatusOK
	case CmdMetrics:
		return AppendMetrics(nil, metricsOf(reg.Metrics())), StatusOK
	case CmdListUsers:
		return ss.listUsers(req.Data)
	case CmdGetConfig:
		k, err := ParseKeyData(req.Data)
		if err != nil {
			return nil, statusOf(err)
		}
		return ss.getConfig(k)
	case CmdListFlows:
		return ss.listFlows(req.Data)
	case CmdGetFlow:
		id, err := ParseFlowID(req.Data)
		if err != nil {
			return nil, statusOf(err)
		}
		f, ok := reg.Flow(id)
		if !ok {
			return nil, StatusNoSuchFlow
		}
		b, err := AppendFlow(nil, flowOf(f.Info(time.Now())))
		if err != nil {
			return nil, StatusServerFailure
		}
		return b, StatusOK
	case CmdAddUser:
		return nil, ss.addUser(req.Data)
	case CmdDeleteUser:
		return nil, ss.deleteUser(req.Data)
	case CmdSetPassword:
		return nil, ss.setPassword(req.Data)
	case CmdSetConfig:
		return ss.setConfig(req.Data)
	case CmdCloseFlow:
		return nil, ss.closeFlow(req.Data)
	case CmdQuit:
		return nil, StatusOK
	case CmdPing:
		return req.Data, StatusOK
	case CmdCaps:
		b, err := AppendCapabilities(nil, ss.srv.capabilities())
		if err != nil {
			return nil, StatusServerFailure
		}
		return b, StatusOK
	}
	return nil, StatusBadCommand
}

// statusOf maps a codec error to a status: a value the contract does not
// allow (an empty name) is X'05', anything that does not frame X'04'.
func statusOf(err error) Status {
	if errors.Is(err, ErrStringLength) {
		return StatusInvalidValue
	}
	return StatusMalformed
}

func metricsOf(m engine.Metrics) Metrics {
	return Metrics{
		Historic:       m.Historic,
		Concurrent:     m.Concurrent,
		BytesTotal:     m.BytesTotal(),
		BytesUp:        m.BytesUp,
		BytesDown:      m.BytesDown,
		PeakConcurrent: m.PeakConcurrent,
		UptimeSeconds:  uint64(m.Uptime / time.Second),
		FailedLogins:   m.FailedLogins,
		TCPOpen:        m.TCPOpen,
		UDPOpen:        m.UDPOpen,
		DialFailures:   m.DialFailures,
	}
}

// capabilities lists what this server answers.
func (s *Server) capabilities() Capabilities {
	c := Capabilities{Commands: Commands}
	for _, k := range Keys {
		if k == KeyLogLevel && s.Level == nil {
			continue
		}
		c.Keys = append(c.Keys, k)
	}
	return c
}

func (ss *session) listUsers(data []byte) ([]byte, Status) {
	q, err := ParseUsersQuery(data)
	if err != nil {
		return nil, statusOf(err)
	}
	if q.Max == 0 {
		return nil, StatusInvalidValue
	}
	list := ss.srv.Users.List()
	reg := ss.srv.Engine.Registry()
	p := UsersPage{Total: clamp32(len(list)), Next: UsersEnd}
	size := usersHeadLen
	i := int64(q.Start)
	for ; i < int64(len(list)) && len(p.Users) < int(q.Max); i++ {
		u := UserInfo{Name: list[i].Name, Role: Role(list[i].Role), Flows: clamp32(reg.UserFlows(list[i].Name))}
		if size+userEntryLen(u) > MaxDataLen {
			break
		}
		size += userEntryLen(u)
		p.Users = append(p.Users, u)
	}
	if i < int64(len(list)) {
		p.Next = uint32(i)
	}
	b, err := AppendUsersPage(make([]byte, 0, size), p)
	if err != nil {
		return nil, StatusServerFailure
	}
	return b, StatusOK
}

// maxFlowsPerPage is the most flows a LIST FLOWS reply can hold.
const maxFlowsPerPage = (MaxDataLen - flowsHeadLen) / minFlowLen

func (ss *session) listFlows(data []byte) ([]byte, Status) {
	q, err := ParseFlowsQuery(data)
	if err != nil {
		return nil, statusOf(err)
	}
	if q.Max == 0 {
		return nil, StatusInvalidValue
	}
	infos, total, next := ss.srv.Engine.Registry().List(q.Cursor, min(int(q.Max), maxFlowsPerPage))
	body := make([]byte, 0, 4096)
	n := 0
	for _, fi := range infos {
		nb, err := AppendFlow(body, flowOf(fi))
		if err != nil {
			return nil, StatusServerFailure
		}
		if flowsHeadLen+len(nb) > MaxDataLen {
			// The page is full (the first flow always fits): the next one
			// starts after the last flow that did.
			next = infos[n-1].ID
			break
		}
		body = nb
		n++
	}
	b := make([]byte, 0, flowsHeadLen+len(body))
	b = binary.BigEndian.AppendUint32(b, clamp32(total))
	b = binary.BigEndian.AppendUint64(b, next)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	return append(b, body...), StatusOK
}

// flowOf converts an engine snapshot; an address not known yet (the
// destination of a UDP association before its first datagram) is sent as
// 0.0.0.0:0.
func flowOf(fi engine.FlowInfo) Flow {
	return Flow{
		ID: fi.ID, Proto: Proto(fi.Proto), State: FlowState(fi.State), Flags: FlowFlags(fi.Flags),
		Src: addrOrZero(fi.Src), Dst: addrOrZero(fi.Dst),
		BytesUp: fi.BytesUp, BytesDown: fi.BytesDown, PktsUp: fi.PktsUp, PktsDown: fi.PktsDown,
		AgeMS: millis(fi.Age), IdleMS: millis(fi.Idle),
		User: fi.User,
	}
}

func addrOrZero(a socks.Addr) socks.Addr {
	if !a.IsValid() || len(a.Name) > socks.MaxDomainLen {
		return socks.Addr{IP: netip.IPv4Unspecified()}
	}
	return a
}

func millis(d time.Duration) uint64 {
	if d < 0 {
		return 0
	}
	return uint64(d / time.Millisecond)
}

func clamp32(n int) uint32 {
	if n < 0 {
		return 0
	}
	if uint64(n) > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(n)
}

func (ss *session) addUser(data []byte) Status {
	u, err := ParseNewUser(data)
	if err != nil {
		return statusOf(err)
	}
	role := users.Role(u.Role)
	if u.Role != RoleUser && u.Role != RoleAdmin {
		return StatusInvalidValue
	}
	s := ss.srv
	s.userMu.Lock()
	defer s.userMu.Unlock()
	if _, ok := s.Users.Get(u.Name); ok {
		return StatusUserExists
	}
	if s.Users.Len() >= orDefault(s.MaxUsers, DefaultMaxUsers) {
		return StatusUserLimit
	}
	if st := ss.userErr(s.Users.Add(u.Name, u.Password, role), "add user", u.Name); st != StatusOK {
		return st
	}
	ss.log.Info("user added", "name", u.Name, "role", role.String())
	return StatusOK
}

func (ss *session) deleteUser(data []byte) Status {
	name, err := ParseUserName(data)
	if err != nil {
		return statusOf(err)
	}
	if st := ss.userErr(ss.srv.Users.Delete(name), "delete user", name); st != StatusOK {
		return st
	}
	ss.log.Info("user deleted", "name", name)
	return StatusOK
}

func (ss *session) setPassword(data []byte) Status {
	c, err := ParseCredentials(data)
	if err != nil {
		return statusOf(err)
	}
	if st := ss.userErr(ss.srv.Users.SetPassword(c.Name, c.Password), "set password", c.Name); st != StatusOK {
		return st
	}
	ss.log.Info("password changed", "name", c.Name)
	return StatusOK
}

// userErr maps a user store error to a status, logging failures of the
// store itself.
func (ss *session) userErr(err error, op, name string) Status {
	switch {
	case err == nil:
		return StatusOK
	case errors.Is(err, users.ErrExists):
		return StatusUserExists
	case errors.Is(err, users.ErrNotFound):
		return StatusNoSuchUser
	case errors.Is(err, users.ErrLastAdmin):
		return StatusNotPermitted
	case errors.Is(err, users.ErrInvalidName), errors.Is(err, users.ErrInvalidPassword):
		return StatusInvalidValue
	}
	ss.log.Error("user store: "+op+" failed", "name", name, "err", err)
	return StatusServerFailure
}

func (ss *session) closeFlow(data []byte) Status {
	id, err := ParseFlowID(data)
	if err != nil {
		return statusOf(err)
	}
	f, ok := ss.srv.Engine.Registry().Flow(id)
	if !ok {
		return StatusNoSuchFlow
	}
	if !f.Abort() {
		// Still dialing: there is nothing to close until it is up.
		return StatusNotPermitted
	}
	ss.log.Info("flow closed by admin", "flow", id, "src", f.Src.String(), "dst", f.Dst().String(), "flow-user", f.User)
	return StatusOK
}

// Log levels as KEY 05 numbers them.
var logLevels = [...]slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError}

func (ss *session) getConfig(k Key) ([]byte, Status) {
	v, ok := ss.srv.configValue(k)
	if !ok {
		return nil, StatusUnknownKey
	}
	b, _ := AppendConfigValue(nil, UintValue(k, v))
	return b, StatusOK
}

// configValue returns the current value of k in its wire unit.
func (s *Server) configValue(k Key) (uint32, bool) {
	st := s.Engine.Settings()
	switch k {
	case KeyRelayBuffer:
		return clamp32(st.RelayBufferSize()), true
	case KeyTCPIdleTimeout:
		return uint32(min(millis(st.TCPIdleTimeout()), math.MaxUint32)), true
	case KeyUDPIdleTimeout:
		return uint32(min(millis(st.UDPIdleTimeout()), math.MaxUint32)), true
	case KeyAuthRequired:
		if st.AuthRequired() {
			return 1, true
		}
		return 0, true
	case KeyMaxFlows:
		return clamp32(st.MaxFlows()), true
	case KeyLogLevel:
		if s.Level == nil {
			return 0, false
		}
		l := s.Level.Level()
		for i := len(logLevels) - 1; i >= 0; i-- {
			if l >= logLevels[i] {
				return uint32(i), true
			}
		}
		return 0, true
	case KeyConnectTimeout:
		return uint32(min(millis(st.ConnectTimeout()), math.MaxUint32)), true
	}
	return 0, false
}

func (ss *session) setConfig(data []byte) ([]byte, Status) {
	c, err := ParseConfigValue(data)
	if err != nil {
		return nil, statusOf(err)
	}
	s := ss.srv
	if _, ok := s.configValue(c.Key); !ok {
		return nil, StatusUnknownKey
	}
	if len(c.Value) != c.Key.Size() {
		return nil, StatusInvalidValue
	}
	v := c.Value
	n := uint32(c.Uint())
	st := s.Engine.Settings()
	ms := time.Duration(n) * time.Millisecond
	switch c.Key {
	case KeyRelayBuffer:
		err = st.SetRelayBufferSize(int(n))
	case KeyTCPIdleTimeout:
		err = st.SetTCPIdleTimeout(ms)
	case KeyUDPIdleTimeout:
		err = st.SetUDPIdleTimeout(ms)
	case KeyAuthRequired:
		if v[0] > 1 {
			return nil, StatusInvalidValue
		}
		st.SetAuthRequired(v[0] == 1)
	case KeyMaxFlows:
		err = st.SetMaxFlows(int(n))
	case KeyLogLevel:
		if int(v[0]) >= len(logLevels) {
			return nil, StatusInvalidValue
		}
		s.Level.Set(logLevels[v[0]])
	case KeyConnectTimeout:
		err = st.SetConnectTimeout(ms)
	}
	if err != nil {
		return nil, StatusInvalidValue
	}
	applied, _ := s.configValue(c.Key)
	ss.log.Info("config set", "key", c.Key.String(), "value", applied)
	return ss.getConfig(c.Key)
}
