package users

import (
	"errors"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Role is what a user may do. Its byte values are those of the admin wire
// protocol.
type Role uint8

// Roles.
const (
	// RoleUser may use the SOCKS5 server.
	RoleUser Role = 0
	// RoleAdmin may also manage users through the admin server.
	RoleAdmin Role = 1
)

// String returns "user" or "admin", the names used in the users file and
// on the command line.
func (r Role) String() string {
	switch r {
	case RoleUser:
		return "user"
	case RoleAdmin:
		return "admin"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

func (r Role) valid() bool { return r == RoleUser || r == RoleAdmin }

// ParseRole parses "user" or "admin" (exactly, lower case).
func ParseRole(s string) (Role, error) {
	switch s {
	case "user":
		return RoleUser, nil
	case "admin":
		return RoleAdmin, nil
	}
	return 0, fmt.Errorf("users: unknown role %q (want user or admin)", s)
}

// User is a user as the store reports it: no password material.
type User struct {
	Name string
	Role Role
}

// Sentinel errors. Errors returned by this package wrap them with details;
// test with errors.Is.
var (
	// ErrNotFound means that no user has the name.
	ErrNotFound = errors.New("users: no such user")
	// ErrExists means that a user with the name exists already.
	ErrExists = errors.New("users: user already exists")
	// ErrLastAdmin means that the change would leave no admin.
	ErrLastAdmin = errors.New("users: cannot remove the last admin")
	// ErrInvalidName means that the name is not 1 to 255 bytes of UTF-8
	// without ':', whitespace or control characters, not starting with '#'.
	ErrInvalidName = errors.New("users: invalid user name")
	// ErrInvalidPassword means that the password is not 1 to 255 bytes.
	ErrInvalidPassword = errors.New("users: invalid password")
	// ErrCorrupt means that the users file does not parse. The error that
	// wraps it names the path, the line and what is wrong.
	ErrCorrupt = errors.New("users: corrupt users file")
)

// Limits of RFC 1929: UNAME and PASSWD are 1 to 255 octets.
const (
	maxNameLen     = 255
	maxPasswordLen = 255
)

// validateName checks a user name. '#' is refused as the first byte because
// the line would read as a comment in the users file.
func validateName(name string) error {
	if p := nameProblem(name); p != "" {
		if name == "" || len(name) > maxNameLen {
			return fmt.Errorf("%w: %s", ErrInvalidName, p)
		}
		return fmt.Errorf("%w %q: %s", ErrInvalidName, name, p)
	}
	return nil
}

// nameProblem says what is wrong with name, or returns "".
func nameProblem(name string) string {
	switch {
	case name == "":
		return "empty"
	case len(name) > maxNameLen:
		return fmt.Sprintf("%d bytes long, the limit is %d", len(name), maxNameLen)
	case !utf8.ValidString(name):
		return "not valid UTF-8"
	case name[0] == '#':
		return "starts with '#'"
	}
	for _, c := range name {
		switch {
		case c == ':':
			return "contains ':'"
		case unicode.IsSpace(c):
			return "contains whitespace"
		case unicode.IsControl(c):
			return "contains a control character"
		}
	}
	return ""
}

func validatePassword(password string) error {
	switch {
	case password == "":
		return fmt.Errorf("%w: empty", ErrInvalidPassword)
	case len(password) > maxPasswordLen:
		return fmt.Errorf("%w: %d bytes long, the limit is %d", ErrInvalidPassword, len(password), maxPasswordLen)
	}
	return nil
}
