package e2e

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"tungate/internal/netnstest"
)

// TestPeers checks the topology and the peers without tungate, so that a
// failure of the tungate tests can be told apart from a broken harness.
func TestPeers(t *testing.T) {
	w := newWorld(t)

	t.Run("client is isolated", func(t *testing.T) {
		// Only gw is reachable from client: what reaches server from
		// client in the other tests went through tungate.
		r := w.curl(t, "http://"+net.JoinHostPort(serverV4, httpPort)+"/hello?id="+testID(t))
		if r.ExitCode != 7 || !strings.Contains(r.Stderr, "Network is unreachable") && !strings.Contains(r.Stderr, "Couldn't connect") {
			t.Fatalf("curl from client straight to server: want exit 7 (couldn't connect), got %s", r)
		}
	})

	t.Run("http from gw", func(t *testing.T) {
		for _, host := range []string{serverV4, serverV6} {
			id := testID(t)
			w.fetchIn(t, w.gw, nil, "http://"+net.JoinHostPort(host, httpPort)+"/file.bin?id="+id)
			want := gwSrvV4
			if strings.Contains(host, ":") {
				want = gwSrvV6
			}
			if got := w.http.peersOf(id); !slices.Equal(got, []string{want}) {
				t.Errorf("server saw %v, want [%s]", got, want)
			}
		}
	})

	t.Run("dnsmasq", func(t *testing.T) {
		netnstest.RequireTool(t, "dig")
		log := watch(t, w.dnsmasq)
		for _, q := range []struct{ name, typ, want string }{
			{nameV4, "A", serverV4},
			{nameV6, "AAAA", serverV6},
			{nameUDP, "A", answerUDP},
			{nameV4, "AAAA", ""},
		} {
			r := w.gw.Exec(ctxT(t, 10*time.Second), "dig", "@"+serverV4, "+notcp", "+short", "+time=2", "+tries=2", q.name, q.typ)
			if r.Err != nil || strings.TrimSpace(r.Stdout) != q.want {
				log.Errorf(t, "dig @%s %s %s: want %q, got %s", serverV4, q.name, q.typ, q.want, r)
			}
		}
	})

	t.Run("danted", func(t *testing.T) {
		w.startDanted()
		log := watch(t, w.danted)
		id := testID(t)
		w.fetchIn(t, w.gw, log, "http://"+net.JoinHostPort(serverV4, httpPort)+"/file.bin?id="+id,
			"--socks5", w.danteUser+":"+w.dantePass+"@"+net.JoinHostPort(up1V4, socksPort))
		if got := w.http.peersOf(id); !slices.Equal(got, []string{up1V4}) {
			log.Errorf(t, "server saw %v, want [%s]", got, up1V4)
		}
		r := curlIn(t, w.gw, "--socks5", w.danteUser+":wrong@"+net.JoinHostPort(up1V4, socksPort),
			"http://"+net.JoinHostPort(serverV4, httpPort)+"/hello?id="+testID(t))
		if r.ExitCode != 97 {
			log.Errorf(t, "wrong password at danted: want curl exit 97, got %s", r)
		}
		t.Logf("danted, wrong password: curl exit %d: %s", r.ExitCode, strings.TrimSpace(r.Stderr))
		r = curlIn(t, w.gw, "-v", "--socks5", w.danteUser+":"+w.dantePass+"@"+net.JoinHostPort(up1V4, socksPort),
			"http://"+net.JoinHostPort(serverV4, closedPort)+"/")
		t.Logf("danted, closed port: curl exit %d: %s", r.ExitCode, lastLines(r.Stderr, 3))
		if r.ExitCode != 97 || !strings.Contains(r.Stderr, "(5)") {
			log.Errorf(t, "danted to a closed port: want curl exit 97 with reply (5), got %s", r)
		}
	})

	t.Run("microsocks", func(t *testing.T) {
		w.startMicrosocks()
		log := watch(t, w.microsocks)
		id := testID(t)
		w.fetchIn(t, w.up1, log, "http://"+net.JoinHostPort(serverV4, httpPort)+"/file.bin?id="+id,
			"--socks5", net.JoinHostPort(up2V4, socksPort))
		if got := w.http.peersOf(id); !slices.Equal(got, []string{up2V4}) {
			log.Errorf(t, "server saw %v, want [%s]", got, up2V4)
		}
	})

	t.Run("socksify UDP via danted", func(t *testing.T) {
		w.startDanted()
		log := watch(t, w.danted)
		conf := writeSocksConf(t, up1V4, socksPort, "username")
		checkDNS(t, log, w.gw, conf, w.danteUser, w.dantePass, nameUDP, answerUDP)
		checkEcho(t, log, w.gw, conf, w.danteUser, w.dantePass, net.JoinHostPort(serverV4, echoPort))
	})

	t.Run("socksify logs a UDP ASSOCIATE failure reply", func(t *testing.T) {
		// The control for expectUDPReply: microsocks has no UDP and
		// answers X'07'.
		w.startMicrosocks()
		log := watch(t, w.microsocks)
		conf := writeSocksConf(t, up2V4, socksPort, "none")
		got, clientLog, err := udpExchange(t, w.up1, conf, "", "", net.JoinHostPort(serverV4, echoPort), []byte("x"))
		if err == nil {
			t.Fatalf("a datagram came back through microsocks: %q", got)
		}
		expectUDPReply(t, log, clientLog, 7)
	})

	t.Run("danted blocks by rule: reply 2", func(t *testing.T) {
		w.startDanted()
		log := watch(t, w.danted)
		r := curlIn(t, w.gw, "-v", "--socks5", w.danteUser+":"+w.dantePass+"@"+net.JoinHostPort(up1V4, socksPort),
			"http://"+net.JoinHostPort(serverV4, blockedPort)+"/")
		if r.ExitCode != 97 || !strings.Contains(r.Stderr, "(2)") {
			log.Errorf(t, "danted to its blocked port: want curl exit 97 with reply (2), got %s", r)
		}
	})
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
