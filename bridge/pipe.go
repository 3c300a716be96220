package bridge

import (
	"io"
	"net"
	"sync"
	"time"
)

// pipeConn is the connection mellium's Session reads and writes: reads
// return the inbound stanzas the bridge delivers, writes go to the pump.
//
// Inbound bytes wait in a buffer without a bound, so that delivering never
// blocks the stream's callback goroutine; mellium's Serve drains it.
// Outbound writes block until the pump has read them, so that a full send
// queue slows mellium down rather than piling up here.
type pipeConn struct {
	out  *io.PipeReader // the pump's end
	outW *io.PipeWriter // mellium's end

	mu     sync.Mutex // guards in and closed
	cond   *sync.Cond // signalled when in grows or the conn closes
	in     []byte
	closed bool
	once   sync.Once
}

func newPipeConn() *pipeConn {
	c := &pipeConn{}
	c.out, c.outW = io.Pipe()
	c.cond = sync.NewCond(&c.mu)
	return c
}

// deliver appends inbound bytes for mellium to read.
func (c *pipeConn) deliver(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.in = append(c.in, b...)
	c.cond.Broadcast()
}

// Read returns inbound bytes, waiting for some; io.EOF once closed and
// drained.
func (c *pipeConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.in) == 0 && !c.closed {
		c.cond.Wait()
	}
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	if len(c.in) == 0 {
		c.in = nil // let a large buffer go
	}
	return n, nil
}

// Write hands outbound bytes to the pump.
func (c *pipeConn) Write(p []byte) (int, error) {
	return c.outW.Write(p)
}

// Close ends both directions: mellium reads io.EOF once it has read what was
// delivered, and its writes fail.
func (c *pipeConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.cond.Broadcast()
		c.mu.Unlock()
		c.outW.CloseWithError(io.ErrClosedPipe)
	})
	return nil
}

func (c *pipeConn) LocalAddr() net.Addr  { return addr{} }
func (c *pipeConn) RemoteAddr() net.Addr { return addr{} }

// Deadlines are not supported: mellium sets them only while negotiating,
// which the bridge does not do.
func (c *pipeConn) SetDeadline(time.Time) error      { return nil }
func (c *pipeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *pipeConn) SetWriteDeadline(time.Time) error { return nil }

type addr struct{}

func (addr) Network() string { return "xmpptrack" }
func (addr) String() string  { return "stream" }
