// Package stackgrow lets a goroutine that is about to run a deep call path
// (gVisor's TCP send and receive, net.Dialer, a TUN write) take the stack
// it will need in one step, at its start.
//
// A goroutine starts with a small stack, and the runtime doubles it each
// time a call would overflow it, copying the stack and adjusting every
// frame on it. Reached forty frames deep, one doubling costs microseconds
// (the runtime decodes each frame's tables), and a short-lived goroutine
// on the gateway's packet path doubled two or three times before it
// ended: about a tenth of the gateway's CPU per connection. Growing while
// the stack holds one or two frames costs a fraction of that.
//
// It does not keep stacks around between goroutines (the runtime frees a
// grown stack when its goroutine ends), and a goroutine that waits for a
// long time should not call it: the garbage collector shrinks the stack
// of a goroutine that uses less than a quarter of it, but only when it
// runs, so a held connection's goroutine would keep 32 KiB meanwhile.
package stackgrow
