package netnstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// maxOutput bounds what a Process keeps of its output.
const maxOutput = 16 << 20

// stopGrace is how long Stop waits after SIGTERM before SIGKILL, and how
// long it waits after SIGKILL.
const stopGrace = 3 * time.Second

// Process is a program started by Namespace.Start. It runs in its own
// process group; Stop (which cleanup calls) signals that group by the
// leader's PID and waits for the leader.
type Process struct {
	// Name labels the process in messages: the program's base name.
	Name string
	// Cmd is the running command (`ip netns exec NS PROGRAM ARGS...`, which
	// execs the program, so Cmd.Process.Pid is the program's PID).
	Cmd *exec.Cmd

	out      *syncBuffer
	done     chan struct{}
	waitErr  error
	stopOnce sync.Once
}

func startProcess(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{Name: name, Cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.out
	}
	if err := startCmd(cmd); err != nil {
		t.Fatalf("start %s: %v", cmd, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.Stop)
	return p
}

// PID returns the process's PID (also its process group ID).
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Output returns everything the process wrote to stdout and stderr so far
// (unless Cmd had its own writers), up to 16 MiB.
func (p *Process) Output() string { return p.out.String() }

// Mark returns the current length of the output, for OutputSince.
func (p *Process) Mark() int { return p.out.Len() }

// OutputSince returns the output written after Mark returned mark.
func (p *Process) OutputSince(mark int) string { return p.out.Since(mark) }

// Done is closed when the process has exited and been waited for.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and if so its wait error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// WaitOutput waits up to timeout until the output contains s. It returns an
// error (with the output) on timeout or if the process exits first.
func (p *Process) WaitOutput(s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if bytes.Contains(p.out.Bytes(), []byte(s)) {
			return nil
		}
		if exited, err := p.Exited(); exited {
			if bytes.Contains(p.out.Bytes(), []byte(s)) {
				return nil
			}
			return fmt.Errorf("%s exited (%v) before printing %q; output:\n%s", p.Name, err, s, p.Output())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not print %q within %v; output:\n%s", p.Name, s, timeout, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the process: SIGTERM to its process group, then SIGKILL if the
// leader has not exited within 3 s, then SIGKILL to whatever is left in the
// group. It waits (bounded) for the leader. Calling it again does nothing.
func (p *Process) Stop() {
	p.stopOnce.Do(func() {
		pgid := p.Cmd.Process.Pid
		if exited, _ := p.Exited(); !exited {
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(stopGrace):
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				select {
				case <-p.done:
				case <-time.After(stopGrace):
				}
			}
		}
		// Children that outlived the leader (a forking daemon's helpers)
		// are still in the group; ESRCH when there are none.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
}

// Result is what Namespace.Exec and ExecCmd return.
type Result struct {
	Stdout, Stderr string
	// ExitCode is the exit status, or -1 when the program did not start or
	// was ended by a signal (Err says which).
	ExitCode int
	// Err is nil when the program exited 0.
	Err error
}

// String summarises the result for failure messages.
func (r Result) String() string {
	return fmt.Sprintf("exit code %d (err %v)\n--- stdout ---\n%s\n--- stderr ---\n%s", r.ExitCode, r.Err, r.Stdout, r.Stderr)
}

func runCmd(cmd *exec.Cmd) Result {
	var stdout, stderr syncBuffer
	if cmd.Stdout == nil {
		cmd.Stdout = &stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &stderr
	}
	err := startCmd(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	r := Result{Stdout: stdout.String(), Stderr: stderr.String(), Err: err, ExitCode: -1}
	var ee *exec.ExitError
	switch {
	case err == nil:
		r.ExitCode = 0
	case errors.As(err, &ee):
		r.ExitCode = ee.ExitCode()
	}
	return r
}

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers,
// keeping at most maxOutput bytes.
type syncBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	truncated bool
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := maxOutput - b.buf.Len(); room < len(p) {
		if room > 0 {
			b.buf.Write(p[:room])
		}
		if !b.truncated {
			b.truncated = true
			b.buf.WriteString("\n[netnstest: output truncated]\n")
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *syncBuffer) String() string { return string(b.Bytes()) }

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *syncBuffer) Since(mark int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if mark < 0 || mark > b.buf.Len() {
		mark = 0
	}
	return string(b.buf.Bytes()[mark:])
}

// execCommand is exec.CommandContext with a bounded wait for output pipes.
func execCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Commands are started from one locked OS thread that lives as long as the
// process: Pdeathsig (set by Namespace.Command) fires when the thread that
// forked a child ends, and the Go runtime ends threads (those of goroutines
// that exit while locked to them), which would kill children at random.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func startCmd(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread never ends
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnReqs <- spawnReq{cmd, done}
	return <-done
}
