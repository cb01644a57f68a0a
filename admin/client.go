package admin

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"time"
)

// LoginError is a login the server refused.
type LoginError struct{ Status LoginStatus }

func (e *LoginError) Error() string {
	return fmt.Sprintf("admin: login refused: %s (status 0x%02x)", e.Status, uint8(e.Status))
}

// StatusError is a reply whose STATUS is not X'00'.
type StatusError struct {
	Cmd    Command
	Status Status
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("admin: %s: %s (status 0x%02x)", e.Cmd, e.Status, uint8(e.Status))
}

// Client speaks the protocol over one connection: Login, then requests.
// Do and the typed methods send one request and wait for its reply; they
// may be called from several goroutines, one exchange at a time. Send and
// Receive pipeline: several requests out, then their replies in order;
// they must not be mixed with Do.
type Client struct {
	// Timeout bounds each exchange, and each Send and Receive; 0 means
	// none.
	Timeout time.Duration

	conn net.Conn
	br   *bufio.Reader
	mu   sync.Mutex
	rid  uint16
	buf  []byte
}

// NewClient returns a client on c, which it owns.
func NewClient(c net.Conn) *Client {
	return &Client{conn: c, br: bufio.NewReader(c)}
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) deadline() {
	if c.Timeout > 0 {
		c.conn.SetDeadline(time.Now().Add(c.Timeout))
	}
}

// Login sends the login and reads the reply; a refusal is a *LoginError.
func (c *Client) Login(user, password string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := AppendLogin(nil, Login{User: user, Password: password})
	if err != nil {
		return err
	}
	c.deadline()
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("admin: sending the login: %w", err)
	}
	st, err := ReadLoginReply(c.br)
	if err != nil {
		return fmt.Errorf("admin: reading the login reply: %w", err)
	}
	if st != LoginOK {
		return &LoginError{Status: st}
	}
	return nil
}

// Send sends a request with the next RID, which it returns.
func (c *Client) Send(cmd Command, data []byte) (uint16, error) {
	c.rid++
	rid := c.rid
	var err error
	c.buf, err = AppendRequest(c.buf[:0], Request{Cmd: cmd, RID: rid, Data: data})
	if err != nil {
		return 0, err
	}
	c.deadline()
	if _, err := c.conn.Write(c.buf); err != nil {
		return 0, fmt.Errorf("admin: sending %s: %w", cmd, err)
	}
	return rid, nil
}

// Receive reads the next reply, whatever its STATUS.
func (c *Client) Receive() (Reply, error) {
	c.deadline()
	rep, err := ReadReply(c.br)
	if err != nil {
		return Reply{}, fmt.Errorf("admin: reading a reply: %w", err)
	}
	return rep, nil
}

// Do sends a request and returns the DATA of its reply. A reply with
// another STATUS than X'00' is a *StatusError; one that does not echo the
// request's TYPE, CMD and RID is an error.
func (c *Client) Do(cmd Command, data []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rid, err := c.Send(cmd, data)
	if err != nil {
		return nil, err
	}
	rep, err := c.Receive()
	if err != nil {
		return nil, fmt.Errorf("admin: %s: %w", cmd, err)
	}
	if rep.RID != rid || rep.Cmd != cmd {
		return nil, fmt.Errorf("admin: %s (RID %d): the reply is for %s (RID %d)", cmd, rid, rep.Cmd, rep.RID)
	}
	if rep.Status != StatusOK {
		return nil, &StatusError{Cmd: cmd, Status: rep.Status}
	}
	return rep.Data, nil
}

func (c *Client) counter(cmd Command) (uint64, error) {
	b, err := c.Do(cmd, nil)
	if err != nil {
		return 0, err
	}
	v, err := ParseCounter(b)
	if err != nil {
		return 0, fmt.Errorf("admin: %s reply: %w", cmd, err)
	}
	return v, nil
}

// BytesTransferred returns every relayed payload byte since start.
func (c *Client) BytesTransferred() (uint64, error) { return c.counter(CmdBytes) }

// Historic returns the number of flows ever accepted.
func (c *Client) Historic() (uint64, error) { return c.counter(CmdHistoric) }

// Concurrent returns the number of flows open now.
func (c *Client) Concurrent() (uint64, error) { return c.counter(CmdConcurrent) }

// Metrics returns every counter.
func (c *Client) Metrics() (Metrics, error) {
	b, err := c.Do(CmdMetrics, nil)
	if err != nil {
		return Metrics{}, err
	}
	m, _, err := ParseMetrics(b)
	if err != nil {
		return Metrics{}, fmt.Errorf("admin: METRICS reply: %w", err)
	}
	return m, nil
}

// UsersPage returns one page of LIST USERS.
func (c *Client) UsersPage(q UsersQuery) (UsersPage, error) {
	b, err := c.Do(CmdListUsers, AppendUsersQuery(nil, q))
	if err != nil {
		return UsersPage{}, err
	}
	p, err := ParseUsersPage(b)
	if err != nil {
		return UsersPage{}, fmt.Errorf("admin: LIST USERS reply: %w", err)
	}
	return p, nil
}

