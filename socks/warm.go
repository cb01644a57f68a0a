package socks

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a WarmDialer.
const (
	// DefaultWarmIdle is how long a ready connection waits for a dial
	// before it is closed unused: well inside the negotiation timeouts of
	// common servers (tungate's 10 s, Dante's 30 s).
	DefaultWarmIdle = 5 * time.Second

	// MinWarmIdle is the least idle time of a WarmDialer: a shorter one
	// is raised to it, and it is as low as the idle time comes down when
	// the server closes ready connections sooner than expected.
	MinWarmIdle = 100 * time.Millisecond

	// warmDialTimeout bounds the making of one ready connection.
	warmDialTimeout = 10 * time.Second

	// warmBackoffMin and warmBackoffMax bound the pause after a ready
	// connection could not be made, doubled at each failure in a row.
	warmBackoffMin = 100 * time.Millisecond
	warmBackoffMax = 30 * time.Second
)

// WarmDialer dials through a Dialer's chain with connections made ready
// ahead of the dials: each is open through the chain to its last hop, with
// the method negotiated there (and the user authenticated), so that a dial
// sends only its CONNECT request and waits only for the reply, one round
// trip to the last hop instead of three or four.
//
// It keeps connections ready only while dials come faster than one per
// idle time: a dial that finds none ready and comes within that time of
// the one before asks for the pool to be filled (up to its size), and
// each ready connection left unused for that time is closed and one fewer
// is wanted. So a gateway that makes a connection now and then holds none
// ready, one under a steady load replaces each connection it takes and
// keeps about as many as it uses within the idle time, and the server
// sees connections that greet, then wait up to the idle time for their
// request, a few of which close without one as the load falls.
//
// A ready connection the server has closed meanwhile is found so before
// it is used, where the system lets the dialer look (Linux), and is
// dropped; the idle time then comes down to half the age it had, so that
// a server with a short negotiation timeout soon finds its connections
// used or closed first; it goes back up, towards the one given, to twice
// the age of a ready connection found still open. A server that
// closes them faster than they can be used stops the filling for a while.
// A reset or a failed one does not change the idle time. When one breaks
// before any of its reply has come, the request is sent once more on a
// new connection: the server cannot have acted on a request whose reply
// it never began, unless it failed after connecting; a second connection
// to the destination is then what it sees. Once a reply has begun, its
// outcome is the dial's, as on a new connection.
//
// The zero value is not usable; call NewWarmDialer. Close it to close the
// ready connections.
type WarmDialer struct {
	d       *Dialer
	size    int
	maxIdle time.Duration // as given; idle comes back up to it

	ctx    context.Context // the filler's; canceled by Close
	cancel context.CancelFunc
	wake   chan struct{} // a dial asks the filler to look again
	wg     sync.WaitGroup
	once   sync.Once

	mu       sync.Mutex
	ready    []readyConn // oldest first
	want     int         // connections to keep ready, 0 to size
	idle     time.Duration
	lastDial time.Time
	paused   time.Time // no filling before, after the server closed them too soon
	closed   bool

	hits, misses, stale, retried, failed atomic.Uint64
}

// readyConn is a connection negotiated with the chain's last hop.
type readyConn struct {
	c    net.Conn
	made time.Time // when its dial began: the server's timer starts no sooner
}

// peekState is what a look at a ready connection found.
type peekState int

const (
	peekOpen   peekState = iota // open with nothing to read: usable
	peekClosed                  // the server closed it: its negotiation timeout, as a rule
	peekBroken                  // reset, failed, or sent something unasked
)

// WarmStats counts what a WarmDialer did. Hits + Misses is the number of
// dials sent to the chain (a destination that has no encoding is not).
type WarmStats struct {
	Hits    uint64 // dials that used a ready connection, whatever their reply
	Misses  uint64 // dials made on a new connection, Retried ones too
	Stale   uint64 // ready connections found closed or broken, dropped
	Retried uint64 // dials whose ready connection broke before any reply
	Failed  uint64 // ready connections that could not be made
}

