//go:build !linux

package tun

import (
	"errors"
	"runtime"
	"syscall"
)

// errUnsupported is what every operation returns off Linux.
var errUnsupported = errors.New("tun: TUN devices and policy routing are only supported on Linux, not " + runtime.GOOS)

// Open is only supported on Linux.
func Open(cfg Config) (*Device, error) {
	if _, err := cfg.normalize(); err != nil {
		return nil, err
	}
	return nil, errUnsupported
}

// vnetRead is the state of a frame read, which only Linux has.
type vnetRead struct{}

// Close is only supported on Linux.
func (d *Device) Close() error { return errUnsupported }

// Routes is what InstallRoutes installed; only supported on Linux.
type Routes struct{}

// InstallRoutes is only supported on Linux.
func InstallRoutes(cfg RouteConfig) (*Routes, error) {
	if _, err := cfg.normalize(); err != nil {
		return nil, err
	}
	return nil, errUnsupported
}

// Close is only supported on Linux.
func (r *Routes) Close() error { return errUnsupported }

// Summary is only supported on Linux.
func (r *Routes) Summary() []string { return nil }

// StatePath is only supported on Linux.
func (r *Routes) StatePath() string { return "" }

// CleanupStale is only supported on Linux.
func CleanupStale(stateDir, device string) (int, error) { return 0, errUnsupported }

// MarkControl is only supported on Linux: the Control function it returns
// fails for a non-zero mark.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if mark == 0 {
			return nil
		}
		return errUnsupported
	}
}
