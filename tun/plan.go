package tun

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// Address family names used in the state file.
const (
	famInet  = "inet"
	famInet6 = "inet6"
)

// Route types used in the state file.
const (
	routeUnicast = "unicast" // Dst dev <device> table T
	routeThrow   = "throw"   // throw Dst table T: lookup continues with the next rule
)

const tableMain = 254

// ruleSpec is one policy rule tungate installs. All rules carry
// RouteProtocol.
type ruleSpec struct {
	Family   string `json:"family"`
	Priority int    `json:"priority"`
	// To is the destination selector; empty means all.
	To string `json:"to,omitempty"`
	// Mark and Mask: the rule matches packets with (mark & Mask) == Mark.
	// Mask 0 means no fwmark selector.
	Mark  uint32 `json:"fwmark,omitempty"`
	Mask  uint32 `json:"fwmask,omitempty"`
	Table int    `json:"table"`
	// Suppress is suppress_prefixlength; nil means none.
	Suppress *int `json:"suppress_prefixlength,omitempty"`
	// Desc is the rule as `ip rule` shows it, for people reading the
	// state file; it is ignored when reading.
	Desc string `json:"desc,omitempty"`
}

// routeSpec is one route tungate installs in its table. All routes carry
// RouteProtocol.
type routeSpec struct {
	Family string `json:"family"`
	Dst    string `json:"dst"`
	Table  int    `json:"table"`
	Type   string `json:"type"`
	Dev    string `json:"dev,omitempty"`
	Desc   string `json:"desc,omitempty"`
}

// sysctlSpec is one sysctl tungate changed: Key is the path under
// /proc/sys. Old is restored at cleanup if the value is still New.
type sysctlSpec struct {
	Key string `json:"key"`
	Old string `json:"old"`
	New string `json:"new"`
}

func (s ruleSpec) String() string {
	to := ""
	if s.To != "" {
		if p, err := netip.ParsePrefix(s.To); err == nil && p.Bits() > 0 {
			to = " to " + s.To
		}
	}
	mark := ""
	if s.Mask != 0 {
		// As iproute2 prints it: "0" rather than "0x0".
		hex := func(v uint32) string {
			if v == 0 {
				return "0"
			}
			return fmt.Sprintf("%#x", v)
		}
		if s.Mask == 0xffffffff {
			mark = " fwmark " + hex(s.Mark)
		} else {
			mark = " fwmark " + hex(s.Mark) + "/" + hex(s.Mask)
		}
	}
	table := fmt.Sprint(s.Table)
	if s.Table == tableMain {
		table = "main"
	}
	sup := ""
	if s.Suppress != nil {
		sup = fmt.Sprintf(" suppress_prefixlength %d", *s.Suppress)
	}
	ver := ""
	if s.Family == famInet6 {
		ver = "-6 "
	}
	return fmt.Sprintf("%s%d: from all%s%s lookup %s%s proto %d", ver, s.Priority, to, mark, table, sup, RouteProtocol)
}

func (s routeSpec) String() string {
	ver := ""
	if s.Family == famInet6 {
		ver = "-6 "
	}
	if s.Type == routeThrow {
		return fmt.Sprintf("%sthrow %s table %d proto %d", ver, s.Dst, s.Table, RouteProtocol)
	}
	return fmt.Sprintf("%s%s dev %s table %d proto %d", ver, s.Dst, s.Dev, s.Table, RouteProtocol)
}

func (s sysctlSpec) String() string {
	return fmt.Sprintf("sysctl %s: %s -> %s", s.Key, s.Old, s.New)
}

func familyOf(p netip.Prefix) string {
	if p.Addr().Is4() {
		return famInet
	}
	return famInet6
}

// planRules returns the policy rules for pl, per family in install order.
// See the package documentation for why they look like this.
//
//	P+0       fwmark M/M lookup main                          (gateway's own sockets)
//	P+1+2i    to R_i lookup main suppress_prefixlength len(R_i)  (main wins if more specific)
//	P+2+2i    to R_i fwmark 0/M lookup T                      (otherwise into T)
//
// with the routes R_i of the family sorted most specific first. A family
// without routes gets no rules.
func planRules(pl routePlan) []ruleSpec {
	var out []ruleSpec
	for _, fam := range []string{famInet, famInet6} {
		var routes []netip.Prefix
		for _, r := range pl.Routes {
			if familyOf(r) == fam {
				routes = append(routes, r)
			}
		}
		if len(routes) == 0 {
			continue
		}
		sortSpecificFirst(routes)
		add := func(s ruleSpec) {
			s.Family = fam
			s.Desc = s.String()
			out = append(out, s)
		}
		add(ruleSpec{Priority: pl.Priority, Mark: pl.Fwmark, Mask: pl.Fwmark, Table: tableMain})
		for i, r := range routes {
			bits := r.Bits()
			add(ruleSpec{Priority: pl.Priority + 1 + 2*i, To: r.String(), Table: tableMain, Suppress: &bits})
			add(ruleSpec{Priority: pl.Priority + 2 + 2*i, To: r.String(), Mark: 0, Mask: pl.Fwmark, Table: pl.Table})
		}
	}
	return out
}

// planRoutes returns the routes in table T: one through the device per
// route, one throw per exclude (only in families that have routes).
func planRoutes(pl routePlan) []routeSpec {
	fams := map[string]bool{}
	for _, r := range pl.Routes {
		fams[familyOf(r)] = true
	}
	var out []routeSpec
	add := func(s routeSpec) {
		s.Desc = s.String()
		out = append(out, s)
	}
	routes := slices.Clone(pl.Routes)
	sortSpecificFirst(routes)
	for _, r := range routes {
		add(routeSpec{Family: familyOf(r), Dst: r.String(), Table: pl.Table, Type: routeUnicast, Dev: pl.Device})
	}
	excl := slices.Clone(pl.Excludes)
	sortSpecificFirst(excl)
	for _, x := range excl {
		if fams[familyOf(x)] {
			add(routeSpec{Family: familyOf(x), Dst: x.String(), Table: pl.Table, Type: routeThrow})
		}
	}
	return out
}

// sortSpecificFirst sorts prefixes: IPv4 first, longer prefixes first,
// then by address.
func sortSpecificFirst(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if a.Addr().Is4() != b.Addr().Is4() {
			if a.Addr().Is4() {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.Bits(), a.Bits()); c != 0 {
			return c
		}
		return a.Addr().Compare(b.Addr())
	})
}
