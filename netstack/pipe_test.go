package netstack

import (
	"os"
	"sync"
)

// pipeDevice is one end of an in-memory link: what one end writes, the
// other reads. It implements Device.
type pipeDevice struct {
	mtu  int
	in   chan []byte
	peer *pipeDevice
	// tap, when set, sees a copy of every packet this end writes.
	tap chan []byte

	closeOnce sync.Once
	closed    chan struct{}
}

func newPipe(mtu int) (*pipeDevice, *pipeDevice) {
	a := &pipeDevice{mtu: mtu, in: make(chan []byte, 1024), closed: make(chan struct{})}
	b := &pipeDevice{mtu: mtu, in: make(chan []byte, 1024), closed: make(chan struct{})}
	a.peer, b.peer = b, a
	return a, b
}

func (d *pipeDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case p := <-d.in:
		sizes[0] = copy(bufs[0][offset:], p)
		n := 1
		for n < len(bufs) {
			select {
			case p := <-d.in:
				sizes[n] = copy(bufs[n][offset:], p)
				n++
				continue
			default:
			}
			break
		}
		return n, nil
	case <-d.closed:
		return 0, os.ErrClosed
	}
}

func (d *pipeDevice) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		p := append([]byte(nil), b[offset:]...)
		if d.tap != nil {
			select {
			case d.tap <- p:
			default:
			}
		}
		select {
		case d.peer.in <- p:
		case <-d.closed:
			return i, os.ErrClosed
		case <-d.peer.closed:
			return i, os.ErrClosed
		}
	}
	return len(bufs), nil
}

func (d *pipeDevice) BatchSize() int { return 8 }
func (d *pipeDevice) MTU() int       { return d.mtu }
func (d *pipeDevice) Headroom() int  { return 4 }
func (d *pipeDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}