// NewWarmDialer returns a WarmDialer for d that keeps up to size
// connections ready, each for at most idle (DefaultWarmIdle when zero,
// MinWarmIdle when less than that).
// d must have at least one hop and must not change while in use.
func NewWarmDialer(d *Dialer, size int, idle time.Duration) (*WarmDialer, error) {
	if len(d.Hops) == 0 {
		return nil, ErrNoHops
	}
	if size < 1 {
		return nil, errors.New("socks: a warm dialer needs room for one connection at least")
	}
	if idle == 0 {
		idle = DefaultWarmIdle
	}
	idle = max(idle, MinWarmIdle)
	ctx, cancel := context.WithCancel(context.Background())
	w := &WarmDialer{d: d, size: size, maxIdle: idle, idle: idle, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1)}
	w.wg.Add(1)
	go w.fill()
	return w, nil
}

// Dialer returns the chain w dials through.
func (w *WarmDialer) Dialer() *Dialer { return w.d }

// Dial connects to dst through the chain, on a ready connection when
// there is one. Its errors are those of Dialer.Dial.
func (w *WarmDialer) Dial(ctx context.Context, dst Addr) (net.Conn, error) {
	n := len(w.d.Hops)
	var b [MaxRequestLen]byte
	req, err := AppendRequest(b[:0], Request{Cmd: CmdConnect, Addr: dst})
	if err != nil || ctx.Err() != nil {
		// Not to be sent on any connection, or not to be sent at all:
		// no ready one is spent on it, and it fails as a new one would.
		return w.d.Dial(ctx, dst)
	}
	frequent := w.noteDial()
	for {
		r := w.take(frequent)
		if r.c == nil {
			w.misses.Add(1)
			return w.d.Dial(ctx, dst)
		}
		c := r.c
		switch peek(c) {
		case peekClosed:
			w.stale.Add(1)
			c.Close()
			w.shorten(time.Since(r.made))
			continue
		case peekBroken:
			// A reset or an error says nothing of the server's
			// timeout: the idle time stays.
			w.stale.Add(1)
			c.Close()
			continue
		}
		var replied bool
		_, err := bounded(ctx, c, func() (resp Response, err error) {
			resp, replied, err = warmExchange(c, req)
			return resp, err
		})
		if err == nil {
			w.hits.Add(1)
			w.grow(time.Since(r.made))
			return c, nil
		}
		c.Close()
		if replied || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			// The last hop's verdict (a refusal, or a reply it could
			// not get right), or the caller's end: as a new connection
			// would have had it.
			w.hits.Add(1)
			return nil, w.d.lastHopFailure(ctx, n, err)
		}
		// Broken before any reply: the server closed it as the request
		// went out, and cannot have acted on it.
		w.retried.Add(1)
		w.misses.Add(1)
		return w.d.Dial(ctx, dst)
	}
}

// warmExchange is exchange on a ready connection; replied reports whether
// any of the reply arrived, after which the request is not to be sent
// again: the server may have acted on it.
func warmExchange(c net.Conn, req []byte) (resp Response, replied bool, err error) {
	if _, err := c.Write(req); err != nil {
		return Response{}, false, err
	}
	cr := countingReader{r: c}
	resp, err = ReadResponse(&cr)
	if err == nil && resp.Reply != ReplySucceeded {
		err = &ReplyError{Code: resp.Reply}
	}
	return resp, cr.n > 0, err
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (cr *countingReader) Read(b []byte) (int, error) {
	n, err := cr.r.Read(b)
	cr.n += n
	return n, err
}

// noteDial records a dial and reports whether it came within the idle
// time of the one before.
func (w *WarmDialer) noteDial() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	frequent := !w.lastDial.IsZero() && now.Sub(w.lastDial) < w.idle
	w.lastDial = now
	return frequent
}

