package engine

import "testing"

// TestRelayBufferAdapts: a direction's buffer doubles after reads that fill
// it, up to relayGrowth times the configured size, and falls back after
// reads that use little of it, never below the configured size.
func TestRelayBufferAdapts(t *testing.T) {
	e := New(&Direct{}, nil, nil)
	base := e.settings.RelayBufferSize()
	d := &direction{e: e, size: base}
	read := func(n int) { d.adapt(n, d.size) }
	steps := []struct {
		n    int // bytes read, as a multiple of the buffer (-1: a few bytes)
		want int // size after, in units of base
	}{
		{1, 2}, {1, 4}, {1, 8}, {1, 8}, // full reads: grow to the cap
		{0, 8},                             // half-full: stay
		{-1, 4}, {-1, 2}, {-1, 1}, {-1, 1}, // small reads: shrink to base
	}
	for i, st := range steps {
		switch st.n {
		case 1:
			read(d.size)
		case 0:
			read(d.size / 2)
		default:
			read(10)
		}
		if d.size != st.want*base {
			t.Fatalf("step %d: size %d, want %d", i, d.size, st.want*base)
		}
	}
	if c := relayClass(base); minRelayClass<<c != base {
		t.Errorf("class of %d holds %d", base, minRelayClass<<c)
	}
	for _, size := range []int{1, MinRelayBufferSize, 10000, MaxRelayBufferSize} {
		bp := getRelayBuf(size)
		if len(*bp) < size {
			t.Errorf("getRelayBuf(%d): %d bytes", size, len(*bp))
		}
		putRelayBuf(bp)
	}
}
