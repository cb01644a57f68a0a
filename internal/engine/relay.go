package engine

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tungate/internal/stackgrow"
	"tungate/socks"
)

// relayTCP copies both directions between client and up until both end.
// An EOF in one direction is passed on as a half-close (FIN); a reset is
// passed on as a reset. Any other failure, ctx ending, the idle timeout or
// an admin's CLOSE FLOW aborts both. The direction from up to the client
// runs on the calling goroutine; the other as startRelay says.
func (e *Engine) relayTCP(ctx context.Context, f *Flow, client, up net.Conn) {
	r := e.startRelay(ctx, f, client, up)
	r.downward.run()
	r.end()
}

// startDetachedTCP relays like relayTCP without the caller's goroutine:
// the direction from up runs on a watcher goroutine that only waits for up
// to be readable and hands the copying to a goroutine of its own each
// time, so that the goroutine a held, idle connection keeps has a small
// stack (the copying path through the netstack runs deep). ended is
// called when the relay has ended.
func (e *Engine) startDetachedTCP(ctx context.Context, f *Flow, client, up net.Conn, ended func()) {
	r := e.startRelay(ctx, f, client, up)
	go func() {
		r.downward.watch()
		r.end()
		ended()
	}()
}

// tcpRelay is a TCP relay's shared state: the two directions, the abort
// that ends both, and what end undoes.
type tcpRelay struct {
	upward, downward *direction
	abort            func()
	upDone           chan struct{} // closed when the upward direction ended
	stopCtx          func() bool   // undoes the context.AfterFunc abort
	stopIdle         func()
}

// startRelay sets a relay up and starts its upward direction. The
// downward one is the caller's to run; end waits for the upward one.
//
// The upward direction runs on a goroutine of its own, except where the
// client can call back when it has something to read (ReadNotifier, the
// netstack's connections): then that direction holds no goroutine while
// it is idle, only while there is something to copy.
func (e *Engine) startRelay(ctx context.Context, f *Flow, client, up net.Conn) *tcpRelay {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			client.Close()
			up.Close()
		})
	}
	f.SetAbort(abort)
	r := &tcpRelay{abort: abort, upDone: make(chan struct{})}
	r.stopCtx = context.AfterFunc(ctx, abort)
	r.stopIdle = watchIdle(f, e.settings.TCPIdleTimeout, abort)

	ended := new(atomic.Int32)
	r.upward = newDirection(e, f, up, client, true, ended, abort)
	r.downward = newDirection(e, f, client, up, false, ended, abort)
	if rn, ok := client.(ReadNotifier); ok {
		// Each callback starts one goroutine that copies until the client
		// has nothing more to read, then asks for the next callback; the
		// last one, when the direction ends, closes upDone. So exactly one
		// of them runs or is pending at any time.
		var wake func()
		wake = func() {
			if r.upward.drain(rn) {
				rn.NotifyRead(wake)
				return
			}
			close(r.upDone)
		}
		rn.NotifyRead(wake)
	} else {
		go func() {
			defer close(r.upDone)
			r.upward.run()
		}()
	}
	return r
}

// end waits for the upward direction once the downward one has ended,
// then ends the relay.
func (r *tcpRelay) end() {
	<-r.upDone
	r.abort()
	r.stopCtx()
	r.stopIdle()
}

// ReadNotifier is implemented by connections that can say, without a
// buffer and without blocking, whether a Read would block, and call back
// once it would not (the netstack's TCP connections).
type ReadNotifier interface {
	// ReadReady reports whether a Read would return at once: data, EOF
	// or an error.
	ReadReady() bool
	// NotifyRead calls fn once, on a new goroutine, when a Read would not
	// block or the connection is closed; at once if that is so already.
	NotifyRead(fn func())
}

// direction is one half of a TCP relay: it copies src to dst, counting
// what dst accepted as up or down. It takes a buffer from the pool only
// once src has something to read, and gives it back after each write, so
// that idle flows hold none.
type direction struct {
	e        *Engine
	f        *Flow
	dst, src net.Conn
	upward   bool
	ended    *atomic.Int32
	abort    func()
	lazy     lazyReader // reads src without a buffer until data is there
	// vec, when src lends its buffers and dst is a kernel socket, writes
	// them to dst without a relay buffer (nil otherwise).
	vec *vectorWriter
	// splice, when src and dst are both kernel TCP sockets, moves the
	// bytes between them in the kernel (nil otherwise).
	splice *splicer
	// size is the buffer the next read takes: it doubles after a read
	// that filled the buffer, up to relayGrowth times the configured
	// size, and halves after one that used little of it. A bulk transfer
	// moves large blocks (fewer system calls, larger segments); an
	// interactive or slow flow holds small buffers.
	size int
}

