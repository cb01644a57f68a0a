package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"tungate/internal/engine"
	"tungate/netstack"
	"tungate/socks"
)

// Config is everything the daemon is told, from the YAML file and the
// flags. A flag given on the command line wins over the same key in the
// file; the YAML keys are the flag names.
type Config struct {
	Socks            string        `yaml:"socks"`
	SocksAuth        authMode      `yaml:"socks-auth"`
	Proxy            []string      `yaml:"proxy"`
	ProxyWarm        int           `yaml:"proxy-warm"`
	ProxyWarmIdle    time.Duration `yaml:"proxy-warm-idle"`
	Users            string        `yaml:"users"`
	LogLevel         string        `yaml:"log-level"`
	ConnectTimeout   time.Duration `yaml:"connect-timeout"`
	HandshakeTimeout time.Duration `yaml:"handshake-timeout"`
	TCPIdleTimeout   time.Duration `yaml:"tcp-idle-timeout"`
	UDPTimeout       time.Duration `yaml:"udp-timeout"`
	MaxFlows         int           `yaml:"max-flows"`
	MaxSessions      int           `yaml:"max-sessions"`
	RelayBuffer      int           `yaml:"relay-buffer"`
	Admin            []string      `yaml:"admin"`
	PProf            string        `yaml:"pprof"`
	Procs            int           `yaml:"procs"`

	Tun         string   `yaml:"tun"`
	MTU         int      `yaml:"mtu"`
	TunAddr     []string `yaml:"tun-addr"`
	TunFD       int      `yaml:"tun-fd"`
	AutoRoute   bool     `yaml:"auto-route"`
	Route       []string `yaml:"route"`
	Exclude     []string `yaml:"exclude"`
	Fwmark      uint32   `yaml:"fwmark"`
	Table       int      `yaml:"table"`
	Router      bool     `yaml:"router"`
	StateDir    string   `yaml:"state-dir"`
	MaxHalfOpen int      `yaml:"max-half-open"`
	ICMP        string   `yaml:"icmp"`
	ICMPRate    int      `yaml:"icmp-rate"`
	ICMPBurst   int      `yaml:"icmp-burst"`

	// adminExplicit records that --admin (or the admin key) was given, so
	// that a failure to serve it is an error rather than a warning.
	adminExplicit bool
}

// defaultConfig returns the defaults: a SOCKS5 listener on loopback only,
// direct outbound, no users.
func defaultConfig() Config {
	return Config{
		Socks:            "127.0.0.1:1080",
		SocksAuth:        authAuto,
		LogLevel:         "info",
		ConnectTimeout:   engine.DefaultConnectTimeout,
		HandshakeTimeout: socks.DefaultHandshakeTimeout,
		ProxyWarm:        defaultProxyWarm,
		ProxyWarmIdle:    socks.DefaultWarmIdle,
		TCPIdleTimeout:   engine.DefaultTCPIdleTimeout,
		UDPTimeout:       engine.DefaultUDPIdleTimeout,
		MaxSessions:      4096,
		RelayBuffer:      engine.DefaultRelayBufferSize,
		Admin:            []string{"127.0.0.1:8080"},
		MTU:              1500,
		TunFD:            -1,
		Fwmark:           0x2080,
		Table:            2080,
		StateDir:         "/run/tungate",
		MaxHalfOpen:      netstack.DefaultMaxHalfOpen,
		ICMP:             "auto",
		ICMPRate:         netstack.DefaultICMPRate,
		ICMPBurst:        netstack.DefaultICMPBurst,
	}
}

// Connections to the upstream chain kept ready (socks.WarmDialer): two
// by default, enough to hide the chain's connect and greeting from
// connections that come one after the other; a few more for bursts.
const (
	defaultProxyWarm = 2
	maxProxyWarm     = 64
)

// authMode says whether SOCKS5 clients must authenticate.
type authMode string

const (
	authAuto authMode = "auto" // required unless the listener is on loopback
	authOn   authMode = "true"
	authOff  authMode = "false"
)

func (m *authMode) String() string { return string(*m) }

func (m *authMode) Set(s string) error {
	switch strings.ToLower(s) {
	case "auto":
		*m = authAuto
	case "true", "on", "yes", "1":
		*m = authOn
	case "false", "off", "no", "0":
		*m = authOff
	default:
		return fmt.Errorf("want auto, true or false, not %q", s)
	}
	return nil
}

