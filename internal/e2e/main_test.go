package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tungate/internal/netnstest"
)

// tungateBin is the daemon built by TestMain; "" when it was not built
// because the tests cannot run here (not root).
var tungateBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		// Every test skips (netnstest.RequireNetns); building is pointless.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "tungate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Readable by all: ip netns exec runs it as root, but keep it usable.
	os.Chmod(dir, 0o755)
	if bin := os.Getenv("TUNGATE_E2E_BIN"); bin != "" {
		// A daemon built elsewhere (documented in doc.go).
		tungateBin = bin
		return m.Run()
	}
	bin := filepath.Join(dir, "tungate")
	if err := buildTungate(bin); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: cannot build the daemon (go build -o %s ./cmd/tungate): %v\n", bin, err)
		return 1
	}
	tungateBin = bin
	return m.Run()
}

// buildTungate runs `go build -o bin ./cmd/tungate` in the module root.
func buildTungate(bin string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the go tool is not on PATH: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	modOut, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(modOut))
	if gomod == "" || gomod == os.DevNull {
		return fmt.Errorf("not inside the tungate module (go env GOMOD is %q)", gomod)
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./cmd/tungate")
	cmd.Dir = filepath.Dir(gomod)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}

func requireTungate(t *testing.T) {
	t.Helper()
	netnstest.RequireNetns(t)
	if tungateBin == "" {
		t.Fatal("the tungate binary was not built (TestMain)")
	}
}

// daemon is a tungate process in gw.
type daemon struct {
	*netnstest.Process
	// Addr is the SOCKS listener, host:port.
	Addr string
	Host string
	Port string
}

// startTungate starts `tungate --socks ADDR --log-level debug ARGS...` in
// gw and waits (at most 5 s) until client can connect to ADDR.
func (w *world) startTungate(t *testing.T, addr string, args ...string) *daemon {
	t.Helper()
	requireTungate(t)
	full := append([]string{"--socks", addr, "--log-level", "debug"}, args...)
	cmd := w.gw.Command(context.Background(), tungateBin, full...)
	cmd.Dir = w.dir
	cmd.Env = cleanEnv()
	p := w.gw.StartCmd(t, cmd)
	p.Name = "tungate"
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{Process: p, Addr: addr, Host: host, Port: port}
	if err := waitSOCKS(w.client, p, addr, 5*time.Second); err != nil {
		t.Fatalf("tungate %s: %v\n----- tungate output -----\n%s", strings.Join(full, " "), err, p.Output())
	}
	return d
}

// cleanEnv is the environment without tungate's own variables
// (TUNGATE_ADMIN_USER, ...), so that the caller's cannot change a test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TUNGATE_") {
			env = append(env, kv)
		}
	}
	return env
}

// waitSOCKS polls until a TCP connection from ns to addr succeeds, failing
// early if p exits.
func waitSOCKS(ns *netnstest.Namespace, p *netnstest.Process, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for i := 0; ; i++ {
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("exited before listening (%v)", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		c, err := ns.DialContext(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("no listener at %s after %v (%d attempts): %v", addr, timeout, i+1, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// addUser runs `tungate user add NAME --role ROLE --users FILE` with the
// password on stdin and checks that it succeeded.
func addUser(t *testing.T, ns *netnstest.Namespace, file, name, role, password string) {
	t.Helper()
	cmd := ns.Command(ctxT(t, 20*time.Second), tungateBin, "user", "add", name, "--role", role, "--users", file)
	cmd.Env = cleanEnv()
	cmd.Stdin = strings.NewReader(password + "\n")
	if r := ns.ExecCmd(cmd); r.Err != nil {
		t.Fatalf("tungate user add %s --role %s --users %s: %s", name, role, file, r)
	}
	if fi, err := os.Stat(file); err != nil || fi.Size() == 0 {
		t.Fatalf("tungate user add did not write %s: %v", file, err)
	}
}
