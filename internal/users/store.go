package users

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Store is the set of users, backed by a file. It is safe for concurrent
// use: Authenticate, Get, List and Len read a snapshot without locking;
// changes are serialized, written to the file, and only then published.
type Store struct {
	path  string
	wmu   sync.Mutex // serializes changes
	state atomic.Pointer[state]
	dummy hash // what an unknown name is verified against

	// write replaces the file; writeFileAtomic but in tests.
	write func(path string, data []byte) error
}

// state is an immutable snapshot of the users.
type state struct {
	users  map[string]*entry
	admins int
}

func newState(users map[string]*entry) *state {
	st := &state{users: users}
	for _, e := range users {
		if e.role == RoleAdmin {
			st.admins++
		}
	}
	return st
}

func newStore(path string, users map[string]*entry) *Store {
	s := &Store{path: path, dummy: dummyHash(), write: writeFileAtomic}
	s.state.Store(newState(users))
	return s
}

// Open loads the users file at path, which must exist. A missing file is an
// error wrapping fs.ErrNotExist that says how to create one; a file that
// does not parse is an error wrapping ErrCorrupt that names the path and
// line.
func Open(path string) (*Store, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("users: %w (create it with `tungate user add NAME --users %s`)", err, path)
		}
		return nil, fmt.Errorf("users: %w", err)
	}
	return load(path, data)
}

// OpenOrCreate is Open, but creates an empty users file (atomically, mode
// 0600) when there is none at path.
func OpenOrCreate(path string) (*Store, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		s := newStore(path, map[string]*entry{})
		if err := s.write(path, encode(nil)); err != nil {
			return nil, fmt.Errorf("users: creating %s: %w", path, err)
		}
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	return load(path, data)
}

func load(path string, data []byte) (*Store, error) {
	users, err := parse(data)
	if err != nil {
		if pe, ok := err.(*parseError); ok {
			pe.path = path
		}
		return nil, err
	}
	return newStore(path, users), nil
}

// Path returns the path of the users file.
func (s *Store) Path() string { return s.path }

// cacheKey keys the HMAC of verified credentials; it never leaves the
// process.
var cacheKey = func() []byte {
	k := make([]byte, sha256.Size)
	rand.Read(k)
	return k
}()

func cacheTag(name, password string) *[sha256.Size]byte {
	m := hmac.New(sha256.New, cacheKey)
	m.Write([]byte(name))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var t [sha256.Size]byte
	m.Sum(t[:0])
	return &t
}

// Authenticate reports whether password is name's, and name's role if so.
// It takes the same time whether or not name exists: an unknown name (or
// a password of a length no user can have) is verified against a dummy
// hash. A name and password that verified before are checked against an
// HMAC kept in memory instead of running the KDF again.
func (s *Store) Authenticate(name, password string) (Role, bool) {
	e := s.state.Load().users[name]
	if e == nil || validatePassword(password) != nil {
		cacheTag(name, password)
		s.dummy.verify(password)
		return 0, false
	}
	if !check(e, password) {
		return 0, false
	}
	return e.role, true
}

// check verifies password against e, the cache first, and caches a
// success. When e has been replaced meanwhile, the tag goes to the old
// entry, where nothing looks at it.
func check(e *entry, password string) bool {
	tag := cacheTag(e.name, password)
	if c := e.verified.Load(); c != nil && subtle.ConstantTimeCompare(c[:], tag[:]) == 1 {
		return true
	}
	if !e.hash.verify(password) {
		return false
	}
	e.verified.Store(tag)
	return true
}

// Get returns the user called name.
func (s *Store) Get(name string) (User, bool) {
	e := s.state.Load().users[name]
	if e == nil {
		return User{}, false
	}
	return User{Name: e.name, Role: e.role}, true
}

// List returns all users, sorted by name.
func (s *Store) List() []User {
	users := s.state.Load().users
	list := make([]User, 0, len(users))
	for _, e := range users {
		list = append(list, User{Name: e.name, Role: e.role})
	}
	slices.SortFunc(list, func(a, b User) int { return strings.Compare(a.Name, b.Name) })
	return list
}

// Len returns the number of users.
func (s *Store) Len() int { return len(s.state.Load().users) }

// Add adds a user. It fails with ErrExists if name is taken, ErrInvalidName
// or ErrInvalidPassword. The file is written before it returns.
func (s *Store) Add(name, password string, role Role) error {
	if err := validateName(name); err != nil {
		return err
	}
	if err := validatePassword(password); err != nil {
		return err
	}
	if !role.valid() {
		return fmt.Errorf("users: invalid role %d", role)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur := s.state.Load()
	if _, ok := cur.users[name]; ok {
		return fmt.Errorf("%w: %q", ErrExists, name)
	}
	next := maps.Clone(cur.users)
	next[name] = &entry{name: name, role: role, hash: newHash(password, defaultParams)}
	return s.commit(next)
}

// Delete removes a user. It fails with ErrNotFound, or ErrLastAdmin when
// name is the only admin.
func (s *Store) Delete(name string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur := s.state.Load()
	e, ok := cur.users[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if e.role == RoleAdmin && cur.admins == 1 {
		return fmt.Errorf("%w: %q", ErrLastAdmin, name)
	}
	next := maps.Clone(cur.users)
	delete(next, name)
	return s.commit(next)
}

// SetPassword changes a user's password. It fails with ErrNotFound or
// ErrInvalidPassword. The old password stops working at once.
func (s *Store) SetPassword(name, password string) error {
	if err := validatePassword(password); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur := s.state.Load()
	e, ok := cur.users[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	next := maps.Clone(cur.users)
	next[name] = &entry{name: name, role: e.role, hash: newHash(password, defaultParams)}
	return s.commit(next)
}

// SetRole changes a user's role. It fails with ErrNotFound, or ErrLastAdmin
// when it would demote the only admin.
func (s *Store) SetRole(name string, role Role) error {
	if !role.valid() {
		return fmt.Errorf("users: invalid role %d", role)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur := s.state.Load()
	e, ok := cur.users[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if e.role == role {
		return nil
	}
	if e.role == RoleAdmin && cur.admins == 1 {
		return fmt.Errorf("%w: %q", ErrLastAdmin, name)
	}
	next := maps.Clone(cur.users)
	next[name] = e.withRole(role)
	return s.commit(next)
}

// EnsureAdmin makes sure name is an admin whose password is password:
// it adds the user, or changes its password and role as needed. Nothing
// is written when it already is so.
func (s *Store) EnsureAdmin(name, password string) error {
	if err := validateName(name); err != nil {
		return err
	}
	if err := validatePassword(password); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur := s.state.Load()
	var ne *entry
	if e, ok := cur.users[name]; !ok || !check(e, password) {
		ne = &entry{name: name, role: RoleAdmin, hash: newHash(password, defaultParams)}
	} else if e.role != RoleAdmin {
		ne = e.withRole(RoleAdmin)
	} else {
		return nil
	}
	next := maps.Clone(cur.users)
	next[name] = ne
	return s.commit(next)
}

// withRole returns a copy of e with another role, keeping the hash and the
// cached verification.
func (e *entry) withRole(role Role) *entry {
	ne := &entry{name: e.name, role: role, hash: e.hash}
	ne.verified.Store(e.verified.Load())
	return ne
}

// commit writes next to the file and, if that worked, publishes it. The
// caller holds s.wmu.
func (s *Store) commit(next map[string]*entry) error {
	if err := s.write(s.path, encode(next)); err != nil {
		return fmt.Errorf("users: saving %s: %w", s.path, err)
	}
	s.state.Store(newState(next))
	return nil
}