// IsBoolFlag lets --socks-auth stand alone for true.
func (m *authMode) IsBoolFlag() bool { return true }

// UnmarshalYAML accepts a YAML boolean or "auto".
func (m *authMode) UnmarshalYAML(n *yaml.Node) error {
	return m.Set(n.Value)
}

// listFlag is a repeatable flag; the first use on the command line
// replaces what the config file said.
type listFlag struct {
	list *[]string
	set  bool
}

func (f *listFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, ",")
}

func (f *listFlag) Set(s string) error {
	if !f.set {
		*f.list = nil
		f.set = true
	}
	*f.list = append(*f.list, s)
	return nil
}

// usagef returns a usageError (defined with the user command): a mistake
// on the command line or in the config, which exits 2.
func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// newFlagSet binds the daemon's flags to cfg.
func newFlagSet(cfg *Config, configPath *string) *flag.FlagSet {
	fs := flag.NewFlagSet("tungate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(configPath, "config", "", "read settings from this YAML `file`; its keys are the flag names, and flags given on the command line win")
	fs.StringVar(&cfg.Socks, "socks", cfg.Socks, "SOCKS5 listener `address` (host:port), or off")
	fs.Var(&cfg.SocksAuth, "socks-auth", "require SOCKS5 username/password: auto (required unless the listener is on loopback), true or false")
	fs.Var(&listFlag{list: &cfg.Proxy}, "proxy", "upstream SOCKS5 proxy `URL` socks5://[user:pass@]host:port; repeat to chain them in order; none means direct")
	fs.IntVar(&cfg.ProxyWarm, "proxy-warm", cfg.ProxyWarm, "connections to the --proxy chain kept greeted and ready for a CONNECT while connections come more often than one per --proxy-warm-idle (0: none)")
	fs.DurationVar(&cfg.ProxyWarmIdle, "proxy-warm-idle", cfg.ProxyWarmIdle, "close a ready connection unused this long; keep it below the proxy's negotiation timeout")
	fs.StringVar(&cfg.Users, "users", cfg.Users, "user store `file` (manage it with: tungate user)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log `level`: debug, info, warn or error")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", cfg.ConnectTimeout, "bound on each outbound connect, through the whole chain")
	fs.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", cfg.HandshakeTimeout, "bound on a SOCKS5 client's greeting, authentication and request")
	fs.DurationVar(&cfg.TCPIdleTimeout, "tcp-idle-timeout", cfg.TCPIdleTimeout, "close TCP flows idle this long (0: never)")
	fs.DurationVar(&cfg.UDPTimeout, "udp-timeout", cfg.UDPTimeout, "close UDP associations idle this long (DNS-only ones sooner)")
	fs.IntVar(&cfg.MaxFlows, "max-flows", cfg.MaxFlows, "maximum concurrent flows, TCP and UDP, SOCKS and TUN (0: no limit)")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", cfg.MaxSessions, "maximum concurrent SOCKS5 client connections (0: no limit)")
	fs.IntVar(&cfg.RelayBuffer, "relay-buffer", cfg.RelayBuffer, "relay buffer `bytes` per direction")
	fs.IntVar(&cfg.Procs, "procs", cfg.Procs, "CPUs the gateway's Go scheduler runs on at once (GOMAXPROCS); 0: in TUN mode half of the CPUs the process may use (the kernel does the other half of the packet work), otherwise all; the GOMAXPROCS environment variable, when set, is the default")
	fs.StringVar(&cfg.PProf, "pprof", cfg.PProf, "serve Go's runtime profiles (net/http/pprof) on this loopback `address` (host:port), for performance work; off by default")
	fs.Var(&listFlag{list: &cfg.Admin}, "admin", "SCTP admin listener `address` (host:port); repeat for several local addresses (multi-homing); off disables (default 127.0.0.1:8080)")

	fs.StringVar(&cfg.Tun, "tun", cfg.Tun, "TUN device `name` to create (default tun0 when any TUN flag is given); its flows go through the same engine")
	fs.IntVar(&cfg.MTU, "mtu", cfg.MTU, "TUN device MTU, up to 65535")
	fs.Var(&listFlag{list: &cfg.TunAddr}, "tun-addr", "address `CIDR` of the TUN device; repeat for IPv4 and IPv6")
	fs.IntVar(&cfg.TunFD, "tun-fd", cfg.TunFD, "use this already-open TUN file descriptor (made by a VM manager or parent process) instead of creating a device")
	fs.BoolVar(&cfg.AutoRoute, "auto-route", cfg.AutoRoute, "route the host's traffic into the TUN device (own table and policy rules, removed on exit and after a crash)")
	fs.Var(&listFlag{list: &cfg.Route}, "route", "with --auto-route, capture only this `CIDR` (repeatable; default all of IPv4 and IPv6)")
	fs.Var(&listFlag{list: &cfg.Exclude}, "exclude", "with --auto-route, never capture this `CIDR` (repeatable)")
	fs.Var((*hexFlag)(&cfg.Fwmark), "fwmark", "`mark` set on the gateway's own sockets so that they bypass the TUN device")
	fs.IntVar(&cfg.Table, "table", cfg.Table, "routing `table` for --auto-route")
	fs.BoolVar(&cfg.Router, "router", cfg.Router, "with --auto-route, also capture traffic forwarded from other hosts (sets and restores forwarding sysctls)")
	fs.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "`directory` recording installed routes, so that a restart after a crash removes them")
	fs.IntVar(&cfg.MaxHalfOpen, "max-half-open", cfg.MaxHalfOpen, "maximum TUN connections held while their outbound side is dialed")
	fs.StringVar(&cfg.ICMP, "icmp", cfg.ICMP, "ICMP echo (ping) through the TUN `mode`: off; reply (the gateway answers every ping itself); forward (real echo requests, direct mode only); auto: forward when direct, reply through a proxy")
	fs.IntVar(&cfg.ICMPRate, "icmp-rate", cfg.ICMPRate, "ICMP errors and echo replies the gateway generates, per `second` (0: none)")
	fs.IntVar(&cfg.ICMPBurst, "icmp-burst", cfg.ICMPBurst, "burst allowed above --icmp-rate")
	return fs
}

