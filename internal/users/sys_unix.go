//go:build unix

package users

import (
	"os"
	"syscall"
)

// syncDir fsyncs a directory, making a rename in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// keepOwner gives the new file f the owner and group of the file at path,
// if there is one, so that root editing the daemon's users file does not
// make it unreadable to the daemon. It is best effort: only root may give
// a file away, and a non-root writer owns both files anyway.
func keepOwner(f *os.File, path string) {
	fi, err := os.Stat(path)
	if err != nil {
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	if int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid() {
		f.Chown(int(st.Uid), int(st.Gid))
	}
}
