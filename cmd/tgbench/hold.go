package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// holdResult is what tgbench hold prints.
type holdResult struct {
	Addr           string         `json:"addr"`
	Socks          string         `json:"socks,omitempty"`
	N              int            `json:"n"`
	Concurrency    int            `json:"concurrency"`
	Opened         int64          `json:"opened"` // open and verified
	Failed         int64          `json:"failed"`
	OpenS          float64        `json:"open_s"`
	OpenRatePerS   float64        `json:"open_rate_per_s"`
	HeldS          float64        `json:"held_s"`
	Reverified     int64          `json:"reverified"`
	ReverifyFailed int64          `json:"reverify_failed"`
	Errors         map[string]int `json:"errors,omitempty"`
}

func runHold(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("hold", stderr)
	addr := fs.String("addr", "", "server `address` (host:port) running tgbench serve")
	n := fs.Int("n", 10000, "connections to open and hold")
	conc := fs.Int("c", 200, "connections being opened at once")
	socksAddr := fs.String("socks", "", "connect through this SOCKS5 proxy `address` (host:port, no authentication)")
	duration := fs.Duration("duration", 5*time.Second, "hold the connections this long once all are open")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on one connection's dial and on each byte exchange")
	openTimeout := fs.Duration("open-timeout", 120*time.Second, "bound on opening all connections")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *addr == "":
		return &usageError{msg: "-addr is required"}
	case *n < 1 || *n > 1_000_000:
		return &usageError{msg: "-n must be in 1..1000000"}
	case *conc < 1 || *conc > 100_000:
		return &usageError{msg: "-c must be in 1..100000"}
	case *duration < 0 || *timeout <= 0 || *openTimeout <= 0:
		return &usageError{msg: "-duration must not be negative, -timeout and -open-timeout must be positive"}
	}
	dial, err := newDialer(*addr, *socksAddr)
	if err != nil {
		return err
	}
	res := holdConnections(ctx, dial, *n, *conc, *duration, *timeout, *openTimeout, stderr)
	res.Addr, res.Socks = *addr, *socksAddr
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		return err
	}
	if res.Opened < int64(*n) || res.ReverifyFailed > 0 {
		return &failError{msg: fmt.Sprintf("%d of %d connections opened and verified, %d failed the check after holding",
			res.Opened, *n, res.ReverifyFailed)}
	}
	return nil
}

// exchange writes b on c and reads it back, within timeout.
func exchange(c net.Conn, b byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{b}); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	var r [1]byte
	if _, err := io.ReadFull(c, r[:]); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	if r[0] != b {
		return fmt.Errorf("echo %#x, want %#x", r[0], b)
	}
	return nil
}

// holdConnections opens n verified connections, c at a time, announces
// them on stderr ("held N"), holds them for duration, checks each again
// and closes them all.
func holdConnections(ctx context.Context, dial dialFunc, n, c int, duration, timeout, openTimeout time.Duration, stderr io.Writer) holdResult {
	res := holdResult{N: n, Concurrency: c}
	var errs errorTally
	conns := make([]net.Conn, n)
	defer func() {
		for _, cn := range conns {
			if cn != nil {
				cn.Close()
			}
		}
	}()

	// Open and verify.
	openCtx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	start := time.Now()
	var next, opened, failed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || openCtx.Err() != nil {
					return
				}
				cn, err := openOne(openCtx, dial, byte(i%250)+1, timeout)
				if err != nil {
					failed.Add(1)
					errs.add(err)
					continue
				}
				conns[i] = cn
				opened.Add(1)
			}
		}()
	}
	wg.Wait()
	res.OpenS = time.Since(start).Seconds()
	res.Opened, res.Failed = opened.Load(), failed.Load()
	if res.Opened > 0 {
		res.OpenRatePerS = float64(res.Opened) / res.OpenS
	}
	if res.Opened == int64(n) {
		fmt.Fprintf(stderr, "held %d\n", n)
	} else {
		fmt.Fprintf(stderr, "held %d of %d; %d failed\n", res.Opened, n, res.Failed)
	}

	// Hold.
	held := time.Now()
	select {
	case <-time.After(duration):
	case <-ctx.Done():
	}
	res.HeldS = time.Since(held).Seconds()

	// Check every held connection once more.
	var reOK, reFail atomic.Int64
	work := make(chan int)
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := exchange(conns[i], byte(i%250)+2, timeout); err != nil {
					reFail.Add(1)
					errs.add(fmt.Errorf("after holding: %w", err))
					continue
				}
				reOK.Add(1)
			}
		}()
	}
	for i, cn := range conns {
		if cn != nil {
			work <- i
		}
	}
	close(work)
	wg.Wait()
	res.Reverified, res.ReverifyFailed = reOK.Load(), reFail.Load()
	res.Errors = errs.m
	return res
}

// openOne dials and checks one echoed byte.
func openOne(ctx context.Context, dial dialFunc, b byte, timeout time.Duration) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dial(dctx)
	if err != nil {
		return nil, err
	}
	if err := exchange(c, b, timeout); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
