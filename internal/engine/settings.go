package engine

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Defaults of the live settings.
const (
	DefaultRelayBufferSize = 32 << 10
	DefaultTCPIdleTimeout  = 10 * time.Minute
	DefaultUDPIdleTimeout  = 60 * time.Second
	DefaultDNSIdleTimeout  = 10 * time.Second
	DefaultConnectTimeout  = 10 * time.Second

	MinRelayBufferSize = 1 << 10
	MaxRelayBufferSize = 4 << 20
	// MaxTimeout bounds every timeout setting (the admin protocol carries
	// milliseconds in 32 bits).
	MaxTimeout = time.Duration(1<<32-1) * time.Millisecond
)

// Settings are the engine's tunables that may change while it runs (the
// admin server's SET CONFIG). Reads are lock-free. The zero Settings is
// not useful; use NewSettings.
type Settings struct {
	relayBuf       atomic.Int64
	tcpIdle        atomic.Int64
	udpIdle        atomic.Int64
	connectTimeout atomic.Int64
	maxFlows       atomic.Int64
	authRequired   atomic.Bool
}

// NewSettings returns the defaults.
func NewSettings() *Settings {
	s := &Settings{}
	s.relayBuf.Store(DefaultRelayBufferSize)
	s.tcpIdle.Store(int64(DefaultTCPIdleTimeout))
	s.udpIdle.Store(int64(DefaultUDPIdleTimeout))
	s.connectTimeout.Store(int64(DefaultConnectTimeout))
	return s
}

// RelayBufferSize is the size of each relay direction's buffer.
func (s *Settings) RelayBufferSize() int { return int(s.relayBuf.Load()) }

// SetRelayBufferSize sets it, within MinRelayBufferSize..MaxRelayBufferSize.
func (s *Settings) SetRelayBufferSize(n int) error {
	if n < MinRelayBufferSize || n > MaxRelayBufferSize {
		return fmt.Errorf("%w: relay buffer size %d not in %d..%d", ErrInvalidSetting, n, MinRelayBufferSize, MaxRelayBufferSize)
	}
	s.relayBuf.Store(int64(n))
	return nil
}

// TCPIdleTimeout ends TCP flows that moved nothing for that long; 0 never.
func (s *Settings) TCPIdleTimeout() time.Duration { return time.Duration(s.tcpIdle.Load()) }

// SetTCPIdleTimeout sets it.
func (s *Settings) SetTCPIdleTimeout(d time.Duration) error {
	return setTimeout(&s.tcpIdle, d, "TCP idle timeout", false)
}

// UDPIdleTimeout ends UDP associations idle for that long; DNS-only
// associations end after the shorter DefaultDNSIdleTimeout.
func (s *Settings) UDPIdleTimeout() time.Duration { return time.Duration(s.udpIdle.Load()) }

// SetUDPIdleTimeout sets it; it must be positive.
func (s *Settings) SetUDPIdleTimeout(d time.Duration) error {
	return setTimeout(&s.udpIdle, d, "UDP idle timeout", true)
}

// ConnectTimeout bounds each outbound dial, through the whole chain.
func (s *Settings) ConnectTimeout() time.Duration { return time.Duration(s.connectTimeout.Load()) }

// SetConnectTimeout sets it; it must be positive.
func (s *Settings) SetConnectTimeout(d time.Duration) error {
	return setTimeout(&s.connectTimeout, d, "connect timeout", true)
}

// MaxFlows limits concurrent flows; 0 means no limit.
func (s *Settings) MaxFlows() int { return int(s.maxFlows.Load()) }

// SetMaxFlows sets it.
func (s *Settings) SetMaxFlows(n int) error {
	if n < 0 || int64(n) > 1<<32-1 {
		return fmt.Errorf("%w: maximum flows %d", ErrInvalidSetting, n)
	}
	s.maxFlows.Store(int64(n))
	return nil
}

// AuthRequired reports whether SOCKS5 clients must authenticate.
func (s *Settings) AuthRequired() bool { return s.authRequired.Load() }

// SetAuthRequired sets it.
func (s *Settings) SetAuthRequired(v bool) { s.authRequired.Store(v) }

// ErrInvalidSetting is returned for a value out of range.
var ErrInvalidSetting = fmt.Errorf("engine: invalid setting")

func setTimeout(v *atomic.Int64, d time.Duration, name string, positive bool) error {
	if d < 0 || d > MaxTimeout || positive && d == 0 {
		return fmt.Errorf("%w: %s %v", ErrInvalidSetting, name, d)
	}
	v.Store(int64(d))
	return nil
}
