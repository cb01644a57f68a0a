// Package tun creates and configures the TUN device that feeds the
// gateway's netstack, and the host routing (--auto-route) that sends
// traffic into it. Linux only; elsewhere every operation fails with a
// clear error. Errors start with "tun: " and wrap their cause.
//
// # The device
//
// Open creates a TUN device (default tun0, MTU 1500) with
// golang.zx2c4.com/wireguard/tun and configures it with netlink: MTU
// (576..65535, at least 1280 when an IPv6 address is configured), any
// number of IPv4 and IPv6 addresses (IPv6 with nodad, usable at once),
// link up. It asks for IFF_VNET_HDR and the TCP (TSO) and UDP (USO, Linux
// 6.2+) offloads, so one Read can return a whole TSO/USO super-packet split
// into up to 128 packets and Write coalesces packets of one flow (GRO);
// when the kernel refuses IFF_VNET_HDR or the offloads, Open falls back to
// a plain device (one packet per call). Device.Offloads says which, for
// the log.
//
// Read and Write follow wireguard's tun.Device. Callers pass
// offset = Device.Headroom() (10 bytes for the virtio-net header with
// offloads, 0 without; MaxHeadroom always works), leave that much room in
// front of each packet, give Read Device.BatchSize() buffers of at least
// offset+MTU bytes, and must expect Write to modify its buffers.
//
// Open can instead adopt a descriptor someone else opened (Config.FD, for
// --tun-fd from a VM manager or a parent process). Then it changes no
// address and no MTU unless asked, brings the link up if it is down, and
// Close closes the descriptor but does not delete the device (it removes
// only the addresses Open added). Likewise an existing persistent TUN
// device of the given name is attached to, not recreated, and kept. A
// device Open created is removed by Close.
//
// # Routing (--auto-route)
//
// InstallRoutes sends all traffic (0.0.0.0/0 and ::/0), or only the given
// prefixes, into the device, except excluded prefixes, with a routing
// table of its own (T, default 2080) and policy rules starting at
// priority P (default 2080). The gateway's own outbound sockets carry the
// socket mark M (SO_MARK, default 0x2080; see MarkControl). Per address
// family that has routes, with the routes R_0..R_n-1 sorted most
// specific first, the rules are:
//
//	P          fwmark M/M lookup main                         the gateway's own sockets: never the TUN
//	P+1+2i     to R_i lookup main suppress_prefixlength len(R_i)   a more specific main route wins
//	P+2+2i     to R_i fwmark 0/M lookup T                     otherwise: into table T
//
// and table T holds
//
//	R_i dev <tun> proto 208                                   one per route
//	throw X proto 208                                         one per exclude X
//
// With the default routes this is the familiar set:
//
//	2080: from all fwmark 0x2080/0x2080 lookup main
//	2081: from all lookup main suppress_prefixlength 0
//	2082: from all fwmark 0/0x2080 lookup 2080
//	table 2080: default dev tun0
//
// What it means:
//
//   - Loop avoidance: packets of the gateway's own sockets (mark M) look up
//     main at P. They can never reach table T, even when main has no route
//     for them, because the rules into T match only packets without the
//     mark (fwmark 0/M): they fall through to the main and default tables
//     and fail as they would without tungate.
//   - Local and LAN routes keep working: main is consulted first for each
//     route R, and wins when it has a route strictly more specific than R
//     (connected subnets, routes of other VPNs, docker bridges). Only
//     main's less specific routes are overridden (for the default routes,
//     exactly main's default route). This is longest-prefix match across
//     the two tables, with ties going to the TUN; that is why each --route
//     gets its own pair of rules, most specific first, instead of one
//     "suppress_prefixlength 0" rule: with --route 198.18.5.0/24 and a LAN
//     route 198.18.0.0/15 in main, the narrower --route wins, while a main
//     route 198.18.5.128/25 still wins over it. Local addresses are
//     handled earlier, by the local table (priority 0).
//   - Excludes are throw routes in T: a lookup that hits one continues
//     with the rules after, down to main, exactly as if tungate were not
//     there. An exclude wins over any less specific route; a route may not
//     lie inside an exclude (InstallRoutes refuses).
//   - Everything carries protocol 208 (RouteProtocol; `ip rule` and
//     `ip route show table all proto 208` show it), and removal only
//     matches entries with it. InstallRoutes refuses a non-empty table T
//     or another rule within its priorities or using T.
//
// Why a mark and not SO_BINDTODEVICE for the gateway's own sockets: the
// mark works the same for direct connections and for the upstream SOCKS5
// proxies, needs no knowledge of the egress interface (binding to a device
// needs it, and the right one depends on the destination: LAN, VPN,
// default route), keeps the kernel's normal route and source address
// selection in main, and survives interface changes (DHCP renewal, Wi-Fi
// roaming, a new default route) without rebinding anything.
//
// Sysctls. When IPv4 is routed and strict reverse-path filtering
// (rp_filter 1) is in effect on any interface, net.ipv4.conf.all.rp_filter
// is set to 2 (loose): replies to the gateway's own connections arrive
// unmarked, their reverse path resolves to the TUN, and strict mode would
// drop them. With Router (traffic forwarded from a LAN whose default
// route points at this host), net.ipv4.ip_forward and
// net.ipv6.conf.all.forwarding are set to 1 (which also makes Linux ignore
// router advertisements unless accept_ra is 2) and the TUN device's
// rp_filter to 2, so that packets the netstack emits from addresses not
// routed into the TUN (ICMP errors, excluded prefixes) are not dropped.
// When IPv4 is routed, the TUN device's accept_local is set to 1: the
// gateway answers a TTL that ends at its hop from its own TUN address, a
// local address, which the kernel would otherwise drop as martian.
// The old values are recorded and restored by Close and CleanupStale,
// unless the value was changed again meanwhile. Sysctls are per network
// namespace: they are read and written in the namespace of the thread that
// called InstallRoutes, wherever Close is called from.
//
// # Cleanup and the state file
//
// Close removes exactly what was installed, in reverse order (rules,
// routes, then sysctls), so that `ip rule`, `ip -6 rule` and
// `ip route show table all` (v4 and v6) are as before. The caller calls
// it on exit and on SIGTERM/SIGINT. For a crash (SIGKILL), InstallRoutes
// first records everything it is about to install in
// <StateDir>/<device>.routes.json (default /run/tungate/tun0.routes.json),
// written atomically (temporary file, fsync, rename) with "complete":
// false, and rewrites it with "complete": true afterwards; Close deletes
// it. CleanupStale (and InstallRoutes itself, for its device) removes
// whatever of a dead owner's file is still there and deletes the file;
// it refuses while the owner (PID and start time) still runs. A state
// file from before a reboot (another boot_id) is simply deleted: nothing
// it lists can still be installed. A state
// file looks like this:
//
//	{
//	  "version": 1,
//	  "device": "tun0",
//	  "pid": 4242,
//	  "pid_start": 81234567,
//	  "boot_id": "0f7c5a52-3b1e-4be5-9a0e-7d0bb6a1c2d3",
//	  "netns": "net:[4026531840]",
//	  "complete": true,
//	  "table": 2080,
//	  "fwmark": 8320,
//	  "priority": 2080,
//	  "protocol": 208,
//	  "rules": [
//	    {"family": "inet", "priority": 2080, "fwmark": 8320, "fwmask": 8320, "table": 254,
//	     "desc": "2080: from all fwmark 0x2080/0x2080 lookup main proto 208"},
//	    {"family": "inet", "priority": 2081, "to": "0.0.0.0/0", "table": 254, "suppress_prefixlength": 0,
//	     "desc": "2081: from all lookup main suppress_prefixlength 0 proto 208"},
//	    {"family": "inet", "priority": 2082, "to": "0.0.0.0/0", "fwmask": 8320, "table": 2080,
//	     "desc": "2082: from all fwmark 0/0x2080 lookup 2080 proto 208"},
//	    ... the same for "inet6"
//	  ],
//	  "routes": [
//	    {"family": "inet", "dst": "0.0.0.0/0", "table": 2080, "type": "unicast", "dev": "tun0", ...},
//	    {"family": "inet", "dst": "198.18.6.0/24", "table": 2080, "type": "throw", ...}
//	  ],
//	  "sysctls": [
//	    {"key": "net/ipv4/ip_forward", "old": "0", "new": "1"}
//	  ]
//	}
//
// Routes through the device vanish with the device itself when its
// process dies; the rules, the throw routes and the sysctls are what
// CleanupStale restores.
//
// # What it does not do
//
// It does not touch DNS (resolv.conf, systemd-resolved), firewalls, NAT or
// conntrack; it does not exclude the upstream proxies' addresses (the
// mark makes that unnecessary) and does not follow link changes after
// Install. IPv4 multicast and limited broadcast without an explicit
// interface follow the default route into the TUN like any other
// destination main has no specific route for. It manages one device per
// call; several instances need distinct devices, tables and priorities.
package tun