// relayGrowth bounds how far a direction's buffer grows past the
// configured relay buffer size.
const relayGrowth = 8

// slowWrite is how long a relay write may take before its direction is
// taken for one whose receiver is slow: a larger buffer would not move
// more, only be held longer.
const slowWrite = time.Millisecond

func newDirection(e *Engine, f *Flow, dst, src net.Conn, upward bool, ended *atomic.Int32, abort func()) *direction {
	d := &direction{e: e, f: f, dst: dst, src: src, upward: upward, ended: ended, abort: abort}
	d.size = e.settings.RelayBufferSize()
	d.lazy.init(src, func() int { return d.size })
	d.vec = newVectorWriter(src, dst)
	if d.vec == nil {
		d.splice = newSplicer(src, dst)
	}
	return d
}

// adapt sets the size of the next read's buffer after a read of n bytes
// into a buffer of size have.
func (d *direction) adapt(n, have int) {
	base := d.e.settings.RelayBufferSize()
	switch {
	case n >= have && have < base*relayGrowth:
		d.size = min(have*2, base*relayGrowth, MaxRelayBufferSize)
	case n <= have/8 && have > base:
		d.size = max(have/2, base)
	default:
		d.size = max(min(have, base*relayGrowth), base)
	}
}

// run copies until the direction ends.
func (d *direction) run() {
	for {
		if more, _ := d.step(true); !more {
			return
		}
	}
}

// watch runs the direction from a goroutine that does not copy: it waits
// until src is readable, then has a new goroutine copy until src has
// nothing more, and waits for that one. Where src cannot be waited on
// without reading (not a kernel socket), it copies itself, as run.
func (d *direction) watch() {
	if !d.lazy.canWait() {
		d.run()
		return
	}
	more := make(chan bool, 1)
	for {
		if err := d.lazy.wait(); err != nil {
			d.abort()
			return
		}
		go func() {
			stackgrow.To16K() // the copy runs deep (into the netstack, out of a TUN)
			more <- d.drainNow()
		}()
		if !<-more {
			return
		}
	}
}

// drainNow copies while src has something to read without waiting; it
// reports whether the direction goes on.
func (d *direction) drainNow() bool {
	for {
		if more, idle := d.step(false); !more || idle {
			return more
		}
	}
}

// drain copies while src has something to read; it reports whether the
// direction goes on (false: it ended).
func (d *direction) drain(rn ReadNotifier) bool {
	for rn.ReadReady() {
		if more, _ := d.step(true); !more {
			return false
		}
	}
	return true
}

// step reads from src once and writes what it read to dst. It reports
// whether the direction goes on, and, with wait false, whether the read
// found nothing (idle) instead of waiting for data.
func (d *direction) step(wait bool) (more, idle bool) {
	if d.vec != nil {
		if more, ok := d.stepVector(); ok {
			return more, false
		}
	}
	if d.splice != nil {
		if more, idle, ok := d.stepSplice(wait); ok {
			return more, idle
		}
	}
	bp, n, rerr := d.lazy.read(wait)
	if rerr == errWouldBlock {
		return true, true
	}
	if bp != nil {
		d.adapt(n, len(*bp))
	}
	if n > 0 {
		start := time.Now()
		_, werr := d.dst.Write((*bp)[:n])
		putRelayBuf(bp)
		if time.Since(start) > slowWrite {
			// The receiver is the bottleneck, and the buffer was held
			// all along: back to the configured size.
			d.size = d.e.settings.RelayBufferSize()
		}
		if werr != nil {
			d.writeFailed(werr)
			return false, false
		}
		d.count(n)
	} else if bp != nil {
		putRelayBuf(bp)
	}
	if rerr == nil {
		return true, false
	}
	d.readEnded(rerr)
	return false, false
}

// readEnded ends the direction after a read of src failed with err: an
// EOF is passed on to dst as a half-close, a reset as a reset; anything
// else, or a half-close dst cannot take, aborts the relay.
func (d *direction) readEnded(err error) {
	if errors.Is(err, io.EOF) {
		if cw, ok := d.dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			if d.ended.Add(1) == 1 {
				d.f.SetState(StateHalfClosed)
			} else {
				d.f.SetState(StateClosing)
			}
			return
		}
	} else if isReset(err) {
		reset(d.dst)
	}
	d.abort()
}

// count adds n bytes that dst accepted to the flow's counters.
func (d *direction) count(n int) {
	if d.upward {
		d.f.AddUp(n)
	} else {
		d.f.AddDown(n)
	}
}

