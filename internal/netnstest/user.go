package netnstest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// UserPrefix begins the name of every system user AddSystemUser creates:
// UserPrefix + PID + "-" + sequence.
const UserPrefix = "tungate-test-"

var (
	userSeq    atomic.Int64
	userNameRE = regexp.MustCompile(`^` + regexp.QuoteMeta(UserPrefix) + `(\d+)-\d+$`)
)

// AddSystemUser creates a system user with the password (no home, no login
// shell, no group of its own) for servers that check system accounts, such
// as danted's `socksmethod: username`, and deletes it when t ends. It needs
// root and the passwd package (useradd, chpasswd, userdel); it skips t
// without them.
func AddSystemUser(t testing.TB, password string) string {
	t.Helper()
	RequireRoot(t)
	useradd := RequireTool(t, "useradd")
	chpasswd := RequireTool(t, "chpasswd")
	userdel := RequireTool(t, "userdel")
	if strings.ContainsAny(password, ":\n") {
		t.Fatalf("netnstest: AddSystemUser: password must not contain ':' or a newline")
	}
	name := fmt.Sprintf("%s%d-%d", UserPrefix, os.Getpid(), userSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	r := runCmd(execCommand(ctx, useradd, "--system", "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin", name))
	if r.Err != nil {
		t.Fatalf("useradd %s: %s", name, r)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		if r := runCmd(execCommand(ctx, userdel, name)); r.Err != nil {
			t.Errorf("netnstest cleanup: userdel %s: %s", name, r)
		}
	})
	cmd := execCommand(ctx, chpasswd)
	cmd.Stdin = strings.NewReader(name + ":" + password + "\n")
	if r := runCmd(cmd); r.Err != nil {
		t.Fatalf("chpasswd %s: %s", name, r)
	}
	return name
}

// removeLeftoverUsers deletes users named by AddSystemUser in runs whose
// process is gone.
func removeLeftoverUsers(ctx context.Context, t testing.TB) {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return
	}
	var stale []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, _, _ := strings.Cut(sc.Text(), ":")
		m := userNameRE.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		if pid, _ := strconv.Atoi(m[1]); !pidAlive(pid) {
			stale = append(stale, name)
		}
	}
	f.Close()
	if len(stale) == 0 {
		return
	}
	userdel, err := LookTool("userdel")
	if err != nil {
		return
	}
	for _, name := range stale {
		if r := runCmd(execCommand(ctx, userdel, name)); r.Err != nil {
			t.Logf("netnstest: removing leftover user %s: %s", name, r)
		} else {
			t.Logf("netnstest: removed leftover user %s", name)
		}
	}
}
