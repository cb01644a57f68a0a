package netnstest

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestTopology(t *testing.T) {
	tp := New(t)
	a := tp.Namespace("a")
	r := tp.Namespace("r")
	b := tp.Namespace("b")
	tp.Link(a, []string{"198.18.250.2/24", "2001:db8:250::2/64"}, r, []string{"198.18.250.1/24", "2001:db8:250::1/64"})
	tp.Link(r, []string{"198.18.251.1/24", "2001:db8:251::1/64"}, b, []string{"198.18.251.2/24", "2001:db8:251::2/64"})
	r.EnableForwarding()
	a.Route("default", "198.18.250.1")
	a.Route("default", "2001:db8:250::1")
	b.Route("default", "198.18.251.1")
	b.Route("default", "2001:db8:251::1")

	got := r.IP("-br", "link")
	if !strings.Contains(got, "v-a") || !strings.Contains(got, "v-b") {
		t.Fatalf("interfaces in r: %s", got)
	}

	// A Go listener in b, reached through r from a, both families.
	l, err := b.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	go func() {
		for i := 0; i < 4; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, c.RemoteAddr().String())
			c.Close()
		}
	}()
	for _, host := range []string{"198.18.251.2", "2001:db8:251::2"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := a.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		cancel()
		if err != nil {
			t.Fatalf("dial %s from a: %v", host, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "198.18.250.2") && !strings.Contains(string(b), "2001:db8:250::2") {
			t.Errorf("server saw %q, want a's address", b)
		}
	}
	// The host namespace does not reach the test addresses.
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("198.18.251.2", strconv.Itoa(port)), 300*time.Millisecond); err == nil {
		c.Close()
		t.Errorf("host namespace reached 198.18.251.2")
	}

	// Per-namespace /etc files.
	a.WriteEtc("hosts", "198.18.251.2 b.example.test\n")
	res := a.Exec(context.Background(), "cat", "/etc/hosts")
	if res.Err != nil || res.Stdout != "198.18.251.2 b.example.test\n" {
		t.Errorf("cat /etc/hosts in a: %s", res)
	}
	if res := a.Exec(context.Background(), "sh", "-c", "exit 3"); res.ExitCode != 3 {
		t.Errorf("exit code: %s", res)
	}

	// A started process is killed by Stop and its output kept.
	p := a.Start(t, "sh", "-c", "echo ready; exec sleep 60")
	if err := p.WaitOutput("ready", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	st := time.Now()
	p.Stop()
	t.Logf("stop took %v", time.Since(st))
	select {
	case <-p.Done():
	default:
		t.Fatalf("process still running after Stop")
	}
}

func TestWaitTCPTimesOut(t *testing.T) {
	tp := New(t)
	a := tp.Namespace("a")
	start := time.Now()
	err := a.WaitTCP("127.0.0.1:9", 300*time.Millisecond)
	if err == nil {
		t.Fatal("WaitTCP succeeded with nothing listening")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("WaitTCP took %v", d)
	}
}

func TestSystemUser(t *testing.T) {
	RequireRoot(t)
	name := AddSystemUser(t, "pw-123")
	out, err := exec.Command("getent", "passwd", name).Output()
	if err != nil || !strings.HasPrefix(string(out), name+":") {
		t.Fatalf("getent passwd %s: %v %q", name, err, out)
	}
	if !strings.HasPrefix(name, UserPrefix+strconv.Itoa(os.Getpid())+"-") {
		t.Errorf("name %q", name)
	}
}
