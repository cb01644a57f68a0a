package netnstest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// RoutingState returns a namespace's policy routing state as text, for
// comparing before and after a program that changes it: what
// `ip -4 rule`, `ip -6 rule`, `ip -4 route show table all` and
// `ip -6 route show table all` print, and the forwarding and rp_filter
// sysctls (of "all", "default" and every interface), each under a header.
// It fails the test when a command fails.
func (ns *Namespace) RoutingState() string {
	ns.topo.t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-4", "rule", "show"},
		{"-6", "rule", "show"},
		{"-4", "route", "show", "table", "all"},
		{"-6", "route", "show", "table", "all"},
	} {
		fmt.Fprintf(&b, "== ip %s\n%s", strings.Join(args, " "), ns.IP(args...))
	}
	b.WriteString("== sysctls\n")
	b.WriteString(ns.routingSysctls())
	return b.String()
}

// routingSysctls reads the sysctls that policy routing and forwarding
// depend on, one "key = value" a line, sorted.
func (ns *Namespace) routingSysctls() string {
	ns.topo.t.Helper()
	var lines []string
	err := ns.Do(func() error {
		files := []string{
			"/proc/sys/net/ipv4/ip_forward",
			"/proc/sys/net/ipv6/conf/all/forwarding",
			"/proc/sys/net/ipv6/conf/default/forwarding",
		}
		rp, err := filepath.Glob("/proc/sys/net/ipv4/conf/*/rp_filter")
		if err != nil {
			return err
		}
		files = append(files, rp...)
		for _, f := range files {
			v, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			key := strings.ReplaceAll(strings.TrimPrefix(f, "/proc/sys/"), "/", ".")
			lines = append(lines, key+" = "+strings.TrimSpace(string(v)))
		}
		return nil
	})
	if err != nil {
		ns.topo.t.Fatalf("netnstest: reading sysctls in %s: %v", ns.Name, err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

// DiffLines returns the lines only in a (prefixed "- ") and only in b
// (prefixed "+ "), in order, for failure messages; "" when the texts have
// the same lines.
func DiffLines(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(b, "\n") {
		count[l]++
	}
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if count[l] > 0 {
			count[l]--
			continue
		}
		out = append(out, "- "+l)
	}
	for _, l := range strings.Split(b, "\n") {
		if count[l] > 0 {
			count[l]--
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