// hexFlag is a uint32 flag that also takes 0x-prefixed hex.
type hexFlag uint32

func (h *hexFlag) String() string { return fmt.Sprintf("%#x", uint32(*h)) }

func (h *hexFlag) Set(s string) error {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return fmt.Errorf("want a 32-bit number such as 0x2080")
	}
	*h = hexFlag(v)
	return nil
}

const usageHead = `tungate: a SOCKS5 server and client that sends flows out directly or
through a chain of upstream SOCKS5 proxies.

Usage:
  tungate [flags]                 run the daemon
  tungate user add|del|passwd|list [NAME] [--role user|admin] --users FILE
                                  manage the user store offline (see tungate user --help)

Environment:
  TUNGATE_ADMIN_USER, TUNGATE_ADMIN_PASSWORD
        make sure this admin exists in the user store at start (needs --users;
        the file is created when missing)

Flags:
`

// printUsage writes the help text to w.
func printUsage(w io.Writer) {
	var cfg Config = defaultConfig()
	var path string
	fs := newFlagSet(&cfg, &path)
	fs.SetOutput(w)
	fmt.Fprint(w, usageHead)
	fs.PrintDefaults()
}

// parseConfig reads the command line and, if it names one, the config file.
func parseConfig(args []string) (Config, error) {
	// Pass 1 finds --config (and catches flag syntax errors early).
	scratch := defaultConfig()
	var path string
	if err := newFlagSet(&scratch, &path).Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Config{}, err
		}
		return Config{}, usagef("%v", err)
	}
	cfg := defaultConfig()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return Config{}, usagef("config: %v", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return Config{}, usagef("config %s: %v", path, err)
		}
		var keys map[string]any
		if yaml.Unmarshal(data, &keys) == nil {
			_, cfg.adminExplicit = keys["admin"]
		}
	}
	// Pass 2 lays the command line over the file.
	fs := newFlagSet(&cfg, &path)
	if err := fs.Parse(args); err != nil {
		return Config{}, usagef("%v", err)
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "admin" {
			cfg.adminExplicit = true
		}
	})
	if fs.NArg() > 0 {
		return Config{}, usagef("unexpected argument %q (see tungate --help)", fs.Arg(0))
	}
	return cfg, cfg.validate()
}

