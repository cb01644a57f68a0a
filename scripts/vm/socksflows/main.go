// Command socksflows opens TCP flows through a SOCKS5 server, to an echo
// server it runs itself, and holds them open: the traffic of
// scripts/vm-test, whose VM has no curl. It exits 0 once every flow
// echoed its bytes and the hold time passed (or SIGTERM came), and 1 with
// a message on any failure.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"tungate/socks"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "socksflows:", err)
		os.Exit(1)
	}
}

func run() error {
	proxy := flag.String("socks", "127.0.0.1:1080", "the SOCKS5 server")
	user := flag.String("user", "", "SOCKS5 user name")
	pass := flag.String("password", "", "SOCKS5 password")
	echoAddr := flag.String("echo", "127.0.0.1:7000", "where to run the echo server (empty: do not run one, use --dst)")
	dst := flag.String("dst", "127.0.0.1:7000", "the destination of the flows")
	conns := flag.Int("conns", 1, "flows to open")
	size := flag.Int("bytes", 1000, "bytes each flow sends (and gets back)")
	hold := flag.Duration("hold", 0, "how long to keep the flows open")
	ready := flag.String("ready", "", "file to create once every flow has echoed its bytes")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	if *echoAddr != "" {
		l, err := net.Listen("tcp", *echoAddr)
		if err != nil {
			return err
		}
		defer l.Close()
		wg.Go(func() { echo(l) })
	}

	hop, err := socks.ParseProxyURL("socks5://" + *proxy)
	if err != nil {
		return err
	}
	hop.Username, hop.Password = *user, *pass
	d := &socks.Dialer{Hops: []socks.Hop{hop}}
	to, err := socks.ParseHostPort(*dst)
	if err != nil {
		return err
	}
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	payload := bytes.Repeat([]byte("t"), *size)
	for i := range *conns {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		c, err := d.Dial(dctx, to)
		cancel()
		if err != nil {
			return fmt.Errorf("flow %d through %s as %q: %w", i, *proxy, *user, err)
		}
		open = append(open, c)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(payload); err != nil {
			return fmt.Errorf("flow %d: %w", i, err)
		}
		back := make([]byte, len(payload))
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, payload) {
			return fmt.Errorf("flow %d: echo: %v", i, err)
		}
		c.SetDeadline(time.Time{})
	}
	fmt.Printf("%d flows up, %d bytes each way each\n", len(open), *size)
	if *ready != "" {
		if err := os.WriteFile(*ready, []byte("ready\n"), 0o644); err != nil {
			return err
		}
	}
	t := time.NewTimer(*hold)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return nil
}

// echo serves l until it is closed, echoing every connection.
func echo(l net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				fmt.Fprintln(os.Stderr, "socksflows: echo:", err)
			}
			return
		}
		wg.Go(func() {
			defer c.Close()
			io.Copy(c, c)
		})
	}
}
