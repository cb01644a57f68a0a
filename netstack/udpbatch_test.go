package netstack

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tungate/internal/engine"
	"tungate/socks"
)

// batchState steers the fakeBatchPCs of a fakeOut.
type batchState struct {
	mu    sync.Mutex
	calls []int // len(ds) of each TryWriteBatchMeta call
	// gate, when set, holds the next call (after closing entered) until
	// it is closed: meanwhile the test queues packets on the device.
	gate, entered chan struct{}
	// script answers the calls after the gate, one each: how many of n
	// datagrams the socket takes, and the error of the next one. Calls
	// past the script take everything.
	script []func(n int) (int, error)
}

// fakeBatchPC is a fakeTryPC that can also send batches.
type fakeBatchPC struct {
	*fakeTryPC
	st *batchState
}

func (p *fakeBatchPC) TryWriteBatchMeta(ds []socks.Datagram, metas []engine.Meta) (int, error) {
	st := p.st
	st.mu.Lock()
	st.calls = append(st.calls, len(ds))
	gate, entered := st.gate, st.entered
	st.gate = nil
	var answer func(int) (int, error)
	if gate == nil && len(st.script) > 0 {
		answer, st.script = st.script[0], st.script[1:]
	}
	st.mu.Unlock()
	if gate != nil {
		close(entered)
		<-gate
	}
	n, err := len(ds), error(nil)
	if answer != nil {
		n, err = answer(len(ds))
	}
	for i := range n {
		p.sent <- fakeDatagram{data: string(ds[i].Buf), addr: ds[i].Addr, ttl: metas[i].TTL, df: metas[i].DontFragment}
	}
	return n, err
}

// batchStack is a gateway Stack on dev, closed with the client's end of
// the link when the test ends.
func batchStack(t *testing.T, dev Device, client *pipeDevice, out *fakeOut) *Stack {
	t.Helper()
	gw, err := New(dev, engine.New(out, nil, nil), Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		gw.Close()
		client.Close()
	})
	return gw
}

