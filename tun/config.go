package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode"

	"github.com/vishvananda/netlink"
)

// Defaults and limits. The routing defaults share the number 2080 so that
// everything tungate installs is easy to spot in `ip rule` and
// `ip route show table all`.
const (
	// DefaultName is the TUN device name when Config.Name is empty.
	DefaultName = "tun0"
	// DefaultMTU is the MTU of a device Open creates when Config.MTU is 0.
	DefaultMTU = 1500
	// MinMTU is the smallest MTU accepted for an IPv4-only device (the
	// IPv4 minimum datagram size every host must accept).
	MinMTU = 576
	// MinMTUIPv6 is the smallest MTU accepted when any IPv6 address is
	// configured: below it Linux disables IPv6 on the device.
	MinMTUIPv6 = 1280
	// MaxMTU is the largest MTU a TUN device takes.
	MaxMTU = 65535

	// MaxHeadroom is the most headroom Device.Read and Device.Write need in
	// front of each packet: the size of struct virtio_net_hdr.
	// Device.Headroom gives the exact value for a device.
	MaxHeadroom = 10

	// DefaultTable is the routing table InstallRoutes fills when
	// RouteConfig.Table is 0.
	DefaultTable = 2080
	// DefaultFwmark is the mark of the gateway's own sockets (SO_MARK) when
	// RouteConfig.Fwmark is 0.
	DefaultFwmark uint32 = 0x2080
	// DefaultPriority is the priority of the first policy rule when
	// RouteConfig.Priority is 0.
	DefaultPriority = 2080
	// DefaultStateDir is where InstallRoutes records what it installed when
	// RouteConfig.StateDir is empty.
	DefaultStateDir = "/run/tungate"
	// RouteProtocol is the routing protocol number (RTPROT, shown as
	// "proto 208" by iproute2) carried by every rule and route tungate
	// installs. Removal only ever matches entries with this protocol.
	RouteProtocol = 208

	// maxRulePriority is the last priority tungate's rules may use: they
	// must come before the main table's rule (32766).
	maxRulePriority = 32765
)

// Config describes the TUN device Open creates or adopts.
type Config struct {
	// Name of the device; DefaultName when empty. It may contain one "%d"
	// for the kernel to number (such as "tun%d"). With FD, an empty name
	// accepts whatever device the descriptor is attached to; a non-empty
	// one must match it.
	Name string
	// MTU of the device; 0 means DefaultMTU for a device Open creates and
	// "leave it as it is" for an adopted one (FD, or an existing
	// persistent TUN device of that name).
	MTU int
	// Addrs are the addresses to put on the device (IPv6 ones with nodad,
	// so they are usable at once). With FD, no address is touched unless
	// some are given here.
	Addrs []netip.Prefix
	// FD is an already-open TUN file descriptor (/dev/net/tun after
	// TUNSETIFF, such as one a VM manager or a parent process passes with
	// --tun-fd), or -1 to create the device. Open takes ownership of it:
	// Device.Close closes it. Note that 0 is a valid descriptor (stdin):
	// set -1 when there is none. If Open rejects the descriptor as not a
	// usable TUN descriptor it is left open; any later failure closes it.
	FD int
	// DisableOffload, when set, creates the device without IFF_VNET_HDR
	// (no TSO/USO/GRO): one packet per Read and Write. It has no effect on
	// an adopted descriptor, whose flags are already fixed.
	DisableOffload bool
	// Netlink is the handle used to configure the device; nil means a new
	// handle in the calling thread's network namespace. It must be bound
	// to the namespace the device lives in.
	Netlink *netlink.Handle
}

// RouteConfig describes the host routing that InstallRoutes sets up so
// that traffic goes into the TUN device. See the package documentation for
// the rule set.
type RouteConfig struct {
	// Device is the TUN device's name. Required; it must exist.
	Device string
	// Table is the routing table holding the TUN routes; DefaultTable when
	// 0. It must not be local (255), main (254) or default (253), and it
	// must be empty at install.
	Table int
	// Fwmark is the socket mark (SO_MARK) of the gateway's own outbound
	// sockets, which must never enter the TUN; DefaultFwmark when 0. The
	// rules match the bits of the mark (fwmark M/M and 0/M).
	Fwmark uint32
	// Priority of the first policy rule; DefaultPriority when 0. The rules
	// use Priority .. Priority+2n for n routes per family, and all of them
	// must come before the main table's rule at 32766.
	Priority int
	// Routes are the prefixes to send into the TUN device; 0.0.0.0/0 and
	// ::/0 when empty (::/0 only if IPv6 works on the device).
	Routes []netip.Prefix
	// Excludes are prefixes that never go into the TUN device: they are
	// routed as if tungate were not there. A route must not lie inside an
	// exclude.
	Excludes []netip.Prefix
	// Router also captures traffic forwarded from other hosts: it turns
	// on IPv4/IPv6 forwarding and loose reverse-path filtering on the TUN
	// device, and restores the old values on Close.
	Router bool
	// StateDir holds the state file (<Device>.routes.json);
	// DefaultStateDir when empty.
	StateDir string
	// Netlink is the handle for all rule and route changes; nil means a
	// new handle in the calling thread's network namespace. Sysctls are
	// always read and written in the calling thread's namespace.
	Netlink *netlink.Handle
}

