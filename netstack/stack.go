package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"tungate/internal/engine"
)

// maxPacket is the largest IP packet a device hands over: the largest MTU.
const maxPacket = 65535

// nicID is the one NIC of the stack.
const nicID tcpip.NICID = 1

// Defaults for Config.
const (
	DefaultMaxHalfOpen = 1024
	// TCP buffer ranges: gVisor allocates as data arrives, so these are
	// ceilings, and receive-buffer moderation grows a connection's window
	// towards Max only as its rate needs.
	tcpBufMin     = 4 << 10
	tcpBufDefault = 256 << 10
	tcpBufMax     = 8 << 20
)

// Config tunes a Stack.
type Config struct {
	// MaxHalfOpen limits connections whose SYN is held while the engine
	// dials; SYNs past it are dropped, and the client retransmits.
	// Zero means DefaultMaxHalfOpen.
	MaxHalfOpen int
	// Addrs are the gateway's addresses on the TUN side; it answers from
	// them where it is itself a hop (a TTL that ends at the gateway).
	Addrs []netip.Addr
	// ICMP says what happens to echo requests (ping). The zero value,
	// ICMPOff, drops them.
	ICMP ICMPMode
	// Mark is set (SO_MARK) on the sockets the stack opens itself (ICMP
	// forwarding), so that they bypass the TUN device.
	Mark uint32
	// ICMPRate and ICMPBurst bound the ICMP errors the stack generates,
	// per second and in a burst, over all clients. Zero means the
	// defaults; a negative rate sends none.
	ICMPRate, ICMPBurst int
	// Logger receives the stack's messages; per-packet ones at Debug.
	Logger *slog.Logger
}

// Stack is a gVisor network stack on a Device whose TCP connections and
// UDP datagrams, for any destination, become flows of an engine.
type Stack struct {
	stack *stack.Stack
	link  *link
	dev   Device
	eng   *engine.Engine
	log   *slog.Logger
	udp   *udpMapper
	syns  *synTable
	icmp  *icmpLimiter
	addrs []netip.Addr

	icmpMode ICMPMode
	pinger   *pinger

	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	flows  sync.WaitGroup // one per TCP connection or UDP mapping being served

	closeOnce sync.Once
}

// New builds the stack on dev and starts reading from it. The stack owns
// dev from then on and closes it in Close.
func New(dev Device, eng *engine.Engine, cfg Config) (*Stack, error) {
	if cfg.MaxHalfOpen <= 0 {
		cfg.MaxHalfOpen = DefaultMaxHalfOpen
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ICMPRate == 0 {
		cfg.ICMPRate = defaultICMPRate
	}
	if cfg.ICMPBurst <= 0 {
		cfg.ICMPBurst = defaultICMPBurst
	}
	if dev.MTU() > maxPacket || dev.MTU() < header.IPv4MinimumMTU {
		return nil, fmt.Errorf("netstack: device MTU %d out of range", dev.MTU())
	}
	gs := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	s := &Stack{
		stack: gs, dev: dev, eng: eng, log: cfg.Logger,
		syns:     newSynTable(2 * cfg.MaxHalfOpen),
		icmp:     newICMPLimiter(cfg.ICMPRate, cfg.ICMPBurst),
		addrs:    cfg.Addrs,
		icmpMode: cfg.ICMP,
	}
	s.pinger = newPinger(s, cfg.Mark)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.configure(cfg); err != nil {
		gs.Close()
		gs.Wait()
		return nil, err
	}
	s.link.start()
	return s, nil
}

func (s *Stack) configure(cfg Config) error {
	opts := []struct {
		name string
		opt  tcpip.SettableTransportProtocolOption
	}{
		{"SACK", ptr(tcpip.TCPSACKEnabled(true))},
		{"receive buffer moderation", ptr(tcpip.TCPModerateReceiveBufferOption(true))},
		{"receive buffer", &tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpBufMin, Default: tcpBufDefault, Max: tcpBufMax}},
		{"send buffer", &tcpip.TCPSendBufferSizeRangeOption{Min: tcpBufMin, Default: tcpBufDefault, Max: tcpBufMax}},
		// No TIME_WAIT on the TUN side: gVisor hands a new SYN for a
		// connection in TIME_WAIT only to a listening endpoint, and the
		// forwarder is none, so a client reusing its port after the
		// server closed first would get no answer for the whole wait.
		// The outbound side keeps the kernel's own TIME_WAIT.
		{"TIME_WAIT", ptr(tcpip.TCPTimeWaitTimeoutOption(0))},
	}
	for _, o := range opts {
		if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); err != nil {
			return fmt.Errorf("netstack: TCP %s: %s", o.name, err)
		}
	}

	s.link = newLink(s.dev)
	s.link.intercept = s.handleEcho
	if err := s.stack.CreateNIC(nicID, s.link); err != nil {
		return fmt.Errorf("netstack: create NIC: %s", err)
	}
	// Promiscuous: accept packets for any destination. Spoofing: send
	// from any source, so that replies come from the address the client
	// asked for.
	if err := s.stack.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous mode: %s", err)
	}
	if err := s.stack.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %s", err)
	}
	s.stack.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})

	fwd := tcp.NewForwarder(s.stack, 0, cfg.MaxHalfOpen, s.handleTCP)
	s.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		s.syns.remember(id, pkt)
		return fwd.HandlePacket(id, pkt)
	})
	s.udp = newUDPMapper(s)
	s.link.idle = s.udp.flush
	s.link.udp = s.udp.handleRaw
	s.stack.SetTransportProtocolHandler(udp.ProtocolNumber, s.udp.handle)
	return nil
}

func ptr[T any](v T) *T { return &v }

// enter registers a flow goroutine; it reports false once the stack is
// closing, so that no flow starts after Close began waiting.
func (s *Stack) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.flows.Add(1)
	return true
}

// Close stops the stack. Order: refuse new flows; end the live ones (their
// context) and the UDP mappings; wait for their goroutines; close the
// device, which ends the reader; tear the gVisor stack down and wait for
// its goroutines. It is idempotent and returns why the reader stopped, if
// it failed.
func (s *Stack) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		s.udp.closeAll()
		s.pinger.closeAll()
		s.flows.Wait()

		s.link.Close()
		if c, ok := s.dev.(io.Closer); ok {
			err = c.Close()
		}
		s.link.Wait()
		s.stack.Close()
		s.stack.Wait()
		if s.link.readErr != nil {
			err = errors.Join(err, s.link.readErr)
		}
	})
	return err
}

// Done returns a channel closed when the device reader stops on its own
// (the device failed or went away).
func (s *Stack) Done() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		s.link.Wait()
		close(done)
	}()
	return done
}
