package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"tungate/socks"
)

// dialFunc opens one connection to the target, directly or through a
// SOCKS5 proxy.
type dialFunc func(ctx context.Context) (net.Conn, error)

// newDialer returns the dialFunc for addr, through the SOCKS5 proxy at
// socksAddr (host:port, no authentication) unless that is empty.
func newDialer(addr, socksAddr string) (dialFunc, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, &usageError{msg: fmt.Sprintf("-addr %q: %v", addr, err)}
	}
	if socksAddr == "" {
		var d net.Dialer
		return func(ctx context.Context) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}, nil
	}
	hop, err := socks.ParseHostPort(socksAddr)
	if err != nil || hop.Port == 0 {
		return nil, &usageError{msg: fmt.Sprintf("-socks %q: want host:port", socksAddr)}
	}
	d := &socks.Dialer{Hops: []socks.Hop{{Addr: hop}}}
	return func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}, nil
}

// connectResult is what tgbench connect prints.
type connectResult struct {
	Addr        string         `json:"addr"`
	Socks       string         `json:"socks,omitempty"`
	N           int            `json:"n"`
	Concurrency int            `json:"concurrency"`
	Attempted   int64          `json:"attempted"`
	OK          int64          `json:"ok"`
	Failed      int64          `json:"failed"`
	ElapsedS    float64        `json:"elapsed_s"`
	RatePerS    float64        `json:"rate_per_s"`
	ConnectP50  float64        `json:"connect_p50_ms"`
	ConnectP99  float64        `json:"connect_p99_ms"`
	FirstP50    float64        `json:"first_byte_p50_ms"`
	FirstP99    float64        `json:"first_byte_p99_ms"`
	FirstMean   float64        `json:"first_byte_mean_ms"`
	FirstMax    float64        `json:"first_byte_max_ms"`
	Errors      map[string]int `json:"errors,omitempty"`
}

// errorTally counts distinct error messages, keeping a bounded number.
type errorTally struct {
	mu sync.Mutex
	m  map[string]int
}

func (t *errorTally) add(err error) {
	msg := err.Error()
	if len(msg) > 160 {
		msg = msg[:160]
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]int)
	}
	if _, ok := t.m[msg]; !ok && len(t.m) >= 20 {
		msg = "(other errors)"
	}
	t.m[msg]++
}

func runConnect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("connect", stderr)
	addr := fs.String("addr", "", "server `address` (host:port) running tgbench serve")
	n := fs.Int("n", 1000, "connections to make")
	conc := fs.Int("c", 16, "connections in progress at once")
	socksAddr := fs.String("socks", "", "connect through this SOCKS5 proxy `address` (host:port, no authentication)")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on one connection: dial, handshake and first byte")
	duration := fs.Duration("duration", 60*time.Second, "start no connection after this long")
	closeBy := fs.String("close", "client", "which side closes first: client (after the echo), or server (asked to close after echoing; the client waits for its FIN)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *closeBy != "client" && *closeBy != "server" {
		return &usageError{msg: "-close must be client or server"}
	}
	switch {
	case *addr == "":
		return &usageError{msg: "-addr is required"}
	case *n < 1 || *n > 10_000_000:
		return &usageError{msg: "-n must be in 1..10000000"}
	case *conc < 1 || *conc > 100_000:
		return &usageError{msg: "-c must be in 1..100000"}
	case *timeout <= 0 || *duration <= 0:
		return &usageError{msg: "-timeout and -duration must be positive"}
	}
	dial, err := newDialer(*addr, *socksAddr)
	if err != nil {
		return err
	}
	res := measureConnect(ctx, dial, *n, *conc, *timeout, *duration, *closeBy == "server")
	res.Addr, res.Socks = *addr, *socksAddr
	enc := json.NewEncoder(stdout)
	if err := enc.Encode(res); err != nil {
		return err
	}
	if res.OK == 0 {
		return &failError{msg: fmt.Sprintf("no connection succeeded (%d failed)", res.Failed)}
	}
	return nil
}

// measureConnect makes n connections, c at a time, each bounded by
// timeout; no connection starts after duration or once ctx is done.
func measureConnect(ctx context.Context, dial dialFunc, n, c int, timeout, duration time.Duration, serverCloses bool) connectResult {
	start := time.Now()
	deadline := start.Add(duration)
	var next, ok, failed atomic.Int64
	var errs errorTally
	conn := make([][]time.Duration, c)
	first := make([][]time.Duration, c)
	var wg sync.WaitGroup
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && time.Now().Before(deadline) && ctx.Err() == nil {
				dc, df, err := oneConnection(ctx, dial, timeout, serverCloses)
				if err != nil {
					failed.Add(1)
					errs.add(err)
					continue
				}
				ok.Add(1)
				conn[w] = append(conn[w], dc)
				first[w] = append(first[w], df)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cs, fs := slices.Concat(conn...), slices.Concat(first...)
	res := connectResult{
		N: n, Concurrency: c,
		Attempted: ok.Load() + failed.Load(), OK: ok.Load(), Failed: failed.Load(),
		ElapsedS: elapsed.Seconds(),
		Errors:   errs.m,
	}
	if res.OK > 0 {
		res.RatePerS = float64(res.OK) / elapsed.Seconds()
		res.ConnectP50, res.ConnectP99 = percentileMs(cs, 0.50), percentileMs(cs, 0.99)
		res.FirstP50, res.FirstP99 = percentileMs(fs, 0.50), percentileMs(fs, 0.99)
		var sum time.Duration
		for _, d := range fs {
			sum += d
		}
		res.FirstMean = ms(sum / time.Duration(len(fs)))
		res.FirstMax = ms(slices.Max(fs))
	}
	return res
}

// oneConnection dials, sends a byte, reads its echo (the first byte from
// the server) and closes. With serverCloses the byte is closeByte and it
// waits for the server's FIN before closing, so that the server closes
// first. It returns the time to the end of the dial (with -socks, of the
// SOCKS5 handshake) and to the first byte, both from the start of the dial.
func oneConnection(ctx context.Context, dial dialFunc, timeout time.Duration, serverCloses bool) (time.Duration, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	c, err := dial(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	dc := time.Since(t0)
	b := byte('F')
	if serverCloses {
		b = closeByte
	}
	if err := exchange(c, b, time.Until(t0.Add(timeout))); err != nil {
		return 0, 0, err
	}
	df := time.Since(t0)
	if serverCloses {
		c.SetReadDeadline(t0.Add(timeout))
		var r [1]byte
		if n, err := c.Read(r[:]); err != io.EOF {
			return 0, 0, fmt.Errorf("waiting for the server to close: read %d bytes, %v", n, err)
		}
	}
	return dc, df, nil
}

// percentileMs returns the p-th quantile of ds (nearest rank) in
// milliseconds; it sorts ds.
func percentileMs(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	i = max(0, min(i, len(ds)-1))
	return ms(ds[i])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