// TestUDPPushBatch: datagrams that the reader delivers back to back leave
// as one batch when it finds the device idle, or as soon as a batch is
// full; what the socket did not take waits in the mapping's queue, and a
// datagram that failed is answered with its ICMP error while the rest of
// its batch goes on. Every datagram that was not refused arrives, in the
// order sent.
func TestUDPPushBatch(t *testing.T) {
	checkLeaks(t)
	st := &batchState{}
	out := &fakeOut{newPC: make(chan *fakePC, 4), try: &tryState{}, batch: st}
	gwDev, clientDev := newPipe(1500)
	gw := batchStack(t, gwDev, clientDev, out)
	src, dst := netip.AddrPortFrom(clientV4, 41000), netip.AddrPortFrom(serverV4, 9)
	msg := func(i int) string { return fmt.Sprintf("datagram %02d", i) }
	send := func(from, to int) {
		t.Helper()
		var bufs [][]byte
		for i := from; i < to; i++ {
			bufs = append(bufs, append(make([]byte, clientDev.Headroom()), udpProbe(t, src, dst, 64, msg(i))...))
		}
		if _, err := clientDev.Write(bufs, clientDev.Headroom()); err != nil {
			t.Fatal(err)
		}
	}
	var pc *fakePC
	receive := func(want ...int) {
		t.Helper()
		for _, i := range want {
			select {
			case d := <-pc.sent:
				if d.data != msg(i) {
					t.Fatalf("got %q, want %q", d.data, msg(i))
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%q did not arrive", msg(i))
			}
		}
	}
	idle := func() {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			gw.udp.mu.Lock()
			m := gw.udp.maps[src]
			gw.udp.mu.Unlock()
			if m != nil && m.pending.Load() == 0 && m.push.Load() != nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the mapping did not become idle")
			}
		}
	}
	// held sends first alone and holds its batch call while the rest are
	// queued on the device, so that the reader finds them all waiting.
	held := func(first, to int, script ...func(int) (int, error)) (calls func() []int) {
		t.Helper()
		st.mu.Lock()
		st.gate, st.entered = make(chan struct{}), make(chan struct{})
		gate, entered := st.gate, st.entered
		st.script = script
		before := len(st.calls)
		st.mu.Unlock()
		send(first, first+1)
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			t.Fatal("no batch call")
		}
		send(first+1, to)
		close(gate)
		receive(first)
		return func() []int {
			st.mu.Lock()
			defer st.mu.Unlock()
			return slices.Clone(st.calls[before:])
		}
	}

	send(0, 1) // opens the association
	select {
	case pc = <-out.newPC:
	case <-time.After(5 * time.Second):
		t.Fatal("no association opened")
	}
	receive(0)
	idle()

	// 1 + 23: the held one, then full batches of 8 as the reader reads
	// them (the device returns up to 8 at a time); the socket takes only
	// 5 of the first 8, and the other 3 go through the relay's queue, with
	// all that comes behind them while they wait.
	calls := held(1, 25, func(n int) (int, error) { return min(n, 5), nil })
	var rest []int
	for i := 2; i < 25; i++ {
		rest = append(rest, i)
	}
	receive(rest...)
	if calls := calls(); len(calls) < 2 || calls[0] != 1 || calls[1] != socks.MaxBatch {
		t.Errorf("batch calls %v, want 1, then %d", calls, socks.MaxBatch)
	}
	idle()

	// 1 + 4: the socket takes one of the 4, refuses the next with port
	// unreachable (for the client, as ICMP), then takes the 2 after it.
	refused := func(n int) (int, error) {
		return 1, &engine.PacketError{Dst: socks.AddrFromAddrPort(dst), Type: 3, Code: 3, Offender: serverV4, Payload: []byte(msg(27))}
	}
	calls = held(25, 30, refused)
	receive(26, 28, 29)
	if calls := calls(); !slices.Equal(calls, []int{1, 4, 2}) {
		t.Errorf("batch calls %v, want [1 4 2]", calls)
	}
	ans := nextPacket(t, clientDev.in)
	if icmp := ans[20:]; icmp[0] != 3 || icmp[1] != 3 {
		t.Errorf("answer to the refused datagram: ICMP type %d code %d, want 3/3", icmp[0], icmp[1])
	}
	select {
	case d := <-pc.sent:
		t.Errorf("unexpected %q", d.data)
	case <-time.After(50 * time.Millisecond):
	}
}

// readv copies f into head, then what does not fit into tail, as the
// system call does.
func readv(head, tail, f []byte) int {
	n := copy(head, f)
	return n + copy(tail, f[n:])
}

// busyVnetDev is a pipeDevice whose reads go through ReadVnetIdle: frames
// the test queues on frames, and a call of idle whenever none is waiting,
// unless busy says to behave as a device that never runs dry.
type busyVnetDev struct {
	*pipeDevice
	frames chan []byte
	wake   chan struct{}
	busy   atomic.Bool
}

func (d *busyVnetDev) VnetHdr() bool                { return true }
func (d *busyVnetDev) ReadVnet([]byte) (int, error) { panic("ReadVnetIdle is there") }

func (d *busyVnetDev) ReadVnetIdle(head, tail []byte, idle func()) (int, error) {
	for {
		select {
		case f := <-d.frames:
			return readv(head, tail, f), nil
		default:
		}
		if !d.busy.Load() {
			idle()
		}
		select {
		case f := <-d.frames:
			return readv(head, tail, f), nil
		case <-d.wake:
		case <-d.closed:
			return 0, os.ErrClosed
		}
	}
}