// take returns the oldest ready connection, if any. A dial that finds
// none while dials come often (frequent) asks for the pool to be filled.
func (w *WarmDialer) take(frequent bool) readyConn {
	var r readyConn
	var old []readyConn
	w.mu.Lock()
	now := time.Now()
	for !w.closed && len(w.ready) > 0 && r.c == nil {
		r = w.ready[0]
		w.ready[0] = readyConn{}
		w.ready = w.ready[1:]
		if now.Sub(r.made) >= w.idle {
			// The filler has not got to it yet: as if it had.
			old = append(old, r)
			r = readyConn{}
		}
	}
	w.want = max(0, w.want-len(old))
	if r.c == nil && frequent && !w.closed && !now.Before(w.paused) {
		w.want = w.size
	}
	if len(w.ready) < w.want {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	w.mu.Unlock()
	for _, o := range old {
		o.c.Close()
	}
	return r
}

// shorten brings the idle time down to half of age, the age of a ready
// connection the server had closed, and no lower than MinWarmIdle. A
// server that closes them before twice that, with the idle time at its
// least already, closes them before they can be used: the filling stops
// for warmBackoffMax.
func (w *WarmDialer) shorten(age time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if age < 2*MinWarmIdle && w.idle == MinWarmIdle {
		w.want = 0
		w.paused = time.Now().Add(warmBackoffMax)
		return
	}
	w.idle = min(w.idle, max(age/2, MinWarmIdle))
}

// grow brings the idle time, if it came down, up to twice age, the age of
// a ready connection the server had kept, and no higher than the idle
// time w was made with.
func (w *WarmDialer) grow(age time.Duration) {
	w.mu.Lock()
	w.idle = max(w.idle, min(2*age, w.maxIdle))
	w.mu.Unlock()
}

// fill is the one goroutine that makes and expires ready connections.
// Close ends it.
func (w *WarmDialer) fill() {
	defer w.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var backoff time.Duration
	var retryAt time.Time // no new connection before, after a failure
	for {
		now := time.Now()
		next, need := w.expire(now)
		if need && !now.Before(retryAt) {
			if w.makeOne() {
				backoff = 0
			} else {
				backoff = min(max(2*backoff, warmBackoffMin), warmBackoffMax)
				retryAt = time.Now().Add(backoff)
			}
			continue
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = next.Sub(now)
		}
		if need {
			wait = min(wait, retryAt.Sub(now))
		}
		timer.Reset(wait)
		select {
		case <-w.ctx.Done():
			return
		case <-w.wake:
		case <-timer.C:
		}
	}
}

// expire closes the ready connections that waited for the idle time: as
// many fewer are wanted, dials having slowed. One the server had kept
// open all that time lets the idle time grow back, one it had closed
// brings it down. It returns when the oldest left will expire (zero if
// none) and whether one is missing.
func (w *WarmDialer) expire(now time.Time) (next time.Time, need bool) {
	var old []readyConn
	w.mu.Lock()
	for len(w.ready) > 0 && now.Sub(w.ready[0].made) >= w.idle {
		old = append(old, w.ready[0])
		w.ready[0] = readyConn{}
		w.ready = w.ready[1:]
	}
	w.want = max(0, w.want-len(old))
	if len(w.ready) > 0 {
		next = w.ready[0].made.Add(w.idle)
	}
	need = !w.closed && len(w.ready) < w.want
	w.mu.Unlock()
	for _, r := range old {
		switch peek(r.c) {
		case peekOpen:
			w.grow(now.Sub(r.made))
		case peekClosed:
			w.shorten(now.Sub(r.made))
		}
		r.c.Close()
	}
	return next, need
}

// makeOne makes one ready connection and keeps it if it is still wanted.
// It reports whether the chain could be negotiated.
func (w *WarmDialer) makeOne() bool {
	ctx, cancel := context.WithTimeout(w.ctx, warmDialTimeout)
	defer cancel()
	start := time.Now()
	c, err := w.d.prepare(ctx, len(w.d.Hops))
	if err != nil {
		if w.ctx.Err() == nil {
			w.failed.Add(1)
		}
		return false
	}
	w.mu.Lock()
	keep := !w.closed && len(w.ready) < w.want
	if keep {
		w.ready = append(w.ready, readyConn{c: c, made: start})
	}
	w.mu.Unlock()
	if !keep {
		c.Close()
	}
	return true
}

// Stats returns w's counts so far.
func (w *WarmDialer) Stats() WarmStats {
	return WarmStats{
		Hits: w.hits.Load(), Misses: w.misses.Load(), Stale: w.stale.Load(),
		Retried: w.retried.Load(), Failed: w.failed.Load(),
	}
}

// Close closes the ready connections and stops making them; dials after
// it make new connections each. It is safe to call more than once.
func (w *WarmDialer) Close() error {
	w.once.Do(func() {
		// No dial takes a connection once closed is set; then the filler
		// is stopped (a connection it is making is closed by its context
		// or by makeOne, which sees closed), and what was ready is closed.
		w.mu.Lock()
		w.closed = true
		ready := w.ready
		w.ready = nil
		w.mu.Unlock()
		w.cancel()
		w.wg.Wait()
		for _, r := range ready {
			r.c.Close()
		}
	})
	return nil
}
