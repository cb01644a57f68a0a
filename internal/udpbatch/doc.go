// Package udpbatch moves several datagrams through one UDP socket with one
// system call: recvmmsg(2) to read, sendmmsg(2) to send. A relay that
// forwards a burst pays the system call's fixed cost once per batch
// instead of once per datagram.
//
// A Reader holds one buffer of SlotSize bytes (pooled) from its first Read
// until a Read fails (as it does once the socket is closed), and the rest
// of a batch's buffers only while its socket is busy:
// a Read that finds datagrams already queued marks the socket busy and
// the next Read asks for a whole batch; the first Read that finds the
// socket empty gives the extra buffers back before it waits. A socket
// that carries a datagram now and then is read one datagram at a time,
// as by net.UDPConn, and holds no more memory than it would.
//
// A Writer sends consecutive datagrams of one size to one destination as
// one UDP GSO send (UDP_SEGMENT), so the kernel routes and forwards them
// as one packet and cuts it into datagrams only at the device or at the
// receiving socket; where the path cannot take that, it sends them one by
// one, still with one sendmmsg for the batch.
//
// Every buffer has room for the largest UDP datagram, so nothing is
// truncated. Readers and Writers are not safe for concurrent use: one
// goroutine reads, one writes. The package knows nothing of SOCKS5 or of
// what the datagrams carry; on systems without the batch calls it moves
// one datagram per call.
package udpbatch
