package admin_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"tungate/admin"
)

// FuzzParseLogin checks the server's login parser: ParseLogin and
// ReadLogin agree, and what parses encodes back to the same octets.
func FuzzParseLogin(f *testing.F) {
	for _, s := range []string{
		"01 05 61646d696e 06 736563726574", "01 00 00", "02", "01 01 61", "01 ff", "01 01 61 01 62 ff",
	} {
		f.Add(h(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		l, n, err := admin.ParseLogin(b)
		rl, rerr := admin.ReadLogin(bytes.NewReader(b))
		if (err == nil) != (rerr == nil) || err == nil && rl != l {
			t.Fatalf("ParseLogin = %+v, %v; ReadLogin = %+v, %v", l, err, rl, rerr)
		}
		if err != nil {
			if n != 0 && !errors.Is(err, admin.ErrStringLength) {
				t.Fatalf("error %v with n = %d", err, n)
			}
			return
		}
		if n > len(b) {
			t.Fatalf("n = %d past %d octets", n, len(b))
		}
		out, err := admin.AppendLogin(nil, l)
		if err != nil || !bytes.Equal(out, b[:n]) {
			t.Fatalf("AppendLogin(%+v) = %x, %v; parsed from %x", l, out, err, b[:n])
		}
	})
}

// FuzzParseRequest checks the server's request framing: ParseRequest and
// ReadRequest agree, and what parses encodes back to the same octets.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"00 00 0001 0000", "00 03 0004 0006 00000002 0010", "01 00 0009 0008 03 626f62 02 7077 01",
		"02 01 ffff 0003 616263", "09 01 0001 0001 00", "00 00 00", "00 00 0001 ffff",
	} {
		f.Add(h(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := admin.ParseRequest(b)
		rr, rerr := admin.ReadRequest(bytes.NewReader(b))
		if (err == nil) != (rerr == nil) {
			t.Fatalf("ParseRequest: %v; ReadRequest: %v", err, rerr)
		}
		if err != nil {
			return
		}
		if rr.Cmd != r.Cmd || rr.RID != r.RID || !bytes.Equal(rr.Data, r.Data) {
			t.Fatalf("ParseRequest = %+v; ReadRequest = %+v", r, rr)
		}
		out, err := admin.AppendRequest(nil, r)
		if err != nil || !bytes.Equal(out, b[:n]) {
			t.Fatalf("AppendRequest = %x, %v; parsed from %x", out, err, b[:n])
		}
	})
}