// TestUDPBatchBusyDevice: on a device that never runs dry, datagrams
// waiting in batches still leave every idleEveryFrames frames, and the
// rest once the device is idle.
func TestUDPBatchBusyDevice(t *testing.T) {
	checkLeaks(t)
	const flows = idleEveryFrames + 8 // one datagram each: no batch fills
	out := &fakeOut{newPC: make(chan *fakePC, flows), try: &tryState{}, batch: &batchState{}}
	pipe, clientDev := newPipe(1500)
	dev := &busyVnetDev{pipeDevice: pipe, frames: make(chan []byte, 2*flows), wake: make(chan struct{})}
	gw := batchStack(t, dev, clientDev, out)
	dst := netip.AddrPortFrom(serverV4, 9)
	frame := func(port uint16, msg string) []byte {
		return append(make([]byte, vnetHdrLen), udpProbe(t, netip.AddrPortFrom(clientV4, port), dst, 64, msg)...)
	}
	// Each flow's first datagram opens its association.
	var pcs []*fakePC
	for i := range flows {
		dev.frames <- frame(uint16(42000+i), "open")
	}
	for range flows {
		select {
		case pc := <-out.newPC:
			pcs = append(pcs, pc)
		case <-time.After(5 * time.Second):
			t.Fatal("associations did not open")
		}
	}
	sent := func() int {
		n := 0
		for _, pc := range pcs {
			n += len(pc.sent)
		}
		return n
	}
	for deadline := time.Now().Add(5 * time.Second); sent() < flows; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d opening datagrams arrived", sent(), flows)
		}
	}
	for _, pc := range pcs {
		<-pc.sent
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		idle := true
		gw.udp.mu.Lock()
		for _, m := range gw.udp.maps {
			idle = idle && m.pending.Load() == 0 && m.push.Load() != nil
		}
		gw.udp.mu.Unlock()
		if idle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the mappings did not become idle")
		}
	}

	// Now a busy device: the first idleEveryFrames datagrams leave
	// without the device running dry, the last 8 wait.
	dev.busy.Store(true)
	dev.wake <- struct{}{} // the reader is waiting: let it see busy
	for i := range flows {
		dev.frames <- frame(uint16(42000+i), "busy")
	}
	for deadline := time.Now().Add(5 * time.Second); sent() < idleEveryFrames; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d datagrams left while the device was busy, want %d", sent(), idleEveryFrames)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if n := sent(); n != idleEveryFrames {
		t.Fatalf("%d datagrams left while the device was busy, want %d", n, idleEveryFrames)
	}
	dev.busy.Store(false)
	dev.wake <- struct{}{}
	for deadline := time.Now().Add(5 * time.Second); sent() < flows; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d datagrams left once the device was idle", sent(), flows)
		}
	}
}

// usoPipe is a pipeDevice that takes virtio-net frames, UDP super-packets
// included, and keeps each write.
type usoPipe struct {
	*pipeDevice
	mu     sync.Mutex
	writes [][][]byte
	refuse bool // refuse super-packets with EINVAL, as a kernel without USO would
}

func (d *usoPipe) VnetHdr() bool { return true }
func (d *usoPipe) USO() bool     { return true }
func (d *usoPipe) WriteVnet(frames [][]byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var w [][]byte
	defer func() { d.writes = append(d.writes, w) }()
	for i, f := range frames {
		if d.refuse && f[vnetGSOTypeOff] == vnetGSOUDPL4 {
			return i, fmt.Errorf("tun: write: %w", syscall.EINVAL)
		}
		w = append(w, slices.Clone(f))
	}
	return len(frames), nil
}

// usoMapping is the mapping of client 198.18.0.2:40000 on a link over
// dev, with no stack around it: enough for WriteBatch.
func usoMapping(dev *usoPipe) *udpMapping {
	return &udpMapping{
		u:      &udpMapper{s: &Stack{link: newLink(dev)}},
		client: netip.AddrPortFrom(clientV4, 40000),
		closed: make(chan struct{}),
	}
}

