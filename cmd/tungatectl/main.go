// Command tungatectl is the client of tungate's admin server: it reads the
// counters, lists and closes flows, manages users and changes settings of
// a running tungate, over SCTP (docs/admin-protocol.md).
//
// It prints tables for people and, with --json, JSON for scripts. Exit
// codes: 0 done, 1 the server said no (login refused, or a STATUS other
// than ok), 2 a usage or connection error.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"tungate/admin"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// Replaced by tests.
var (
	dialAdmin = admin.DialSCTP
	getenv    = os.Getenv
)

const usage = `Usage: tungatectl [flags] COMMAND [ARGS]

Talks to a running tungate's admin server over SCTP. Flags may come
before or after the words; use -- before an argument that starts with '-'.

Commands:
  metrics                        the counters: connections, bytes, logins
  flows                          the live flows
  flow close ID                  end a flow
  users                          the users, their roles and live flows
  user add NAME [--role R]       add a user (R: user, the default, or admin)
  user del NAME                  delete a user
  user passwd NAME               change a user's password
  config get [KEY]               one setting, or all of them
  config set KEY VALUE           change a setting, live
  ping                           check that the server answers
  top                            a live table of the flows and their rates
                                 (q or Ctrl-C quits)

Settings (KEY): relay-buffer (bytes), tcp-idle-timeout, udp-timeout and
connect-timeout (a duration like 30s, or milliseconds), socks-auth
(true/false), max-flows (0: no limit), log-level (debug, info, warn, error).

The new password of user add and user passwd is asked twice on a terminal,
and is otherwise the first line of standard input.

Flags:
  --admin ADDR          the admin server, host:port (default 127.0.0.1:8080,
                        or $TUNGATE_ADMIN)
  --user NAME           the admin to log in as (default admin, or $TUNGATE_USER)
  --password-file FILE  the admin's password is the first line of FILE;
                        without it $TUNGATE_PASSWORD, else it is asked on a
                        terminal
  --json                print JSON instead of tables
  --timeout D           bound on connecting and on each request (default 10s)
  --interval D          top: time between refreshes (default 1s)
  --count N             top: stop after N refreshes (default 0: until q)
  -h, --help            print this help

Exit status: 0 done, 1 the server said no, 2 usage or connection error.
`

// usageError is a mistake on the command line: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg + " (see tungatectl --help)" }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// connError is a failure to reach the server or to speak with it: exit 2.
type connError struct{ err error }

func (e *connError) Error() string { return e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// options are the flags.
type options struct {
	addr         string
	user         string
	passwordFile string
	json         bool
	timeout      time.Duration
	interval     time.Duration
	count        int
	role         string
	set          map[string]bool
}

// run is main with its inputs and outputs passed in; it returns the exit
// code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := runErr(args, stdin, stdout, stderr)
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintln(stderr, "tungatectl:", err)
	var se *admin.StatusError
	var le *admin.LoginError
	switch {
	case errors.As(err, &se), errors.As(err, &le):
		return 1
	}
	return 2
}

func runErr(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	opt, words, err := parseArgs(args)
	if err != nil {
		return err
	}
	cmd, err := command(words, opt)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Ask for what the command needs before connecting: a new password.
	var newPassword string
	if cmd.name == "user add" || cmd.name == "user passwd" {
		if newPassword, err = readNewPassword(stdin, stderr); err != nil {
			return usagef("%s %s: %v", cmd.name, words[2], err)
		}
	}
	password, err := adminPassword(opt, stdin, stderr)
	if err != nil {
		return err
	}
	cl, addr, err := connect(ctx, opt, password)
	if err != nil {
		return err
	}
	defer cl.Close()
	out := &printer{w: stdout, json: opt.json}
	err = cmd.run(ctx, &session{cl: cl, addr: addr, opt: opt, out: out, stdin: stdin, newPassword: newPassword})
	if err == nil {
		cl.Quit()
	}
	return err
}