// FuzzServerRequests sends arbitrary octets to a logged-in session, as a
// stream of requests, and checks that the server answers every complete
// request in order with a well-formed reply that echoes its TYPE, CMD and
// RID, keeps DATA empty on failure, and survives whatever it is sent.
func FuzzServerRequests(f *testing.F) {
	seeds := []string{
		"00 00 0001 0000",
		"00 04 0002 0000 00 03 0003 0006 00000000 ffff",
		"01 00 0004 000b 03 626f62 05 7365637265 01  01 01 0005 0005 04 726f6f74",
		"01 03 0006 0006 00 04 00010000  00 05 0007 0001 00",
		"01 03 0008 0003 05 01 00  01 03 0009 0003 03 01 01",
		"02 01 000a 0003 616263  02 02 000b 0000  02 00 000c 0000  00 00 000d 0000",
		"ff ff 0001 0002 0000  00 ff 0002 0000  00 07 0003 0002 0000",
		"00 06 0001 000a 0000000000000000 0001  01 04 0002 0008 0000000000000001",
		"01 02 0001 0009 04 726f6f74 03 6e6577  00 00 00",
	}
	for _, s := range seeds {
		f.Add(h(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		store := newFakeStore()
		fx := newFakeFixture(t, store, func(s *admin.Server) { s.MaxUsers = 5 })
		c := fx.dial(clientPeer)
		cl := admin.NewClient(c)
		if err := cl.Login(rootUser, rootPass); err != nil {
			t.Fatal(err)
		}
		// The requests the server must answer: every complete one, up to
		// a QUIT that ends the session.
		var reqs []admin.Request
		for rest := b; ; {
			r, n, err := admin.ParseRequest(rest)
			if err != nil {
				break
			}
			reqs = append(reqs, r)
			rest = rest[n:]
			if r.Cmd == admin.CmdQuit && len(r.Data) == 0 {
				break
			}
		}
		errc := make(chan error, 1)
		go func() { _, err := c.Write(b); errc <- err }()
		// The server may be requests ahead of the replies read here, so
		// the store says nothing of when root was deleted: the reply to
		// the request that deleted it does.
		rootGone := false
		deletesRoot := append([]byte{byte(len(rootUser))}, rootUser...)
		for i, req := range reqs {
			rep, err := admin.ReadReply(c)
			if err != nil {
				t.Fatalf("reply %d of %d: %v", i, len(reqs), err)
			}
			if rep.Cmd != req.Cmd || rep.RID != req.RID {
				t.Fatalf("reply %d: %v RID %d, for %v RID %d", i, rep.Cmd, rep.RID, req.Cmd, req.RID)
			}
			if rep.Status > admin.StatusNotPermitted {
				t.Fatalf("reply %d: status %v", i, rep.Status)
			}
			if rep.Status != admin.StatusOK && len(rep.Data) != 0 {
				t.Fatalf("reply %d: %v with DATA %x", i, rep.Status, rep.Data)
			}
			if rootGone {
				// root deleted itself (another admin was added first):
				// the session ends at the next request, answered X'0B'.
				if rep.Status != admin.StatusNotPermitted {
					t.Fatalf("reply %d: %v to a deleted admin", i, rep.Status)
				}
				break
			}
			if req.Cmd == admin.CmdDeleteUser && rep.Status == admin.StatusOK && bytes.Equal(req.Data, deletesRoot) {
				if _, ok := store.Get(rootUser); ok {
					t.Fatalf("reply %d: ok to deleting %s, which is still there", i, rootUser)
				}
				rootGone = true
			}
		}
		c.Close()
		<-errc
	})
}

// FuzzParseReply checks the client's reply parsers: ParseReply and
// ReadReply agree, the DATA of a successful reply parses with its
// command's parser or fails cleanly, and what parses encodes back to the
// same octets.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		"00 00 0001 00 0008 0000000000001234",
		"00 03 0004 00 001e 00000002 ffffffff 0002 05 616c696365 00 00000001 03 626f62 01 00000000",
		"00 05 0006 00 0003 05 01 01",
		"00 06 0007 00 0065 00000001 0000000000000000 0001 " + flow7Hex,
		"00 07 0008 00 0057 " + flow7Hex,
		"00 04 0005 00 0011 02 0000000000000001 0000000000000002",
		"02 02 0010 00 0006 0001 0000 01 00",
		"01 00 0009 07 0000", "02 01 000f 00 0003 616263", "00 00 00",
	} {
		f.Add(h(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := admin.ParseReply(b)
		rr, rerr := admin.ReadReply(bytes.NewReader(b))
		if (err == nil) != (rerr == nil) {
			t.Fatalf("ParseReply: %v; ReadReply: %v", err, rerr)
		}
		if err != nil {
			return
		}
		if rr.Cmd != r.Cmd || rr.RID != r.RID || rr.Status != r.Status || !bytes.Equal(rr.Data, r.Data) {
			t.Fatalf("ParseReply = %+v; ReadReply = %+v", r, rr)
		}
		if out, err := admin.AppendReply(nil, r); err != nil || !bytes.Equal(out, b[:n]) {
			t.Fatalf("AppendReply = %x, %v; parsed from %x", out, err, b[:n])
		}
		_ = r.Cmd.String() + r.Status.String()
		roundTrip := func(v any, err error, enc func() ([]byte, error)) {
			t.Helper()
			if err != nil {
				return
			}
			out, err := enc()
			if err != nil {
				// Only values the parser accepts but the encoder refuses:
				// none should exist.
				t.Fatalf("%v DATA %x parses as %+v but does not encode: %v", r.Cmd, r.Data, v, err)
			}
			if !bytes.Equal(out, r.Data) {
				t.Fatalf("%v DATA %x parses as %+v, encodes as %x", r.Cmd, r.Data, v, out)
			}
		}
		d := r.Data
		switch r.Cmd {
		case admin.CmdBytes, admin.CmdHistoric, admin.CmdConcurrent:
			v, err := admin.ParseCounter(d)
			roundTrip(v, err, func() ([]byte, error) { return admin.AppendCounter(nil, v), nil })
		case admin.CmdListUsers:
			p, err := admin.ParseUsersPage(d)
			roundTrip(p, err, func() ([]byte, error) { return admin.AppendUsersPage(nil, p) })
		case admin.CmdMetrics:
			m, nval, err := admin.ParseMetrics(d)
			if err == nil && nval == admin.MetricsCount {
				roundTrip(m, err, func() ([]byte, error) { return admin.AppendMetrics(nil, m), nil })
			}
		case admin.CmdGetConfig, admin.CmdSetConfig:
			v, err := admin.ParseConfigValue(d)
			roundTrip(v, err, func() ([]byte, error) { return admin.AppendConfigValue(nil, v) })
			if err == nil {
				_ = v.Uint()
			}
		case admin.CmdListFlows:
			p, err := admin.ParseFlowsPage(d)
			roundTrip(p, err, func() ([]byte, error) { return admin.AppendFlowsPage(nil, p) })
		case admin.CmdGetFlow:
			fl, err := admin.ParseFlowData(d)
			roundTrip(fl, err, func() ([]byte, error) { return admin.AppendFlow(nil, fl) })
			if err == nil {
				_ = fl.Flags.String() + fl.Proto.String() + fl.State.String() + fl.Src.String() + fl.Dst.String()
			}
		case admin.CmdCaps:
			c, err := admin.ParseCapabilities(d)
			roundTrip(c, err, func() ([]byte, error) { return admin.AppendCapabilities(nil, c) })
			if err == nil {
				again, _ := admin.AppendCapabilities(nil, c)
				c2, _ := admin.ParseCapabilities(again)
				if !reflect.DeepEqual(c, c2) {
					t.Fatalf("capabilities %+v, then %+v", c, c2)
				}
			}
		}
	})
}
