package engine_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"tungate/internal/engine"
	"tungate/socks"
)

// A gateway whose upstream keeps connections ready: a run of dials uses
// them, each flow reaches the last hop once, and a refusal there keeps its
// code on a ready connection too.
func TestWarmUpstream(t *testing.T) {
	checkLeaks(t)
	echo := echoTCP(t)
	closed := closedPort(t)
	last := startGateway(t, &engine.Direct{}, withUsers(map[string]string{"bob": "pw"}))
	up, err := engine.NewUpstream([]socks.Hop{{Addr: last.addr, Username: "bob", Password: "pw"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Warm(2, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := up.Warm(2, 5*time.Second); err == nil {
		t.Fatal("a second Warm succeeded")
	}
	t.Cleanup(func() {
		up.Close()
		up.Close()
	})
	first := startGateway(t, up)
	d := &socks.Dialer{Hops: []socks.Hop{hop(first)}}
	const dials = 20
	for i := range dials {
		c, err := d.Dial(context.Background(), echo)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		roundTrip(t, c, fmt.Sprintf("warm flow %d", i))
		c.Close()
		// Leave the filler time to replace what was taken, as a steady
		// load would.
		time.Sleep(20 * time.Millisecond)
	}
	st := up.WarmStats()
	if st.Hits+st.Misses != dials || st.Hits < dials/2 {
		t.Fatalf("WarmStats = %+v, want most of %d dials on ready connections", st, dials)
	}
	if got := last.eng.Registry().Metrics().Historic; got != dials {
		t.Fatalf("last hop saw %d flows, want %d: a ready connection became a flow", got, dials)
	}
	_, err = d.Dial(context.Background(), closed)
	var re *socks.ReplyError
	if !errors.As(err, &re) || re.Code != socks.ReplyConnectionRefused {
		t.Fatalf("dial to a closed port through the warm chain: %v; want connection refused", err)
	}
	if got := up.WarmStats().Hits; got != st.Hits+1 {
		t.Fatalf("the refused dial did not use a ready connection (hits %d, before %d)", got, st.Hits)
	}
}
