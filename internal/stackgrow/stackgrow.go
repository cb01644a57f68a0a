package stackgrow

// Frame sizes: half of the stack each asks for. The runtime doubles a
// stack until the frame that overflowed it fits, with its guard and what
// is used already; a frame of half a size does not fit in the size below
// and does fit in that size.
const (
	frame16K = 8 << 10
	frame32K = 16 << 10
)

// To16K makes the calling goroutine's stack at least 16 KiB (the largest
// size the runtime keeps per-CPU caches of) unless it is already.
func To16K() { sink16K(0) }

// To32K makes the calling goroutine's stack at least 32 KiB unless it is
// already.
func To32K() { sink32K(0) }

// sink16K and sink32K have frames of about the size wanted; the array is
// written and read through i, so that the compiler keeps it.
//
//go:noinline
func sink16K(i int) byte {
	var b [frame16K]byte
	b[i] = 1
	return b[(i*7)%len(b)]
}

//go:noinline
func sink32K(i int) byte {
	var b [frame32K]byte
	b[i] = 1
	return b[(i*7)%len(b)]
}