// parseArgs separates the flags from the words; flags and words
// interleave, and everything after "--" is words.
func parseArgs(args []string) (options, []string, error) {
	opt := options{
		addr:     firstNonEmpty(getenv("TUNGATE_ADMIN"), "127.0.0.1:8080"),
		user:     firstNonEmpty(getenv("TUNGATE_USER"), "admin"),
		timeout:  10 * time.Second,
		interval: time.Second,
	}
	fs := flag.NewFlagSet("tungatectl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&opt.addr, "admin", opt.addr, "")
	fs.StringVar(&opt.user, "user", opt.user, "")
	fs.StringVar(&opt.passwordFile, "password-file", "", "")
	fs.BoolVar(&opt.json, "json", false, "")
	fs.DurationVar(&opt.timeout, "timeout", opt.timeout, "")
	fs.DurationVar(&opt.interval, "interval", opt.interval, "")
	fs.IntVar(&opt.count, "count", 0, "")
	fs.StringVar(&opt.role, "role", "user", "")

	rest, tail := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		rest, tail = args[:i], args[i+1:]
	}
	var words []string
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return opt, nil, err
			}
			return opt, nil, usagef("%v", err)
		}
		rest = fs.Args()
		if len(rest) > 0 {
			words = append(words, rest[0])
			rest = rest[1:]
		}
	}
	opt.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { opt.set[f.Name] = true })
	switch {
	case opt.timeout <= 0:
		return opt, nil, usagef("--timeout must be positive")
	case opt.interval <= 0:
		return opt, nil, usagef("--interval must be positive")
	case opt.count < 0:
		return opt, nil, usagef("--count must not be negative")
	}
	return opt, append(words, tail...), nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// session is what a command works with.
type session struct {
	cl          *admin.Client
	addr        netip.AddrPort
	opt         options
	out         *printer
	stdin       io.Reader
	newPassword string
}

// cmd is a parsed command.
type cmd struct {
	name string
	run  func(ctx context.Context, s *session) error
}

// command checks the words and returns what to run.
func command(words []string, opt options) (cmd, error) {
	if len(words) == 0 {
		return cmd{}, usagef("missing command")
	}
	want := func(name string, n int, what string) error {
		if len(words) < n {
			return usagef("%s: missing %s", name, what)
		}
		if len(words) > n {
			return usagef("%s: unexpected argument %q", name, words[n])
		}
		return nil
	}
	only := func(name, flagName string, cmds ...string) error {
		if opt.set[flagName] && !slices.Contains(cmds, name) {
			return usagef("%s: --%s is only valid with %s", name, flagName, strings.Join(cmds, ", "))
		}
		return nil
	}
	var c cmd
	var err error
	switch words[0] {
	case "metrics":
		c, err = cmd{"metrics", runMetrics}, want("metrics", 1, "")
	case "flows":
		c, err = cmd{"flows", runFlows}, want("flows", 1, "")
	case "users":
		c, err = cmd{"users", runUsers}, want("users", 1, "")
	case "ping":
		c, err = cmd{"ping", runPing}, want("ping", 1, "")
	case "top":
		c, err = cmd{"top", runTop}, want("top", 1, "")
	case "flow":
		if len(words) < 2 || words[1] != "close" {
			return cmd{}, usagef("flow: want flow close ID")
		}
		if err := want("flow close", 3, "ID"); err != nil {
			return cmd{}, err
		}
		id, perr := strconv.ParseUint(words[2], 10, 64)
		if perr != nil {
			return cmd{}, usagef("flow close: ID %q is not a number (see tungatectl flows)", words[2])
		}
		c = cmd{"flow close", func(ctx context.Context, s *session) error { return runFlowClose(s, id) }}
	case "user":
		if len(words) < 2 {
			return cmd{}, usagef("user: want add, del or passwd")
		}
		name := "user " + words[1]
		switch words[1] {
		case "add", "del", "passwd":
		default:
			return cmd{}, usagef("user: unknown command %q: want add, del or passwd", words[1])
		}
		if err := want(name, 3, "NAME"); err != nil {
			return cmd{}, err
		}
		user := words[2]
		switch words[1] {
		case "add":
			role, rerr := admin.ParseRole(opt.role)
			if rerr != nil {
				return cmd{}, usagef("user add: --role %q: want user or admin", opt.role)
			}
			c = cmd{name, func(ctx context.Context, s *session) error { return runUserAdd(s, user, role) }}
		case "del":
			c = cmd{name, func(ctx context.Context, s *session) error { return runUserDel(s, user) }}
		case "passwd":
			c = cmd{name, func(ctx context.Context, s *session) error { return runUserPasswd(s, user) }}
		}
	case "config":
		if len(words) < 2 || words[1] != "get" && words[1] != "set" {
			return cmd{}, usagef("config: want config get [KEY] or config set KEY VALUE")
		}
		if words[1] == "get" {
			if len(words) > 3 {
				return cmd{}, usagef("config get: unexpected argument %q", words[3])
			}
			var keys []admin.Key
			if len(words) == 3 {
				k, kerr := parseKey(words[2])
				if kerr != nil {
					return cmd{}, kerr
				}
				keys = append(keys, k)
			}
			c = cmd{"config get", func(ctx context.Context, s *session) error { return runConfigGet(s, keys) }}
			break
		}
		if err := want("config set", 4, "KEY and VALUE"); err != nil {
			return cmd{}, err
		}
		k, kerr := parseKey(words[2])
		if kerr != nil {
			return cmd{}, kerr
		}
		v, verr := parseValue(k, words[3])
		if verr != nil {
			return cmd{}, verr
		}
		c = cmd{"config set", func(ctx context.Context, s *session) error { return runConfigSet(s, v) }}
	case "help":
		return cmd{}, flag.ErrHelp
	default:
		return cmd{}, usagef("unknown command %q", words[0])
	}
	if err != nil {
		return cmd{}, err
	}
	if err := only(c.name, "role", "user add"); err != nil {
		return cmd{}, err
	}
	if err := only(c.name, "interval", "top"); err != nil {
		return cmd{}, err
	}
	if err := only(c.name, "count", "top"); err != nil {
		return cmd{}, err
	}
	return c, nil
}

