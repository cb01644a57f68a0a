package main

import (
	"strings"
	"testing"
	"time"
)

func TestProxyWarmFlags(t *testing.T) {
	const proxy = "socks5://198.18.0.2:1080"
	for _, tc := range []struct {
		args     []string
		want     string // in the error; empty: accepted
		warm     int
		warmIdle time.Duration
	}{
		{args: []string{"--proxy", proxy}, warm: defaultProxyWarm, warmIdle: 5 * time.Second},
		{args: []string{"--proxy", proxy, "--proxy-warm", "0"}, warm: 0, warmIdle: 5 * time.Second},
		{args: []string{"--proxy", proxy, "--proxy-warm", "8", "--proxy-warm-idle", "2s"}, warm: 8, warmIdle: 2 * time.Second},
		{args: []string{"--proxy", proxy, "--proxy-warm", "64"}, warm: 64, warmIdle: 5 * time.Second},
		// Direct: nothing to keep ready.
		{args: []string{"--proxy-warm", "4"}, warm: 0, warmIdle: 0},
		{args: []string{"--proxy", proxy, "--proxy-warm", "-1"}, want: "--proxy-warm must not be negative"},
		{args: []string{"--proxy", proxy, "--proxy-warm", "65"}, want: "at most 64"},
		{args: []string{"--proxy", proxy, "--proxy-warm", "two"}, want: "invalid value"},
		{args: []string{"--proxy", proxy, "--proxy-warm-idle", "0s"}, want: "at least 100ms"},
		{args: []string{"--proxy", proxy, "--proxy-warm-idle", "50ms"}, want: "at least 100ms"},
		{args: []string{"--proxy", proxy, "--proxy-warm-idle", "soon"}, want: "invalid value"},
	} {
		var s *settings
		cfg, err := parseConfig(tc.args)
		if err == nil {
			s, err = cfg.resolve()
		}
		name := strings.Join(tc.args, " ")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", name, err)
		case tc.want == "" && (s.warm != tc.warm || s.warmIdle != tc.warmIdle):
			t.Errorf("%s: warm %d for %v, want %d for %v", name, s.warm, s.warmIdle, tc.warm, tc.warmIdle)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error containing %q", name, err, tc.want)
		}
	}
}
