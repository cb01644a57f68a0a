package socks

// UDPSocketBuffer is the kernel buffer size, each way, that GrowUDPBuffers
// asks for on a UDP relay socket.
const UDPSocketBuffer = 4 << 20

// TryWriter is implemented by packet endpoints that can send a datagram
// without blocking (an upstream association): done is false when nothing
// was sent because the socket was full; otherwise err is what WriteTo
// would have returned.
type TryWriter interface {
	TryWriteTo(b []byte, dst Addr) (n int, done bool, err error)
}

// TryWriteTo implements TryWriter: WriteTo, when hop 1's relay socket takes
// the datagram at once.
func (p *upstreamPacketConn) TryWriteTo(b []byte, dst Addr) (int, bool, error) {
	bp := getPacketBuf()
	defer putPacketBuf(bp)
	pkt, err := p.encapsulate((*bp)[:0], b, dst)
	if err != nil {
		return 0, true, err
	}
	if _, done, err := TryWriteMsgUDP(p.uc, pkt, nil, p.first); !done || err != nil {
		return 0, done, err
	}
	return len(b), true, nil
}
