package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"tungate/admin"
)

// snapshot is what top reads at each refresh.
type snapshot struct {
	at      time.Time
	metrics admin.Metrics
	flows   []admin.Flow
}

func takeSnapshot(cl *admin.Client) (snapshot, error) {
	m, err := cl.Metrics()
	if err != nil {
		return snapshot{}, describeStatus(err, "top: metrics")
	}
	flows, err := cl.Flows()
	if err != nil {
		return snapshot{}, describeStatus(err, "top: flows")
	}
	return snapshot{at: time.Now(), metrics: m, flows: flows}, nil
}

// flowRate is a flow with its rates over the last interval, in bytes per
// second.
type flowRate struct {
	admin.Flow
	up, down float64
}

// rates computes each flow's rates against the previous snapshot; a flow
// new since then is measured over its age. Flows come sorted by total
// rate, then by ID.
func rates(prev, cur snapshot) (flows []flowRate, up, down float64) {
	dt := cur.at.Sub(prev.at).Seconds()
	before := make(map[uint64]admin.Flow, len(prev.flows))
	for _, f := range prev.flows {
		before[f.ID] = f
	}
	for _, f := range cur.flows {
		r := flowRate{Flow: f}
		if p, ok := before[f.ID]; ok && dt > 0 {
			r.up = float64(f.BytesUp-min(p.BytesUp, f.BytesUp)) / dt
			r.down = float64(f.BytesDown-min(p.BytesDown, f.BytesDown)) / dt
		} else if age := float64(f.AgeMS) / 1000; age > 0 {
			r.up, r.down = float64(f.BytesUp)/age, float64(f.BytesDown)/age
		}
		flows = append(flows, r)
	}
	slices.SortStableFunc(flows, func(a, b flowRate) int {
		if c := cmp.Compare(b.up+b.down, a.up+a.down); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	if dt > 0 && !prev.at.IsZero() {
		up = float64(cur.metrics.BytesUp-min(prev.metrics.BytesUp, cur.metrics.BytesUp)) / dt
		down = float64(cur.metrics.BytesDown-min(prev.metrics.BytesDown, cur.metrics.BytesDown)) / dt
	}
	return flows, up, down
}

func rate(v float64) string { return humanBytes(v) + "/s" }

// render draws one frame of at most height lines (0: no limit) of at most
// width columns (0: no limit).
func render(s *session, flows []flowRate, up, down float64, cur snapshot, width, height int) string {
	m := cur.metrics
	var b bytes.Buffer
	fmt.Fprintf(&b, "tungate %s  up %v  flows %d (tcp %d, udp %d)  peak %d  historic %d\n",
		s.addr, time.Duration(m.UptimeSeconds)*time.Second, m.Concurrent, m.TCPOpen, m.UDPOpen, m.PeakConcurrent, m.Historic)
	fmt.Fprintf(&b, "rate up %s  down %s  transferred %s  failed logins %d  dial failures %d\n\n",
		rate(up), rate(down), humanBytes(float64(m.BytesTotal)), m.FailedLogins, m.DialFailures)
	rows := len(flows)
	if height > 0 {
		rows = min(rows, max(height-5, 0))
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROTO\tUSER\tSOURCE\tDESTINATION\tUP/s\tDOWN/s\tUP\tDOWN\tAGE\tIDLE\tSTATE")
	for _, f := range flows[:rows] {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			f.ID, f.Proto, orDash(f.User), f.Src, f.Dst, rate(f.up), rate(f.down),
			humanBytes(float64(f.BytesUp)), humanBytes(float64(f.BytesDown)), ms(f.AgeMS), ms(f.IdleMS), f.State)
	}
	tw.Flush()
	if rows < len(flows) {
		fmt.Fprintf(&b, "... and %d more flows\n", len(flows)-rows)
	}
	out := b.String()
	if width > 0 {
		lines := strings.Split(out, "\n")
		for i, l := range lines {
			if len(l) > width {
				lines[i] = l[:width]
			}
		}
		out = strings.Join(lines, "\n")
	}
	return out
}

// jsonFrame is one refresh of top --json, one per line.
type jsonFrame struct {
	Time     time.Time   `json:"time"`
	Metrics  jsonMetrics `json:"metrics"`
	RateUp   float64     `json:"rate_up"`
	RateDown float64     `json:"rate_down"`
	Flows    []jsonFlow  `json:"flows"`
}

// terminalFd returns the descriptor of w or r when it is a terminal.
func terminalFd(v any) (int, bool) {
	f, ok := v.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	return int(f.Fd()), true
}

// Escape sequences of the terminal view.
const (
	enterScreen = "\x1b[?1049h\x1b[?25l" // alternate screen, cursor hidden
	leaveScreen = "\x1b[?25h\x1b[?1049l"
	clearScreen = "\x1b[H\x1b[2J"
)

// runTop refreshes a table of the flows and their rates every --interval,
// until q, Ctrl-C, or --count refreshes. On a terminal it redraws in place
// on the alternate screen; otherwise it prints each frame (or, with
// --json, one JSON object per line).
func runTop(ctx context.Context, s *session) error {
	out := s.out.w
	outFd, tty := terminalFd(out)
	tty = tty && !s.out.json
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var restore func()
	// Teardown: stop the key reader and wait for it, then leave the
	// alternate screen, then put the terminal back to how it was.
	defer func() {
		cancel()
		wg.Wait()
		if tty {
			io.WriteString(out, leaveScreen)
		}
		if restore != nil {
			restore()
		}
	}()
	if tty {
		if inFd, ok := terminalFd(s.stdin); ok {
			if old, err := term.MakeRaw(inFd); err == nil {
				restore = func() { term.Restore(inFd, old) }
				wg.Go(func() { readKeys(ctx, inFd, cancel) })
			}
		}
		io.WriteString(out, enterScreen)
	}

	ticker := time.NewTicker(s.opt.interval)
	defer ticker.Stop()
	var prev snapshot
	for n := 1; ; n++ {
		cur, err := takeSnapshot(s.cl)
		if err != nil {
			return err
		}
		flows, up, down := rates(prev, cur)
		prev = cur
		switch {
		case s.out.json:
			fr := jsonFrame{Time: cur.at.UTC(), Metrics: jsonMetrics(cur.metrics), RateUp: up, RateDown: down, Flows: []jsonFlow{}}
			for _, f := range flows {
				jf := toJSONFlow(f.Flow)
				jf.RateUp, jf.RateDown = &f.up, &f.down
				fr.Flows = append(fr.Flows, jf)
			}
			if err := json.NewEncoder(out).Encode(fr); err != nil {
				return err
			}
		case tty:
			w, h, err := term.GetSize(outFd)
			if err != nil {
				w, h = 0, 0
			}
			frame := render(s, flows, up, down, cur, w, h-1) + "q quits"
			// The terminal is raw: lines need a carriage return.
			io.WriteString(out, clearScreen+strings.ReplaceAll(frame, "\n", "\r\n"))
		default:
			if n > 1 {
				io.WriteString(out, "\n")
			}
			io.WriteString(out, render(s, flows, up, down, cur, 0, 0))
		}
		if s.opt.count > 0 && n >= s.opt.count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// readKeys watches the terminal for q or Ctrl-C and calls quit; it
// returns when ctx ends. It polls so that it never blocks in a read it
// could not leave.
func readKeys(ctx context.Context, fd int, quit func()) {
	buf := make([]byte, 16)
	for ctx.Err() == nil {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && err != unix.EINTR {
			return
		}
		if n == 0 || fds[0].Revents&unix.POLLIN == 0 {
			if fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
				return
			}
			continue
		}
		k, err := unix.Read(fd, buf)
		if err != nil || k == 0 {
			return
		}
		for _, c := range buf[:k] {
			if c == 'q' || c == 'Q' || c == 3 /* Ctrl-C */ || c == 4 /* Ctrl-D */ {
				quit()
				return
			}
		}
	}
}
