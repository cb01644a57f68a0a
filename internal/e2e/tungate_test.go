package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"tungate/internal/netnstest"
)

// socksFailRE is how curl 7.88 reports a SOCKS5 reply other than success:
// "Can't complete SOCKS5 connection to 198.18.1.2. (5)".
var socksFailRE = regexp.MustCompile(`Can't complete SOCKS5 connection to (\S+)\. \((\d+)\)`)

// url returns the HTTP URL of path on host (an IP or a name) of server.
func url(host, path, id string) string {
	return "http://" + net.JoinHostPort(host, httpPort) + path + "?id=" + id
}

// checkPeers checks that the HTTP server saw exactly one request with id,
// from want.
func (w *world) checkPeers(t *testing.T, log *daemonLog, id, want string) {
	t.Helper()
	if got := w.http.peersOf(id); !slices.Equal(got, []string{want}) {
		log.Errorf(t, "the HTTP server saw requests from %v, want exactly one from %s", got, want)
	}
}

// expectReply runs curl -v through the SOCKS5 proxy args to target and
// checks that it fails with curl's exit 97 and the SOCKS5 reply code want.
func (w *world) expectReply(t *testing.T, log *daemonLog, target string, want int, proxyArgs ...string) {
	t.Helper()
	args := append(append([]string{"-v"}, proxyArgs...), "http://"+target+"/")
	r := w.curl(t, args...)
	m := socksFailRE.FindStringSubmatch(r.Stderr)
	if r.ExitCode != 97 || m == nil {
		log.Fatalf(t, "curl %s: want exit 97 (CURLE_PROXY) with \"Can't complete SOCKS5 connection ... (%d)\", got %s", strings.Join(args, " "), want, r)
	}
	if got, _ := strconv.Atoi(m[2]); got != want {
		log.Fatalf(t, "curl %s: SOCKS5 reply %d, want %d\n%s", strings.Join(args, " "), got, want, lastLines(r.Stderr, 4))
	}
}

