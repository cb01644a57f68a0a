// Package netstack terminates the TCP and UDP traffic that a TUN device
// carries, for any destination, in a gVisor network stack, and hands each
// connection and each UDP mapping to the engine as a flow.
//
// The path of a packet: the link endpoint (link.go) reads IP packets from
// the Device and delivers them to gVisor. On a device with virtio-net
// headers (vnet.go) it reads each frame whole, so a TSO super-packet of up
// to 64 KiB reaches the stack as one TCP segment, and it writes the
// stack's large segments for the kernel to split (host GSO); a packet's
// headers are kept in a buffer chunk of their own, so that parsing them
// never copies the payload, and a large packet is read straight into the
// chunk the stack keeps its payload in. A TCP SYN reaches
// the forwarder (tcp.go), which holds it while the engine dials and
// completes the handshake only once the outbound side is connected; UDP
// datagrams bypass gVisor's sockets and go to the mapper (udp.go), which
// keeps one engine association per client endpoint (endpoint-independent
// mapping) and writes replies as IP packets it builds (packet.go).
//
// Three things keep the per-packet and per-connection cost low: an idle
// TCP connection holds no goroutine on its client side (tcpConn calls back
// when it has something to read, engine.ReadNotifier); what a client sends
// over TCP goes from the stack's buffers to the outbound socket with one
// writev, copied into no relay buffer (tcpConn lends them,
// engine.VectorReader); and a UDP datagram
// that finds the outbound socket ready is sent on the stack's own
// goroutine (engine.PacketPusher), with no hand-off, strictly after any
// datagram queued before it. Datagrams the reader takes from the device
// back to back wait in a batch per association until the device has
// nothing more (the link's idle hook) and leave with one system call.
//
// This is the only package that sees gVisor types. It does not configure
// the device, addresses or routes (package tun does), and it does not
// decide where flows go (package engine does).
package netstack
