package engine

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"tungate/socks"
)

// Engine carries every flow, whichever way it came in, from a request to
// its outbound and relays it, counting in one registry.
type Engine struct {
	out      Outbound
	settings *Settings
	reg      *Registry
	log      *slog.Logger
}

// New returns an engine that sends flows to out.
func New(out Outbound, settings *Settings, log *slog.Logger) *Engine {
	if settings == nil {
		settings = NewSettings()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{
		out:      out,
		settings: settings,
		reg:      NewRegistry(settings.MaxFlows),
		log:      log,
	}
}

// Registry returns the engine's flow registry.
func (e *Engine) Registry() *Registry { return e.reg }

// Settings returns the engine's live settings.
func (e *Engine) Settings() *Settings { return e.settings }

// Outbound returns where the engine sends flows.
func (e *Engine) Outbound() Outbound { return e.out }

// open registers a flow, marking it as upstream-bound when it is.
func (e *Engine) open(spec FlowSpec) (*Flow, error) {
	if e.out.Upstream() {
		spec.Flags |= FlagUpstream
	}
	f, err := e.reg.Open(spec)
	if err != nil {
		return nil, &socks.ReplyError{Code: socks.ReplyGeneralFailure, Err: err}
	}
	return f, nil
}

// finish removes f from the registry and logs its totals.
func (e *Engine) finish(f *Flow) {
	f.Close()
	if !e.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	info := f.Info(time.Now())
	e.log.Debug("flow closed", "flow", info.ID, "proto", info.Proto.String(),
		"src", info.Src.String(), "dst", info.Dst.String(), "user", info.User,
		"up", info.BytesUp, "down", info.BytesDown, "pkts_up", info.PktsUp, "pkts_down", info.PktsDown,
		"age", info.Age.Round(time.Millisecond).String())
}

// ServeTCP runs one TCP flow: it dials spec.Dst, then calls accept with
// the outbound connection to get the client's side (a SOCKS server sends
// its success reply there; the TUN side completes the client's handshake),
// then relays until both directions end, ctx ends, the flow goes idle or
// it is closed through the registry. A failed dial returns an error that
// socks.ReplyFromError translates; accept is not called then.
func (e *Engine) ServeTCP(ctx context.Context, spec FlowSpec, accept func(up net.Conn) (net.Conn, error)) error {
	f, client, up, err := e.connectTCP(ctx, spec, accept)
	if err != nil {
		return err
	}
	defer e.finish(f)
	e.relayTCP(ctx, f, client, up)
	return nil
}

// StartTCP is ServeTCP for a caller that need not wait for the relay: it
// returns once the relay has started, and ended is called (once, on
// another goroutine) when the flow has ended. When it returns an error,
// the flow never started and ended is not called. The relay then holds no
// goroutine of the caller's, and while the flow is idle a single goroutine
// that has never copied anything, so with a small stack (the TUN side's
// held connections).
func (e *Engine) StartTCP(ctx context.Context, spec FlowSpec, accept func(up net.Conn) (net.Conn, error), ended func()) error {
	f, client, up, err := e.connectTCP(ctx, spec, accept)
	if err != nil {
		return err
	}
	e.startDetachedTCP(ctx, f, client, up, func() {
		e.finish(f)
		ended()
	})
	return nil
}

// connectTCP opens the flow, dials and accepts: everything of a TCP flow
// before the relay. On an error the flow is finished.
func (e *Engine) connectTCP(ctx context.Context, spec FlowSpec, accept func(up net.Conn) (net.Conn, error)) (*Flow, net.Conn, net.Conn, error) {
	spec.Proto = ProtoTCP
	f, err := e.open(spec)
	if err != nil {
		return nil, nil, nil, err
	}
	dctx, cancel := context.WithTimeout(withClient(ctx, spec.Src), e.settings.ConnectTimeout())
	up, err := e.out.DialTCP(dctx, spec.Dst)
	cancel()
	if err != nil {
		e.reg.CountDialFailure()
		e.finish(f)
		return nil, nil, nil, fmt.Errorf("engine: dial %s: %w", spec.Dst, err)
	}
	client, err := accept(up)
	if err != nil {
		up.Close()
		e.finish(f)
		return nil, nil, nil, err
	}
	f.SetState(StateEstablished)
	return f, client, up, nil
}

// ServeBind runs a SOCKS BIND: it listens through the outbound, calls
// listening with the address the peer must connect to, waits for the one
// connection, calls accept with the peer's address to get the client's
// side, and relays.
func (e *Engine) ServeBind(ctx context.Context, spec FlowSpec, listening func(socks.Addr) error, accept func(peer socks.Addr) (net.Conn, error)) error {
	spec.Proto = ProtoTCP
	f, err := e.open(spec)
	if err != nil {
		return err
	}
	defer e.finish(f)

	dctx, cancel := context.WithTimeout(ctx, e.settings.ConnectTimeout())
	bl, err := e.out.Bind(dctx, spec.Dst)
	cancel()
	if err != nil {
		e.reg.CountDialFailure()
		return fmt.Errorf("engine: bind for %s: %w", spec.Dst, err)
	}
	defer bl.Close()
	if err := listening(bl.Addr()); err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, e.settings.ConnectTimeout())
	f.SetAbort(cancel)
	peer, from, err := bl.Accept(actx)
	cancel()
	if err != nil {
		return fmt.Errorf("engine: bind for %s: %w", spec.Dst, err)
	}
	f.setDst(from)
	client, err := accept(from)
	if err != nil {
		peer.Close()
		return err
	}
	f.SetState(StateEstablished)
	e.relayTCP(ctx, f, client, peer)
	return nil
}