// TestDirect: tungate in gw without authentication and without upstream;
// curl, proxychains4 and socksify in client use it.
func TestDirect(t *testing.T) {
	w := newWorld(t)
	d := w.startTungate(t, gwV4+":1080", "--socks-auth=false")
	proxy := d.Addr

	t.Run("curl --socks5 IPv4", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		w.fetch(t, log, url(serverV4, "/file.bin", id), "--socks5", proxy)
		w.checkPeers(t, log, id, gwSrvV4)
	})
	t.Run("curl --socks5 IPv6", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		w.fetch(t, log, url(serverV6, "/file.bin", id), "--socks5", proxy)
		w.checkPeers(t, log, id, gwSrvV6)
	})
	t.Run("curl --socks5-hostname IPv4 name", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		w.fetch(t, log, url(nameV4, "/file.bin", id), "--socks5-hostname", proxy)
		w.checkPeers(t, log, id, gwSrvV4)
	})
	t.Run("curl --socks5-hostname IPv6 name", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		w.fetch(t, log, url(nameV6, "/file.bin", id), "--socks5-hostname", proxy)
		w.checkPeers(t, log, id, gwSrvV6)
	})
	t.Run("curl --socks5-hostname name from gw hosts file", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		w.fetch(t, log, url(nameHosts, "/file.bin", id), "--socks5-hostname", proxy)
		w.checkPeers(t, log, id, gwSrvV4)
	})
	t.Run("curl --socks5 name is resolved by client and fails", func(t *testing.T) {
		// The control for the --socks5-hostname cases: client cannot
		// resolve the name itself.
		log := watch(t, d.Process)
		r := w.curl(t, "--socks5", proxy, url(nameV4, "/hello", testID(t)))
		// curl 7.88 reports it as a proxy error: exit 97.
		if r.ExitCode != 97 || !strings.Contains(r.Stderr, "Could not resolve host: "+nameV4) {
			log.Fatalf(t, "curl --socks5 with a name client cannot resolve: want exit 97 \"Could not resolve host: %s\", got %s", nameV4, r)
		}
	})
	t.Run("unknown name: host unreachable (4)", func(t *testing.T) {
		// dnsmasq answers NXDOMAIN for it (--local=/example.test/).
		log := watch(t, d.Process)
		w.expectReply(t, log, net.JoinHostPort(nameAbsent, httpPort), 4, "--socks5-hostname", proxy)
	})
	t.Run("closed port: connection refused (5)", func(t *testing.T) {
		log := watch(t, d.Process)
		w.expectReply(t, log, net.JoinHostPort(serverV4, closedPort), 5, "--socks5", proxy)
	})
	t.Run("closed port IPv6: connection refused (5)", func(t *testing.T) {
		log := watch(t, d.Process)
		w.expectReply(t, log, net.JoinHostPort(serverV6, closedPort), 5, "--socks5", proxy)
	})
	t.Run("no route: network unreachable (3)", func(t *testing.T) {
		// gw has no route to 198.18.200.0/24: connect fails with ENETUNREACH.
		log := watch(t, d.Process)
		w.expectReply(t, log, net.JoinHostPort(noRouteV4, httpPort), 3, "--socks5", proxy)
	})
	t.Run("no route IPv6: network unreachable (3)", func(t *testing.T) {
		log := watch(t, d.Process)
		w.expectReply(t, log, net.JoinHostPort("2001:db8:ffff::1", httpPort), 3, "--socks5", proxy)
	})
	t.Run("no host on link: host unreachable (4)", func(t *testing.T) {
		// 198.18.1.99 is on gw's server link, but nobody answers ARP:
		// EHOSTUNREACH after the kernel's ~3 s of ARP probes.
		log := watch(t, d.Process)
		w.expectReply(t, log, net.JoinHostPort(noHostV4, httpPort), 4, "--socks5", proxy)
	})
	t.Run("proxychains4", func(t *testing.T) {
		netnstest.RequireTool(t, "proxychains4")
		log := watch(t, d.Process)
		conf := writeProxychainsConf(t, d.Host, d.Port, "", "", false)
		id := testID(t)
		w.fetchVia(t, w.client, log, []string{"proxychains4", "-q", "-f", conf}, url(serverV4, "/file.bin", id))
		w.checkPeers(t, log, id, gwSrvV4)
	})
	t.Run("proxychains4 proxy_dns", func(t *testing.T) {
		// proxychains hands the name to tungate, which resolves it.
		netnstest.RequireTool(t, "proxychains4")
		log := watch(t, d.Process)
		conf := writeProxychainsConf(t, d.Host, d.Port, "", "", true)
		id := testID(t)
		w.fetchVia(t, w.client, log, []string{"proxychains4", "-q", "-f", conf}, url(nameV4, "/file.bin", id))
		w.checkPeers(t, log, id, gwSrvV4)
	})
	t.Run("socksify UDP DNS query to dnsmasq", func(t *testing.T) {
		log := watch(t, d.Process, w.dnsmasq)
		conf := writeSocksConf(t, d.Host, d.Port, "none")
		checkDNS(t, log, w.client, conf, "", "", nameUDP, answerUDP)
	})
	t.Run("socksify UDP echo", func(t *testing.T) {
		log := watch(t, d.Process)
		conf := writeSocksConf(t, d.Host, d.Port, "none")
		checkEcho(t, log, w.client, conf, "", "", net.JoinHostPort(serverV4, echoPort))
	})
	t.Run("IPv6 listener", func(t *testing.T) {
		d6 := w.startTungate(t, "["+gwV6+"]:1080", "--socks-auth=false")
		log := watch(t, d6.Process)
		for _, host := range []string{serverV4, serverV6} {
			id := testID(t)
			w.fetch(t, log, url(host, "/file.bin", id), "--socks5", d6.Addr)
			want := gwSrvV4
			if strings.Contains(host, ":") {
				want = gwSrvV6
			}
			w.checkPeers(t, log, id, want)
		}
	})
}

