package admin_test

import (
	"bytes"
	"io"
	"testing"
	"testing/synctest"
	"time"

	"tungate/admin"
)

// The tests here run in synctest bubbles: time is fake and moves only when
// every goroutine of the bubble is blocked, so the durations they check are
// exact. A bubble also fails the test if a goroutine outlives it.

// readUntilClosed reads from c until the server closes it and returns what
// came and how long it took.
func readUntilClosed(t *testing.T, c io.Reader) ([]byte, time.Duration) {
	t.Helper()
	start := time.Now()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b, time.Since(start)
}

func TestLoginTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeFixture(t, newFakeStore(), func(s *admin.Server) { s.LoginTimeout = 3 * time.Second })

		// Nothing sent: closed after the timeout, without a reply.
		c := f.dial(clientPeer)
		if b, d := readUntilClosed(t, c); len(b) != 0 || d != 3*time.Second {
			t.Errorf("silent client: got %x after %v, want nothing after 3s", b, d)
		}

		// Half a login, then a stall: the same.
		c = f.dial(clientPeer)
		if _, err := c.Write(h("01 04 726f")); err != nil {
			t.Fatal(err)
		}
		if b, d := readUntilClosed(t, c); len(b) != 0 || d != 3*time.Second {
			t.Errorf("stalled login: got %x after %v, want nothing after 3s", b, d)
		}
		synctest.Wait()
		if n := f.srv.Sessions(); n != 0 {
			t.Errorf("%d sessions left", n)
		}
	})
}

func TestIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeFixture(t, newFakeStore(), func(s *admin.Server) { s.IdleTimeout = time.Minute })
		c := f.dial(clientPeer)
		cl := admin.NewClient(c)
		if err := cl.Login(rootUser, rootPass); err != nil {
			t.Fatal(err)
		}
		// Each request restarts the wait.
		for range 3 {
			time.Sleep(59 * time.Second)
			if err := cl.Ping([]byte("x")); err != nil {
				t.Fatalf("PING after 59s: %v", err)
			}
		}
		if b, d := readUntilClosed(t, c); len(b) != 0 || d != time.Minute {
			t.Errorf("idle session: got %x after %v, want nothing after 1m", b, d)
		}

		// A request cut short stalls past the timeout: the session ends.
		c = f.dial(clientPeer)
		cl = admin.NewClient(c)
		if err := cl.Login(rootUser, rootPass); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(h("02 01 0001 0010 6162")); err != nil {
			t.Fatal(err)
		}
		if b, d := readUntilClosed(t, c); len(b) != 0 || d != time.Minute {
			t.Errorf("stalled request: got %x after %v, want nothing after 1m", b, d)
		}
	})
}

func TestWriteTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeFixture(t, newFakeStore(), func(s *admin.Server) { s.WriteTimeout = 5 * time.Second })
		c := f.dial(clientPeer)
		cl := admin.NewClient(c)
		if err := cl.Login(rootUser, rootPass); err != nil {
			t.Fatal(err)
		}
		// A client that sends but never reads: the reply cannot be
		// written, and the session ends after the write timeout.
		start := time.Now()
		if _, err := cl.Send(admin.CmdPing, []byte("x")); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if n := f.srv.Sessions(); n != 0 {
			t.Errorf("%d sessions after %v of a client not reading", n, time.Since(start))
		}
	})
}

func TestFailedLoginBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeFixture(t, newFakeStore(), func(s *admin.Server) {
			s.Backoff = 250 * time.Millisecond
			s.MaxBackoff = 3 * time.Second
		})
		const peerA, peerB = "203.0.113.1:1000", "203.0.113.2:1000"
		attempt := func(peer, pass string) ([]byte, time.Duration) {
			t.Helper()
			start := time.Now()
			reply, _ := f.rawLogin(peer, append(loginBytes(rootUser, pass), h("02 00 0001 0000")...))
			return reply, time.Since(start)
		}
		failed := h("01 01")
		ok := h("01 00 02 00 0001 00 0000")

		// Each failure from A doubles the delay of its reply, up to the
		// maximum; another port of A is the same peer.
		for i, want := range []time.Duration{250, 500, 1000, 2000, 3000, 3000} {
			peer := peerA
			if i%2 == 1 {
				peer = "203.0.113.1:2000"
			}
			if b, d := attempt(peer, "wrong"); !bytes.Equal(b, failed) || d != want*time.Millisecond {
				t.Errorf("failure %d from A: %x after %v, want %x after %v", i+1, b, d, failed, want*time.Millisecond)
			}
		}
		// B is not slowed by A.
		if b, d := attempt(peerB, "wrong"); !bytes.Equal(b, failed) || d != 250*time.Millisecond {
			t.Errorf("first failure from B: %x after %v", b, d)
		}
		// A success is not delayed once A's delay is over, and forgives A.
		if b, d := attempt(peerA, rootPass); !bytes.Equal(b, ok) || d != 0 {
			t.Errorf("success from A: %x after %v", b, d)
		}
		if b, d := attempt(peerA, "wrong"); !bytes.Equal(b, failed) || d != 250*time.Millisecond {
			t.Errorf("failure from A after a success: %x after %v", b, d)
		}

		// A login from A while A is still being delayed waits for the
		// delay to end before its credentials are checked: parallel
		// connections do not get around the backoff.
		attempt(peerA, "wrong") // 500ms
		done := make(chan time.Duration)
		go func() {
			_, d := attempt(peerA, "wrong") // 1s delay, reply at 1s
			done <- d
		}()
		time.Sleep(100 * time.Millisecond)
		if b, d := attempt(peerA, rootPass); !bytes.Equal(b, ok) || d != 900*time.Millisecond {
			t.Errorf("a login during A's delay: %x after %v, want it to wait 900ms", b, d)
		}
		if d := <-done; d != time.Second {
			t.Errorf("the delayed failure took %v", d)
		}
		if n := f.eng.Registry().Metrics().FailedLogins; n != 10 {
			t.Errorf("failed logins = %d, want 10", n)
		}
	})
}

// TestCloseDuringBackoff checks that Close does not wait out a delay.
func TestCloseDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeFixture(t, newFakeStore(), func(s *admin.Server) { s.Backoff = time.Hour })
		c := f.dial(clientPeer)
		go c.Write(loginBytes(rootUser, "wrong"))
		synctest.Wait()
		start := time.Now()
		f.srv.Close()
		if d := time.Since(start); d != 0 {
			t.Errorf("Close took %v", d)
		}
		if b, _ := io.ReadAll(c); len(b) != 0 {
			t.Errorf("got %x after Close", b)
		}
	})
}
