package tun

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "198.18.0.1/15", want: "198.18.0.1/15"},
		{in: " 198.18.0.1 ", want: "198.18.0.1/32"},
		{in: "2001:db8::1/64", want: "2001:db8::1/64"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "198.18.0.0/33", err: `tun: bad address "198.18.0.0/33"`},
		{in: "198.18.0.300", err: `tun: bad address "198.18.0.300": want an IP address or prefix`},
		{in: "", err: `tun: bad address ""`},
		{in: "fe80::1%eth0", err: "zones are not allowed"},
		{in: "::ffff:198.18.0.1/128", err: "IPv4 form"},
	} {
		p, err := ParsePrefix(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePrefix(%q) = %v, %v; want error containing %q", tc.in, p, err, tc.err)
			}
			continue
		}
		if err != nil || p.String() != tc.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tc.in, p, err, tc.want)
		}
	}
}

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string // "" = valid
	}{
		{"defaults", Config{FD: -1}, ""},
		{"pattern", Config{Name: "tg%d", FD: -1}, ""},
		{"v6 at 1280", Config{MTU: 1280, Addrs: pfx("2001:db8::1/64"), FD: -1}, ""},
		{"v4 at 576", Config{MTU: 576, Addrs: pfx("198.18.0.1/30"), FD: -1}, ""},
		{"max MTU", Config{MTU: 65535, FD: -1}, ""},
		{"name too long", Config{Name: "tungate-is-too-long", FD: -1}, `tun: interface name "tungate-is-too-long" is too long: 19 bytes, Linux allows at most 15`},
		{"name with slash", Config{Name: "tun/0", FD: -1}, `contains '/'`},
		{"name with space", Config{Name: "tun 0", FD: -1}, `contains ' '`},
		{"name dot", Config{Name: ".", FD: -1}, `not allowed`},
		{"bad pattern", Config{Name: "tun%s", FD: -1}, `only pattern allowed`},
		{"MTU too small", Config{MTU: 500, FD: -1}, "tun: MTU 500 out of range 576..65535"},
		{"MTU negative", Config{MTU: -1, FD: -1}, "tun: MTU -1 out of range"},
		{"MTU too big", Config{MTU: 65536, FD: -1}, "tun: MTU 65536 out of range: the most a TUN device takes is 65535"},
		{"MTU v6 minimum", Config{MTU: 1000, Addrs: pfx("198.18.0.1/30", "2001:db8::1/64"), FD: -1}, "tun: MTU 1000 is below 1280, the IPv6 minimum"},
		{"invalid addr", Config{Addrs: []netip.Prefix{{}}, FD: -1}, "tun: invalid address"},
		{"unspecified addr", Config{Addrs: pfx("0.0.0.0/8"), FD: -1}, "unspecified"},
		{"multicast addr", Config{Addrs: pfx("ff02::1/64"), FD: -1}, "multicast"},
		{"zero bits", Config{Addrs: pfx("198.18.0.1/0"), FD: -1}, "prefix length 0"},
		{"duplicate", Config{Addrs: pfx("198.18.0.1/30", "198.18.0.1/24"), FD: -1}, "given twice"},
		{"bad fd", Config{FD: -2}, "tun: bad file descriptor -2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.normalize()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("normalize: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("normalize = %v; want error containing %q", err, tc.err)
			}
			if !strings.HasPrefix(err.Error(), "tun: ") {
				t.Errorf("error %q does not start with \"tun: \"", err)
			}
		})
	}
}

func TestRouteConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  RouteConfig
		err  string
	}{
		{"defaults", RouteConfig{Device: "tun0"}, ""},
		{"no device", RouteConfig{}, "RouteConfig.Device is empty"},
		{"pattern device", RouteConfig{Device: "tun%d"}, "not a pattern"},
		{"main table", RouteConfig{Device: "tun0", Table: 254}, "routing table 254 is reserved"},
		{"negative table", RouteConfig{Device: "tun0", Table: -5}, "out of range"},
		{"host bits", RouteConfig{Device: "tun0", Routes: pfx("198.18.5.1/24")}, "tun: route 198.18.5.1/24 has host bits set (did you mean 198.18.5.0/24?)"},
		{"exclude host bits", RouteConfig{Device: "tun0", Excludes: pfx("2001:db8::1/32")}, "exclude 2001:db8::1/32 has host bits set"},
		{"duplicate route", RouteConfig{Device: "tun0", Routes: pfx("198.18.5.0/24", "198.18.5.0/24")}, "given twice"},
		{"route in exclude", RouteConfig{Device: "tun0", Routes: pfx("198.18.5.0/24"), Excludes: pfx("198.18.0.0/16")}, "route 198.18.5.0/24 lies inside exclude 198.18.0.0/16"},
		{"route is exclude", RouteConfig{Device: "tun0", Routes: pfx("198.18.5.0/24"), Excludes: pfx("198.18.5.0/24")}, "both a route and an exclude"},
		{"half excluded", RouteConfig{Device: "tun0", Excludes: pfx("2001:db8::/32", "::/1")}, ""},
		{"default route excluded", RouteConfig{Device: "tun0", Excludes: pfx("::/0")}, "::/0 is both a route and an exclude"},
		{"exclude in route", RouteConfig{Device: "tun0", Routes: pfx("198.18.0.0/16"), Excludes: pfx("198.18.5.0/24")}, ""},
		{"priority too high", RouteConfig{Device: "tun0", Priority: 32764}, "rule priority 32764 out of range"},
		{"priority negative", RouteConfig{Device: "tun0", Priority: -3}, "rule priority -3 out of range"},
		{"priority fits", RouteConfig{Device: "tun0", Priority: 32763}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.normalize()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("normalize: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("normalize = %v; want error containing %q", err, tc.err)
			}
		})
	}
}