// TestAuth: tungate on a non-loopback address with a user store made by
// `tungate user add`.
func TestAuth(t *testing.T) {
	w := newWorld(t)
	usersFile := filepath.Join(w.dir, "users")
	const user, pass = "alice", "alice-S3cret pw"
	// proxychains' config splits on spaces: bob's password has none.
	const user2, pass2 = "bob", "bob-pw-123"
	addUser(t, w.gw, usersFile, user, "user", pass)
	addUser(t, w.gw, usersFile, user2, "user", pass2)

	t.Run("refuses to start open on non-loopback", func(t *testing.T) {
		// No --users, no --socks-auth=false: an error, not an open proxy.
		r := w.gw.Exec(ctxT(t, 10*time.Second), tungateBin, "--socks", gwV4+":1099")
		// Exit 2: a usage or configuration error (cmd/tungate).
		if r.ExitCode != 2 {
			t.Fatalf("tungate --socks %s:1099 without --users: want exit 2 at once, got %s", gwV4, r)
		}
		if !strings.Contains(r.Stderr, "--users") || !strings.Contains(r.Stderr, "--socks-auth=false") {
			t.Errorf("the error should name --users and --socks-auth=false: %s", r)
		}
	})

	d := w.startTungate(t, gwV4+":1081", "--users", usersFile)
	proxy := d.Addr

	t.Run("curl user:pass IPv4", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		w.fetch(t, log, url(serverV4, "/file.bin", id), "--socks5", proxy, "--proxy-user", user+":"+pass)
		w.checkPeers(t, log, id, gwSrvV4)
	})
	t.Run("curl user:pass@ IPv6", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		// In the proxy URL; the space in the password is %20 there.
		w.fetch(t, log, url(serverV6, "/file.bin", id), "-x", "socks5://"+user+":"+strings.ReplaceAll(pass, " ", "%20")+"@"+proxy)
		w.checkPeers(t, log, id, gwSrvV6)
	})
	t.Run("curl --socks5-hostname with user", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		w.fetch(t, log, url(nameV4, "/file.bin", id), "--socks5-hostname", proxy, "--proxy-user", user+":"+pass)
		w.checkPeers(t, log, id, gwSrvV4)
	})
	for _, c := range []struct{ name, cred string }{
		{"wrong password", user + ":wrong"},
		{"unknown user", "mallory:" + pass},
	} {
		t.Run(c.name, func(t *testing.T) {
			log := watch(t, d.Process)
			id := testID(t)
			r := w.curl(t, "--socks5", proxy, "--proxy-user", c.cred, url(serverV4, "/hello", id))
			// curl 7.88: "User was rejected by the SOCKS5 server (1 1)."
			// shows the RFC 1929 reply's version and status octets:
			// tungate answers status X'01'.
			if r.ExitCode != 97 || !strings.Contains(r.Stderr, "User was rejected by the SOCKS5 server (1 1).") {
				log.Fatalf(t, "curl with %s: want exit 97 \"User was rejected by the SOCKS5 server\", got %s", c.name, r)
			}
			if got := w.http.peersOf(id); len(got) != 0 {
				log.Errorf(t, "the request reached the server from %v", got)
			}
		})
	}
	t.Run("no credentials", func(t *testing.T) {
		log := watch(t, d.Process)
		id := testID(t)
		r := w.curl(t, "--socks5", proxy, url(serverV4, "/hello", id))
		// curl offers only "no authentication"; the server must answer
		// X'FF': curl 7.88 says "No authentication method was acceptable."
		if r.ExitCode != 97 || !strings.Contains(r.Stderr, "No authentication method was acceptable") {
			log.Fatalf(t, "curl without credentials: want exit 97 \"No authentication method was acceptable\", got %s", r)
		}
		if got := w.http.peersOf(id); len(got) != 0 {
			log.Errorf(t, "the request reached the server from %v", got)
		}
	})
	t.Run("proxychains4 with user", func(t *testing.T) {
		netnstest.RequireTool(t, "proxychains4")
		log := watch(t, d.Process)
		conf := writeProxychainsConf(t, d.Host, d.Port, user2, pass2, false)
		id := testID(t)
		w.fetchVia(t, w.client, log, []string{"proxychains4", "-q", "-f", conf}, url(serverV4, "/file.bin", id))
		w.checkPeers(t, log, id, gwSrvV4)
	})
	t.Run("socksify UDP with user", func(t *testing.T) {
		log := watch(t, d.Process)
		conf := writeSocksConf(t, d.Host, d.Port, "username")
		checkDNS(t, log, w.client, conf, user, pass, nameUDP, answerUDP)
		checkEcho(t, log, w.client, conf, user, pass, net.JoinHostPort(serverV4, echoPort))
	})
	t.Run("socksify UDP wrong password", func(t *testing.T) {
		log := watch(t, d.Process)
		conf := writeSocksConf(t, d.Host, d.Port, "username")
		payload := []byte("must-not-arrive-" + randHex(8))
		got, _, err := udpExchange(t, w.client, conf, user, "wrong", net.JoinHostPort(serverV4, echoPort), payload)
		if err == nil {
			log.Fatalf(t, "UDP through tungate with a wrong password: got a datagram back (%q)", got)
		}
	})
}

