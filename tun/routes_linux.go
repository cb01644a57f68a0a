package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routes is what InstallRoutes installed. Close removes it.
type Routes struct {
	pl    routePlan
	h     *netlink.Handle
	ownNL bool
	ns    *netnsRef
	path  string
	st    *stateFile
	done  []action // applied, in order
	notes []string
	stale int

	mu       sync.Mutex
	closed   bool
	closeErr error
}

// action is one installed item: exactly one field is set.
type action struct {
	rule   *ruleSpec
	route  *routeSpec
	sysctl *sysctlSpec
}

func (a action) String() string {
	switch {
	case a.rule != nil:
		return "rule " + a.rule.String()
	case a.route != nil:
		return "route " + a.route.String()
	default:
		return a.sysctl.String()
	}
}

// testHookApplied, when set (by tests), runs after each installed item
// with the number installed so far; an error makes InstallRoutes fail
// there.
var testHookApplied func(n int) error

// InstallRoutes sets up policy routing so that the traffic cfg describes
// goes into the TUN device cfg.Device (which must exist and be up): see
// the package documentation for the rule set. It first removes what a
// crashed earlier run for the same device left (as CleanupStale does),
// refuses to share its table or rule priorities with anything else, and
// records everything in the state file before installing it. On any
// failure it undoes what it did and returns the error.
func InstallRoutes(cfg RouteConfig) (*Routes, error) {
	pl, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	r := &Routes{pl: pl, h: cfg.Netlink, path: statePath(pl.StateDir, pl.Device)}
	if r.h == nil {
		if r.h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return nil, fmt.Errorf("tun: netlink: %w", err)
		}
		r.ownNL = true
	}
	if r.ns, err = currentNetns(); err != nil {
		r.release()
		return nil, err
	}
	if err := r.install(); err != nil {
		r.release()
		return nil, err
	}
	return r, nil
}

// release frees the handle and the namespace reference.
func (r *Routes) release() {
	if r.ownNL && r.h != nil {
		r.h.Close()
	}
	r.h = nil
	r.ns.close()
}