// maxPasswordLine bounds a password read from a file or standard input;
// the protocol carries at most 255 bytes.
const maxPasswordLine = 4096

// adminPassword finds the admin's password: --password-file, then
// $TUNGATE_PASSWORD, then a prompt on a terminal.
func adminPassword(opt options, stdin io.Reader, stderr io.Writer) (string, error) {
	if opt.passwordFile != "" {
		f, err := os.Open(opt.passwordFile)
		if err != nil {
			return "", usagef("--password-file: %v", err)
		}
		defer f.Close()
		line, err := firstLine(f)
		if err != nil {
			return "", usagef("--password-file %s: %v", opt.passwordFile, err)
		}
		return line, nil
	}
	if p := getenv("TUNGATE_PASSWORD"); p != "" {
		return p, nil
	}
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(stderr, "Password of %s: ", opt.user)
		p, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", usagef("reading the password: %v", err)
		}
		return string(p), nil
	}
	return "", usagef("no password for %s: give --password-file FILE or set TUNGATE_PASSWORD", opt.user)
}

// firstLine returns the first line of r without its line ending; it must
// not be empty.
func firstLine(r io.Reader) (string, error) {
	line, err := bufio.NewReader(io.LimitReader(r, maxPasswordLine)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if line == "" {
		return "", errors.New("empty first line")
	}
	return line, nil
}

// readNewPassword asks for a new password twice on a terminal, or reads
// the first line of stdin.
func readNewPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd := int(f.Fd())
		fmt.Fprint(stderr, "New password: ")
		p1, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		fmt.Fprint(stderr, "Retype new password: ")
		p2, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		if string(p1) != string(p2) {
			return "", errors.New("the passwords do not match")
		}
		if len(p1) == 0 {
			return "", errors.New("empty password")
		}
		return string(p1), nil
	}
	line, err := firstLine(stdin)
	if err != nil {
		return "", fmt.Errorf("the new password, the first line of standard input: %w", err)
	}
	return line, nil
}

// resolve turns host:port into an address.
func resolve(ctx context.Context, s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, usagef("--admin %q: want host:port", s)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, usagef("--admin %q: bad port", s)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}, &connError{fmt.Errorf("--admin %s: resolving %s: %v", s, host, err)}
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(p)), nil
}

// connect dials the server and logs in.
func connect(ctx context.Context, opt options, password string) (*admin.Client, netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, opt.timeout)
	defer cancel()
	addr, err := resolve(ctx, opt.addr)
	if err != nil {
		return nil, addr, err
	}
	c, err := dialAdmin(ctx, addr)
	if err != nil {
		hint := ""
		if errors.Is(err, syscall.ECONNREFUSED) {
			hint = " (is tungate running with --admin " + addr.String() + "?)"
		}
		return nil, addr, &connError{fmt.Errorf("connecting to the admin server %s over SCTP: %w%s", addr, err, hint)}
	}
	cl := admin.NewClient(c)
	cl.Timeout = opt.timeout
	if err := cl.Login(opt.user, password); err != nil {
		cl.Close()
		var le *admin.LoginError
		if errors.As(err, &le) {
			what := le.Status.String()
			if le.Status == admin.LoginFailed {
				what = "wrong user or password, or not an admin"
			} else if le.Status == admin.LoginServerError {
				what = "server error (too many admin sessions?)"
			}
			return nil, addr, &refusal{msg: fmt.Sprintf("login as %s at %s refused: %s (status 0x%02x)", opt.user, addr, what, uint8(le.Status)), err: err}
		}
		if errors.Is(err, admin.ErrStringLength) {
			return nil, addr, usagef("login as %q: %v", opt.user, err)
		}
		return nil, addr, &connError{fmt.Errorf("login at %s: %w", addr, err)}
	}
	return cl, addr, nil
}