// startUpstreamWorld starts danted (and microsocks when twoHops) and a
// tungate in gw without authentication whose upstream is danted (and then
// microsocks). tungate gives danted its user's password, or badPass if not
// "".
func startUpstreamWorld(t *testing.T, w *world, port, badPass string, twoHops bool) *daemon {
	t.Helper()
	w.startDanted()
	pass := w.dantePass
	if badPass != "" {
		pass = badPass
	}
	args := []string{"--socks-auth=false", "--proxy", "socks5://" + w.danteUser + ":" + pass + "@" + net.JoinHostPort(up1V4, socksPort)}
	if twoHops {
		w.startMicrosocks()
		args = append(args, "--proxy", "socks5://"+net.JoinHostPort(up2V4, socksPort))
	}
	return w.startTungate(t, gwV4+":"+port, args...)
}

// TestUpstreamDanted: tungate chains through danted (username auth).
func TestUpstreamDanted(t *testing.T) {
	w := newWorld(t)
	d := startUpstreamWorld(t, w, "1080", "", false)
	proxy := d.Addr

	t.Run("curl --socks5 IPv4", func(t *testing.T) {
		log := watch(t, d.Process, w.danted)
		mark := w.danted.Mark()
		id := testID(t)
		w.fetch(t, log, url(serverV4, "/file.bin", id), "--socks5", proxy)
		w.checkPeers(t, log, id, up1V4)
		// danted logged the CONNECT of our user to the server.
		want := []string{"username%" + w.danteUser + "@", serverV4 + "." + httpPort}
		if !danteLogHas(w.danted, mark, want...) {
			log.Errorf(t, "danted's log has no line with %q", want)
		}
	})
	t.Run("curl --socks5 IPv6", func(t *testing.T) {
		log := watch(t, d.Process, w.danted)
		id := testID(t)
		w.fetch(t, log, url(serverV6, "/file.bin", id), "--socks5", proxy)
		w.checkPeers(t, log, id, up1V6)
	})
	t.Run("curl --socks5-hostname", func(t *testing.T) {
		log := watch(t, d.Process, w.danted)
		id := testID(t)
		w.fetch(t, log, url(nameV4, "/file.bin", id), "--socks5-hostname", proxy)
		w.checkPeers(t, log, id, up1V4)
	})
	t.Run("closed port: danted's refused (5) passes through", func(t *testing.T) {
		log := watch(t, d.Process, w.danted)
		w.expectReply(t, log, net.JoinHostPort(serverV4, closedPort), 5, "--socks5", proxy)
	})
	t.Run("danted's not allowed (2) passes through", func(t *testing.T) {
		log := watch(t, d.Process, w.danted)
		w.expectReply(t, log, net.JoinHostPort(serverV4, blockedPort), 2, "--socks5", proxy)
	})
	t.Run("socksify UDP DNS query through danted", func(t *testing.T) {
		log := watch(t, d.Process, w.danted)
		mark := w.danted.Mark()
		conf := writeSocksConf(t, d.Host, d.Port, "none")
		checkDNS(t, log, w.client, conf, "", "", nameUDP, answerUDP)
		want := []string{"udp/udpassociate", "username%" + w.danteUser + "@"}
		if !danteLogHas(w.danted, mark, want...) {
			log.Errorf(t, "danted's log has no UDP association of our user (%q)", want)
		}
	})
	t.Run("socksify UDP echo through danted", func(t *testing.T) {
		log := watch(t, d.Process, w.danted)
		conf := writeSocksConf(t, d.Host, d.Port, "none")
		checkEcho(t, log, w.client, conf, "", "", net.JoinHostPort(serverV4, echoPort))
	})
}

// TestUpstreamWrongPassword: danted rejects tungate's credentials; the
// client gets a SOCKS5 failure reply and nothing reaches the server.
func TestUpstreamWrongPassword(t *testing.T) {
	w := newWorld(t)
	d := startUpstreamWorld(t, w, "1080", "wrong-"+randHex(4), false)

	t.Run("CONNECT: general failure (1)", func(t *testing.T) {
		log := watch(t, d.Process, w.danted)
		id := testID(t)
		// The upstream's RFC 1929 rejection is no socket error and no
		// reply code: socks.ReplyFromError maps it to X'01'.
		w.expectReply(t, log, net.JoinHostPort(serverV4, httpPort), 1, "--socks5", d.Addr)
		if got := w.http.peersOf(id); len(got) != 0 {
			log.Errorf(t, "the request reached the server from %v", got)
		}
		if !strings.Contains(d.Output(), "authentication failed") {
			log.Errorf(t, "tungate's log does not say that the upstream authentication failed")
		}
		if !strings.Contains(w.danted.Output(), w.danteUser) {
			log.Errorf(t, "danted's log does not mention the rejected user %s", w.danteUser)
		}
	})
	t.Run("UDP ASSOCIATE: general failure (1)", func(t *testing.T) {
		// RFC 1928 section 6: a failed request gets a reply with the
		// failure code before the server closes the connection, UDP
		// ASSOCIATE too. socksify logs the reply it reads.
		log := watch(t, d.Process, w.danted)
		conf := writeSocksConf(t, d.Host, d.Port, "none")
		got, clientLog, err := udpExchange(t, w.client, conf, "", "", net.JoinHostPort(serverV4, echoPort), []byte("must-not-arrive"))
		if err == nil {
			log.Fatalf(t, "a datagram came back (%q) through an upstream that rejected tungate", got)
		}
		expectUDPReply(t, log, clientLog, 1)
	})
}