// TestUDPWriteBatchUSO: datagrams to the client leave as one device write
// per batch, consecutive ones from one peer of one size as one UDP
// super-packet; a datagram that cannot be written ends the batch there.
func TestUDPWriteBatchUSO(t *testing.T) {
	pipe, _ := newPipe(1500)
	dev := &usoPipe{pipeDevice: pipe}
	m := usoMapping(dev)
	a := socks.AddrFromAddrPort(netip.AddrPortFrom(serverV4, 9))
	b := socks.AddrFromAddrPort(netip.AddrPortFrom(serverV4, 10))
	d := func(from socks.Addr, size int) socks.Datagram { return socks.Datagram{Buf: pattern(size), Addr: from} }
	// From a: three of one size and a shorter one (one super-packet),
	// then another; two from b; an empty one from a.
	ds := []socks.Datagram{d(a, 500), d(a, 500), d(a, 500), d(a, 200), d(a, 500), d(b, 500), d(b, 500), d(a, 0)}
	if n, err := m.WriteBatch(ds); n != len(ds) || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(ds))
	}
	if len(dev.writes) != 1 {
		t.Fatalf("%d device writes, want 1", len(dev.writes))
	}
	// Frames: a x4 (the 200 ends the run), a x1, b x2, a's empty one.
	type want struct {
		segs, gso int
		from      uint16
	}
	wants := []want{{4, 500, 9}, {1, 0, 9}, {2, 500, 10}, {1, 0, 9}}
	frames := dev.writes[0]
	if len(frames) != len(wants) {
		t.Fatalf("%d frames, want %d", len(frames), len(wants))
	}
	for i, w := range wants {
		f := frames[i]
		h, pkt := f[:vnetHdrLen], f[vnetHdrLen:]
		u := header.UDP(pkt[header.IPv4MinimumSize:])
		gso := int(binary.LittleEndian.Uint16(h[vnetGSOSizeOff:]))
		if (w.segs > 1) != (h[vnetGSOTypeOff] == vnetGSOUDPL4) || gso != w.gso || u.SourcePort() != w.from || u.DestinationPort() != 40000 {
			t.Errorf("frame %d: GSO type %d size %d, ports %d -> %d; want %d datagrams of %d from %d", i, h[vnetGSOTypeOff], gso, u.SourcePort(), u.DestinationPort(), w.segs, w.gso, w.from)
		}
	}
	// An IPv6 peer cannot reach an IPv4 client: the batch stops there.
	v6 := socks.AddrFromAddrPort(netip.AddrPortFrom(serverV6, 9))
	if n, err := m.WriteBatch([]socks.Datagram{d(a, 100), d(v6, 100), d(a, 100)}); n != 1 || err == nil {
		t.Errorf("WriteBatch with an IPv6 peer second = %d, %v; want 1 and an error", n, err)
	}
	m.Close()
	if _, err := m.WriteBatch(ds); err == nil {
		t.Error("WriteBatch on a closed mapping succeeded")
	}
}

// TestUDPWriteBatchUSORefused: a device that refuses UDP super-packets
// gets the datagrams one per packet, from the refused one on, in order,
// and no super-packet again.
func TestUDPWriteBatchUSORefused(t *testing.T) {
	pipe, client := newPipe(1500)
	dev := &usoPipe{pipeDevice: pipe, refuse: true}
	m := usoMapping(dev)
	a := socks.AddrFromAddrPort(netip.AddrPortFrom(serverV4, 9))
	b := socks.AddrFromAddrPort(netip.AddrPortFrom(serverV4, 10))
	// b's one is a frame of its own (written), a's three a super-packet
	// (refused), then b's two.
	sizes := []int{100, 300, 300, 300, 200, 200}
	from := []socks.Addr{b, a, a, a, b, b}
	var ds []socks.Datagram
	for i := range sizes {
		ds = append(ds, socks.Datagram{Buf: pattern(sizes[i]), Addr: from[i]})
	}
	if n, err := m.WriteBatch(ds); n != len(ds) || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(ds))
	}
	if !m.u.s.link.usoRefused.Load() {
		t.Error("the refusal was not noted")
	}
	if len(dev.writes) != 1 || len(dev.writes[0]) != 1 {
		t.Fatalf("frames written %v, want one write of b's first datagram", len(dev.writes))
	}
	for i := 1; i < len(ds); i++ {
		p := nextPacket(t, client.in)
		u := header.UDP(p[header.IPv4MinimumSize:])
		if want := from[i].Port; u.SourcePort() != want || len(u.Payload()) != sizes[i] {
			t.Errorf("packet %d: %d bytes from port %d, want %d from %d", i, len(u.Payload()), u.SourcePort(), sizes[i], want)
		}
	}
	if n, err := m.WriteBatch(ds[1:4]); n != 3 || err != nil {
		t.Fatalf("WriteBatch after the refusal = %d, %v", n, err)
	}
	if len(dev.writes) != 1 {
		t.Errorf("%d device frame writes after the refusal, want none", len(dev.writes)-1)
	}
	for range 3 {
		nextPacket(t, client.in)
	}
}
