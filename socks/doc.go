// Package socks speaks SOCKS Protocol Version 5 (RFC 1928) with
// username/password authentication (RFC 1929): the wire format, a server
// and an upstream client that chains through any number of proxies.
//
// The codec (addr.go, wire.go) has no I/O of its own beyond io.Reader:
// ParseX decodes from a byte slice, ReadX from a stream with io.ReadFull,
// AppendX encodes. It never logs.
//
// Every failure that a SOCKS5 peer could be told about carries a Reply
// (errors.go): ReplyFromError is the single mapping from socket errors to
// reply codes, and ReplyError keeps the code an upstream proxy sent so that
// it passes through a chain, and to the TUN side, unchanged.
//
// The server (server.go) handles the protocol: methods, authentication,
// requests and the UDP relay's encapsulation. What a request does (dialing,
// relaying, accounting) is the job of its Handler; in tungate that is the
// engine. The Dialer (dialer.go) is the client side.
//
// Not supported: GSSAPI (RFC 1961) and UDP fragmentation (RFC 1928 section
// 7 lets an implementation drop fragments, and this one does).
package socks
