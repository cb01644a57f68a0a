package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// closeByte asks the server to close the connection once it has echoed
// it (tgbench connect -close server).
const closeByte = 0

// server is tgbench serve: it echoes every connection.
type server struct {
	accepted atomic.Int64
	open     atomic.Int64
	maxOpen  atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	var listen listFlag
	fs.Var(&listen, "listen", "TCP `address` to listen on (host:port); repeatable")
	duration := fs.Duration("duration", 2*time.Hour, "exit after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(listen) == 0 {
		return &usageError{msg: "-listen is required"}
	}
	if *duration <= 0 {
		return &usageError{msg: "-duration must be positive"}
	}
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()

	s := &server{conns: make(map[net.Conn]struct{})}
	var lns []net.Listener
	for _, a := range listen {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("listen: %v", err)
		}
		lns = append(lns, ln)
	}
	var wg sync.WaitGroup
	for _, ln := range lns {
		fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.acceptLoop(ln)
		}()
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	wg.Wait()
	fmt.Fprintf(stdout, "accepted %d connections, at most %d at once\n", s.accepted.Load(), s.maxOpen.Load())
	return nil
}

// acceptLoop accepts until ln is closed. Temporary errors (such as running
// out of descriptors) pause it briefly instead of ending it.
func (s *server) acceptLoop(ln net.Listener) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay < time.Second {
				delay *= 2
			}
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.accepted.Add(1)
		go s.handle(c)
	}
}

// handle echoes c until EOF, an error, or closeByte.
func (s *server) handle(c net.Conn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	n := s.open.Add(1)
	for {
		m := s.maxOpen.Load()
		if n <= m || s.maxOpen.CompareAndSwap(m, n) {
			break
		}
	}
	defer func() {
		s.open.Add(-1)
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 256)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			if bytes.IndexByte(buf[:n], closeByte) >= 0 {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
