package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"golang.org/x/term"

	"tungate/internal/users"
)

// usageError is a mistake on the command line or in the config: main
// prints it and exits 2 rather than 1.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func userUsageErr(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...) + " (see 'tungate user -h')"}
}

const userUsage = `Usage: tungate user COMMAND [NAME] [flags] --users FILE

Manages the users file offline, like htpasswd. Flags may come before or
after the words; use -- before a NAME that starts with '-'.

Commands:
  add NAME [--role user|admin]   add a user (FILE is created if missing)
  del NAME                       delete a user
  passwd NAME                    change a user's password
  list [--json]                  list the users and their roles

Flags:
  --users FILE   the users file (required)
  --role ROLE    role of the new user: user (default) or admin; add only
  --json         print the list as a JSON array; list only
  -h, --help     print this help, or a command's: tungate user add -h

The password is asked for twice when standard input is a terminal, and
is otherwise the first line of standard input:
  printf '%s\n' "$PASSWORD" | tungate user add alice --users FILE

A running tungate reads FILE only when it starts, and its own changes
(through the admin server) overwrite changes made here meanwhile.
`

var userCommandUsage = map[string]string{
	"add": `Usage: tungate user add NAME [--role user|admin] --users FILE

Adds a user with the role given (default user), creating FILE if it does
not exist. The password is asked for twice on a terminal, or read from
the first line of standard input. Names are 1 to 255 bytes without ':',
whitespace or control characters, not starting with '#'; passwords are 1
to 255 bytes.
`,
	"del": `Usage: tungate user del NAME --users FILE

Deletes a user. The last admin cannot be deleted.
`,
	"passwd": `Usage: tungate user passwd NAME --users FILE

Changes a user's password. It is asked for twice on a terminal, or read
from the first line of standard input.
`,
	"list": `Usage: tungate user list [--json] --users FILE

Lists the users and their roles, sorted by name: a table, or with --json
an array of {"name": ..., "role": ...} objects.
`,
}

// runUser runs `tungate user ...`; args are the arguments after "user".
func runUser(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tungate user", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	path := fs.String("users", "", "")
	roleText := fs.String("role", "", "")
	asJSON := fs.Bool("json", false, "")

	// Flags and words interleave: parse flags up to a word, take the
	// word, go on. Everything after "--" is words.
	rest, tail := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		rest, tail = args[:i], args[i+1:]
	}
	var words []string
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				for _, w := range append(words, fs.Args()...) {
					if !strings.HasPrefix(w, "-") {
						return printUserUsage(stdout, w)
					}
				}
				return printUserUsage(stdout, "")
			}
			return userUsageErr("user: %v", err)
		}
		rest = fs.Args()
		if len(rest) > 0 {
			words = append(words, rest[0])
			rest = rest[1:]
		}
	}
	words = append(words, tail...)

	if len(words) == 0 {
		return userUsageErr("user: missing command: add, del, passwd or list")
	}
	cmd, names := words[0], words[1:]
	if cmd == "help" {
		if len(names) > 0 {
			return printUserUsage(stdout, names[0])
		}
		return printUserUsage(stdout, "")
	}
	if _, ok := userCommandUsage[cmd]; !ok {
		return userUsageErr("user: unknown command %q: want add, del, passwd or list", cmd)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case cmd == "list" && len(names) > 0:
		return userUsageErr("user list: unexpected argument %q", names[0])
	case cmd != "list" && len(names) == 0:
		return userUsageErr("user %s: missing NAME", cmd)
	case cmd != "list" && len(names) > 1:
		return userUsageErr("user %s: want one NAME, got %d", cmd, len(names))
	case *path == "":
		return userUsageErr("user %s: --users FILE is required", cmd)
	case set["role"] && cmd != "add":
		return userUsageErr("user %s: --role is only valid with add", cmd)
	case set["json"] && cmd != "list":
		return userUsageErr("user %s: --json is only valid with list", cmd)
	}

	switch cmd {
	case "add":
		role := users.RoleUser
		if set["role"] {
			r, err := users.ParseRole(*roleText)
			if err != nil {
				return userUsageErr("user add: --role %q: want user or admin", *roleText)
			}
			role = r
		}
		return userAdd(*path, names[0], role, stdin, stderr)
	case "del":
		s, err := users.Open(*path)
		if err != nil {
			return err
		}
		if err := s.Delete(names[0]); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "deleted user %q from %s\n", names[0], *path)
		return nil
	case "passwd":
		s, err := users.Open(*path)
		if err != nil {
			return err
		}
		if _, ok := s.Get(names[0]); !ok {
			return fmt.Errorf("%w: %q", users.ErrNotFound, names[0])
		}
		pw, err := readNewPassword(stdin, stderr)
		if err != nil {
			return err
		}
		if err := s.SetPassword(names[0], pw); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "changed the password of %q in %s\n", names[0], *path)
		return nil
	default: // list
		s, err := users.Open(*path)
		if err != nil {
			return err
		}
		return userList(stdout, s.List(), *asJSON)
	}
}

func printUserUsage(w io.Writer, cmd string) error {
	if u, ok := userCommandUsage[cmd]; ok {
		_, err := io.WriteString(w, u)
		return err
	}
	_, err := io.WriteString(w, userUsage)
	return err
}

func userAdd(path, name string, role users.Role, stdin io.Reader, stderr io.Writer) error {
	s, err := users.OpenOrCreate(path)
	if err != nil {
		return err
	}
	// Refuse before asking for a password.
	if _, ok := s.Get(name); ok {
		return fmt.Errorf("%w: %q", users.ErrExists, name)
	}
	pw, err := readNewPassword(stdin, stderr)
	if err != nil {
		return err
	}
	if err := s.Add(name, pw, role); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "added %s %q to %s\n", role, name, path)
	return nil
}

func userList(w io.Writer, list []users.User, asJSON bool) error {
	if asJSON {
		type jsonUser struct {
			Name string `json:"name"`
			Role string `json:"role"`
		}
		out := make([]jsonUser, 0, len(list))
		for _, u := range list {
			out = append(out, jsonUser{u.Name, u.Role.String()})
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE")
	for _, u := range list {
		fmt.Fprintf(tw, "%s\t%s\n", u.Name, u.Role)
	}
	return tw.Flush()
}

// maxPasswordLine bounds what is read from standard input for a password;
// the store refuses anything over 255 bytes anyway.
const maxPasswordLine = 4096

// readNewPassword asks for a password twice when stdin is a terminal, and
// otherwise reads one line from it, without its line ending.
func readNewPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd := int(f.Fd())
		fmt.Fprint(stderr, "Password: ")
		p1, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		if len(p1) == 0 {
			return "", errors.New("empty password")
		}
		fmt.Fprint(stderr, "Retype password: ")
		p2, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		if !bytes.Equal(p1, p2) {
			return "", errors.New("the passwords do not match")
		}
		return string(p1), nil
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, maxPasswordLine)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("reading the password from standard input: %w", err)
	}
	line = strings.TrimSuffix(line, "\n")
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return "", errors.New("empty password on standard input")
	}
	return line, nil
}
