package tun

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

const stateVersion = 1

// stateFile is what InstallRoutes records in <StateDir>/<device>.routes.json.
// It is written (atomically) before anything is installed, listing
// everything about to be installed with Complete false, and rewritten with
// Complete true once all is in place. Close removes it after undoing
// everything; CleanupStale undoes whatever of it is still there after a
// crash. The package documentation shows an example.
type stateFile struct {
	Version int    `json:"version"`
	Device  string `json:"device"`
	// PID and PIDStart (the start time in /proc/PID/stat, in clock ticks
	// since boot) name the installing process, so that a live owner is
	// told apart from a reused PID.
	PID      int    `json:"pid"`
	PIDStart uint64 `json:"pid_start"`
	// BootID is /proc/sys/kernel/random/boot_id at install: after a
	// reboot nothing recorded can still be installed, and the sysctls
	// have been reset, so such a state file is just deleted.
	BootID string `json:"boot_id"`
	// Netns is the installing thread's network namespace, as the link
	// /proc/thread-self/ns/net reads ("net:[4026531840]").
	Netns    string       `json:"netns"`
	Complete bool         `json:"complete"`
	Table    int          `json:"table"`
	Fwmark   uint32       `json:"fwmark"`
	Priority int          `json:"priority"`
	Protocol int          `json:"protocol"`
	Rules    []ruleSpec   `json:"rules"`
	Routes   []routeSpec  `json:"routes"`
	Sysctls  []sysctlSpec `json:"sysctls"`
}

func statePath(dir, device string) string {
	return filepath.Join(dir, device+".routes.json")
}

// writeState replaces path with st atomically: a temporary file in the
// same directory, synced, renamed over path, and the directory synced.
func writeState(path string, st *stateFile) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tun: state directory: %w", err)
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("tun: encoding state: %w", err)
	}
	data = append(data, '\n')
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("tun: writing state file: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("tun: writing state file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("tun: writing state file %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("tun: writing state file %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("tun: writing state file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("tun: writing state file: %w", err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// readState reads a state file. A missing file is reported with an error
// that matches os.ErrNotExist.
func readState(path string) (*stateFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("tun: state file %s is corrupt: %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("tun: state file %s has version %d, this tungate reads version %d", path, st.Version, stateVersion)
	}
	if st.Device == "" {
		return nil, fmt.Errorf("tun: state file %s names no device", path)
	}
	return &st, nil
}

// removeState deletes a state file; a missing one is fine.
func removeState(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("tun: removing state file: %w", err)
	}
	return nil
}
