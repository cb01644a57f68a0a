// Package e2e tests the tungate daemon end to end against real programs
// (curl, proxychains4, dante's socksify and danted, microsocks, dnsmasq, dig)
// in network namespaces. It has no code of its own: everything is in its
// _test.go files. The tests need root and `ip netns`; without them, or
// without one of the programs, they skip and say why (scripts/install-deps
// installs the programs). Run them with
//
//	go test -v ./internal/e2e/
//
// TestMain builds ./cmd/tungate once (TUNGATE_E2E_BIN=/path/to/tungate
// tests a binary built elsewhere instead, for a test binary run outside the
// module). Each test builds this topology
// (namespaces named tgt-PID-N-NAME, see package netnstest), starts the peers
// it needs and one or more tungate daemons in gw, and removes all of it when
// it ends:
//
//	client  198.18.0.2/24       2001:db8:0::2/64
//	   |    curl, proxychains4, socksify dig (no route but to gw)
//	   |
//	   |    198.18.0.1/24       2001:db8:0::1/64    the SOCKS listeners
//	  gw    tungate (forwarding on; resolv.conf -> dnsmasq, hosts file)
//	   |    198.18.1.1/24       2001:db8:1::1/64
//	   |--- server  198.18.1.2/24  2001:db8:1::2/64
//	   |            HTTP :8080 (the test process), dnsmasq :53, UDP echo :7
//	   |
//	   |    198.19.0.1/24       2001:db8:190::1/64
//	   |--- up1     198.19.0.2/24  2001:db8:190::2/64
//	          |     danted :1080 (username auth, CONNECT and UDP ASSOCIATE)
//	          |     198.19.1.1/24  2001:db8:191::1/64 (forwarding on)
//	          |
//	        up2     198.19.1.2/24  2001:db8:191::2/64
//	                microsocks :1080 (reachable from up1 only by route)
//
// The tests:
//
//   - TestPeers checks the harness without tungate: client reaches nothing
//     but gw; HTTP, dnsmasq, danted (username auth, refused -> 5, blocked ->
//     2, UDP) and microsocks work on their own; socksify logs reply codes.
//   - TestDirect: tungate --socks-auth=false, no upstream. curl --socks5
//     and --socks5-hostname (names resolved by tungate through gw's
//     resolv.conf and hosts), IPv4 and IPv6 destinations and listeners,
//     1 MiB compared by sha256; proxychains4 (also with proxy_dns); UDP
//     ASSOCIATE with socksify socat (a DNS query answered by dnsmasq, an
//     echo); the reply codes curl reports for a closed port (5), no route
//     (3), no ARP answer (4) and an NXDOMAIN name (4).
//   - TestAuth: --users made by `tungate user add`; user:pass works, wrong
//     password, unknown user and no credentials are refused as curl shows,
//     proxychains4 and socksify UDP with a user; a non-loopback listener
//     without users refuses to start (exit 2).
//   - TestUpstreamDanted, TestUpstreamWrongPassword, TestTwoHops: --proxy
//     chains through danted and microsocks; the server sees the last hop;
//     danted's and microsocks' reply codes (2, 3, 5, 7) pass through, and a
//     rejected upstream password gives the client X'01', for CONNECT and
//     UDP ASSOCIATE.
//   - TestConfigFile: the same through --config YAML.
//
// UDP is checked with `socksify socat`, not dig: BIND 9.18's dig sends its
// query with a call that dante's libdsocks does not intercept, so the
// datagram reaches the relay without its SOCKS5 header (danted logs "SOCKS
// protocol error in socks udp packet"), whatever the server.
//
// The HTTP server records the peer address of every request, so a test
// knows which hop made the last connection: gw (198.18.1.1) for a direct
// tungate, up1 (198.19.0.2) through danted, up2 (198.19.1.2) through
// danted and microsocks. Addresses are from 198.18.0.0/15 and 2001:db8::/32
// only; no traffic leaves the namespaces.
package e2e