// writeFailed ends the relay after dst refused a write with err: a reset
// by dst's peer is passed on to src's as a reset.
func (d *direction) writeFailed(err error) {
	if isReset(err) {
		reset(d.src)
	}
	d.abort()
}

// isReset reports whether err is the peer resetting the connection.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}

// reset makes the next Close of c send a RST instead of a FIN, where c can.
func reset(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
}

// relayUDP moves datagrams between client and out until one side closes.
func (e *Engine) relayUDP(ctx context.Context, f *Flow, client, out socks.PacketConn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			client.Close()
			out.Close()
		})
	}
	f.SetAbort(abort)
	stop := context.AfterFunc(ctx, abort)
	defer stop()
	stopIdle := watchIdle(f, func() time.Duration {
		d := e.settings.UDPIdleTimeout()
		if f.Dst().Port == 53 {
			d = min(d, DefaultDNSIdleTimeout)
		}
		return d
	}, abort)
	defer stopIdle()

	// Where both sides can, what the client's IP header said goes out
	// with the datagram: its TTL (traceroute through the gateway) and its
	// don't-fragment bit (path MTU discovery through it).
	metaIn, _ := client.(MetaReader)
	metaOut, _ := out.(MetaWriter)
	withMeta := metaIn != nil && metaOut != nil
	up := &upSender{e: e, f: f, out: out}
	up.reporter, _ = client.(ErrorReporter)
	if withMeta {
		up.metaOut = metaOut
	}

	// A client side that receives datagrams on a goroutine of its own (the
	// netstack's) gets a push function: each datagram that finds the
	// outbound socket ready leaves at once on that goroutine, without a
	// hand-off to the loop below, which then only carries the datagrams
	// that had to wait.
	if pp, ok := client.(PacketPusher); ok {
		if push := up.pusher(); push != nil {
			pp.SetPush(push)
			defer pp.SetPush(nil)
		}
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer abort()
		// Without Meta to carry, endpoints that move batches do (the
		// SOCKS5 server's relay socket out to a kernel socket).
		if br, ok := client.(socks.BatchReader); ok && !withMeta {
			if bw, ok := out.(socks.BatchWriter); ok {
				up.batches(br, bw)
				return
			}
		}
		bp := getPacketBuf()
		defer putPacketBuf(bp)
		buf := *bp
		for {
			var n int
			var dst socks.Addr
			var meta Meta
			var err error
			if withMeta {
				n, dst, meta, err = metaIn.ReadFromMeta(buf)
			} else {
				n, dst, err = client.ReadFrom(buf)
			}
			if err != nil {
				return
			}
			var werr error
			if withMeta {
				_, werr = metaOut.WriteToMeta(buf[:n], dst, meta)
			} else {
				_, werr = out.WriteTo(buf[:n], dst)
			}
			if !up.sent(buf[:n], dst, werr) {
				return
			}
		}
	}()
	func() {
		defer abort()
		reporter, _ := client.(ErrorReporter)
		if br, ok := out.(socks.BatchReader); ok {
			e.downBatches(f, br, client, reporter)
			return
		}
		bp := getPacketBuf()
		defer putPacketBuf(bp)
		buf := *bp
		for {
			n, from, err := out.ReadFrom(buf)
			if e.reportedICMP(f, err, reporter) {
				continue
			}
			if err != nil {
				return
			}
			if _, err := client.WriteTo(buf[:n], from); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				e.log.Debug("datagram dropped", "flow", f.ID, "src", from.String(), "err", err)
				continue
			}
			f.AddDown(n)
		}
	}()
	wg.Wait()
}

// reportedICMP reports whether err, from an outbound read, is an ICMP
// error about an earlier datagram, and passes it to the client side where
// it can take it: the association lives on.
func (e *Engine) reportedICMP(f *Flow, err error, reporter ErrorReporter) bool {
	var pe *PacketError
	if !errors.As(err, &pe) {
		return false
	}
	e.log.Debug("ICMP error", "flow", f.ID, "dst", pe.Dst.String(), "from", pe.Offender.String(), "type", pe.Type, "code", pe.Code)
	if reporter != nil {
		reporter.ReportPacketError(pe)
	}
	return true
}

