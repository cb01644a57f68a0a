package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"tungate/internal/leaktest"
)

func TestPProfFlag(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want string // in the error; empty: accepted
	}{
		{"127.0.0.1:6060", ""},
		{"[::1]:6060", ""},
		{"198.18.0.1:6060", "only a loopback address"},
		{"0.0.0.0:6060", "only a loopback address"},
		{"localhost:6060", "want a loopback IP:port"},
		{"6060", "want a loopback IP:port"},
	} {
		var s *settings
		cfg, err := parseConfig([]string{"--pprof", tc.arg})
		if err == nil {
			s, err = cfg.resolve()
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("--pprof %s: %v, want accepted", tc.arg, err)
		case tc.want == "" && s.pprof.String() != tc.arg:
			t.Errorf("--pprof %s: resolved to %s", tc.arg, s.pprof)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("--pprof %s: %v, want an error containing %q", tc.arg, err, tc.want)
		}
	}
	var out bytes.Buffer
	if code := run([]string{"--pprof", "198.18.0.1:6060"}, nil, io.Discard, &out); code != 2 {
		t.Errorf("non-loopback --pprof: exit %d, want 2 (%s)", code, out.String())
	}
}

func TestPProfServes(t *testing.T) {
	leaktest.Check(t)
	bound, stop, err := startPProf(netip.MustParseAddrPort("127.0.0.1:0"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + bound.String() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
		t.Fatalf("goroutine profile: %s\n%.200s", resp.Status, body)
	}
	http.DefaultClient.CloseIdleConnections()
	stop()
	stop() // idempotent
	if _, err := http.Get("http://" + bound.String() + "/debug/pprof/"); err == nil {
		t.Fatal("pprof still served after stop")
	}
}

func TestSchedulerProcs(t *testing.T) {
	for _, tc := range []struct {
		asked       int
		tun, envSet bool
		procs, want int
	}{
		{0, true, false, 2, 1},
		{0, true, false, 1, 1},
		{0, true, false, 8, 4},
		{0, true, false, 3, 2},
		{0, false, false, 8, 0}, // SOCKS only: the runtime's default
		{0, true, true, 8, 0},   // GOMAXPROCS in the environment
		{3, false, true, 8, 3},  // asked: always
		{16, true, false, 2, 16},
	} {
		if got := schedulerProcs(tc.asked, tc.tun, tc.envSet, tc.procs); got != tc.want {
			t.Errorf("schedulerProcs(%d, tun %v, env %v, GOMAXPROCS %d) = %d, want %d", tc.asked, tc.tun, tc.envSet, tc.procs, got, tc.want)
		}
	}
	var out bytes.Buffer
	if code := run([]string{"--procs", "-1"}, nil, io.Discard, &out); code != 2 || !strings.Contains(out.String(), "--procs") {
		t.Errorf("--procs -1: exit %d, %q; want 2 naming the flag", code, out.String())
	}
}
