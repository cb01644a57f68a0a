package netnstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// SkipReason is the reason RequireRoot and RequireNetns give when they skip.
const SkipReason = "needs root and network namespaces (ip netns); run as root: go test ./internal/e2e/ or scripts/test"

// RequireRoot skips t unless the process runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("%s (running as uid %d)", SkipReason, os.Geteuid())
	}
}

var (
	netnsOnce sync.Once
	netnsErr  error
)

// RequireNetns skips t unless the process runs as root and `ip netns add`
// works here. The probe runs once per process and leaves nothing behind.
func RequireNetns(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	netnsOnce.Do(func() { netnsErr = probeNetns() })
	if netnsErr != nil {
		t.Skipf("%s: %v", SkipReason, netnsErr)
	}
}

func probeNetns() error {
	ip, err := LookTool("ip")
	if err != nil {
		return fmt.Errorf("ip not found (Debian package iproute2): %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	name := fmt.Sprintf("%s%d-probe", NamePrefix, os.Getpid())
	if out, err := exec.CommandContext(ctx, ip, "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	if out, err := exec.CommandContext(ctx, ip, "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// toolPackages names the Debian package that provides each program the
// tests use; scripts/install-deps installs them all.
var toolPackages = map[string]string{
	"ip":           "iproute2",
	"curl":         "curl",
	"proxychains4": "proxychains4",
	"danted":       "dante-server",
	"socksify":     "dante-client",
	"microsocks":   "microsocks",
	"iperf3":       "iperf3",
	"dnsmasq":      "dnsmasq",
	"dig":          "bind9-dnsutils",
	"socat":        "socat",
	"python3":      "python3",
	"useradd":      "passwd",
	"userdel":      "passwd",
	"chpasswd":     "passwd",
	"ping":         "iputils-ping",
	"sysctl":       "procps",
}

// DebianPackage returns the Debian package that provides the program name,
// or "" when it is not one the tests know.
func DebianPackage(name string) string { return toolPackages[name] }

// LookTool finds the program name in PATH and then in the sbin and bin
// directories (a test run by sudo or CI may have a PATH without /usr/sbin).
// It returns an absolute path.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs, nil
		}
		return p, nil
	}
	for _, dir := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH or the sbin/bin directories", name)
}

// RequireTool returns the absolute path of the program name, or skips t
// naming the Debian package that provides it.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := LookTool(name)
	if err != nil {
		pkg := toolPackages[name]
		if pkg == "" {
			pkg = "the package that provides it"
		}
		t.Skipf("%s is not installed (Debian package %s); install it with scripts/install-deps (as root)", name, pkg)
	}
	return p
}