// downBatches is the outbound-to-client half of a UDP relay for an
// outbound endpoint that reads batches: each batch goes to the client as
// one batch where the client side takes them (the SOCKS5 server's relay
// socket), else datagram by datagram (the netstack). It returns when
// either side is closed.
func (e *Engine) downBatches(f *Flow, br socks.BatchReader, client socks.PacketConn, reporter ErrorReporter) {
	bw, _ := client.(socks.BatchWriter)
	var ds [socks.MaxBatch]socks.Datagram
	for {
		n, err := br.ReadBatch(ds[:])
		if e.reportedICMP(f, err, reporter) {
			continue
		}
		if err != nil {
			return
		}
		if bw != nil {
			for batch := ds[:n]; len(batch) > 0; {
				k, err := bw.WriteBatch(batch)
				for _, d := range batch[:k] {
					f.AddDown(len(d.Buf))
				}
				if err == nil {
					break
				}
				if errors.Is(err, net.ErrClosed) {
					return
				}
				e.log.Debug("datagram dropped", "flow", f.ID, "src", batch[k].Addr.String(), "err", err)
				batch = batch[k+1:]
			}
			continue
		}
		for _, d := range ds[:n] {
			if _, err := client.WriteTo(d.Buf, d.Addr); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				e.log.Debug("datagram dropped", "flow", f.ID, "src", d.Addr.String(), "err", err)
				continue
			}
			f.AddDown(len(d.Buf))
		}
	}
}

// upSender is the client-to-outbound half of a UDP relay: what happens
// after each send, shared by the relay loop and the push fast path.
type upSender struct {
	e        *Engine
	f        *Flow
	out      socks.PacketConn
	metaOut  MetaWriter // nil: the datagrams' Meta is not carried
	reporter ErrorReporter
}

// sent accounts for one send of b to dst that returned err, and reports
// whether the association goes on.
func (u *upSender) sent(b []byte, dst socks.Addr, err error) bool {
	u.f.setDst(dst)
	if err == nil {
		u.f.AddUp(len(b))
		return true
	}
	if pe := (*PacketError)(nil); errors.As(err, &pe) {
		// Too big for the path, or refused at once: the client learns.
		if u.reporter != nil {
			u.reporter.ReportPacketError(pe)
		}
		return true
	}
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	// One datagram lost (a name that did not resolve, a full buffer):
	// datagram semantics, the association lives.
	u.e.log.Debug("datagram dropped", "flow", u.f.ID, "dst", dst.String(), "err", err)
	return true
}

// batches carries the datagrams of a client side that reads batches to an
// outbound side that sends them, until either is closed.
func (u *upSender) batches(br socks.BatchReader, bw socks.BatchWriter) {
	var ds [socks.MaxBatch]socks.Datagram
	for {
		n, err := br.ReadBatch(ds[:])
		if err != nil {
			return
		}
		for batch := ds[:n]; len(batch) > 0; {
			k, err := bw.WriteBatch(batch)
			for _, d := range batch[:k] {
				u.sent(d.Buf, d.Addr, nil)
			}
			if err == nil {
				break
			}
			if !u.sent(batch[k].Buf, batch[k].Addr, err) {
				return
			}
			batch = batch[k+1:]
		}
	}
}

// pusher returns the Push for a PacketPusher, or nil when the outbound
// side cannot send without blocking.
func (u *upSender) pusher() *Push {
	var one func(b []byte, dst socks.Addr, meta Meta) bool
	var batch func(ds []socks.Datagram, metas []Meta) (int, error)
	if tw, ok := u.out.(MetaTryWriter); ok && u.metaOut != nil {
		one = func(b []byte, dst socks.Addr, meta Meta) bool {
			_, done, err := tw.TryWriteToMeta(b, dst, meta)
			if done {
				u.sent(b, dst, err)
			}
			return done
		}
		if bw, ok := u.out.(MetaBatchTryWriter); ok {
			batch = bw.TryWriteBatchMeta
		}
	} else if tw, ok := u.out.(socks.TryWriter); ok {
		one = func(b []byte, dst socks.Addr, _ Meta) bool {
			_, done, err := tw.TryWriteTo(b, dst)
			if done {
				u.sent(b, dst, err)
			}
			return done
		}
		if bw, ok := u.out.(socks.BatchTryWriter); ok {
			batch = func(ds []socks.Datagram, _ []Meta) (int, error) { return bw.TryWriteBatch(ds) }
		}
	} else {
		return nil
	}
	p := &Push{One: one}
	if batch == nil {
		p.Batch = func(ds []socks.Datagram, metas []Meta) int {
			for i, d := range ds {
				if !one(d.Buf, d.Addr, metas[i]) {
					return i
				}
			}
			return len(ds)
		}
		return p
	}
	p.Batch = func(ds []socks.Datagram, metas []Meta) int {
		taken := 0
		for taken < len(ds) {
			n, err := batch(ds[taken:], metas[taken:])
			for _, d := range ds[taken : taken+n] {
				u.sent(d.Buf, d.Addr, nil)
			}
			taken += n
			if err == nil {
				// All sent, or ds[taken] needs the ordinary path.
				break
			}
			u.sent(ds[taken].Buf, ds[taken].Addr, err)
			taken++
		}
		return taken
	}
	return p
}

