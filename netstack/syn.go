package netstack

import (
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// synKeep is how long a SYN no handler took may stay in the table: past
// the longest dial, so only SYNs the forwarder dropped age out.
const synKeep = 2 * time.Minute

// synTable keeps the SYN that opened each held connection, so that an ICMP
// error about it can quote it: a client's kernel matches an ICMP error to
// its socket by the quoted ports and sequence number.
type synTable struct {
	mu  sync.Mutex
	m   map[stack.TransportEndpointID]synRecord
	max int
}

type synRecord struct {
	pkt []byte // the IP packet, from its IP header
	at  time.Time
}

func newSynTable(max int) *synTable {
	return &synTable{m: make(map[stack.TransportEndpointID]synRecord), max: max}
}

// remember records pkt if it is a SYN for a connection not yet recorded.
func (t *synTable) remember(id stack.TransportEndpointID, pkt *stack.PacketBuffer) {
	th := header.TCP(pkt.TransportHeader().Slice())
	if len(th) < header.TCPMinimumSize || th.Flags()&(header.TCPFlagSyn|header.TCPFlagAck) != header.TCPFlagSyn {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.m[id]; ok {
		return // a retransmission: the first SYN is the one held
	}
	now := time.Now()
	if len(t.m) >= t.max {
		for k, r := range t.m {
			if now.Sub(r.at) > synKeep {
				delete(t.m, k)
			}
		}
		if len(t.m) >= t.max {
			return
		}
	}
	v := stack.PayloadSince(pkt.NetworkHeader())
	t.m[id] = synRecord{pkt: append([]byte(nil), v.AsSlice()...), at: now}
	v.Release()
}

// take removes and returns the SYN recorded for id, or nil.
func (t *synTable) take(id stack.TransportEndpointID) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.m[id]
	delete(t.m, id)
	return r.pkt
}
