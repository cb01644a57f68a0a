package users

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Reference vectors of the argon2 reference implementation
// (phc-winner-argon2, src/test.c): password "password", salt "somesalt".
const (
	refCheap   = "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4"
	refDefault = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
	refPass    = "password"
)

// H is a well-formed hash for parser tests (the cheap reference vector).
const H = refCheap

var cheapParams = params{memory: 8, time: 1, threads: 1, saltLen: 16, keyLen: 32}

func TestMain(m *testing.M) {
	// New hashes in tests are cheap; verification uses the stored
	// parameters, which TestStoredParamsUsed and TestReferenceVectors check.
	defaultParams = cheapParams
	os.Exit(m.Run())
}

type want struct {
	name, role, hash string
}

func gotUsers(users map[string]*entry) []want {
	var got []want
	for _, e := range users {
		got = append(got, want{e.name, e.role.String(), string(e.hash.appendPHC(nil))})
	}
	sortWants(got)
	return got
}

func sortWants(w []want) {
	for i := range w {
		for j := i + 1; j < len(w); j++ {
			if w[j].name < w[i].name {
				w[i], w[j] = w[j], w[i]
			}
		}
	}
}

func TestParse(t *testing.T) {
	long := strings.Repeat("n", 255)
	tests := []struct {
		name string
		in   string
		want []want
	}{
		{"empty", "", nil},
		{"header only", "# tungate users v1\n", nil},
		{"golden", "# tungate users v1\nalice:admin:" + H + "\nbob:user:" + H + "\n",
			[]want{{"alice", "admin", H}, {"bob", "user", H}}},
		{"no header, no final newline", "bob:user:" + H, []want{{"bob", "user", H}}},
		{"comments and blank lines", "# tungate users v1\n\n# a comment\n   \n\t# indented comment\nbob:user:" + H + "\n\n",
			[]want{{"bob", "user", H}}},
		{"other first-line comment", "# my users\nbob:user:" + H + "\n", []want{{"bob", "user", H}}},
		{"header text later is a comment", "\n# tungate users v2\nbob:user:" + H + "\n", []want{{"bob", "user", H}}},
		{"CRLF", "# tungate users v1\r\nbob:user:" + H + "\r\n", []want{{"bob", "user", H}}},
		{"surrounding blanks", "  bob:user:" + H + " \t\n", []want{{"bob", "user", H}}},
		{"unusual names", "zoë:user:" + H + "\na#b:user:" + H + "\nme@example.com:admin:" + H + "\n" + long + ":user:" + H + "\n",
			[]want{{"a#b", "user", H}, {"me@example.com", "admin", H}, {long, "user", H}, {"zoë", "user", H}}},
		{"other parameters", "x:user:$argon2id$v=19$m=8,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA\n",
			[]want{{"x", "user", "$argon2id$v=19$m=8,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA"}}},
		{"maximum parameters", "x:user:$argon2id$v=19$m=1048576,t=64,p=255$" + strings.Repeat("A", 86) + "$" + strings.Repeat("A", 86) + "\n",
			[]want{{"x", "user", "$argon2id$v=19$m=1048576,t=64,p=255$" + strings.Repeat("A", 86) + "$" + strings.Repeat("A", 86)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			users, err := parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			got := gotUsers(users)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestParseCorrupt(t *testing.T) {
	const p = "$argon2id$v=19$"
	const salt, key = "$c29tZXNhbHQ", "$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4"
	long := strings.Repeat("n", 256)
	tests := []struct {
		name, in, want string
	}{
		{"no colon", "alice\n", `line 1: want NAME:ROLE:HASH`},
		{"two fields", "# tungate users v1\nalice:user\n", `line 2: want NAME:ROLE:HASH`},
		{"future version", "# tungate users v2\n", `line 1: unsupported format "# tungate users v2", this version of tungate reads "# tungate users v1"`},
		{"line count with CRLF and blanks", "# c\r\n\r\nbad\r\n", `line 3: want NAME:ROLE:HASH`},
		{"empty name", ":user:" + H, `line 1: invalid user name "": empty`},
		{"space in name", "al ice:user:" + H, `line 1: invalid user name "al ice": contains whitespace`},
		{"nbsp in name", "al\u00a0ice:user:" + H, `line 1: invalid user name "al\u00a0ice": contains whitespace`},
		{"control in name", "a\x01b:user:" + H, `line 1: invalid user name "a\x01b": contains a control character`},
		{"DEL in name", "a\x7fb:user:" + H, `line 1: invalid user name "a\x7fb": contains a control character`},
		{"bad UTF-8 name", "\xff:user:" + H, `line 1: invalid user name "\xff": not valid UTF-8`},
		{"long name", long + ":user:" + H, `line 1: invalid user name "` + long + `": 256 bytes long, the limit is 255`},
		{"unknown role", "alice:root:" + H, `line 1: user "alice": unknown role "root", want user or admin`},
		{"role case", "alice:Admin:" + H, `line 1: user "alice": unknown role "Admin", want user or admin`},
		{"empty role", "alice::" + H, `line 1: user "alice": unknown role "", want user or admin`},
		{"empty hash", "alice:user:", `line 1: user "alice": malformed password hash: want $argon2id$v=19$m=M,t=T,p=P$SALT$KEY`},
		{"clear password", "alice:user:hunter2", `line 1: user "alice": malformed password hash: want $argon2id$v=19$m=M,t=T,p=P$SALT$KEY`},
		{"argon2i", "alice:user:$argon2i$v=19$m=256,t=2,p=1" + salt + key, `line 1: user "alice": malformed password hash: algorithm "argon2i", want argon2id`},
		{"version", "alice:user:$argon2id$v=16$m=256,t=2,p=1" + salt + key, `line 1: user "alice": malformed password hash: version "v=16", want v=19`},
		{"no version", "alice:user:$argon2id$m=256,t=2,p=1" + salt + key, `line 1: user "alice": malformed password hash: want $argon2id$v=19$m=M,t=T,p=P$SALT$KEY`},
		{"two params", "alice:user:" + p + "m=256,t=2" + salt + key, `line 1: user "alice": malformed password hash: parameters "m=256,t=2", want m=M,t=T,p=P`},
		{"param order", "alice:user:" + p + "t=2,m=256,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter "t=2", want m=N`},
		{"space in params", "alice:user:" + p + "m=256, t=2,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter " t=2", want t=N`},
		{"leading zero", "alice:user:" + p + "m=0256,t=2,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter "m=0256": not a decimal number`},
		{"sign", "alice:user:" + p + "m=+256,t=2,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter "m=+256": not a decimal number`},
		{"empty param", "alice:user:" + p + "m=256,t=,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter "t=": not a decimal number`},
		{"overflow", "alice:user:" + p + "m=4294967296,t=2,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter "m=4294967296": not a decimal number`},
		{"memory too large", "alice:user:" + p + "m=1048577,t=2,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter "m=1048577" out of range [1, 1048576]`},
		{"zero time", "alice:user:" + p + "m=256,t=0,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter "t=0" out of range [1, 64]`},
		{"time too large", "alice:user:" + p + "m=256,t=65,p=1" + salt + key, `line 1: user "alice": malformed password hash: parameter "t=65" out of range [1, 64]`},
		{"zero lanes", "alice:user:" + p + "m=256,t=2,p=0" + salt + key, `line 1: user "alice": malformed password hash: parameter "p=0" out of range [1, 255]`},
		{"too many lanes", "alice:user:" + p + "m=256,t=2,p=256" + salt + key, `line 1: user "alice": malformed password hash: parameter "p=256" out of range [1, 255]`},
		{"memory below 8p", "alice:user:" + p + "m=8,t=2,p=2" + salt + key, `line 1: user "alice": malformed password hash: m=8 is less than 8*p=16`},
		{"padded salt", "alice:user:" + p + "m=256,t=2,p=1$c29tZXNhbHQ=" + key, `line 1: user "alice": malformed password hash: salt: invalid base64 character '='`},
		{"URL base64", "alice:user:" + p + "m=256,t=2,p=1$c29tZXNh_HQ" + key, `line 1: user "alice": malformed password hash: salt: invalid base64 character '_'`},
		{"non-canonical base64", "alice:user:" + p + "m=256,t=2,p=1$c29tZXNhbHR" + key, `line 1: user "alice": malformed password hash: salt: invalid base64`},
		{"impossible base64 length", "alice:user:" + p + "m=256,t=2,p=1$c29tZXNhbHQAA" + key, `line 1: user "alice": malformed password hash: salt: invalid base64`},
		{"short salt", "alice:user:" + p + "m=256,t=2,p=1$c2FsdA" + key, `line 1: user "alice": malformed password hash: salt is 4 bytes, want 8 to 64`},
		{"long salt", "alice:user:" + p + "m=256,t=2,p=1$" + strings.Repeat("A", 88) + key, `line 1: user "alice": malformed password hash: salt is 66 bytes, want 8 to 64`},
		{"short key", "alice:user:" + p + "m=256,t=2,p=1" + salt + "$c29tZXNhbHQ", `line 1: user "alice": malformed password hash: key is 8 bytes, want 16 to 64`},
		{"empty key", "alice:user:" + p + "m=256,t=2,p=1" + salt + "$", `line 1: user "alice": malformed password hash: key is 0 bytes, want 16 to 64`},
		{"extra field", "alice:user:" + H + ":x", `line 1: user "alice": malformed password hash: key: invalid base64 character ':'`},
		{"extra dollar", "alice:user:" + H + "$", `line 1: user "alice": malformed password hash: want $argon2id$v=19$m=M,t=T,p=P$SALT$KEY`},
		{"CR inside hash", "alice:user:" + p + "m=256,t=2,p=1$c29tZX\rNhbHQ" + key, `line 1: user "alice": malformed password hash: salt: invalid base64 character '\r'`},
		{"duplicate", "# tungate users v1\nalice:user:" + H + "\nbob:user:" + H + "\n\nalice:admin:" + H + "\n", `line 5: duplicate user "alice", first on line 2`},
		{"error after good lines", "# tungate users v1\nalice:user:" + H + "\n# ok\nbob:user:" + H + "\ncarol:user:x\n", `line 5: user "carol": malformed password hash: want $argon2id$v=19$m=M,t=T,p=P$SALT$KEY`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			users, err := parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("parse succeeded: %q", gotUsers(users))
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("error %v does not wrap ErrCorrupt", err)
			}
			if want := "users: corrupt users file: " + tt.want; err.Error() != want {
				t.Errorf("error\n got %s\nwant %s", err, want)
			}
		})
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	in := "\n# comment\nbob:user:" + H + "  \r\nalice:admin:" + refDefault + "\n"
	users, err := parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	out := encode(users)
	want := "# tungate users v1\nalice:admin:" + refDefault + "\nbob:user:" + H + "\n"
	if string(out) != want {
		t.Fatalf("encode:\n%s\nwant:\n%s", out, want)
	}
	again, err := parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encode(again), out) {
		t.Fatalf("second round trip differs")
	}
	if got := string(encode(nil)); got != "# tungate users v1\n" {
		t.Errorf("encode(nil) = %q", got)
	}
}

func TestRole(t *testing.T) {
	for _, tt := range []struct {
		r Role
		s string
	}{{RoleUser, "user"}, {RoleAdmin, "admin"}} {
		if tt.r.String() != tt.s {
			t.Errorf("%d.String() = %q, want %q", tt.r, tt.r.String(), tt.s)
		}
		r, err := ParseRole(tt.s)
		if err != nil || r != tt.r {
			t.Errorf("ParseRole(%q) = %v, %v", tt.s, r, err)
		}
	}
	if RoleUser != 0 || RoleAdmin != 1 {
		t.Error("role byte values changed: they are part of the admin wire protocol")
	}
	if s := Role(7).String(); s != "Role(7)" {
		t.Errorf("Role(7).String() = %q", s)
	}
	for _, s := range []string{"", "Admin", "root", "user "} {
		if _, err := ParseRole(s); err == nil || !strings.HasPrefix(err.Error(), "users: ") {
			t.Errorf("ParseRole(%q) error = %v", s, err)
		}
	}
}

// newTestStore makes a store in a fresh directory with the given users,
// all with password name+"-pw".
func newTestStore(t *testing.T, users ...User) *Store {
	t.Helper()
	s, err := OpenOrCreate(filepath.Join(t.TempDir(), "users"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		if err := s.Add(u.Name, u.Name+"-pw", u.Role); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNamesAndPasswords(t *testing.T) {
	s := newTestStore(t)
	badNames := []string{"", strings.Repeat("a", 256), "a:b", "a b", "a\tb", "a\nb", "a\x00b", "a\x7f", "#a", "a\u00a0b", "a\u2028b", "\xff", "\u0085"}
	for _, name := range badNames {
		if err := s.Add(name, "pw", RoleUser); !errors.Is(err, ErrInvalidName) || !strings.HasPrefix(err.Error(), "users: invalid user name") {
			t.Errorf("Add(%q) = %v, want ErrInvalidName", name, err)
		}
		if err := s.EnsureAdmin(name, "pw"); !errors.Is(err, ErrInvalidName) {
			t.Errorf("EnsureAdmin(%q) = %v, want ErrInvalidName", name, err)
		}
	}
	goodNames := []string{"a", strings.Repeat("a", 255), "a#", "zoë", "user@example.com", "名前", "A-B_c.d"}
	for _, name := range goodNames {
		if err := s.Add(name, "pw", RoleUser); err != nil {
			t.Errorf("Add(%q) = %v", name, err)
		}
	}
	for _, pw := range []string{"", strings.Repeat("p", 256)} {
		if err := s.Add("newuser", pw, RoleUser); !errors.Is(err, ErrInvalidPassword) || !strings.HasPrefix(err.Error(), "users: invalid password") {
			t.Errorf("Add with %d-byte password = %v, want ErrInvalidPassword", len(pw), err)
		}
		if err := s.SetPassword("a", pw); !errors.Is(err, ErrInvalidPassword) {
			t.Errorf("SetPassword with %d-byte password = %v, want ErrInvalidPassword", len(pw), err)
		}
		if err := s.EnsureAdmin("a", pw); !errors.Is(err, ErrInvalidPassword) {
			t.Errorf("EnsureAdmin with %d-byte password = %v, want ErrInvalidPassword", len(pw), err)
		}
		if _, ok := s.Authenticate("a", pw); ok {
			t.Errorf("Authenticate with %d-byte password succeeded", len(pw))
		}
	}
	for i, pw := range []string{strings.Repeat("p", 255), "with space", "nul\x00byte", "\xff\xfe", ":", "$argon2id$"} {
		name := fmt.Sprintf("pw%d", i)
		if err := s.Add(name, pw, RoleUser); err != nil {
			t.Errorf("Add with password %q: %v", pw, err)
			continue
		}
		if _, ok := s.Authenticate(name, pw); !ok {
			t.Errorf("Authenticate with password %q failed", pw)
		}
	}
	if err := s.Add("r", "pw", Role(2)); err == nil {
		t.Error("Add with Role(2) succeeded")
	}
	if err := s.SetRole("a", Role(2)); err == nil {
		t.Error("SetRole(Role(2)) succeeded")
	}
	// Everything written parses back.
	if _, err := Open(s.Path()); err != nil {
		t.Fatal(err)
	}
}

func TestOpenMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope", "users")
	_, err := Open(path)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open = %v, want fs.ErrNotExist", err)
	}
	for _, want := range []string{"users: ", path, "tungate user add NAME --users " + path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	// OpenOrCreate cannot create the directory either.
	if _, err := OpenOrCreate(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("OpenOrCreate in a missing directory = %v", err)
	}
	if _, err := Open(t.TempDir()); err == nil || !strings.HasPrefix(err.Error(), "users: ") {
		t.Errorf("Open(directory) = %v", err)
	}
}

func TestOpenCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte("# tungate users v1\nalice:superuser:"+H+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, open := range []func(string) (*Store, error){Open, OpenOrCreate} {
		s, err := open(path)
		if s != nil || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open = %v, %v; want ErrCorrupt", s, err)
		}
		want := "users: corrupt users file " + path + `: line 2: user "alice": unknown role "superuser", want user or admin`
		if err.Error() != want {
			t.Errorf("error\n got %s\nwant %s", err, want)
		}
	}
}

func TestOpenOrCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users")
	s, err := OpenOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Path() != path || s.Len() != 0 {
		t.Fatalf("Path %q Len %d", s.Path(), s.Len())
	}
	if got := readFile(t, path); got != "# tungate users v1\n" {
		t.Errorf("new file = %q", got)
	}
	checkMode(t, path)
	checkOnlyFile(t, dir, "users")
	if err := s.Add("alice", "pw", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if u, ok := s2.Get("alice"); !ok || u.Role != RoleAdmin {
		t.Errorf("OpenOrCreate of an existing file lost alice: %v %v", u, ok)
	}
}

func checkMode(t *testing.T, path string) {
	t.Helper()
	if runtime.GOOS == "windows" {
		return
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode(); m != 0o600 {
		t.Errorf("mode of %s = %v, want -rw-------", path, m)
	}
}

// checkOnlyFile checks that dir holds exactly the named entries: no
// temporary files were left behind.
func checkOnlyFile(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if fmt.Sprint(got) != fmt.Sprint(names) {
		t.Errorf("directory holds %q, want %q", got, names)
	}
}

func TestDurability(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users")
	s, err := OpenOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	reopen := func() *Store {
		t.Helper()
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		checkMode(t, path)
		checkOnlyFile(t, dir, "users")
		return s
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Add("alice", "a-pw", RoleAdmin))
	must(s.Add("bob", "b-pw", RoleUser))
	must(s.Add("carol", "c-pw", RoleUser))
	r := reopen()
	if got := fmt.Sprint(r.List()); got != "[{alice admin} {bob user} {carol user}]" {
		t.Fatalf("after Add: %s", got)
	}
	if role, ok := r.Authenticate("alice", "a-pw"); !ok || role != RoleAdmin {
		t.Errorf("reopened: alice does not authenticate as admin: %v %v", role, ok)
	}

	must(s.SetPassword("bob", "b-pw2"))
	must(s.SetRole("carol", RoleAdmin))
	must(s.Delete("alice"))
	r = reopen()
	if got := fmt.Sprint(r.List()); got != "[{bob user} {carol admin}]" {
		t.Fatalf("after changes: %s", got)
	}
	if _, ok := r.Authenticate("bob", "b-pw"); ok {
		t.Error("reopened: bob's old password works")
	}
	if _, ok := r.Authenticate("bob", "b-pw2"); !ok {
		t.Error("reopened: bob's new password fails")
	}
	if _, ok := r.Authenticate("alice", "a-pw"); ok {
		t.Error("reopened: deleted alice authenticates")
	}
	must(s.EnsureAdmin("dave", "d-pw"))
	r = reopen()
	if role, ok := r.Authenticate("dave", "d-pw"); !ok || role != RoleAdmin {
		t.Errorf("reopened: EnsureAdmin's dave: %v %v", role, ok)
	}

	// The file never holds a password in clear.
	content := readFile(t, path)
	for _, pw := range []string{"a-pw", "b-pw", "c-pw", "d-pw"} {
		if strings.Contains(content, pw) {
			t.Errorf("file contains password %q", pw)
		}
	}
}

func TestModeIsReset(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix modes")
	}
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte("# tungate users v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644) // whatever the umask
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add("alice", "pw", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	checkMode(t, path)
}

func TestSymlinkTargetIsReplaced(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links need privileges")
	}
	dir := t.TempDir()
	target := filepath.Join(dir, "real")
	link := filepath.Join(dir, "link")
	if err := os.WriteFile(target, []byte("# tungate users v1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	s, err := Open(link)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add("alice", "pw", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("link is no longer a symbolic link: %v %v", fi, err)
	}
	if !strings.Contains(readFile(t, target), "alice:admin:") {
		t.Error("target not updated")
	}
	checkOnlyFile(t, dir, "link", "real")
}

// snapshot is what a failed change must not alter.
func snapshot(t *testing.T, s *Store) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprint(&b, s.List(), s.Len())
	for _, u := range s.List() {
		role, ok := s.Authenticate(u.Name, u.Name+"-pw")
		fmt.Fprint(&b, " ", u.Name, role, ok)
	}
	return b.String()
}

func TestFailedWriteLeavesStateUnchanged(t *testing.T) {
	errInjected := errors.New("injected write failure")
	s := newTestStore(t, User{"admin", RoleAdmin}, User{"admin2", RoleAdmin}, User{"bob", RoleUser})
	before := snapshot(t, s)
	file := readFile(t, s.Path())
	s.write = func(string, []byte) error { return errInjected }

	ops := map[string]func() error{
		"Add":                  func() error { return s.Add("carol", "carol-pw", RoleUser) },
		"Delete":               func() error { return s.Delete("bob") },
		"SetPassword":          func() error { return s.SetPassword("bob", "new") },
		"SetRole":              func() error { return s.SetRole("bob", RoleAdmin) },
		"EnsureAdmin new":      func() error { return s.EnsureAdmin("dave", "dave-pw") },
		"EnsureAdmin password": func() error { return s.EnsureAdmin("admin", "new") },
		"EnsureAdmin promote":  func() error { return s.EnsureAdmin("bob", "bob-pw") },
	}
	for name, op := range ops {
		err := op()
		if !errors.Is(err, errInjected) {
			t.Errorf("%s = %v, want the write error", name, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "users: saving "+s.Path()+": ") {
			t.Errorf("%s error %q does not name the file", name, err)
		}
		if after := snapshot(t, s); after != before {
			t.Errorf("%s changed the state:\n%s\n%s", name, before, after)
		}
		if _, ok := s.Authenticate("bob", "new"); ok {
			t.Errorf("%s: failed SetPassword took effect", name)
		}
	}
	if got := readFile(t, s.Path()); got != file {
		t.Error("file changed")
	}
}

func TestFailedRealWrite(t *testing.T) {
	// Make the rename fail for real (root included): a non-empty directory
	// now stands where the file was.
	dir := t.TempDir()
	path := filepath.Join(dir, "users")
	s, err := OpenOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add("admin", "admin-pw", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, s)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.Add("bob", "bob-pw", RoleUser); err == nil {
		t.Fatal("Add succeeded with a directory in the way")
	}
	if err := s.SetPassword("admin", "x"); err == nil {
		t.Fatal("SetPassword succeeded with a directory in the way")
	}
	if after := snapshot(t, s); after != before {
		t.Errorf("state changed:\n%s\n%s", before, after)
	}
	checkOnlyFile(t, dir, "users") // the temporary files were removed

	// And a directory that is no longer a directory: creating the
	// temporary file fails.
	sub := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenOrCreate(filepath.Join(sub, "users"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(sub); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sub, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s2.Add("bob", "bob-pw", RoleUser); err == nil {
		t.Fatal("Add succeeded in a missing directory")
	}
	if s2.Len() != 0 {
		t.Error("failed Add was applied")
	}
}

func TestAuthenticateCostAndCache(t *testing.T) {
	s := newTestStore(t, User{"alice", RoleAdmin}, User{"bob", RoleUser})
	cases := []struct {
		name, pw string
		ok       bool
		role     Role
		kdfRuns  int64
	}{
		{"alice", "alice-pw", true, RoleAdmin, 1}, // first time: KDF
		{"alice", "alice-pw", true, RoleAdmin, 0}, // cached
		{"alice", "wrong", false, 0, 1},           // wrong: KDF, not cached
		{"alice", "wrong", false, 0, 1},
		{"alice", "alice-pw", true, RoleAdmin, 0}, // a failure keeps the cache
		{"nobody", "x", false, 0, 1},              // unknown: one dummy KDF run
		{"nobody", "x", false, 0, 1},
		{"", "x", false, 0, 1},
		{"Alice", "alice-pw", false, 0, 1}, // names are case sensitive
		{"bob", "bob-pw", true, RoleUser, 1},
		{"bob", "alice-pw", false, 0, 1}, // alice's cached password is not bob's
		{"bob", "", false, 0, 1},         // invalid password: still one run
	}
	for i, c := range cases {
		before := kdfStats.runs.Load()
		role, ok := s.Authenticate(c.name, c.pw)
		runs := kdfStats.runs.Load() - before
		if ok != c.ok || role != c.role || runs != c.kdfRuns {
			t.Errorf("%d: Authenticate(%q, %q) = %v, %v with %d KDF runs; want %v, %v with %d",
				i, c.name, c.pw, role, ok, runs, c.role, c.ok, c.kdfRuns)
		}
	}

	auth := func(name, pw string, wantOK bool, wantRuns int64) {
		t.Helper()
		before := kdfStats.runs.Load()
		_, ok := s.Authenticate(name, pw)
		if runs := kdfStats.runs.Load() - before; ok != wantOK || runs != wantRuns {
			t.Errorf("Authenticate(%q, %q) = %v with %d KDF runs; want %v with %d", name, pw, ok, runs, wantOK, wantRuns)
		}
	}
	// SetRole keeps the cache and the new role shows at once.
	if err := s.SetRole("bob", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if role, ok := s.Authenticate("bob", "bob-pw"); !ok || role != RoleAdmin {
		t.Errorf("after SetRole: %v %v", role, ok)
	}
	auth("bob", "bob-pw", true, 0)
	// SetPassword drops it: the old password fails although it was cached.
	if err := s.SetPassword("alice", "new-pw"); err != nil {
		t.Fatal(err)
	}
	auth("alice", "alice-pw", false, 1)
	auth("alice", "new-pw", true, 1)
	auth("alice", "new-pw", true, 0)
	// Delete drops it, also across a re-Add with another password.
	if err := s.Delete("bob"); err != nil {
		t.Fatal(err)
	}
	auth("bob", "bob-pw", false, 1)
	if err := s.Add("bob", "other", RoleUser); err != nil {
		t.Fatal(err)
	}
	auth("bob", "bob-pw", false, 1)
	auth("bob", "other", true, 1)
}

func TestDummyHashHasDefaultCost(t *testing.T) {
	s := newTestStore(t)
	p := defaultParams
	if s.dummy.memory != p.memory || s.dummy.time != p.time || s.dummy.threads != p.threads ||
		len(s.dummy.salt) != p.saltLen || len(s.dummy.key) != p.keyLen {
		t.Errorf("dummy hash %+v does not have the default parameters %+v", s.dummy, p)
	}
	// Unknown users do not all share one salt across stores.
	if bytes.Equal(s.dummy.salt, newTestStore(t).dummy.salt) {
		t.Error("two stores share a dummy salt")
	}
}

func TestDefaultParams(t *testing.T) {
	old := defaultParams
	defaultParams = params{memory: 19456, time: 2, threads: 1, saltLen: 16, keyLen: 32}
	defer func() { defaultParams = old }()
	s := newTestStore(t)
	if err := s.Add("alice", "pw", RoleUser); err != nil {
		t.Fatal(err)
	}
	line := strings.Split(readFile(t, s.Path()), "\n")[1]
	if !strings.HasPrefix(line, "alice:user:$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("line %q", line)
	}
	f := strings.Split(line, "$")
	if len(f[4]) != 22 || len(f[5]) != 43 { // 16 and 32 bytes
		t.Errorf("salt %q key %q: wrong lengths", f[4], f[5])
	}
	if _, ok := s.Authenticate("alice", "pw"); !ok {
		t.Error("authentication failed")
	}
}

func TestStoredParamsUsed(t *testing.T) {
	s := newTestStore(t, User{"old", RoleUser})
	old := defaultParams
	defaultParams = params{memory: 16, time: 2, threads: 2, saltLen: 8, keyLen: 16}
	defer func() { defaultParams = old }()
	if err := s.Add("new", "new-pw", RoleUser); err != nil {
		t.Fatal(err)
	}
	r, err := Open(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"old", "new"} {
		if _, ok := r.Authenticate(name, name+"-pw"); !ok {
			t.Errorf("%s does not authenticate", name)
		}
	}
	content := readFile(t, s.Path())
	if !strings.Contains(content, "\nold:user:$argon2id$v=19$m=8,t=1,p=1$") || !strings.Contains(content, "\nnew:user:$argon2id$v=19$m=16,t=2,p=2$") {
		t.Errorf("file:\n%s", content)
	}
}

func TestReferenceVectors(t *testing.T) {
	vectors := []string{refCheap}
	if !testing.Short() {
		vectors = append(vectors, refDefault) // 64 MiB
	}
	for _, v := range vectors {
		path := filepath.Join(t.TempDir(), "users")
		if err := os.WriteFile(path, []byte("ref:user:"+v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := s.Authenticate("ref", refPass); !ok {
			t.Errorf("%s: %q does not verify", v, refPass)
		}
		if _, ok := s.Authenticate("ref", "passwore"); ok {
			t.Errorf("%s: a wrong password verifies", v)
		}
	}
}

func TestLastAdmin(t *testing.T) {
	s := newTestStore(t, User{"root", RoleAdmin}, User{"bob", RoleUser})
	if err := s.Delete("root"); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("Delete(last admin) = %v", err)
	}
	if err := s.SetRole("root", RoleUser); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("SetRole(last admin, user) = %v", err)
	}
	if err := s.SetRole("root", RoleAdmin); err != nil {
		t.Errorf("SetRole to the same role = %v", err)
	}
	if err := s.SetRole("bob", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRole("root", RoleUser); err != nil {
		t.Errorf("demoting one of two admins = %v", err)
	}
	if err := s.SetRole("bob", RoleUser); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("demoting the new last admin = %v", err)
	}
	if err := s.Delete("root"); err != nil {
		t.Errorf("deleting a user = %v", err)
	}
	if err := s.Delete("bob"); !errors.Is(err, ErrLastAdmin) || !strings.HasPrefix(err.Error(), "users: ") {
		t.Errorf("Delete(last admin) = %v", err)
	}
	if got := fmt.Sprint(s.List()); got != "[{bob admin}]" {
		t.Errorf("List = %s", got)
	}

	// Without admins at all, users can still be deleted.
	s2 := newTestStore(t, User{"u1", RoleUser}, User{"u2", RoleUser})
	if err := s2.Delete("u1"); err != nil {
		t.Error(err)
	}
}

func TestNotFoundAndExists(t *testing.T) {
	s := newTestStore(t, User{"alice", RoleAdmin})
	for name, err := range map[string]error{
		"Delete":      s.Delete("bob"),
		"SetPassword": s.SetPassword("bob", "pw"),
		"SetRole":     s.SetRole("bob", RoleAdmin),
	} {
		if !errors.Is(err, ErrNotFound) || err.Error() != `users: no such user: "bob"` {
			t.Errorf("%s(unknown) = %v", name, err)
		}
	}
	if err := s.Add("alice", "pw", RoleUser); !errors.Is(err, ErrExists) || err.Error() != `users: user already exists: "alice"` {
		t.Errorf("Add(existing) = %v", err)
	}
	if _, ok := s.Get("bob"); ok {
		t.Error("Get(unknown) found something")
	}
	if u, ok := s.Get("alice"); !ok || u != (User{"alice", RoleAdmin}) {
		t.Errorf("Get(alice) = %v, %v", u, ok)
	}
}

func TestListSorted(t *testing.T) {
	s := newTestStore(t, User{"zed", RoleUser}, User{"Bob", RoleUser}, User{"alice", RoleAdmin}, User{"émile", RoleUser}, User{"bob", RoleUser})
	if got := fmt.Sprint(s.List()); got != "[{Bob user} {alice admin} {bob user} {zed user} {émile user}]" {
		t.Errorf("List = %s", got)
	}
	if s.Len() != 5 {
		t.Errorf("Len = %d", s.Len())
	}
	if l := newTestStore(t).List(); l == nil || len(l) != 0 {
		t.Errorf("empty List = %#v", l)
	}
}

func TestEnsureAdmin(t *testing.T) {
	s := newTestStore(t, User{"bob", RoleUser})
	writes := 0
	s.write = func(path string, data []byte) error {
		writes++
		return writeFileAtomic(path, data)
	}
	step := func(name, pw string, wantWrites int) {
		t.Helper()
		writes = 0
		if err := s.EnsureAdmin(name, pw); err != nil {
			t.Fatal(err)
		}
		if writes != wantWrites {
			t.Errorf("EnsureAdmin(%q, %q) wrote %d times, want %d", name, pw, writes, wantWrites)
		}
		if role, ok := s.Authenticate(name, pw); !ok || role != RoleAdmin {
			t.Errorf("after EnsureAdmin(%q, %q): %v %v", name, pw, role, ok)
		}
	}
	step("root", "root-pw", 1) // created
	step("root", "root-pw", 0) // already so
	step("root", "other", 1)   // password changed
	if _, ok := s.Authenticate("root", "root-pw"); ok {
		t.Error("old password still works")
	}
	step("bob", "bob-pw", 1)  // promoted, password kept
	step("bob", "bob-pw2", 1) // password changed
	if got := fmt.Sprint(s.List()); got != "[{bob admin} {root admin}]" {
		t.Errorf("List = %s", got)
	}
}

func TestConcurrent(t *testing.T) {
	s := newTestStore(t, User{"admin", RoleAdmin}, User{"stable", RoleUser})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, 100)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if role, ok := s.Authenticate("stable", "stable-pw"); !ok || role != RoleUser {
					errc <- fmt.Errorf("stable failed: %v %v", role, ok)
					return
				}
				if _, ok := s.Authenticate("stable", "wrong"); ok {
					errc <- errors.New("wrong password accepted")
					return
				}
				s.Authenticate(fmt.Sprintf("temp%d", n%4), "temp-pw") // racing with Add/Delete
				s.Authenticate("flip", fmt.Sprintf("pw%d", i%2))      // racing with SetPassword
				_ = s.List()
				_, _ = s.Get("admin")
				_ = s.Len()
			}
		}()
	}
	if err := s.Add("flip", "pw0", RoleUser); err != nil {
		t.Fatal(err)
	}
	for n := range 40 {
		name := fmt.Sprintf("temp%d", n%4)
		if err := s.Add(name, "temp-pw", RoleUser); err != nil && !errors.Is(err, ErrExists) {
			t.Error(err)
		}
		if err := s.SetPassword("flip", fmt.Sprintf("pw%d", n%2)); err != nil {
			t.Error(err)
		}
		if err := s.SetRole(name, RoleAdmin); err != nil {
			t.Error(err)
		}
		if n%2 == 1 {
			if err := s.Delete(name); err != nil {
				t.Error(err)
			}
		}
	}
	// Concurrent writers too.
	var wwg sync.WaitGroup
	for i := range 8 {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			name := fmt.Sprintf("w%d", i)
			if err := s.Add(name, "pw", RoleUser); err != nil {
				t.Error(err)
			}
			if err := s.EnsureAdmin(name, "pw2"); err != nil {
				t.Error(err)
			}
		}()
	}
	wwg.Wait()
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	// The file agrees with memory.
	r, err := Open(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if a, b := fmt.Sprint(r.List()), fmt.Sprint(s.List()); a != b {
		t.Errorf("file %s\nmemory %s", a, b)
	}
	checkOnlyFile(t, filepath.Dir(s.Path()), "users")
}

func TestKDFConcurrencyBounded(t *testing.T) {
	s := newTestStore(t, User{"alice", RoleUser})
	kdfStats.maxInFlight.Store(0)
	var wg sync.WaitGroup
	for i := range 8 * runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				s.Authenticate(fmt.Sprintf("unknown%d", i), "pw")
				s.Authenticate("alice", "wrong")
			}
		}()
	}
	wg.Wait()
	if m := kdfStats.maxInFlight.Load(); m > int64(runtime.NumCPU()) || m < 1 {
		t.Errorf("%d KDF runs at once, the bound is %d", m, runtime.NumCPU())
	}
}

// FuzzParse checks that whatever parses re-serializes to text that parses
// to the same users and serializes identically.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"",
		"# tungate users v1\n",
		"# tungate users v1\nalice:admin:" + H + "\nbob:user:" + refDefault + "\n",
		"\r\n  # c\n\tzoë:user:" + H + " \r\n",
		"x:user:$argon2id$v=19$m=8,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA\n",
		"# tungate users v2\n",
		"alice:user:" + H + "\nalice:admin:" + H + "\n",
		"alice:root:" + H,
		"a b:user:" + H,
		"alice:user:$argon2id$v=19$m=0256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		users, err := parse(data)
		if err != nil {
			var pe *parseError
			if !errors.As(err, &pe) || !errors.Is(err, ErrCorrupt) || pe.line < 1 {
				t.Fatalf("bad error %#v", err)
			}
			return
		}
		for name, e := range users {
			if name != e.name || validateName(name) != nil || !e.role.valid() {
				t.Fatalf("parsed an invalid entry %q", name)
			}
		}
		out := encode(users)
		again, err := parse(out)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", out, err)
		}
		if a, b := fmt.Sprint(gotUsers(users)), fmt.Sprint(gotUsers(again)); a != b {
			t.Fatalf("round trip changed the users:\n%s\n%s", a, b)
		}
		if out2 := encode(again); !bytes.Equal(out, out2) {
			t.Fatalf("second encoding differs:\n%q\n%q", out, out2)
		}
	})
}