// Push is what the engine gives a PacketPusher: functions that send
// datagrams out on the caller's goroutine when the outbound socket takes
// them at once, accounting for each as the relay would. A datagram they
// did not take goes the ordinary way, through ReadFrom, in order.
type Push struct {
	// One sends one datagram and reports whether it took it (sent it, or
	// it failed for good and was accounted for).
	One func(b []byte, dst socks.Addr, meta Meta) bool
	// Batch sends ds, each with the Meta of the same index, in order, and
	// returns how many it took; it stops at the first it cannot take.
	// Where the outbound side can, the batch leaves with one system call.
	Batch func(ds []socks.Datagram, metas []Meta) int
}

// PacketPusher is implemented by client-side packet endpoints that receive
// datagrams on a goroutine of their own (the netstack's UDP mappings). The
// engine gives them a Push; SetPush(nil) withdraws it.
type PacketPusher interface {
	SetPush(p *Push)
}

// MetaBatchTryWriter is implemented by outbound endpoints that can send a
// batch of datagrams with their Meta without blocking. It returns how many
// it sent, in order; when that is fewer than len(ds), err is the error of
// ds[n], which is done with, or nil when ds[n] was not sent and needs the
// ordinary path (the socket was full, or the datagram needs what only
// WriteToMeta does).
type MetaBatchTryWriter interface {
	TryWriteBatchMeta(ds []socks.Datagram, metas []Meta) (n int, err error)
}

// MetaTryWriter is implemented by outbound endpoints that can send a
// datagram with its Meta without blocking: done is false when nothing was
// sent (the socket was full, or the datagram needs the ordinary path);
// otherwise err is what WriteToMeta would have returned.
type MetaTryWriter interface {
	TryWriteToMeta(b []byte, dst socks.Addr, meta Meta) (n int, done bool, err error)
}

// idleRecheck is how often a flow with no idle timeout looks again, in
// case one is set live.
const idleRecheck = time.Minute

// watchIdle calls abort once f has moved nothing for timeout(); the
// timeout is read again at every check, so it may change live (0: never).
// One timer per flow, no work on the data path. stop ends the watch.
func watchIdle(f *Flow, timeout func() time.Duration, abort func()) (stop func()) {
	var stopped atomic.Bool
	var t *time.Timer
	check := func() {
		if stopped.Load() {
			return
		}
		d := timeout()
		if d <= 0 {
			t.Reset(idleRecheck)
			return
		}
		idle := f.Idle(time.Now())
		if idle >= d {
			abort()
			return
		}
		t.Reset(d - idle)
	}
	t = time.AfterFunc(time.Hour, check)
	first := timeout()
	if first <= 0 {
		first = idleRecheck
	}
	t.Reset(first)
	return func() {
		stopped.Store(true)
		t.Stop()
	}
}

// Relay buffers, pooled by size class (powers of two from
// minRelayClass), so that a flow holds one only while it relays and
// directions of different sizes do not trade buffers.
const (
	minRelayClass = MinRelayBufferSize
	// relayClasses: MinRelayBufferSize (1 KiB) .. MaxRelayBufferSize
	// (4 MiB), one per power of two; TestRelayBufferAdapts checks it.
	relayClasses = 13
)

var relayPools [relayClasses]sync.Pool

// relayClass returns the smallest class whose buffers hold size bytes.
func relayClass(size int) int {
	c := 0
	for minRelayClass<<c < size && c < relayClasses-1 {
		c++
	}
	return c
}

func getRelayBuf(size int) *[]byte {
	c := relayClass(size)
	if bp, ok := relayPools[c].Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, minRelayClass<<c)
	return &b
}

func putRelayBuf(bp *[]byte) {
	c := relayClass(len(*bp))
	if len(*bp) != minRelayClass<<c {
		return // not one of ours
	}
	relayPools[c].Put(bp)
}

// maxDatagram is the largest UDP payload.
const maxDatagram = 65535

var packetBufs = sync.Pool{New: func() any {
	b := make([]byte, maxDatagram)
	return &b
}}

func getPacketBuf() *[]byte  { return packetBufs.Get().(*[]byte) }
func putPacketBuf(b *[]byte) { packetBufs.Put(b) }