// Users returns every user, paging through LIST USERS.
func (c *Client) Users() ([]UserInfo, error) {
	var all []UserInfo
	q := UsersQuery{Max: 0xFFFF}
	for {
		p, err := c.UsersPage(q)
		if err != nil {
			return nil, err
		}
		all = append(all, p.Users...)
		if p.Next == UsersEnd {
			return all, nil
		}
		if p.Next <= q.Start {
			return nil, fmt.Errorf("admin: LIST USERS: the server's NEXT %d does not advance from %d", p.Next, q.Start)
		}
		q.Start = p.Next
	}
}

// FlowsPage returns one page of LIST FLOWS.
func (c *Client) FlowsPage(q FlowsQuery) (FlowsPage, error) {
	b, err := c.Do(CmdListFlows, AppendFlowsQuery(nil, q))
	if err != nil {
		return FlowsPage{}, err
	}
	p, err := ParseFlowsPage(b)
	if err != nil {
		return FlowsPage{}, fmt.Errorf("admin: LIST FLOWS reply: %w", err)
	}
	return p, nil
}

// Flows returns every live flow, paging through LIST FLOWS.
func (c *Client) Flows() ([]Flow, error) {
	var all []Flow
	q := FlowsQuery{Max: 0xFFFF}
	for {
		p, err := c.FlowsPage(q)
		if err != nil {
			return nil, err
		}
		all = append(all, p.Flows...)
		if p.Next == 0 {
			return all, nil
		}
		if p.Next <= q.Cursor {
			return nil, fmt.Errorf("admin: LIST FLOWS: the server's NEXT %d does not advance from %d", p.Next, q.Cursor)
		}
		q.Cursor = p.Next
	}
}

// Flow returns one flow.
func (c *Client) Flow(id uint64) (Flow, error) {
	b, err := c.Do(CmdGetFlow, AppendFlowID(nil, id))
	if err != nil {
		return Flow{}, err
	}
	f, err := ParseFlowData(b)
	if err != nil {
		return Flow{}, fmt.Errorf("admin: GET FLOW reply: %w", err)
	}
	return f, nil
}

// CloseFlow ends a flow.
func (c *Client) CloseFlow(id uint64) error {
	_, err := c.Do(CmdCloseFlow, AppendFlowID(nil, id))
	return err
}

// AddUser adds a user; it is in the user store when AddUser returns.
func (c *Client) AddUser(u NewUser) error {
	b, err := AppendNewUser(nil, u)
	if err != nil {
		return err
	}
	_, err = c.Do(CmdAddUser, b)
	return err
}

// DeleteUser deletes a user.
func (c *Client) DeleteUser(name string) error {
	b, err := AppendUserName(nil, name)
	if err != nil {
		return err
	}
	_, err = c.Do(CmdDeleteUser, b)
	return err
}

// SetPassword changes a user's password.
func (c *Client) SetPassword(name, password string) error {
	b, err := AppendCredentials(nil, Credentials{Name: name, Password: password})
	if err != nil {
		return err
	}
	_, err = c.Do(CmdSetPassword, b)
	return err
}

// Config returns the value of a config key.
func (c *Client) Config(k Key) (ConfigValue, error) {
	b, err := c.Do(CmdGetConfig, AppendKey(nil, k))
	if err != nil {
		return ConfigValue{}, err
	}
	return parseConfigReply(b, CmdGetConfig, k)
}

// SetConfig sets a config key and returns the value as applied.
func (c *Client) SetConfig(v ConfigValue) (ConfigValue, error) {
	data, err := AppendConfigValue(nil, v)
	if err != nil {
		return ConfigValue{}, err
	}
	b, err := c.Do(CmdSetConfig, data)
	if err != nil {
		return ConfigValue{}, err
	}
	return parseConfigReply(b, CmdSetConfig, v.Key)
}

func parseConfigReply(b []byte, cmd Command, k Key) (ConfigValue, error) {
	v, err := ParseConfigValue(b)
	if err != nil {
		return ConfigValue{}, fmt.Errorf("admin: %s reply: %w", cmd, err)
	}
	if v.Key != k {
		return ConfigValue{}, fmt.Errorf("admin: %s reply is for key %s, not %s", cmd, v.Key, k)
	}
	return v, nil
}

// Ping sends data and checks that the same bytes come back.
func (c *Client) Ping(data []byte) error {
	b, err := c.Do(CmdPing, data)
	if err != nil {
		return err
	}
	if string(b) != string(data) {
		return fmt.Errorf("admin: PING: %d octets came back for %d sent, or other ones", len(b), len(data))
	}
	return nil
}

// Capabilities returns the commands and config keys the server answers.
func (c *Client) Capabilities() (Capabilities, error) {
	b, err := c.Do(CmdCaps, nil)
	if err != nil {
		return Capabilities{}, err
	}
	caps, err := ParseCapabilities(b)
	if err != nil {
		return Capabilities{}, fmt.Errorf("admin: CAPABILITIES reply: %w", err)
	}
	return caps, nil
}

// Quit ends the session politely and closes the connection.
func (c *Client) Quit() error {
	_, err := c.Do(CmdQuit, nil)
	c.conn.Close()
	return err
}