// parseKey parses a config key's name.
func parseKey(s string) (admin.Key, error) {
	k, err := admin.ParseKey(s)
	if err != nil {
		names := make([]string, len(admin.Keys))
		for i, k := range admin.Keys {
			names[i] = k.String()
		}
		return 0, usagef("unknown setting %q: want one of %s", s, strings.Join(names, ", "))
	}
	return k, nil
}

var logLevelNames = []string{"debug", "info", "warn", "error"}

// parseValue parses VALUE for key k into its wire form.
func parseValue(k admin.Key, s string) (admin.ConfigValue, error) {
	bad := func(want string) (admin.ConfigValue, error) {
		return admin.ConfigValue{}, usagef("config set %s %q: want %s", k, s, want)
	}
	switch {
	case k == admin.KeyAuthRequired:
		switch strings.ToLower(s) {
		case "true", "on", "yes", "1":
			return admin.UintValue(k, 1), nil
		case "false", "off", "no", "0":
			return admin.UintValue(k, 0), nil
		}
		return bad("true or false")
	case k == admin.KeyLogLevel:
		for i, n := range logLevelNames {
			if strings.EqualFold(s, n) || s == strconv.Itoa(i) {
				return admin.UintValue(k, uint32(i)), nil
			}
		}
		return bad("debug, info, warn or error")
	case k.Millis():
		if n, err := strconv.ParseUint(s, 10, 32); err == nil {
			return admin.UintValue(k, uint32(n)), nil
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d/time.Millisecond > 1<<32-1 {
			return bad("a duration like 30s or 10m, or milliseconds")
		}
		return admin.UintValue(k, uint32(d/time.Millisecond)), nil
	case k.Size() == 4:
		mult := uint64(1)
		if k == admin.KeyRelayBuffer {
			switch {
			case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
				mult, s = 1<<10, s[:len(s)-1]
			case strings.HasSuffix(s, "m"), strings.HasSuffix(s, "M"):
				mult, s = 1<<20, s[:len(s)-1]
			}
		}
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n*mult > 1<<32-1 {
			return bad("a whole number")
		}
		return admin.UintValue(k, uint32(n*mult)), nil
	}
	return admin.ConfigValue{}, usagef("config set: setting %s cannot be set by this client", k)
}

// describeStatus says what a refusal means for a command.
func describeStatus(err error, what string) error {
	var se *admin.StatusError
	if !errors.As(err, &se) {
		return &connError{fmt.Errorf("%s: %w", what, err)}
	}
	reason := se.Status.String()
	switch se.Status {
	case admin.StatusNotPermitted:
		reason = "not permitted"
		if se.Cmd == admin.CmdDeleteUser {
			reason = "not permitted: it is the last admin"
		}
		if se.Cmd == admin.CmdCloseFlow {
			reason = "not permitted: the flow is still connecting; try again"
		}
	case admin.StatusInvalidValue:
		reason = "invalid value"
		if se.Cmd == admin.CmdAddUser || se.Cmd == admin.CmdSetPassword {
			reason = "invalid name or password (names: 1 to 255 bytes without ':', spaces or control characters; passwords: 1 to 255 bytes)"
		}
		if se.Cmd == admin.CmdSetConfig {
			reason = "value out of range"
		}
	case admin.StatusBadCommand, admin.StatusBadType:
		reason += " (the server is older than this client)"
	}
	return &refusal{msg: fmt.Sprintf("%s: the server said no: %s (%s, status 0x%02x)", what, reason, se.Cmd, uint8(se.Status)), err: err}
}

// refusal is the server saying no, explained; it wraps the
// *admin.StatusError or *admin.LoginError.
type refusal struct {
	msg string
	err error
}

func (e *refusal) Error() string { return e.msg }
func (e *refusal) Unwrap() error { return e.err }
