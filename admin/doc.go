// Package admin is tungate's admin and metrics protocol over SCTP
// (docs/admin-protocol.md): the wire codec, the server that answers it
// from the engine's counters, flow registry and settings and from the user
// store, the SCTP transport, and the client that tungatectl uses.
//
// The package has three layers, each usable without the next:
//
//   - The codec (proto.go, data.go) encodes and decodes every message of
//     the protocol: ParseX decodes from a byte slice and returns how much
//     it took, ReadX reads one message from a stream with io.ReadFull
//     (exactly its octets, so the stream may be unbuffered), AppendX
//     encodes. Every length is checked before a slice is taken. The codec
//     does no other I/O and never logs.
//   - The server (server.go, session.go) serves any net.Listener: an SCTP
//     listener in the daemon, an in-memory one in tests. It enforces the
//     protocol's limits: a login timeout, an idle timeout per session, a
//     write timeout per reply, a maximum number of sessions, and a failed
//     login backoff per peer address. Secrets are compared by the user
//     store, in constant time; replies never tell an unknown user from a
//     wrong password. Only admins log in, and a session ends as soon as its
//     admin is deleted or demoted.
//   - The transport (sctp_linux.go) opens one-to-one style SCTP sockets
//     with github.com/ishidawataru/sctp's bindx (several local addresses on
//     one socket: multi-homing) and hands them to the Go runtime's network
//     poller through net.FileListener and net.FileConn, so that Accept and
//     Read are interrupted by Close and honor deadlines. (The library's own
//     SCTPListener and SCTPConn block in system calls: they have no
//     deadlines and cannot be woken by Close.) Where the kernel has no SCTP,
//     ListenSCTP and DialSCTP fail with an error wrapping ErrNoSCTP that
//     says to load the sctp module.
//
// The client (client.go) speaks the protocol over any net.Conn, one
// request at a time or pipelined (Send and Receive).
//
// What the package does not do: it has no TLS or other encryption (the
// default listener is on loopback; SCTP carries the password in clear as
// the contract says), no per-admin permissions (every admin may do
// everything), no audit trail beyond log lines, and it keeps no metrics of
// its own across restarts.
package admin
