// Command tgbench is the small load client of tungate's benchmark
// (scripts/bench, docs/performance.md). It measures what iperf3 does not:
// how fast TCP connections are made, how long a connection takes to
// deliver its first byte, and whether many connections can be held open at
// once. It also turns the benchmark's raw measurements into the table and
// the JSON the script prints.
//
// Usage:
//
//	tgbench serve   -listen ADDR [-listen ADDR...] [-duration D]
//	tgbench connect -addr ADDR -n N -c CONCURRENCY [-socks ADDR] [-close client|server] [-timeout D] [-duration D]
//	tgbench hold    -addr ADDR -n N -duration D [-c CONCURRENCY] [-socks ADDR] [-timeout D]
//	tgbench report  -in FILE [-json FILE] [-meta KEY=VALUE...]
//
// The protocol between the client and the server is tiny: the server
// echoes every byte it reads until the client closes, or, when it reads
// the byte 0, echoes it and closes the connection itself. The client
// speaks first, as in HTTP or TLS: connect sends one byte right after
// connecting and measures, per connection, the time from the start of the
// dial (including the SOCKS5 handshake with -socks) until its echo arrives,
// the "first byte"; then it closes (with -close server it sends the byte 0
// and waits for the server to close first). hold checks one echoed byte
// (never 0) per connection after opening it and once more after the
// holding time.
//
// Every subcommand is bounded in time: serve by -duration, connect by
// -duration (no new connection starts after it) and -timeout (per
// connection), hold by its opening deadline, -duration and -timeout.
// connect and hold print one JSON object on stdout; hold also prints a
// line "held N" on stderr when all N connections are open and verified,
// which the benchmark waits for before it reads the gateway's memory.
//
// Exit codes: 0 done; 1 the measurement failed (connect: not a single
// connection succeeded; hold: any connection failed); 2 bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `tgbench: load client of tungate's benchmark (see docs/performance.md)

Usage:
  tgbench serve   -listen ADDR [-listen ADDR...] [-duration D]
  tgbench connect -addr ADDR -n N -c CONCURRENCY [-socks ADDR] [-close client|server] [-timeout D] [-duration D]
  tgbench hold    -addr ADDR -n N -duration D [-c CONCURRENCY] [-socks ADDR] [-timeout D]
  tgbench report  -in FILE [-json FILE] [-meta KEY=VALUE...]

Run "tgbench COMMAND -h" for a command's flags.
`

// usageError is a mistake on the command line; it exits 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// failError is a measurement that ran but failed; it exits 1. Its
// message has been printed already when empty.
type failError struct{ msg string }

func (e *failError) Error() string { return e.msg }

// run dispatches to a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], stdout, stderr)
	case "connect":
		err = runConnect(ctx, args[1:], stdout, stderr)
	case "hold":
		err = runHold(ctx, args[1:], stdout, stderr)
	case "report":
		err = runReport(args[1:], stdout, stderr)
	default:
		err = &usageError{msg: fmt.Sprintf("unknown command %q", args[0])}
	}
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "tgbench %s: %v\n", args[0], err)
		return 2
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintf(stderr, "tgbench %s: %s\n", args[0], msg)
	}
	return 1
}

// newFlags returns a flag set whose parse errors are usage errors.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tgbench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args into fs and rejects positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error()}
	}
	if fs.NArg() > 0 {
		return &usageError{msg: fmt.Sprintf("unexpected arguments: %s", strings.Join(fs.Args(), " "))}
	}
	return nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }
