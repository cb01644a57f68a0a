package udpbatch

import (
	"errors"
	"net/netip"
)

const (
	// Size is the most datagrams one batch carries.
	Size = 8
	// SlotSize is the room each datagram of a batch has: the largest
	// UDP payload over IPv4 or IPv6 (without jumbograms) fits.
	SlotSize = 65536
)

// ErrWouldBlock is TryWrite's error when the socket's buffer is full.
var ErrWouldBlock = errors.New("udpbatch: socket buffer full")

// Message is one datagram for Writer.Write: Head then Buf, as one
// datagram, to Addr, with the control messages OOB (nil for none). Head
// may be empty; it lets a caller put a header in front of a payload it
// does not copy.
type Message struct {
	Head, Buf, OOB []byte
	Addr           netip.AddrPort
}
