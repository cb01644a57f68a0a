package socks

import (
	"context"
	"errors"
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
// idle time: a dial that comes within that time of the one before asks
// for the pool to be filled, and a ready connection left unused for that
// time is closed and stops the filling, until dials come that fast again.
// So a gateway that makes a connection now and then holds none ready, and
// one under a steady load replaces each connection it takes. The server
// sees a connection that greets, then waits up to the idle time for its
// request, and at the end of a busy spell at most Size that close without
// one.
//
// A ready connection the server has closed meanwhile is found so before
// it is used, where the system lets the dialer look (Linux), and is
// dropped; the idle time then comes down to half the age it had, so that
// a server with a short negotiation timeout soon finds its connections
// used or closed first. When one breaks before its reply, the request is sent once
// more on a new connection: the server cannot have acted on a request
// whose reply it never sent, unless it failed after connecting; a second
// connection to the destination is then what it sees.
//
// The zero value is not usable; call NewWarmDialer. Close it to close the
// ready connections.
type WarmDialer struct {
	d    *Dialer
	size int

	ctx    context.Context // the filler's; canceled by Close
	cancel context.CancelFunc
	wake   chan struct{} // a dial asks the filler to look again
	wg     sync.WaitGroup
	once   sync.Once

	mu       sync.Mutex
	ready    []readyConn // oldest first
	want     int         // connections to keep ready: 0 or size
	idle     time.Duration
	lastDial time.Time
	closed   bool

	hits, misses, stale, retried, failed atomic.Uint64
}

// readyConn is a connection negotiated with the chain's last hop.
type readyConn struct {
	c    net.Conn
	made time.Time
}

// WarmStats counts what a WarmDialer did.
type WarmStats struct {
	Hits    uint64 // dials that used a ready connection
	Misses  uint64 // dials that found none ready
	Stale   uint64 // ready connections found closed by the server, dropped
	Retried uint64 // dials whose ready connection broke before the reply
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
	w := &WarmDialer{d: d, size: size, idle: idle, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1)}
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
	if err != nil {
		// Not to be sent on any connection: no ready one is spent on it.
		return w.d.Dial(ctx, dst)
	}
	for {
		r := w.take()
		if r.c == nil {
			w.misses.Add(1)
			return w.d.Dial(ctx, dst)
		}
		c := r.c
		if !usable(c) {
			w.stale.Add(1)
			c.Close()
			w.shorten(time.Since(r.made))
			continue
		}
		_, err := bounded(ctx, c, func() (Response, error) { return exchange(c, req) })
		if err == nil {
			w.hits.Add(1)
			return c, nil
		}
		c.Close()
		var re *ReplyError
		if errors.As(err, &re) || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			// The last hop's verdict, or the caller's end: as a
			// new connection would have had it.
			w.hits.Add(1)
			return nil, w.d.lastHopFailure(ctx, n, err)
		}
		// Broken before the reply: the server closed it as the
		// request went out.
		w.retried.Add(1)
		return w.d.Dial(ctx, dst)
	}
}

// take returns the oldest ready connection, if any, and notes the dial.
func (w *WarmDialer) take() readyConn {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	if w.closed {
		return readyConn{}
	}
	if !w.lastDial.IsZero() && now.Sub(w.lastDial) < w.idle {
		w.want = w.size
	}
	w.lastDial = now
	var r readyConn
	for len(w.ready) > 0 && r.c == nil {
		r = w.ready[0]
		w.ready[0] = readyConn{}
		w.ready = w.ready[1:]
		if now.Sub(r.made) >= w.idle {
			// The filler has not got to it yet.
			r.c.Close()
			r = readyConn{}
		}
	}
	if len(w.ready) < w.want {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	return r
}

// shorten brings the idle time down to half of age, the age of a ready
// connection the server had closed, and no lower than MinWarmIdle.
func (w *WarmDialer) shorten(age time.Duration) {
	w.mu.Lock()
	if d := max(age/2, MinWarmIdle); d < w.idle {
		w.idle = d
	}
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

// expire closes the ready connections that waited for the idle time; one
// that did means dials have slowed, and the filling stops. It returns when
// the oldest left will expire (zero if none) and whether one is missing.
func (w *WarmDialer) expire(now time.Time) (next time.Time, need bool) {
	var old []readyConn
	w.mu.Lock()
	for len(w.ready) > 0 && now.Sub(w.ready[0].made) >= w.idle {
		old = append(old, w.ready[0])
		w.ready[0] = readyConn{}
		w.ready = w.ready[1:]
	}
	if len(old) > 0 {
		w.want = 0
	}
	if len(w.ready) > 0 {
		next = w.ready[0].made.Add(w.idle)
	}
	need = !w.closed && len(w.ready) < w.want
	w.mu.Unlock()
	for _, r := range old {
		r.c.Close()
	}
	return next, need
}

// makeOne makes one ready connection and keeps it if it is still wanted.
// It reports whether the chain could be negotiated.
func (w *WarmDialer) makeOne() bool {
	ctx, cancel := context.WithTimeout(w.ctx, warmDialTimeout)
	defer cancel()
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
		w.ready = append(w.ready, readyConn{c: c, made: time.Now()})
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