// ServeUDP runs one UDP association between client and a new outbound
// endpoint. ready is called once the outbound side is ready (a SOCKS server
// sends its success reply there). The association ends when ctx ends, a
// side is closed, it goes idle or it is closed through the registry.
func (e *Engine) ServeUDP(ctx context.Context, spec FlowSpec, client socks.PacketConn, ready func() error) error {
	spec.Proto = ProtoUDP
	f, err := e.open(spec)
	if err != nil {
		return err
	}
	defer e.finish(f)

	dctx, cancel := context.WithTimeout(withClient(ctx, spec.Src), e.settings.ConnectTimeout())
	out, err := e.out.ListenUDP(dctx)
	cancel()
	if err != nil {
		e.reg.CountDialFailure()
		return fmt.Errorf("engine: UDP association: %w", err)
	}
	if err := ready(); err != nil {
		out.Close()
		return err
	}
	f.SetState(StateEstablished)
	e.relayUDP(ctx, f, client, out)
	return nil
}

// SOCKSHandler returns the socks.Handler that runs SOCKS5 requests through
// the engine.
func (e *Engine) SOCKSHandler() socks.Handler { return socksHandler{e} }

type socksHandler struct{ e *Engine }

func spec(s *socks.Session) FlowSpec {
	return FlowSpec{
		Src:   socks.AddrFromAddrPort(s.ClientAddr),
		Dst:   s.Request.Addr,
		User:  s.User,
		Flags: FlagSOCKS,
	}
}

// Connect implements socks.Handler.
func (h socksHandler) Connect(ctx context.Context, s *socks.Session) error {
	return h.e.ServeTCP(ctx, spec(s), func(up net.Conn) (net.Conn, error) {
		bound, _ := socks.AddrFromNetAddr(up.LocalAddr())
		if err := s.Reply(socks.ReplySucceeded, bound); err != nil {
			return nil, err
		}
		return s.Conn, nil
	})
}

// Bind implements socks.Handler.
func (h socksHandler) Bind(ctx context.Context, s *socks.Session) error {
	return h.e.ServeBind(ctx, spec(s),
		func(listening socks.Addr) error { return s.Reply(socks.ReplySucceeded, listening) },
		func(peer socks.Addr) (net.Conn, error) {
			if err := s.Reply(socks.ReplySucceeded, peer); err != nil {
				return nil, err
			}
			return s.Conn, nil
		})
}

// Associate implements socks.Handler.
func (h socksHandler) Associate(ctx context.Context, s *socks.Session, client socks.PacketConn) error {
	sp := spec(s)
	sp.Dst = socks.Addr{}
	return h.e.ServeUDP(ctx, sp, client, func() error {
		return s.Reply(socks.ReplySucceeded, s.UDPRelay)
	})
}