// ParsePrefix parses an interface address, route or exclude as given on a
// command line: an IP prefix ("198.18.0.1/15", "2001:db8::/32") or a bare
// address, which stands for a single host (/32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var p netip.Prefix
	var err error
	if strings.Contains(s, "/") {
		p, err = netip.ParsePrefix(s)
	} else {
		var a netip.Addr
		a, err = netip.ParseAddr(s)
		if err == nil {
			if a.Zone() != "" {
				return netip.Prefix{}, fmt.Errorf("tun: bad address %q: zones are not allowed", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("tun: bad address %q: want an IP address or prefix such as 198.18.0.1/15 or 2001:db8::1/64: %w", s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("tun: bad address %q: write IPv4-mapped addresses in IPv4 form", s)
	}
	return p, nil
}

// validateIfName checks an interface name the way the kernel does
// (dev_valid_name): 1..15 bytes, not "." or "..", no '/', ':' or white
// space.
func validateIfName(name string) error {
	switch {
	case name == "":
		return errors.New("tun: empty interface name")
	case len(name) > 15:
		return fmt.Errorf("tun: interface name %q is too long: %d bytes, Linux allows at most 15", name, len(name))
	case name == "." || name == "..":
		return fmt.Errorf("tun: interface name %q is not allowed", name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || unicode.IsSpace(r) || r == 0 {
			return fmt.Errorf("tun: interface name %q contains %q, which Linux does not allow", name, r)
		}
	}
	if strings.Count(name, "%") > 1 || (strings.Contains(name, "%") && !strings.Contains(name, "%d")) {
		return fmt.Errorf("tun: interface name %q: the only pattern allowed is one %%d", name)
	}
	return nil
}

// checkMTU checks mtu against the limits for a device with (hasV6) or
// without IPv6 addresses.
func checkMTU(mtu int, hasV6 bool) error {
	if mtu > MaxMTU {
		return fmt.Errorf("tun: MTU %d out of range: the most a TUN device takes is %d", mtu, MaxMTU)
	}
	if hasV6 && mtu < MinMTUIPv6 {
		return fmt.Errorf("tun: MTU %d is below %d, the IPv6 minimum (an IPv6 address is configured)", mtu, MinMTUIPv6)
	}
	if mtu < MinMTU {
		return fmt.Errorf("tun: MTU %d out of range %d..%d", mtu, MinMTU, MaxMTU)
	}
	return nil
}

// normalize validates c and fills in defaults. It does not touch the
// system.
func (c Config) normalize() (Config, error) {
	if c.FD < -1 {
		return c, fmt.Errorf("tun: bad file descriptor %d (use -1 for none)", c.FD)
	}
	if c.Name == "" && c.FD < 0 {
		c.Name = DefaultName
	}
	if c.Name != "" {
		if err := validateIfName(c.Name); err != nil {
			return c, err
		}
	}
	hasV6 := false
	seen := make(map[netip.Addr]bool)
	for _, p := range c.Addrs {
		if err := checkAddr(p); err != nil {
			return c, err
		}
		if seen[p.Addr()] {
			return c, fmt.Errorf("tun: address %s is given twice", p.Addr())
		}
		seen[p.Addr()] = true
		if p.Addr().Is6() {
			hasV6 = true
		}
	}
	if c.MTU < 0 {
		return c, fmt.Errorf("tun: MTU %d out of range %d..%d", c.MTU, MinMTU, MaxMTU)
	}
	if c.MTU != 0 {
		if err := checkMTU(c.MTU, hasV6); err != nil {
			return c, err
		}
	}
	return c, nil
}

// checkAddr checks one interface address.
func checkAddr(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("tun: invalid address %v: want an IP prefix such as 198.18.0.1/15", p)
	}
	a := p.Addr()
	switch {
	case a.Zone() != "":
		return fmt.Errorf("tun: address %s: zones are not allowed", p)
	case a.Is4In6():
		return fmt.Errorf("tun: address %s: write IPv4-mapped addresses in IPv4 form", p)
	case a.IsUnspecified():
		return fmt.Errorf("tun: address %s is unspecified", p)
	case a.IsMulticast():
		return fmt.Errorf("tun: address %s is a multicast address", p)
	case p.Bits() == 0:
		return fmt.Errorf("tun: address %s has prefix length 0: it would route everything to the device; use a real prefix length and InstallRoutes", p)
	}
	return nil
}

// routePlan is a RouteConfig after validation, with defaults filled in.
type routePlan struct {
	RouteConfig
	defaultRoutes bool // Routes was empty: 0.0.0.0/0 and ::/0
}

// normalize validates c and fills in defaults. It does not touch the
// system.
func (c RouteConfig) normalize() (routePlan, error) {
	if c.Device == "" {
		return routePlan{}, errors.New("tun: RouteConfig.Device is empty: name the TUN device to route into")
	}
	if err := validateIfName(c.Device); err != nil {
		return routePlan{}, err
	}
	if strings.Contains(c.Device, "%") {
		return routePlan{}, fmt.Errorf("tun: device %q: give the actual name, not a pattern", c.Device)
	}
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	switch {
	case c.Table < 0 || int64(c.Table) > 0xffffffff:
		return routePlan{}, fmt.Errorf("tun: routing table %d out of range 1..4294967295", c.Table)
	case c.Table == 253 || c.Table == 254 || c.Table == 255:
		return routePlan{}, fmt.Errorf("tun: routing table %d is reserved (253 default, 254 main, 255 local); pick another", c.Table)
	}
	if c.Fwmark == 0 {
		c.Fwmark = DefaultFwmark
	}
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	pl := routePlan{RouteConfig: c}
	if len(c.Routes) == 0 {
		pl.defaultRoutes = true
		pl.Routes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	} else {
		pl.Routes = append([]netip.Prefix(nil), c.Routes...)
	}
	pl.Excludes = append([]netip.Prefix(nil), c.Excludes...)
	if err := checkPrefixes("route", pl.Routes); err != nil {
		return routePlan{}, err
	}
	if err := checkPrefixes("exclude", pl.Excludes); err != nil {
		return routePlan{}, err
	}
	for _, r := range pl.Routes {
		for _, x := range pl.Excludes {
			if x.Bits() <= r.Bits() && x.Contains(r.Addr()) {
				if x == r {
					return routePlan{}, fmt.Errorf("tun: %s is both a route and an exclude", r)
				}
				return routePlan{}, fmt.Errorf("tun: route %s lies inside exclude %s; an exclude must not contain a route", r, x)
			}
		}
	}
	n := max(familyCount(pl.Routes, true), familyCount(pl.Routes, false))
	if c.Priority < 1 || c.Priority+2*n > maxRulePriority {
		return routePlan{}, fmt.Errorf("tun: rule priority %d out of range: the %d rules per family need priorities %d..%d, which must lie in 1..%d (before the main table's rule at 32766)",
			c.Priority, 2*n+1, c.Priority, c.Priority+2*n, maxRulePriority)
	}
	return pl, nil
}

// checkPrefixes checks routes or excludes: valid, no host bits, no
// duplicates.
func checkPrefixes(what string, ps []netip.Prefix) error {
	seen := make(map[netip.Prefix]bool)
	for _, p := range ps {
		if !p.IsValid() {
			return fmt.Errorf("tun: invalid %s %v: want an IP prefix such as 198.18.0.0/15", what, p)
		}
		if p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return fmt.Errorf("tun: %s %s: write plain IPv4 or IPv6 prefixes (no zones, no IPv4-mapped form)", what, p)
		}
		if m := p.Masked(); m != p {
			return fmt.Errorf("tun: %s %s has host bits set (did you mean %s?)", what, p, m)
		}
		if seen[p] {
			return fmt.Errorf("tun: %s %s is given twice", what, p)
		}
		seen[p] = true
	}
	return nil
}

func familyCount(ps []netip.Prefix, v4 bool) int {
	n := 0
	for _, p := range ps {
		if p.Addr().Is4() == v4 {
			n++
		}
	}
	return n
}
