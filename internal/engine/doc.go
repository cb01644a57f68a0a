// Package engine carries flows from the way they came in (the SOCKS5
// server, the TUN device) to the way they go out (direct, or a chain of
// upstream SOCKS5 proxies), and relays them.
//
// A flow's path: the ingress builds a FlowSpec and calls ServeTCP,
// ServeUDP or ServeBind; the engine registers the flow in its Registry,
// dials through its Outbound with the connect timeout, lets the ingress
// accept the client's side only once the outbound side is up, then relays
// and counts every byte until the flow ends. A failed dial comes back as
// an error that socks.ReplyFromError names; the ingress turns that code
// into a SOCKS5 reply, a TCP reset or an ICMP error.
//
// UDP is endpoint-independent: one outbound endpoint per association, so
// replies from any peer come back and the mapping is stable across
// destinations.
//
// A relay holds a buffer only while it copies (pooled, by size class;
// bulk flows grow theirs up to 8 times the configured size) and, where the
// client side can call back when readable (ReadNotifier), no goroutine for
// that direction while it is idle. StartTCP (the TUN side's) does not keep
// the caller's goroutine either: the outbound side is watched by one that
// never copies, so an idle connection costs one small goroutine stack.
// A client side that can lend what it has buffered (VectorReader: the
// netstack's connections) has it written to a kernel socket with one
// writev of its own buffers, without a relay buffer in between. Between
// two kernel TCP sockets (the SOCKS5 server's relays) the bytes move with
// splice(2) through a pooled pipe and never reach user space.
// Datagrams from a client side that receives them on its own goroutine
// (PacketPusher) may be sent on that goroutine, one by one or in batches,
// when the outbound socket takes them at once (MetaTryWriter,
// MetaBatchTryWriter, socks.TryWriter, socks.BatchTryWriter). Endpoints
// that read and send batches (socks.BatchReader, socks.BatchWriter: the
// SOCKS5 server's relay socket, the outbound sockets) are relayed a batch
// per system call.
//
// The engine does not parse any protocol and does not decide who may use
// it: authentication belongs to the SOCKS5 server, and routing to the TUN
// side.
package engine
