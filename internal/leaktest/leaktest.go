// Package leaktest checks that a test leaves no goroutines running. It is
// for tests only; it does not tell which goroutine leaked beyond printing
// every stack.
package leaktest

import (
	"runtime"
	"testing"
	"time"
)

// Check fails t if goroutines started during the test are still running
// when it ends, after a grace of 5 s for them to wind down. Call it first,
// so that its cleanup runs last.
func Check(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
		}
	})
}
