package stackgrow

import (
	"runtime/debug"
	"testing"
	"unsafe"
)

// depth calls itself n times with a frame of about 512 bytes and returns
// where a local variable of its first frame is after the calls; *first is
// where it was before them (set by the first frame). The two differ when
// the runtime moved the stack meanwhile.
//
//go:noinline
func depth(n int, first *uintptr) uintptr {
	var pad [480]byte
	pad[n%len(pad)] = byte(n)
	if *first == 0 {
		*first = uintptr(unsafe.Pointer(&pad[0]))
	}
	if n > 0 {
		depth(n-1, first)
	}
	return uintptr(unsafe.Pointer(&pad[0]))
}

// moved reports whether running grow and then using about need bytes of
// stack moved a new goroutine's stack.
func moved(grow func(), need int) bool {
	done := make(chan bool)
	go func() {
		grow()
		var first uintptr
		after := depth(need/512, &first)
		done <- after != first
	}()
	return <-done
}

func TestGrowKeepsStackInPlace(t *testing.T) {
	// A collection between the hint and the deep calls could shrink the
	// stack again (it uses little of it then): none runs meanwhile.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	for _, tt := range []struct {
		name string
		grow func()
		need int
		want bool
	}{
		// Without a hint, a fresh goroutine's stack (a few KiB) moves
		// on the way to 8 KiB: this shows that the probe sees a move.
		// (The frames are a little larger than 512 bytes, so the stack
		// used is up to a quarter more than need.)
		{"no hint, 8 KiB", func() {}, 8 << 10, true},
		{"16K, 8 KiB", To16K, 8 << 10, false},
		{"32K, 8 KiB", To32K, 8 << 10, false},
		{"32K, 20 KiB", To32K, 20 << 10, false},
		// 16 KiB is not enough for 20 KiB: the stack moves again.
		{"16K, 20 KiB", To16K, 20 << 10, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := moved(tt.grow, tt.need); got != tt.want {
				t.Errorf("stack moved = %v, want %v", got, tt.want)
			}
		})
	}
}

// deepWork stands for the packet path: n frames of 256 bytes.
//
//go:noinline
func deepWork(n int) byte {
	var pad [256]byte
	pad[n%len(pad)] = byte(n)
	if n == 0 {
		return pad[0]
	}
	return deepWork(n-1) + pad[1]
}

// BenchmarkGoroutine compares a short-lived goroutine that goes about 24
// KiB deep with and without the hint.
func BenchmarkGoroutine(b *testing.B) {
	for _, bb := range []struct {
		name string
		grow func()
	}{{"none", func() {}}, {"32K", To32K}} {
		b.Run(bb.name, func(b *testing.B) {
			done := make(chan byte)
			for b.Loop() {
				go func() {
					bb.grow()
					done <- deepWork(90)
				}()
				<-done
			}
		})
	}
}