func descs(t *testing.T, pl routePlan) []string {
	t.Helper()
	var out []string
	for _, r := range planRules(pl) {
		out = append(out, r.Desc)
	}
	for _, r := range planRoutes(pl) {
		out = append(out, r.Desc)
	}
	return out
}

func TestPlanDefault(t *testing.T) {
	pl, err := RouteConfig{Device: "tun0", Excludes: pfx("198.18.6.0/24", "2001:db8:6::/48")}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"2080: from all fwmark 0x2080/0x2080 lookup main proto 208",
		"2081: from all lookup main suppress_prefixlength 0 proto 208",
		"2082: from all fwmark 0/0x2080 lookup 2080 proto 208",
		"-6 2080: from all fwmark 0x2080/0x2080 lookup main proto 208",
		"-6 2081: from all lookup main suppress_prefixlength 0 proto 208",
		"-6 2082: from all fwmark 0/0x2080 lookup 2080 proto 208",
		"0.0.0.0/0 dev tun0 table 2080 proto 208",
		"-6 ::/0 dev tun0 table 2080 proto 208",
		"throw 198.18.6.0/24 table 2080 proto 208",
		"-6 throw 2001:db8:6::/48 table 2080 proto 208",
	}
	if got := descs(t, pl); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestPlanNarrow(t *testing.T) {
	pl, err := RouteConfig{
		Device:   "tg0",
		Table:    77,
		Fwmark:   0x10,
		Priority: 100,
		Routes:   pfx("198.18.0.0/15", "198.18.130.0/24", "198.19.0.0/16"),
		Excludes: pfx("198.18.130.128/25", "2001:db8::/32"),
	}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"100: from all fwmark 0x10/0x10 lookup main proto 208",
		"101: from all to 198.18.130.0/24 lookup main suppress_prefixlength 24 proto 208",
		"102: from all to 198.18.130.0/24 fwmark 0/0x10 lookup 77 proto 208",
		"103: from all to 198.19.0.0/16 lookup main suppress_prefixlength 16 proto 208",
		"104: from all to 198.19.0.0/16 fwmark 0/0x10 lookup 77 proto 208",
		"105: from all to 198.18.0.0/15 lookup main suppress_prefixlength 15 proto 208",
		"106: from all to 198.18.0.0/15 fwmark 0/0x10 lookup 77 proto 208",
		"198.18.130.0/24 dev tg0 table 77 proto 208",
		"198.19.0.0/16 dev tg0 table 77 proto 208",
		"198.18.0.0/15 dev tg0 table 77 proto 208",
		// No IPv6 routes: no IPv6 rules, and the IPv6 exclude is moot.
		"throw 198.18.130.128/25 table 77 proto 208",
	}
	if got := descs(t, pl); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestStateFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := statePath(dir, "tg0")
	if _, err := readState(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("readState of a missing file = %v; want ErrNotExist", err)
	}
	pl, err := RouteConfig{Device: "tg0", Excludes: pfx("198.18.6.0/24")}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	st := &stateFile{Version: stateVersion, Device: "tg0", PID: 42, PIDStart: 7, Netns: "net:[1]",
		Rules: planRules(pl), Routes: planRoutes(pl), Sysctls: []sysctlSpec{{Key: "net/ipv4/ip_forward", Old: "0", New: "1"}}}
	if err := writeState(path, st); err != nil {
		t.Fatal(err)
	}
	st.Complete = true
	if err := writeState(path, st); err != nil {
		t.Fatal(err)
	}
	got, err := readState(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Complete || len(got.Rules) != 6 || len(got.Routes) != 3 || got.Sysctls[0] != st.Sysctls[0] || *got.Rules[1].Suppress != 0 {
		t.Errorf("read back %+v", got)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("state dir holds %d entries, want just the state file (no temporary files)", len(ents))
	}

	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := readState(path); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("corrupt file: %v", err)
	}
	os.WriteFile(path, []byte(`{"version": 9, "device": "tg0"}`), 0o600)
	if _, err := readState(path); err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Errorf("wrong version: %v", err)
	}
	if err := removeState(path); err != nil {
		t.Fatal(err)
	}
	if err := removeState(path); err != nil {
		t.Errorf("removing a missing state file: %v", err)
	}
}
