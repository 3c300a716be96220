package faultproxy

import (
	"bytes"
	"net"
	"time"
)

// chunk is what one read brought, waiting to be forwarded.
type chunk struct {
	b   []byte
	due time.Time // when it may be written: read time plus the latency
}

// delayLine forwards one direction of a connection to its leg a fixed
// latency after each chunk was read (see Proxy.SetLatency), in order, from a
// goroutine of its own.
//
// The reading goroutine writes a chunk itself when no latency applies and
// nothing is waiting in the line, so that without latency forwarding is
// exactly what it is without a line. Once a chunk waits in the line, every
// later chunk goes through the line too, latency or not, so that none
// overtakes another. Stall (and HoldServerToClient, for the server-to-client
// direction) holds the line as it holds the reader; a cut or Close discards
// what waits in it.
type delayLine struct {
	c    *conn
	dst  *net.TCPConn
	back bool          // server to client: HoldServerToClient holds it too
	done chan struct{} // closed when run returns

	// Guarded by c.p.mu.
	q      []chunk // waiting, oldest first
	busy   bool    // run is writing a chunk taken from q
	closed bool    // the reader forwards nothing more
	err    error   // the write error that ended forwarding
}

func newDelayLine(c *conn, dst *net.TCPConn, back bool) *delayLine {
	return &delayLine{c: c, dst: dst, back: back, done: make(chan struct{})}
}

// live reports whether the connection is neither cut nor the proxy closed.
// Called with p.mu held.
func (l *delayLine) live() bool {
	return l.c.cut == notCut && !l.c.p.closed
}

// paused reports whether forwarding is held by Stall or, server to client,
// by HoldServerToClient. Called with p.mu held.
func (l *delayLine) paused() bool {
	p := l.c.p
	return p.stalled || (l.back && p.held)
}

// forward forwards b, read at readAt: at once if no latency applies and the
// line is empty, otherwise through the line, readAt plus the latency later.
// It returns the write error that ended forwarding, if any; after one,
// nothing more is forwarded.
func (l *delayLine) forward(b []byte, readAt time.Time) error {
	p := l.c.p
	p.mu.Lock()
	if l.err != nil {
		err := l.err
		p.mu.Unlock()
		return err
	}
	d := p.latency
	if d <= 0 && len(l.q) == 0 && !l.busy {
		p.mu.Unlock()
		_, err := l.dst.Write(b)
		if err != nil {
			p.mu.Lock()
			l.err = err
			p.mu.Unlock()
		}
		return err
	}
	l.q = append(l.q, chunk{b: bytes.Clone(b), due: readAt.Add(d)})
	p.cond.Broadcast()
	p.mu.Unlock()
	return nil
}

// idle waits until nothing waits in the line or is being written from it,
// and returns the write error that ended forwarding, if any. It returns at
// once if the connection is cut or the proxy closed.
func (l *delayLine) idle() error {
	p := l.c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for (len(l.q) > 0 || l.busy) && l.err == nil && l.live() {
		p.cond.Wait()
	}
	return l.err
}

// close tells the line that nothing more will be forwarded, waits until it
// has written what waits in it (or discarded it, if the connection is cut or
// the proxy closed) and returns the write error that ended forwarding, if
// any.
func (l *delayLine) close() error {
	p := l.c.p
	p.mu.Lock()
	l.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
	<-l.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return l.err
}

// run writes the chunks of the line when they are due, until the line is
// closed and empty, a write fails, or the connection is cut.
func (l *delayLine) run() {
	defer close(l.done)
	p := l.c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		for len(l.q) == 0 && !l.closed && l.live() {
			p.cond.Wait()
		}
		if len(l.q) == 0 || !l.live() {
			l.q = nil
			return
		}
		ch := l.q[0]
		if wait := time.Until(ch.due); wait > 0 {
			t := time.AfterFunc(wait, func() {
				p.mu.Lock()
				p.cond.Broadcast()
				p.mu.Unlock()
			})
			for time.Now().Before(ch.due) && l.live() {
				p.cond.Wait()
			}
			t.Stop()
		}
		for l.paused() && l.live() {
			p.cond.Wait()
		}
		if !l.live() {
			continue // discards what waits
		}
		l.q[0] = chunk{}
		l.q = l.q[1:]
		l.busy = true
		p.mu.Unlock()
		_, err := l.dst.Write(ch.b)
		p.mu.Lock()
		l.busy = false
		p.cond.Broadcast()
		if err != nil {
			l.err = err
			l.q = nil
			return
		}
	}
}
