package main

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tungate/internal/users"
)

// runUserT runs `tungate user args...` with stdin and returns stdout,
// stderr and the error.
func runUserT(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := runUser(args, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

func mustRunUser(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := runUserT(t, stdin, args...)
	if err != nil {
		t.Fatalf("user %q: %v (stderr %q)", args, err, errOut)
	}
	return out
}

func isUsage(err error) bool {
	var ue *usageError
	return errors.As(err, &ue)
}

func checkAuth(t *testing.T, path, name, pw string, want bool, wantRole users.Role) {
	t.Helper()
	s, err := users.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	role, ok := s.Authenticate(name, pw)
	if ok != want || (ok && role != wantRole) {
		t.Errorf("Authenticate(%q, %q) = %v, %v; want %v, %v", name, pw, role, ok, wantRole, want)
	}
}

func TestUserAddListPasswdDel(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "users")

	// add creates the file; flags after the words.
	_, errOut, err := runUserT(t, "alice-pw\n", "add", "alice", "--role", "admin", "--users", f)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, `added admin "alice"`) {
		t.Errorf("stderr %q", errOut)
	}
	if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("users file: %v %v", fi, err)
	}
	// Flags before the words, default role, single-dash flag.
	mustRunUser(t, "bob-pw\n", "--users", f, "add", "bob")
	mustRunUser(t, "carol-pw", "-users="+f, "add", "--role=user", "carol") // no final newline

	out := mustRunUser(t, "", "list", "--users", f)
	if want := "NAME   ROLE\nalice  admin\nbob    user\ncarol  user\n"; out != want {
		t.Errorf("list:\n%s\nwant:\n%s", out, want)
	}
	out = mustRunUser(t, "", "--json", "list", "--users", f)
	want := `[
  {
    "name": "alice",
    "role": "admin"
  },
  {
    "name": "bob",
    "role": "user"
  },
  {
    "name": "carol",
    "role": "user"
  }
]
`
	if out != want {
		t.Errorf("list --json:\n%s\nwant:\n%s", out, want)
	}
	checkAuth(t, f, "alice", "alice-pw", true, users.RoleAdmin)
	checkAuth(t, f, "bob", "bob-pw", true, users.RoleUser)
	checkAuth(t, f, "carol", "carol-pw", true, users.RoleUser)

	// passwd, with a CRLF line ending.
	mustRunUser(t, "new-pw\r\n", "passwd", "bob", "--users", f)
	checkAuth(t, f, "bob", "new-pw", true, users.RoleUser)
	checkAuth(t, f, "bob", "new-pw\r", false, 0)
	checkAuth(t, f, "bob", "bob-pw", false, 0)

	// del.
	_, errOut, err = runUserT(t, "", "del", "carol", "--users", f)
	if err != nil || !strings.Contains(errOut, `deleted user "carol"`) {
		t.Fatalf("del: %v %q", err, errOut)
	}
	if out := mustRunUser(t, "", "list", "--users", f); out != "NAME   ROLE\nalice  admin\nbob    user\n" {
		t.Errorf("list after del:\n%s", out)
	}

	// Only the users file: no temporary files left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries", len(ents))
	}
}

func TestUserPasswordFromStdin(t *testing.T) {
	f := filepath.Join(t.TempDir(), "users")
	mustRunUser(t, "crlf-pw\r\nsecond line\n", "add", "crlf", "--users", f)
	checkAuth(t, f, "crlf", "crlf-pw", true, users.RoleUser)
	mustRunUser(t, "  spaced pw \n", "add", "spaced", "--users", f)
	checkAuth(t, f, "spaced", "  spaced pw ", true, users.RoleUser)

	for _, in := range []string{"", "\n", "\r\n"} {
		_, _, err := runUserT(t, in, "add", "empty", "--users", f)
		if err == nil || isUsage(err) || !strings.Contains(err.Error(), "empty password") {
			t.Errorf("stdin %q: %v", in, err)
		}
	}
	_, _, err := runUserT(t, strings.Repeat("p", 256)+"\n", "add", "long", "--users", f)
	if !errors.Is(err, users.ErrInvalidPassword) {
		t.Errorf("256-byte password: %v", err)
	}
	_, _, err = runUserT(t, "\n", "passwd", "crlf", "--users", f)
	if err == nil {
		t.Error("passwd with an empty password succeeded")
	}
	checkAuth(t, f, "crlf", "crlf-pw", true, users.RoleUser)
}

