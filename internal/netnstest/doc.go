// Package netnstest helps tests that run real programs in Linux network
// namespaces. It needs root and iproute2's `ip netns`; everything here is
// for tests only.
//
// What it does:
//
//   - RequireRoot, RequireNetns and RequireTool skip a test, with the reason
//     and the remedy, when it cannot run here (not root, no network
//     namespaces, a program not installed).
//   - A Topology creates named network namespaces (Namespace), connects them
//     with veth pairs carrying IPv4 and IPv6 addresses (IPv6 with nodad, so
//     they are usable at once), brings lo up, adds routes and turns on
//     forwarding. Each namespace can get its own /etc/netns/NAME/hosts and
//     resolv.conf, which `ip netns exec` bind-mounts over /etc.
//   - Namespace.Exec and Namespace.Start run programs inside a namespace with
//     `ip netns exec NAME ...`. A started Process runs in its own process
//     group, its output is kept for failure messages, and it is killed by its
//     PID (group) and waited for in cleanup.
//   - Namespace.Do, Listen, ListenPacket and DialContext run Go code in a
//     namespace on a locked OS thread that is thrown away afterwards, so the
//     test process itself can serve and probe inside the topology. A socket
//     stays in the namespace it was created in, so a listener made this way
//     can be served from any goroutine.
//   - AddSystemUser creates a throw-away system account (for servers such as
//     danted that check system passwords) and deletes it in cleanup.
//
// Every name it creates (namespaces, /etc/netns directories, system users)
// carries the creating process's PID, so parallel runs do not collide, and
// New removes leftovers of runs whose process is gone (including the
// processes still running inside their namespaces, which only such a run
// can have started). Everything a test creates is removed by t.Cleanup.
//
// What it does not do: it never touches the host's own network namespace
// (links are created directly inside the test namespaces), never sets up
// NAT or connectivity to the outside, and never picks addresses: callers
// pass them, and must use only test ranges (198.18.0.0/15, 2001:db8::/32)
// or loopback. It does not install anything; scripts/install-deps does.
package netnstest