// expectUDPReply checks that socksify's log shows the SOCKS5 server's
// reply code want to its UDP ASSOCIATE (dante's client logs
// "socks_recvresponse(): received response from server: VER: 5 REP: 7 ...").
func expectUDPReply(t *testing.T, log *daemonLog, clientLog string, want int) {
	t.Helper()
	line := fmt.Sprintf("received response from server: VER: 5 REP: %d ", want)
	if strings.Contains(clientLog, line) {
		return
	}
	var lines []string
	for _, l := range strings.Split(clientLog, "\n") {
		if strings.Contains(l, "socks_recvresponse") || strings.Contains(l, "premature") || strings.Contains(l, "serverreplyisok") {
			lines = append(lines, l)
		}
	}
	log.Errorf(t, "socksify did not get the reply %d to its UDP ASSOCIATE (want %q in its log); what it says:\n%s", want, line, strings.Join(lines, "\n"))
}

// TestTwoHops: tungate -> danted -> microsocks -> server.
func TestTwoHops(t *testing.T) {
	w := newWorld(t)
	d := startUpstreamWorld(t, w, "1080", "", true)
	proxy := d.Addr

	t.Run("curl --socks5 IPv4", func(t *testing.T) {
		log := watch(t, d.Process, w.danted, w.microsocks)
		dmark := w.danted.Mark()
		id := testID(t)
		w.fetch(t, log, url(serverV4, "/file.bin", id), "--socks5", proxy)
		// The server sees microsocks, danted saw a CONNECT to microsocks.
		w.checkPeers(t, log, id, up2V4)
		if want := up2V4 + "." + socksPort; !danteLogHas(w.danted, dmark, want) {
			log.Errorf(t, "danted's log has no connection to microsocks (%s)", want)
		}
	})
	t.Run("curl --socks5 IPv6", func(t *testing.T) {
		log := watch(t, d.Process, w.danted, w.microsocks)
		id := testID(t)
		w.fetch(t, log, url(serverV6, "/file.bin", id), "--socks5", proxy)
		w.checkPeers(t, log, id, up2V6)
	})
	t.Run("curl --socks5-hostname", func(t *testing.T) {
		log := watch(t, d.Process, w.danted, w.microsocks)
		id := testID(t)
		w.fetch(t, log, url(nameV4, "/file.bin", id), "--socks5-hostname", proxy)
		w.checkPeers(t, log, id, up2V4)
	})
	t.Run("closed port: microsocks' reply passes through two hops", func(t *testing.T) {
		log := watch(t, d.Process, w.danted, w.microsocks)
		w.expectReply(t, log, net.JoinHostPort(serverV4, closedPort), 5, "--socks5", proxy)
	})
	t.Run("UDP ASSOCIATE: microsocks' command not supported (7) passes through", func(t *testing.T) {
		// microsocks has no UDP: the last hop's X'07' must reach the client.
		log := watch(t, d.Process, w.danted, w.microsocks)
		conf := writeSocksConf(t, d.Host, d.Port, "none")
		got, clientLog, err := udpExchange(t, w.client, conf, "", "", net.JoinHostPort(serverV4, echoPort), []byte("must-not-arrive"))
		if err == nil {
			log.Fatalf(t, "a datagram came back (%q) through a chain whose last hop has no UDP", got)
		}
		expectUDPReply(t, log, clientLog, 7)
	})
	t.Run("no route behind microsocks: its reply passes through", func(t *testing.T) {
		// up2's default route leads to gw, which has no route to
		// 198.18.200.0/24 and answers with ICMP net unreachable; microsocks
		// 1.0.3 reports its connect error as a reply code, tungate passes
		// it on unchanged.
		log := watch(t, d.Process, w.danted, w.microsocks)
		w.expectReply(t, log, net.JoinHostPort(noRouteV4, httpPort), 3, "--socks5", proxy)
	})
}

