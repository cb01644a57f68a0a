// Package netstack terminates the TCP and UDP traffic that a TUN device
// carries, for any destination, in a gVisor network stack, and hands each
// connection and each UDP mapping to the engine as a flow.
//
// The path of a packet: the link endpoint (link.go) reads batches of IP
// packets from the Device and delivers them to gVisor; a TCP SYN reaches
// the forwarder (tcp.go), which holds it while the engine dials and
// completes the handshake only once the outbound side is connected; UDP
// datagrams bypass gVisor's sockets and go to the mapper (udp.go), which
// keeps one engine association per client endpoint (endpoint-independent
// mapping) and writes replies as IP packets it builds (packet.go).
//
// This is the only package that sees gVisor types. It does not configure
// the device, addresses or routes (package tun does), and it does not
// decide where flows go (package engine does).
package netstack
