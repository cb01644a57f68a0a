package tun

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

const procSys = "/proc/sys"

// readSysctl reads /proc/sys/<key> in the calling thread's network
// namespace.
func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join(procSys, key))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// writeSysctl writes /proc/sys/<key> in the calling thread's network
// namespace.
func writeSysctl(key, value string) error {
	return os.WriteFile(filepath.Join(procSys, key), []byte(value+"\n"), 0o644)
}

// threadNetns names the calling thread's network namespace, as
// "net:[inode]". The caller should have its OS thread locked.
func threadNetns() (string, error) {
	return os.Readlink("/proc/thread-self/ns/net")
}

// netnsRef remembers a network namespace so that sysctls can be restored
// there from any goroutine.
type netnsRef struct {
	id string
	f  *os.File // /proc/thread-self/ns/net of the installing thread
}

// currentNetns captures the calling thread's network namespace.
func currentNetns() (*netnsRef, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	id, err := threadNetns()
	if err != nil {
		return nil, fmt.Errorf("tun: reading the network namespace: %w", err)
	}
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("tun: opening the network namespace: %w", err)
	}
	return &netnsRef{id: id, f: f}, nil
}

func (n *netnsRef) close() {
	if n != nil && n.f != nil {
		n.f.Close()
		n.f = nil
	}
}

// do runs fn in namespace n: on the calling thread when it is already
// there, else on a fresh locked thread that joins n and is thrown away
// afterwards.
func (n *netnsRef) do(fn func() error) error {
	runtime.LockOSThread()
	id, err := threadNetns()
	if err == nil && id == n.id {
		defer runtime.UnlockOSThread()
		return fn()
	}
	runtime.UnlockOSThread()
	if n.f == nil {
		return errors.New("tun: network namespace handle closed")
	}
	done := make(chan error, 1)
	go func() {
		// This thread changes namespace and is never unlocked, so the
		// runtime ends it when the goroutine returns.
		runtime.LockOSThread()
		if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("tun: entering network namespace %s: %w", n.id, err)
			return
		}
		done <- fn()
	}()
	return <-done
}