func (r *Routes) install() error {
	pl := &r.pl
	link, err := r.h.LinkByName(pl.Device)
	if err != nil {
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return fmt.Errorf("tun: device %q not found: open the TUN device before installing routes: %w", pl.Device, err)
		}
		return fmt.Errorf("tun: looking up %q: %w", pl.Device, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("tun: device %q is down: bring it up before installing routes", pl.Device)
	}
	if pl.defaultRoutes {
		usable := link.Attrs().MTU >= MinMTUIPv6
		if usable {
			_ = r.ns.do(func() error {
				v, err := readSysctl("net/ipv6/conf/" + pl.Device + "/disable_ipv6")
				usable = err == nil && v == "0"
				return nil
			})
		}
		if !usable {
			pl.Routes = slices.DeleteFunc(pl.Routes, func(p netip.Prefix) bool { return p.Addr().Is6() })
			r.notes = append(r.notes, fmt.Sprintf("IPv6 is not usable on %s (disabled, or MTU below %d): ::/0 is not routed into it", pl.Device, MinMTUIPv6))
		}
	}

	// Leftovers of a crashed run for this device.
	if st, err := readState(r.path); err == nil {
		if alive, pid := stateOwnerAlive(st); alive {
			if pid == os.Getpid() {
				return fmt.Errorf("tun: routes for %q are already installed by this process (state %s): Close them first", pl.Device, r.path)
			}
			return fmt.Errorf("tun: routes for %q are installed by running process %d (state %s): stop it first", pl.Device, pid, r.path)
		}
		if st.Netns != r.ns.id && st.BootID == bootID() {
			return fmt.Errorf("tun: state file %s was written in network namespace %s, this is %s: run the cleanup there, or remove the file", r.path, st.Netns, r.ns.id)
		}
		n, err := cleanupState(r.h, r.ns, st, r.path)
		r.stale = n
		if err != nil {
			return fmt.Errorf("tun: removing what a previous run left (state %s): %w", r.path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w (remove it once you have checked `ip rule` and `ip route show table all`)", err)
	}

	rules := planRules(*pl)
	routes := planRoutes(*pl)
	if err := r.checkConflicts(rules); err != nil {
		return err
	}
	var sysctls []sysctlSpec
	if err := r.ns.do(func() error {
		var err error
		sysctls, err = planSysctls(*pl)
		return err
	}); err != nil {
		return err
	}

	st := &stateFile{
		Version:  stateVersion,
		Device:   pl.Device,
		PID:      os.Getpid(),
		Netns:    r.ns.id,
		Table:    pl.Table,
		Fwmark:   pl.Fwmark,
		Priority: pl.Priority,
		Protocol: RouteProtocol,
		Rules:    rules,
		Routes:   routes,
		Sysctls:  sysctls,
	}
	if st.PIDStart, err = procStart(st.PID); err != nil {
		return fmt.Errorf("tun: reading our own start time: %w", err)
	}
	st.BootID = bootID()
	if err := writeState(r.path, st); err != nil {
		return err
	}
	r.st = st

	// Sysctls first (so replies are not dropped once traffic flows), then
	// the table, then the rules that use it.
	var todo []action
	for i := range sysctls {
		todo = append(todo, action{sysctl: &sysctls[i]})
	}
	for i := range routes {
		todo = append(todo, action{route: &routes[i]})
	}
	for i := range rules {
		todo = append(todo, action{rule: &rules[i]})
	}
	for _, a := range todo {
		err := r.apply(a, link.Attrs().Index)
		if err == nil {
			r.done = append(r.done, a)
			if testHookApplied != nil {
				err = testHookApplied(len(r.done))
			}
		}
		if err != nil {
			if uerr := r.undo(); uerr != nil {
				return fmt.Errorf("%w; undoing what was installed also failed (state kept in %s for CleanupStale): %w", err, r.path, uerr)
			}
			return err
		}
	}
	st.Complete = true
	if err := writeState(r.path, st); err != nil {
		if uerr := r.undo(); uerr != nil {
			return fmt.Errorf("%w; undoing also failed: %w", err, uerr)
		}
		return err
	}
	return nil
}

// checkConflicts refuses a table that has routes, and rule priorities or
// a table that other rules already use.
func (r *Routes) checkConflicts(rules []ruleSpec) error {
	pl := r.pl
	for _, fam := range []string{famInet, famInet6} {
		lo, hi := -1, -1
		for _, s := range rules {
			if s.Family == fam {
				if lo < 0 || s.Priority < lo {
					lo = s.Priority
				}
				hi = max(hi, s.Priority)
			}
		}
		if lo < 0 {
			continue
		}
		existing, err := r.h.RuleList(familyConst(fam))
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("tun: listing %s rules: %w", fam, err)
		}
		for _, e := range existing {
			if e.Table == pl.Table {
				return fmt.Errorf("tun: an %s rule (priority %d) already uses table %d: pick another table", fam, e.Priority, pl.Table)
			}
			if e.Priority >= lo && e.Priority <= hi {
				return fmt.Errorf("tun: an %s rule already has priority %d (%s), inside the range %d..%d tungate needs: pick another priority", fam, e.Priority, e, lo, hi)
			}
		}
		rts, err := r.h.RouteListFiltered(familyConst(fam), &netlink.Route{Table: pl.Table}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("tun: listing %s routes of table %d: %w", fam, pl.Table, err)
		}
		if len(rts) > 0 {
			return fmt.Errorf("tun: routing table %d already has %d %s routes (such as %s): pick another table", pl.Table, len(rts), fam, rts[0].Dst)
		}
	}
	return nil
}

// planSysctls returns the sysctls to change, with their current values,
// in the calling thread's namespace.
func planSysctls(pl routePlan) ([]sysctlSpec, error) {
	v4 := familyCount(pl.Routes, true) > 0
	v6 := familyCount(pl.Routes, false) > 0
	type kv struct{ key, val string }
	var want []kv
	if v4 && strictRPFilter(pl.Device) {
		// Replies to the gateway's own (marked) connections arrive
		// unmarked; their reverse path resolves to the TUN device, so a
		// strict filter would drop them. Loose mode accepts them.
		want = append(want, kv{"net/ipv4/conf/all/rp_filter", "2"})
	}
	if v4 {
		// The gateway answers as a hop on the path (a TTL that ends at
		// the gateway) from its own TUN address; for this host's own
		// traffic that is a local address arriving on the TUN device,
		// which the kernel drops as martian unless accept_local is on.
		want = append(want, kv{"net/ipv4/conf/" + pl.Device + "/accept_local", "1"})
	}
	if pl.Router {
		if v4 {
			want = append(want, kv{"net/ipv4/ip_forward", "1"}, kv{"net/ipv4/conf/" + pl.Device + "/rp_filter", "2"})
		}
		if v6 {
			want = append(want, kv{"net/ipv6/conf/all/forwarding", "1"})
		}
	}
	var out []sysctlSpec
	for _, w := range want {
		old, err := readSysctl(w.key)
		if err != nil {
			return nil, fmt.Errorf("tun: reading sysctl %s: %w", w.key, err)
		}
		if old != w.val {
			out = append(out, sysctlSpec{Key: w.key, Old: old, New: w.val})
		}
	}
	return out, nil
}

// strictRPFilter reports whether IPv4 strict reverse-path filtering is in
// effect on some interface (the effective value is the maximum of "all"
// and the interface's own).
func strictRPFilter(device string) bool {
	dirs, _ := os.ReadDir(filepath.Join(procSys, "net/ipv4/conf"))
	for _, d := range dirs {
		switch d.Name() {
		case "lo", device:
			continue
		}
		if v, err := readSysctl("net/ipv4/conf/" + d.Name() + "/rp_filter"); err == nil && v == "1" {
			return true
		}
	}
	return false
}

// apply installs one item.
func (r *Routes) apply(a action, index int) error {
	switch {
	case a.sysctl != nil:
		s := a.sysctl
		return r.ns.do(func() error {
			if err := writeSysctl(s.Key, s.New); err != nil {
				return fmt.Errorf("tun: setting sysctl %s to %s: %w", s.Key, s.New, err)
			}
			return nil
		})
	case a.route != nil:
		rt, err := a.route.netlinkRoute(index, false)
		if err != nil {
			return err
		}
		if err := r.h.RouteAdd(rt); err != nil {
			hint := ""
			switch {
			case errors.Is(err, unix.EEXIST):
				hint = " (it already exists)"
			case a.route.Family == famInet6 && errors.Is(err, unix.EACCES):
				hint = " (IPv6 is disabled on the device)"
			case errors.Is(err, unix.ENETDOWN):
				hint = " (the device is down)"
			}
			return fmt.Errorf("tun: adding route %s%s: %w", a.route, hint, err)
		}
		return nil
	default:
		rl, err := a.rule.netlinkRule()
		if err != nil {
			return err
		}
		if err := r.h.RuleAdd(rl); err != nil {
			hint := ""
			if errors.Is(err, unix.EAFNOSUPPORT) {
				hint = " (no IPv6 policy routing in this kernel: route only IPv4 prefixes)"
			}
			return fmt.Errorf("tun: adding rule %s%s: %w", a.rule, hint, err)
		}
		return nil
	}
}

// remove undoes one item; it reports whether there was something to undo.
// Entries already gone are fine.
func remove(h *netlink.Handle, ns *netnsRef, a action) (bool, error) {
	switch {
	case a.sysctl != nil:
		s := a.sysctl
		done := false
		err := ns.do(func() error {
			cur, err := readSysctl(s.Key)
			if errors.Is(err, os.ErrNotExist) {
				return nil // the interface is gone
			}
			if err != nil {
				return fmt.Errorf("tun: reading sysctl %s: %w", s.Key, err)
			}
			if cur != s.New || s.Old == s.New {
				return nil // changed by someone else since: leave it
			}
			if err := writeSysctl(s.Key, s.Old); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return nil
				}
				return fmt.Errorf("tun: restoring sysctl %s to %s: %w", s.Key, s.Old, err)
			}
			done = true
			return nil
		})
		return done, err
	case a.route != nil:
		rt, err := a.route.netlinkRoute(0, true)
		if err != nil {
			return false, err
		}
		if err := h.RouteDel(rt); err != nil {
			if isGone(err) {
				return false, nil
			}
			return false, fmt.Errorf("tun: removing route %s: %w", a.route, err)
		}
		return true, nil
	default:
		rl, err := a.rule.netlinkRule()
		if err != nil {
			return false, err
		}
		if err := h.RuleDel(rl); err != nil {
			if isGone(err) || errors.Is(err, unix.EAFNOSUPPORT) {
				return false, nil
			}
			return false, fmt.Errorf("tun: removing rule %s: %w", a.rule, err)
		}
		return true, nil
	}
}