// settings is the validated form of a Config.
type settings struct {
	socks     netip.AddrPort // invalid: no SOCKS5 listener
	authOn    bool
	hops      []socks.Hop
	warm      int           // connections to the chain kept ready; 0: none
	warmIdle  time.Duration // how long one stays ready unused
	logLevel  slog.Level
	engine    *engine.Settings
	adminUser string
	adminPass string
	// admin lists the SCTP admin listener addresses; empty: disabled.
	admin []netip.AddrPort
	// pprof is the loopback address of the profiling endpoint; invalid: off.
	pprof netip.AddrPort
	// procs is what runtime.GOMAXPROCS is set to; 0: leave it.
	procs int

	tun      bool // TUN mode
	icmp     netstack.ICMPMode
	tunAddrs []netip.Prefix
	routes   []netip.Prefix
	excludes []netip.Prefix
}

// schedulerProcs returns the GOMAXPROCS to set (0: leave the runtime's):
// the one asked for; else, in TUN mode and unless the environment sets
// GOMAXPROCS, half of the runtime's own choice (the CPUs it may use, after
// any cgroup limit), rounded up. A TUN gateway's packets cost as
// much in the kernel (the device and the outbound sockets, on the calling
// threads and in softirq) as in the gateway, and the programs whose
// traffic it carries run on the same CPUs; fewer Go threads mean fewer
// wake-ups of another CPU for each hand-off between the netstack's
// goroutines. On 2 CPUs (docs/performance.md) one scheduler thread moves
// as much TCP and UDP as two and halves the first-byte latency's p99.
func schedulerProcs(asked int, tun, envSet bool, procs int) int {
	switch {
	case asked > 0:
		return asked
	case !tun || envSet:
		return 0
	}
	return (procs + 1) / 2
}

// tunGiven reports whether any flag asks for TUN mode.
func (c Config) tunGiven() bool {
	return c.Tun != "" || c.TunFD >= 0 || len(c.TunAddr) > 0 || c.AutoRoute
}