// TestUpstreamWarm: tungate keeps connections to its chain greeted and
// ready. Through danted (username auth) then microsocks, a run of curls
// uses them, each request still reaches the server once, a refusal still
// passes through, and they outlive danted's timeout.negotiate (10 s), since
// danted is relaying to microsocks by then. Through danted alone, the ready
// connections danted closes at that timeout are found closed, not used.
func TestUpstreamWarm(t *testing.T) {
	w := newWorld(t)
	w.startDanted()
	w.startMicrosocks()
	danted := "socks5://" + w.danteUser + ":" + w.dantePass + "@" + net.JoinHostPort(up1V4, socksPort)
	warm := []string{"--socks-auth=false", "--proxy-warm", "2", "--proxy-warm-idle", "30s"}
	chain := w.startTungate(t, gwV4+":1086", append(warm, "--proxy", danted, "--proxy", "socks5://"+net.JoinHostPort(up2V4, socksPort))...)
	single := w.startTungate(t, gwV4+":1087", append(warm, "--proxy", danted)...)
	log := watch(t, chain.Process, single.Process, w.danted, w.microsocks)
	fetch := func(d *daemon, peer, tag string) {
		t.Helper()
		id := testID(t) + "-" + tag
		w.fetch(t, log, url(serverV4, "/file.bin", id), "--socks5", d.Addr)
		w.checkPeers(t, log, id, peer)
	}
	const runs = 8
	for i := range runs {
		fetch(chain, up2V4, fmt.Sprint(i))
	}
	w.expectReply(t, log, net.JoinHostPort(serverV4, closedPort), 5, "--socks5", chain.Addr)
	fetch(single, up1V4, "single-1")
	fetch(single, up1V4, "single-2")
	time.Sleep(11 * time.Second) // past danted's timeout.negotiate
	fetch(chain, up2V4, "after")
	fetch(single, up1V4, "single-after")

	counts := func(d *daemon) (hits, misses, stale, retried, failed int) {
		t.Helper()
		d.Stop()
		m := warmStatsRE.FindStringSubmatch(d.Output())
		if m == nil {
			log.Fatalf(t, "tungate %s: its log has no line with the ready connections' counts (%s)", d.Addr, warmStatsRE)
		}
		n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
		return n(1), n(2), n(3), n(4), n(5)
	}
	hits, misses, stale, retried, failed := counts(chain)
	if hits+misses != runs+2 || hits < runs/2 || stale != 0 || retried != 0 || failed != 0 {
		log.Errorf(t, "chain, %d dials: hits=%d misses=%d stale=%d retried=%d failed=%d; want most on ready connections, none stale, retried or failed",
			runs+2, hits, misses, stale, retried, failed)
	}
	hits, misses, stale, retried, failed = counts(single)
	if hits != 0 || misses != 3 || stale < 1 || retried != 0 || failed != 0 {
		log.Errorf(t, "danted alone, 3 dials: hits=%d misses=%d stale=%d retried=%d failed=%d; want the ready ones found stale after danted's timeout, no retry",
			hits, misses, stale, retried, failed)
	}
}

var warmStatsRE = regexp.MustCompile(`upstream ready connections" hits=(\d+) misses=(\d+) stale=(\d+) retried=(\d+) failed=(\d+)`)

// TestConfigFile: the same settings from --config YAML.
func TestConfigFile(t *testing.T) {
	w := newWorld(t)
	w.startDanted()
	conf := filepath.Join(w.dir, "tungate.yaml")
	writeFile(t, conf, fmt.Sprintf(`# tungate e2e
socks: "%s:1085"
socks-auth: false
log-level: debug
proxy:
  - socks5://%s:%s@%s
`, gwV4, w.danteUser, w.dantePass, net.JoinHostPort(up1V4, socksPort)))
	cmd := w.gw.Command(ctxT(t, time.Minute), tungateBin, "--config", conf)
	cmd.Env = cleanEnv()
	p := w.gw.StartCmd(t, cmd)
	p.Name = "tungate"
	if err := waitSOCKS(w.client, p, gwV4+":1085", 5*time.Second); err != nil {
		t.Fatalf("tungate --config: %v\n%s", err, p.Output())
	}
	log := watch(t, p, w.danted)
	id := testID(t)
	w.fetch(t, log, url(serverV4, "/file.bin", id), "--socks5", gwV4+":1085")
	w.checkPeers(t, log, id, up1V4)
}
