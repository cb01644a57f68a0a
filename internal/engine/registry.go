package engine

import (
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"tungate/socks"
)

// Proto is a flow's IANA protocol number.
type Proto uint8

// Protocols a flow can carry.
const (
	ProtoICMP   Proto = 1
	ProtoTCP    Proto = 6
	ProtoUDP    Proto = 17
	ProtoICMPv6 Proto = 58
)

func (p Proto) String() string {
	switch p {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "icmpv6"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// State is where a flow is in its life.
type State uint8

// Flow states, as the admin protocol numbers them.
const (
	StateOpening     State = 0 // the outbound side is being dialed
	StateEstablished State = 1
	StateHalfClosed  State = 2 // one direction has ended
	StateClosing     State = 3
)

func (s State) String() string {
	switch s {
	case StateOpening:
		return "opening"
	case StateEstablished:
		return "established"
	case StateHalfClosed:
		return "half-closed"
	case StateClosing:
		return "closing"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Flags describe where a flow came from and went, as the admin protocol
// numbers them.
type Flags uint8

// Flow flags.
const (
	FlagTUN      Flags = 1 << 0 // came in through the TUN device
	FlagSOCKS    Flags = 1 << 1 // came in through the SOCKS5 listener
	FlagUpstream Flags = 1 << 2 // left through an upstream SOCKS5 proxy
	FlagDomain   Flags = 1 << 3 // destination given as a domain name
)

// ErrTooManyFlows is returned when the concurrent-flow limit is reached.
var ErrTooManyFlows = errors.New("engine: too many concurrent flows")

// FlowSpec describes a flow being opened.
type FlowSpec struct {
	Proto Proto
	Src   socks.Addr
	Dst   socks.Addr
	User  string
	Flags Flags
}

// Flow is one live flow: a TCP connection or a UDP association. Its
// counters are updated without locks on the data path.
type Flow struct {
	ID    uint64
	Proto Proto
	Src   socks.Addr
	User  string
	Flags Flags
	Start time.Time

	dst        atomic.Pointer[socks.Addr]
	state      atomic.Uint32
	bytesUp    atomic.Uint64
	bytesDown  atomic.Uint64
	pktsUp     atomic.Uint64
	pktsDown   atomic.Uint64
	lastActive atomic.Int64 // unix nanoseconds

	reg       *Registry
	abort     func() // ends the flow; set by its owner
	abortMu   sync.Mutex
	closeOnce sync.Once
}

// Dst returns the flow's destination; for a UDP association, the latest.
func (f *Flow) Dst() socks.Addr {
	if p := f.dst.Load(); p != nil {
		return *p
	}
	return socks.Addr{}
}

// setDst records a new destination when it differs from the current one.
func (f *Flow) setDst(a socks.Addr) {
	if p := f.dst.Load(); p == nil || *p != a {
		f.storeDst(a)
	}
}

// storeDst is setDst's slow path, apart so that only a change of
// destination allocates, not every datagram.
func (f *Flow) storeDst(a socks.Addr) { f.dst.Store(&a) }

// State returns the flow's state.
func (f *Flow) State() State { return State(f.state.Load()) }

// SetState moves the flow to s.
func (f *Flow) SetState(s State) { f.state.Store(uint32(s)) }

// AddUp counts n payload bytes in one segment or datagram from the client.
func (f *Flow) AddUp(n int) {
	f.bytesUp.Add(uint64(n))
	f.pktsUp.Add(1)
	f.reg.bytesUp.Add(uint64(n))
	f.lastActive.Store(time.Now().UnixNano())
}

// AddDown counts n payload bytes in one segment or datagram to the client.
func (f *Flow) AddDown(n int) {
	f.bytesDown.Add(uint64(n))
	f.pktsDown.Add(1)
	f.reg.bytesDown.Add(uint64(n))
	f.lastActive.Store(time.Now().UnixNano())
}

// Idle returns the time since the flow last moved a byte (or opened).
func (f *Flow) Idle(now time.Time) time.Duration {
	return now.Sub(time.Unix(0, f.lastActive.Load()))
}

// SetAbort sets the function that ends the flow from outside (an admin's
// CLOSE FLOW, or shutdown). It must be safe to call at any time and more
// than once.
func (f *Flow) SetAbort(fn func()) {
	f.abortMu.Lock()
	f.abort = fn
	f.abortMu.Unlock()
}

// Abort ends the flow through the function its owner set; it reports
// whether there was one.
func (f *Flow) Abort() bool {
	f.abortMu.Lock()
	fn := f.abort
	f.abortMu.Unlock()
	if fn == nil {
		return false
	}
	fn()
	return true
}

// Close removes the flow from the registry. It is idempotent.
func (f *Flow) Close() {
	f.closeOnce.Do(func() {
		f.SetState(StateClosing)
		f.reg.remove(f)
	})
}

// FlowInfo is a snapshot of a flow.
type FlowInfo struct {
	ID                 uint64
	Proto              Proto
	State              State
	Flags              Flags
	Src, Dst           socks.Addr
	BytesUp, BytesDown uint64
	PktsUp, PktsDown   uint64
	Age, Idle          time.Duration
	User               string
}

// Info returns a snapshot of f.
func (f *Flow) Info(now time.Time) FlowInfo {
	return FlowInfo{
		ID: f.ID, Proto: f.Proto, State: f.State(), Flags: f.Flags,
		Src: f.Src, Dst: f.Dst(),
		BytesUp: f.bytesUp.Load(), BytesDown: f.bytesDown.Load(),
		PktsUp: f.pktsUp.Load(), PktsDown: f.pktsDown.Load(),
		Age: now.Sub(f.Start), Idle: f.Idle(now),
		User: f.User,
	}
}

// Metrics is a snapshot of the engine's counters, in the order of the
// admin protocol's METRICS reply.
type Metrics struct {
	Historic, Concurrent uint64
	BytesUp, BytesDown   uint64
	PeakConcurrent       uint64
	Uptime               time.Duration
	FailedLogins         uint64
	TCPOpen, UDPOpen     uint64
	DialFailures         uint64
}

// BytesTotal is every relayed payload byte, both directions.
func (m Metrics) BytesTotal() uint64 { return m.BytesUp + m.BytesDown }

// Registry holds the live flows and the counters over all flows, SOCKS and
// TUN alike. It is safe for concurrent use.
type Registry struct {
	start    time.Time
	maxFlows func() int // 0: no limit

	nextID       atomic.Uint64
	historic     atomic.Uint64
	peak         atomic.Uint64
	bytesUp      atomic.Uint64
	bytesDown    atomic.Uint64
	failedLogins atomic.Uint64
	dialFailures atomic.Uint64

	mu     sync.Mutex
	flows  map[uint64]*Flow
	byUser map[string]int
	tcp    uint64
	udp    uint64
}

// NewRegistry returns an empty registry. maxFlows, when not nil, is asked
// at every Open for the concurrent-flow limit (0 means none).
func NewRegistry(maxFlows func() int) *Registry {
	return &Registry{
		start:    time.Now(),
		maxFlows: maxFlows,
		flows:    make(map[uint64]*Flow),
		byUser:   make(map[string]int),
	}
}

// Open registers a new flow. It fails with ErrTooManyFlows at the limit.
func (r *Registry) Open(spec FlowSpec) (*Flow, error) {
	now := time.Now()
	f := &Flow{
		Proto: spec.Proto, Src: spec.Src, User: spec.User, Flags: spec.Flags,
		Start: now, reg: r,
	}
	if spec.Dst.IsValid() {
		f.setDst(spec.Dst)
	}
	if spec.Dst.IsName() {
		f.Flags |= FlagDomain
	}
	f.lastActive.Store(now.UnixNano())

	r.mu.Lock()
	if r.maxFlows != nil {
		if limit := r.maxFlows(); limit > 0 && len(r.flows) >= limit {
			r.mu.Unlock()
			return nil, ErrTooManyFlows
		}
	}
	f.ID = r.nextID.Add(1)
	r.flows[f.ID] = f
	if f.User != "" {
		r.byUser[f.User]++
	}
	switch f.Proto {
	case ProtoTCP:
		r.tcp++
	case ProtoUDP:
		r.udp++
	}
	n := uint64(len(r.flows))
	r.mu.Unlock()

	r.historic.Add(1)
	for {
		p := r.peak.Load()
		if n <= p || r.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return f, nil
}

func (r *Registry) remove(f *Flow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.flows[f.ID]; !ok {
		return
	}
	delete(r.flows, f.ID)
	if f.User != "" {
		if r.byUser[f.User]--; r.byUser[f.User] <= 0 {
			delete(r.byUser, f.User)
		}
	}
	switch f.Proto {
	case ProtoTCP:
		r.tcp--
	case ProtoUDP:
		r.udp--
	}
}

// CountFailedLogin counts a failed SOCKS5 or admin login.
func (r *Registry) CountFailedLogin() { r.failedLogins.Add(1) }

// CountDialFailure counts an outbound dial that failed.
func (r *Registry) CountDialFailure() { r.dialFailures.Add(1) }

// Metrics returns a snapshot of the counters.
func (r *Registry) Metrics() Metrics {
	r.mu.Lock()
	concurrent, tcp, udp := uint64(len(r.flows)), r.tcp, r.udp
	r.mu.Unlock()
	return Metrics{
		Historic:       r.historic.Load(),
		Concurrent:     concurrent,
		BytesUp:        r.bytesUp.Load(),
		BytesDown:      r.bytesDown.Load(),
		PeakConcurrent: r.peak.Load(),
		Uptime:         time.Since(r.start),
		FailedLogins:   r.failedLogins.Load(),
		TCPOpen:        tcp,
		UDPOpen:        udp,
		DialFailures:   r.dialFailures.Load(),
	}
}

// UserFlows returns the number of live flows of user.
func (r *Registry) UserFlows(user string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byUser[user]
}

// Flow returns the live flow with id.
func (r *Registry) Flow(id uint64) (*Flow, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.flows[id]
	return f, ok
}

// List returns up to max flows with IDs above cursor, in ID order, the
// number of live flows, and the cursor of the next page (0 at the end).
// IDs only grow, so paging is stable while flows come and go.
func (r *Registry) List(cursor uint64, max int) (flows []FlowInfo, total int, next uint64) {
	r.mu.Lock()
	total = len(r.flows)
	ids := make([]uint64, 0, min(total, 1024))
	for id := range r.flows {
		if id > cursor {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	more := len(ids) > max
	if more {
		ids = ids[:max]
	}
	live := make([]*Flow, len(ids))
	for i, id := range ids {
		live[i] = r.flows[id]
	}
	r.mu.Unlock()

	now := time.Now()
	flows = make([]FlowInfo, len(live))
	for i, f := range live {
		flows[i] = f.Info(now)
	}
	if more && len(ids) > 0 {
		next = ids[len(ids)-1]
	}
	return flows, total, next
}
