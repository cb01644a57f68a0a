package users

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
)

// header is the first line of a users file, and names the format version.
const header = "# tungate users v1"

// headerPrefix starts the header of any version.
const headerPrefix = "# tungate users "

// entry is one user. Entries are immutable once published in a Store's
// state, but for verified: a change makes a new entry.
type entry struct {
	name string
	role Role
	hash hash
	// verified is HMAC-SHA256(cacheKey, name "\x00" password) of the last
	// password that verified against hash, or nil.
	verified atomic.Pointer[[sha256.Size]byte]
}

// parseError is a corruption in a users file. It wraps ErrCorrupt.
type parseError struct {
	path string // "" when parsing bytes
	line int
	msg  string
}

func (e *parseError) Error() string {
	if e.path == "" {
		return fmt.Sprintf("%v: line %d: %s", ErrCorrupt, e.line, e.msg)
	}
	return fmt.Sprintf("%v %s: line %d: %s", ErrCorrupt, e.path, e.line, e.msg)
}

func (e *parseError) Unwrap() error { return ErrCorrupt }

// parse reads a users file. Lines are NAME:ROLE:HASH; surrounding spaces,
// tabs and a CR are ignored, as are blank lines and lines starting with
// '#'. A first line "# tungate users vN" with N other than 1 is refused.
// Errors are *parseError.
func parse(data []byte) (map[string]*entry, error) {
	users := make(map[string]*entry)
	lineOf := make(map[string]int)
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		bad := func(format string, args ...any) error {
			return &parseError{line: n, msg: fmt.Sprintf(format, args...)}
		}
		l := strings.Trim(line, " \t\r")
		if l == "" {
			continue
		}
		if l[0] == '#' {
			if n == 1 && strings.HasPrefix(l, headerPrefix) && l != header {
				return nil, bad("unsupported format %q, this version of tungate reads %q", l, header)
			}
			continue
		}
		name, rest, ok1 := strings.Cut(l, ":")
		roleText, hashText, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return nil, bad("want NAME:ROLE:HASH")
		}
		if p := nameProblem(name); p != "" {
			return nil, bad("invalid user name %q: %s", name, p)
		}
		role, err := ParseRole(roleText)
		if err != nil {
			return nil, bad("user %q: unknown role %q, want user or admin", name, roleText)
		}
		h, err := parseHash(hashText)
		if err != nil {
			return nil, bad("user %q: malformed password hash: %v", name, err)
		}
		if first, dup := lineOf[name]; dup {
			return nil, bad("duplicate user %q, first on line %d", name, first)
		}
		lineOf[name] = n
		users[name] = &entry{name: name, role: role, hash: h}
	}
	return users, nil
}

// encode writes users in the format parse reads: the header, then one line
// per user sorted by name.
func encode(users map[string]*entry) []byte {
	names := make([]string, 0, len(users))
	for name := range users {
		names = append(names, name)
	}
	slices.Sort(names)
	b := make([]byte, 0, len(header)+1+len(users)*128)
	b = append(b, header...)
	b = append(b, '\n')
	for _, name := range names {
		e := users[name]
		b = append(b, e.name...)
		b = append(b, ':')
		b = append(b, e.role.String()...)
		b = append(b, ':')
		b = e.hash.appendPHC(b)
		b = append(b, '\n')
	}
	return b
}

// writeFileAtomic replaces path with data, mode 0600: it writes a temporary
// file in the same directory, syncs it, renames it over path and syncs the
// directory. If path is a symbolic link, its target is replaced. Until the
// rename, path is untouched; a failure after it (syncing the directory)
// is reported although the new contents are in place.
func writeFileAtomic(path string, data []byte) (err error) {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	dir, base := filepath.Dir(path), filepath.Base(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	keepOwner(f, path)
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}