func parsePrefixes(flag string, list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range list {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			if ip, err2 := netip.ParseAddr(v); err2 == nil {
				p = netip.PrefixFrom(ip, ip.BitLen())
			} else {
				return nil, usagef("%s %q: want a CIDR such as 198.18.0.1/15 or 2001:db8::1/64", flag, v)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

func (c Config) validate() error {
	_, err := c.resolve()
	return err
}

// resolve checks c and turns it into settings; every error names the
// setting and says what is wrong.
func (c Config) resolve() (*settings, error) {
	s := &settings{engine: engine.NewSettings()}
	if c.Socks != "off" {
		ap, err := netip.ParseAddrPort(c.Socks)
		if err != nil {
			return nil, usagef("--socks %q: want IP:port (for example 127.0.0.1:1080 or [::1]:1080) or off", c.Socks)
		}
		s.socks = ap
	}
	switch c.SocksAuth {
	case authOn:
		s.authOn = true
	case authOff:
	default:
		s.authOn = s.socks.IsValid() && !s.socks.Addr().IsLoopback()
	}
	if s.authOn && c.Users == "" && s.socks.IsValid() {
		if c.SocksAuth == authOn {
			return nil, usagef("--socks-auth needs users: give --users FILE")
		}
		return nil, usagef("--socks %s is not on loopback, so SOCKS5 authentication is required: give --users FILE "+
			"(create users with: tungate user add NAME --users FILE), or --socks-auth=false to run an open proxy", c.Socks)
	}
	for _, u := range c.Proxy {
		h, err := socks.ParseProxyURL(u)
		if err != nil {
			return nil, usagef("--proxy: %v", err)
		}
		s.hops = append(s.hops, h)
	}
	switch {
	case c.ProxyWarm < 0:
		return nil, usagef("--proxy-warm must not be negative")
	case c.ProxyWarm > maxProxyWarm:
		return nil, usagef("--proxy-warm %d: at most %d", c.ProxyWarm, maxProxyWarm)
	case c.ProxyWarmIdle < socks.MinWarmIdle:
		return nil, usagef("--proxy-warm-idle %v: at least %v", c.ProxyWarmIdle, socks.MinWarmIdle)
	}
	if len(s.hops) > 0 {
		s.warm, s.warmIdle = c.ProxyWarm, c.ProxyWarmIdle
	}
	if err := s.logLevel.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	for _, set := range []struct {
		name string
		err  error
	}{
		{"--connect-timeout", s.engine.SetConnectTimeout(c.ConnectTimeout)},
		{"--tcp-idle-timeout", s.engine.SetTCPIdleTimeout(c.TCPIdleTimeout)},
		{"--udp-timeout", s.engine.SetUDPIdleTimeout(c.UDPTimeout)},
		{"--max-flows", s.engine.SetMaxFlows(c.MaxFlows)},
		{"--relay-buffer", s.engine.SetRelayBufferSize(c.RelayBuffer)},
	} {
		if set.err != nil {
			return nil, usagef("%s: %v", set.name, set.err)
		}
	}
	if c.HandshakeTimeout <= 0 {
		return nil, usagef("--handshake-timeout must be positive")
	}
	if c.MaxSessions < 0 {
		return nil, usagef("--max-sessions must not be negative")
	}
	s.engine.SetAuthRequired(s.authOn)

	for _, a := range c.Admin {
		if a == "off" {
			if len(c.Admin) > 1 {
				return nil, usagef("--admin off cannot be combined with addresses")
			}
			break
		}
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return nil, usagef("--admin %q: want IP:port (for example 127.0.0.1:8080) or off", a)
		}
		s.admin = append(s.admin, ap)
	}

	if c.Procs < 0 {
		return nil, usagef("--procs must not be negative")
	}
	s.procs = schedulerProcs(c.Procs, c.tunGiven(), os.Getenv("GOMAXPROCS") != "", runtime.GOMAXPROCS(0))

	if c.PProf != "" {
		ap, err := netip.ParseAddrPort(c.PProf)
		if err != nil {
			return nil, usagef("--pprof %q: want a loopback IP:port such as 127.0.0.1:6060", c.PProf)
		}
		if !ap.Addr().IsLoopback() {
			// Profiles show memory and flow addresses: never off the host.
			return nil, usagef("--pprof %q: only a loopback address is allowed", c.PProf)
		}
		s.pprof = ap
	}

	if c.tunGiven() {
		s.tun = true
		var err error
		if s.tunAddrs, err = parsePrefixes("--tun-addr", c.TunAddr); err != nil {
			return nil, err
		}
		if s.routes, err = parsePrefixes("--route", c.Route); err != nil {
			return nil, err
		}
		if s.excludes, err = parsePrefixes("--exclude", c.Exclude); err != nil {
			return nil, err
		}
		for i := range s.routes {
			s.routes[i] = s.routes[i].Masked()
		}
		for i := range s.excludes {
			s.excludes[i] = s.excludes[i].Masked()
		}
		if c.MTU < 576 || c.MTU > 65535 {
			return nil, usagef("--mtu %d: want 576 to 65535", c.MTU)
		}
		if c.TunFD >= 0 && c.Tun != "" {
			return nil, usagef("--tun and --tun-fd exclude each other: the descriptor names its device")
		}
		if !c.AutoRoute && (len(c.Route) > 0 || len(c.Exclude) > 0 || c.Router) {
			return nil, usagef("--route, --exclude and --router need --auto-route")
		}
		if c.Table <= 0 || c.Table >= 253 && c.Table <= 255 {
			return nil, usagef("--table %d: want a positive table other than 253-255 (default, main, local)", c.Table)
		}
		if c.Fwmark == 0 {
			return nil, usagef("--fwmark must not be 0")
		}
		if c.MaxHalfOpen <= 0 {
			return nil, usagef("--max-half-open must be positive")
		}
		switch c.ICMP {
		case "auto":
			s.icmp = netstack.ICMPForward
			if len(s.hops) > 0 {
				s.icmp = netstack.ICMPReply
			}
		case "off":
			s.icmp = netstack.ICMPOff
		case "reply":
			s.icmp = netstack.ICMPReply
		case "forward":
			if len(s.hops) > 0 {
				return nil, usagef("--icmp forward needs direct mode: SOCKS5 cannot carry ICMP through --proxy; use reply or off")
			}
			s.icmp = netstack.ICMPForward
		default:
			return nil, usagef("--icmp %q: want off, reply, forward or auto", c.ICMP)
		}
		if c.ICMPRate < 0 || c.ICMPBurst < 0 {
			return nil, usagef("--icmp-rate and --icmp-burst must not be negative")
		}
	}

	s.adminUser, s.adminPass = os.Getenv("TUNGATE_ADMIN_USER"), os.Getenv("TUNGATE_ADMIN_PASSWORD")
	if (s.adminUser == "") != (s.adminPass == "") {
		return nil, usagef("TUNGATE_ADMIN_USER and TUNGATE_ADMIN_PASSWORD go together: set both or neither")
	}
	if s.adminUser != "" && c.Users == "" {
		return nil, usagef("TUNGATE_ADMIN_USER needs a user store: give --users FILE")
	}
	return s, nil
}