func TestUserErrors(t *testing.T) {
	f := filepath.Join(t.TempDir(), "users")
	mustRunUser(t, "pw\n", "add", "root", "--role", "admin", "--users", f)
	mustRunUser(t, "pw\n", "add", "bob", "--users", f)

	// Failures that are not usage errors (exit 1).
	_, _, err := runUserT(t, "other\n", "add", "bob", "--users", f)
	if !errors.Is(err, users.ErrExists) || isUsage(err) {
		t.Errorf("duplicate add: %v", err)
	}
	checkAuth(t, f, "bob", "pw", true, users.RoleUser)
	_, _, err = runUserT(t, "", "del", "nobody", "--users", f)
	if !errors.Is(err, users.ErrNotFound) || isUsage(err) {
		t.Errorf("del unknown: %v", err)
	}
	_, _, err = runUserT(t, "pw\n", "passwd", "nobody", "--users", f)
	if !errors.Is(err, users.ErrNotFound) {
		t.Errorf("passwd unknown: %v", err)
	}
	_, _, err = runUserT(t, "", "del", "root", "--users", f)
	if !errors.Is(err, users.ErrLastAdmin) {
		t.Errorf("del last admin: %v", err)
	}
	_, _, err = runUserT(t, "pw\n", "add", "bad:name", "--users", f)
	if !errors.Is(err, users.ErrInvalidName) {
		t.Errorf("add bad name: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	for _, cmd := range [][]string{{"del", "x"}, {"passwd", "x"}, {"list"}} {
		_, _, err = runUserT(t, "pw\n", append(cmd, "--users", missing)...)
		if !errors.Is(err, fs.ErrNotExist) || isUsage(err) || !strings.Contains(err.Error(), "tungate user add NAME --users "+missing) {
			t.Errorf("%s on a missing file: %v", cmd[0], err)
		}
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("a missing file was created")
	}
	corrupt := filepath.Join(t.TempDir(), "corrupt")
	os.WriteFile(corrupt, []byte("alice:user:hunter2\n"), 0o600)
	_, _, err = runUserT(t, "", "list", "--users", corrupt)
	if !errors.Is(err, users.ErrCorrupt) || !strings.Contains(err.Error(), corrupt+": line 1:") {
		t.Errorf("list on a corrupt file: %v", err)
	}

	// Usage errors (exit 2).
	usage := []struct {
		args []string
		want string
	}{
		{nil, "missing command"},
		{[]string{"--users", f}, "missing command"},
		{[]string{"frob", "--users", f}, `unknown command "frob"`},
		{[]string{"add", "x"}, "--users FILE is required"},
		{[]string{"list"}, "--users FILE is required"},
		{[]string{"add", "--users", f}, "user add: missing NAME"},
		{[]string{"del", "a", "b", "--users", f}, "user del: want one NAME, got 2"},
		{[]string{"list", "x", "--users", f}, `user list: unexpected argument "x"`},
		{[]string{"add", "x", "--role", "root", "--users", f}, `user add: --role "root": want user or admin`},
		{[]string{"add", "x", "--role", "Admin", "--users", f}, `user add: --role "Admin": want user or admin`},
		{[]string{"del", "bob", "--role", "admin", "--users", f}, "user del: --role is only valid with add"},
		{[]string{"passwd", "bob", "--role", "admin", "--users", f}, "user passwd: --role is only valid with add"},
		{[]string{"del", "bob", "--json", "--users", f}, "user del: --json is only valid with list"},
		{[]string{"list", "--bogus", "--users", f}, "flag provided but not defined: -bogus"},
		{[]string{"list", "--users"}, "flag needs an argument: -users"},
	}
	for _, u := range usage {
		_, _, err := runUserT(t, "pw\n", u.args...)
		if !isUsage(err) || !strings.Contains(err.Error(), u.want) {
			t.Errorf("%q: %v, want a usage error with %q", u.args, err, u.want)
		}
	}
	if out := mustRunUser(t, "", "list", "--users", f); out != "NAME  ROLE\nbob   user\nroot  admin\n" {
		t.Errorf("the errors changed the file:\n%s", out)
	}
}

func TestUserDoubleDash(t *testing.T) {
	f := filepath.Join(t.TempDir(), "users")
	mustRunUser(t, "pw\n", "add", "--users", f, "--", "-dash")
	if out := mustRunUser(t, "", "list", "--users", f); out != "NAME   ROLE\n-dash  user\n" {
		t.Errorf("list:\n%s", out)
	}
	mustRunUser(t, "", "--users", f, "del", "--", "-dash")
}

func TestUserHelp(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, "Usage: tungate user COMMAND"},
		{[]string{"--help"}, "Usage: tungate user COMMAND"},
		{[]string{"help"}, "Usage: tungate user COMMAND"},
		{[]string{"add", "-h"}, "Usage: tungate user add NAME"},
		{[]string{"--help", "add"}, "Usage: tungate user add NAME"},
		{[]string{"--users", "f", "del", "x", "--help"}, "Usage: tungate user del NAME"},
		{[]string{"passwd", "-help"}, "Usage: tungate user passwd NAME"},
		{[]string{"help", "list"}, "Usage: tungate user list"},
	} {
		out, _, err := runUserT(t, "", tt.args...)
		if err != nil || !strings.HasPrefix(out, tt.want) {
			t.Errorf("%q: %v\n%s", tt.args, err, out)
		}
	}
}