// undo removes what install applied, in reverse order. On success the
// state file goes too.
func (r *Routes) undo() error {
	var errs []error
	for i := len(r.done) - 1; i >= 0; i-- {
		if _, err := remove(r.h, r.ns, r.done[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	r.done = nil
	return removeState(r.path)
}

// Close removes everything InstallRoutes installed, in reverse order, and
// restores the sysctls it changed (unless changed again since), then
// deletes the state file. It is idempotent: later calls return the first
// result. If something cannot be removed the state file is kept, marked
// as abandoned, so that CleanupStale can finish the job.
func (r *Routes) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.closeErr
	}
	r.closed = true
	if err := r.undo(); err != nil {
		r.closeErr = err
		if r.st != nil {
			r.st.PID, r.st.PIDStart = 0, 0
			if werr := writeState(r.path, r.st); werr != nil {
				r.closeErr = errors.Join(err, werr)
			}
		}
	}
	r.release()
	return r.closeErr
}

// Summary describes, one line each, what InstallRoutes installed (rules
// and routes as iproute2 prints them, sysctls as key: old -> new), plus
// notes such as a skipped IPv6 default route, for the log.
func (r *Routes) Summary() []string {
	var out []string
	if r.stale > 0 {
		out = append(out, fmt.Sprintf("removed %d leftovers of a previous run", r.stale))
	}
	for _, a := range r.done {
		out = append(out, a.String())
	}
	return append(out, r.notes...)
}

// StatePath is the state file recording what was installed.
func (r *Routes) StatePath() string { return r.path }

// CleanupStale removes what a previous InstallRoutes for device left
// behind when its process died without Close (such as after SIGKILL), as
// recorded in its state file in stateDir (DefaultStateDir when empty),
// restores the sysctls it changed, and deletes the state file. An empty
// device cleans up after every device with a state file in stateDir. It
// returns how many rules, routes and sysctls it removed or restored; no
// state file means nothing to do. It refuses while the process that
// installed the routes is still running, and works in the calling
// thread's network namespace, which must be the one recorded. With an
// empty device, state files of running owners or of other namespaces are
// skipped instead.
func CleanupStale(stateDir, device string) (removed int, err error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	var paths []string
	if device == "" {
		paths, _ = filepath.Glob(filepath.Join(stateDir, "*.routes.json"))
	} else {
		if err := validateIfName(device); err != nil {
			return 0, err
		}
		paths = []string{statePath(stateDir, device)}
	}
	var h *netlink.Handle
	var ns *netnsRef
	defer func() {
		if h != nil {
			h.Close()
		}
		ns.close()
	}()
	var errs []error
	for _, path := range paths {
		st, err := readState(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if device != "" && st.Device != device {
			errs = append(errs, fmt.Errorf("tun: state file %s is for device %q, not %q", path, st.Device, device))
			continue
		}
		if alive, pid := stateOwnerAlive(st); alive {
			if device != "" {
				errs = append(errs, fmt.Errorf("tun: routes for %q belong to running process %d (state %s): stop it first", st.Device, pid, path))
			}
			continue
		}
		if ns == nil {
			if ns, err = currentNetns(); err != nil {
				return removed, err
			}
			if h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
				return removed, fmt.Errorf("tun: netlink: %w", err)
			}
		}
		if st.Netns != ns.id && st.BootID == bootID() {
			if device != "" {
				errs = append(errs, fmt.Errorf("tun: state file %s was written in network namespace %s, this is %s: run the cleanup there, or remove the file", path, st.Netns, ns.id))
			}
			continue
		}
		n, err := cleanupState(h, ns, st, path)
		removed += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

// cleanupState undoes everything st lists that is still there, in reverse
// order of installation, and removes the state file if all went well.
func cleanupState(h *netlink.Handle, ns *netnsRef, st *stateFile, path string) (int, error) {
	if st.BootID != bootID() {
		// Written before a reboot: nothing of it is installed any more.
		return 0, removeState(path)
	}
	var todo []action
	for i := range st.Sysctls {
		todo = append(todo, action{sysctl: &st.Sysctls[i]})
	}
	for i := range st.Routes {
		todo = append(todo, action{route: &st.Routes[i]})
	}
	for i := range st.Rules {
		todo = append(todo, action{rule: &st.Rules[i]})
	}
	n := 0
	var errs []error
	for i := len(todo) - 1; i >= 0; i-- {
		ok, err := remove(h, ns, todo[i])
		if ok {
			n++
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return n, errors.Join(errs...)
	}
	return n, removeState(path)
}

// stateOwnerAlive reports whether the process that wrote st still runs.
func stateOwnerAlive(st *stateFile) (bool, int) {
	if st.PID <= 0 || st.BootID != bootID() {
		return false, 0
	}
	start, err := procStart(st.PID)
	return err == nil && start == st.PIDStart, st.PID
}

// bootID identifies the current boot ("" if unknown).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// procStart reads a process's start time (field 22 of /proc/PID/stat).
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("tun: cannot parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("tun: cannot parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func familyConst(fam string) int {
	if fam == famInet6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// netlinkRule builds the netlink rule for s, with RouteProtocol.
func (s ruleSpec) netlinkRule() (*netlink.Rule, error) {
	r := netlink.NewRule()
	r.Family = familyConst(s.Family)
	r.Priority = s.Priority
	r.Table = s.Table
	r.Protocol = RouteProtocol
	if s.Mask != 0 {
		r.Mark = s.Mark
		m := s.Mask
		r.Mask = &m
	}
	if s.To != "" {
		p, err := netip.ParsePrefix(s.To)
		if err != nil {
			return nil, fmt.Errorf("tun: bad rule destination %q: %w", s.To, err)
		}
		if p.Bits() > 0 {
			r.Dst = prefixIPNet(p)
		}
	}
	if s.Suppress != nil {
		r.SuppressPrefixlen = *s.Suppress
	}
	return r, nil
}

// netlinkRoute builds the netlink route for s, with RouteProtocol. For
// deletion the device is left out (it may be gone) and the scope is a
// wildcard.
func (s routeSpec) netlinkRoute(index int, forDelete bool) (*netlink.Route, error) {
	p, err := netip.ParsePrefix(s.Dst)
	if err != nil {
		return nil, fmt.Errorf("tun: bad route destination %q: %w", s.Dst, err)
	}
	rt := &netlink.Route{
		Dst:      prefixIPNet(p),
		Table:    s.Table,
		Protocol: RouteProtocol,
		Family:   familyConst(s.Family),
	}
	switch s.Type {
	case routeUnicast:
		rt.Type = unix.RTN_UNICAST
		rt.Scope = netlink.SCOPE_LINK
		if !forDelete {
			rt.LinkIndex = index
		}
	case routeThrow:
		rt.Type = unix.RTN_THROW
	default:
		return nil, fmt.Errorf("tun: unknown route type %q", s.Type)
	}
	if forDelete {
		rt.Scope = netlink.SCOPE_NOWHERE
	}
	return rt, nil
}
