package faultproxy

import (
	"errors"
	"io"
	"net"
	"time"
)

// bufSize is the size of each direction's read buffer.
const bufSize = 32 << 10

// cutKind records whether, and how, a connection was cut.
type cutKind uint8

const (
	notCut  cutKind = iota
	cutSafe         // by Cut: FIN to the server after whole elements
	cutRaw          // by CutRaw, or by Cut on an opaque connection
)

// conn is one proxied connection: the client leg accepted by the proxy and
// the server leg it dials.
//
// The conn owns both net.Conns. Its serve goroutine reads the client and
// writes the server, a second goroutine reads the server and writes the
// client, and serve closes both legs once both goroutines are done. Each of
// the two has a delayLine whose goroutine writes for it while SetLatency
// delays bytes, and which it ends before it returns. Other
// goroutines (Cut, CutRaw, Close) only record the cut, reset legs and set
// deadlines to make those two goroutines end, which is safe to do
// concurrently; a leg of a cut connection is only ever closed with a reset,
// whichever goroutine gets to it first.
type conn struct {
	p      *Proxy
	client *net.TCPConn
	done   chan struct{} // closed when serve has returned

	// Guarded by p.mu.
	server *net.TCPConn // nil until dialled, then never changed
	cut    cutKind
	opaque bool
	mid    *midCut // the CutMidStanza request that cut the connection
}

// serve waits until new connections may be forwarded, dials the server and
// forwards bytes both ways until the connection ends.
func (c *conn) serve() {
	p := c.p
	defer p.wg.Done()
	defer close(c.done)
	defer c.remove()

	if !c.waitGate() {
		resetConn(c.client)
		return
	}
	server, err := p.dial()
	if err != nil {
		resetConn(c.client)
		return
	}
	p.mu.Lock()
	if c.cut != notCut || p.closed {
		p.mu.Unlock()
		server.Close()
		resetConn(c.client)
		return
	}
	c.server = server
	p.mu.Unlock()

	s2c := make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(s2c)
		c.serverToClient()
	}()
	c.clientToServer()
	<-s2c

	p.mu.Lock()
	kind, closed := c.cut, p.closed
	p.mu.Unlock()
	switch {
	case closed || kind == cutRaw:
		resetConn(c.client)
		resetConn(server)
	case kind == cutSafe:
		resetConn(c.client)
		server.Close()
	default:
		c.client.Close()
		server.Close()
	}
}

// waitGate waits while a Cut waits for the server to read cut connections to
// their end. It reports false if the connection was cut or the proxy closed
// meanwhile.
func (c *conn) waitGate() bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.draining > 0 && c.cut == notCut && !p.closed {
		p.cond.Wait()
	}
	return c.cut == notCut && !p.closed
}

// remove forgets the connection and, if CutMidStanza cut it, ends that
// request and lets new connections through.
func (c *conn) remove() {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	if c.mid != nil {
		p.draining--
		p.cond.Broadcast()
		close(c.mid.done)
	}
}

// midCutPending reports whether a CutMidStanza request waits for a
// connection to cut.
func (c *conn) midCutPending() bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.midCuts) > 0
}

// takeMidCut takes the oldest pending CutMidStanza request, if any, and
// marks the connection as cut by it.
func (c *conn) takeMidCut() bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.midCuts) == 0 || c.cut != notCut || c.opaque || p.closed {
		return false
	}
	c.mid = p.midCuts[0]
	p.midCuts = p.midCuts[1:]
	c.cut = cutSafe
	p.draining++
	p.cond.Broadcast()
	return true
}

// clientToServer forwards whole elements from the client to the server until
// the client's side ends or the connection is cut, then ends the server
// leg's writing half.
func (c *conn) clientToServer() {
	var sc scanner
	buf := make([]byte, bufSize)
	line := newDelayLine(c, c.server, false)
	go line.run()
	var rerr, werr error
	for rerr == nil && werr == nil {
		var n int
		n, rerr = c.client.Read(buf)
		readAt := time.Now()
		out := sc.Feed(buf[:n])
		if !c.flow(sc.Opaque()) {
			break
		}
		if start, end, ok := sc.LastElement(); ok && c.midCutPending() {
			// What came before the element reaches the server first, and
			// only this goroutine writes from then on.
			if werr = line.idle(); werr != nil {
				break
			}
			if c.takeMidCut() {
				// Forward up to the middle of the element, then cut.
				p := c.p
				p.mu.Lock()
				drain := p.drain
				p.mu.Unlock()
				c.server.SetWriteDeadline(time.Now().Add(drain))
				_, werr = c.server.Write(out[:start+(end-start)/2])
				break
			}
		}
		if len(out) > 0 {
			werr = line.forward(out, readAt)
		}
	}
	if err := line.close(); werr == nil {
		werr = err
	}
	sc.Discard()

	p := c.p
	p.mu.Lock()
	kind, opaque, closed, drain := c.cut, c.opaque, p.closed, p.drain
	p.mu.Unlock()

	// The goroutine that cut the connection resets legs too, but this one
	// may get here first.
	switch {
	case closed || kind == cutRaw:
		resetConn(c.client)
		resetConn(c.server)
	case werr != nil:
		// The server leg is broken, or a cut gave up on a write the
		// server did not read: it may end mid-element, so reset it.
		resetConn(c.server)
		resetConn(c.client)
	case opaque && kind == notCut && !errors.Is(rerr, io.EOF):
		// Pass a client's reset on as it is.
		resetConn(c.server)
	default:
		// A cut, or the client ended its side: end the server leg with
		// a FIN after the last whole element, and give the server a
		// bounded time to close its side.
		if kind == cutSafe {
			resetConn(c.client)
		}
		c.server.CloseWrite()
		c.server.SetReadDeadline(time.Now().Add(drain))
	}
}

// flow waits while client-to-server bytes are stalled, and reports whether
// they may be forwarded: false once the connection is cut or the proxy
// closed. It also records whether the stream became opaque.
func (c *conn) flow(opaque bool) bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if opaque {
		c.opaque = true
	}
	for p.stalled && c.cut == notCut && !p.closed {
		p.cond.Wait()
	}
	return c.cut == notCut && !p.closed
}

// serverToClient forwards bytes from the server to the client until the
// server's side ends. Once the client leg fails or the connection is cut it
// keeps reading and discarding, so the server can read to the end of the
// client's stream and close its side.
func (c *conn) serverToClient() {
	buf := make([]byte, bufSize)
	line := newDelayLine(c, c.client, true)
	go line.run()
	clientOK := true
	for {
		n, rerr := c.server.Read(buf)
		readAt := time.Now()
		forward := clientOK && c.flowBack()
		if forward && n > 0 {
			if err := line.forward(buf[:n], readAt); err != nil {
				clientOK = false
				forward = false
			}
		}
		if rerr == nil {
			continue
		}
		// Whatever the line still delays reaches the client before the
		// end of the stream does.
		if err := line.close(); err != nil {
			forward = false
		}
		if forward {
			if errors.Is(rerr, io.EOF) {
				c.client.CloseWrite()
			} else {
				resetConn(c.client)
			}
		}
		return
	}
}

// flowBack waits while server-to-client bytes are stalled or held, and
// reports whether they may be forwarded: false once the connection is cut or
// the proxy closed.
func (c *conn) flowBack() bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for (p.stalled || p.held) && c.cut == notCut && !p.closed {
		p.cond.Wait()
	}
	return c.cut == notCut && !p.closed
}

// abort starts a cut that the caller has recorded in c.cut: it resets the
// client leg and, for a raw cut, the server leg. For a stanza-safe cut it
// bounds the wait for a write to the server already under way; the
// goroutines do the rest.
func (c *conn) abort(drain time.Duration) {
	p := c.p
	p.mu.Lock()
	kind, server := c.cut, c.server
	p.mu.Unlock()

	resetConn(c.client)
	if server == nil {
		return
	}
	if kind == cutRaw {
		resetConn(server)
		return
	}
	server.SetWriteDeadline(time.Now().Add(drain))
}

// reset resets both legs, for Close.
func (c *conn) reset() {
	p := c.p
	p.mu.Lock()
	server := c.server
	p.mu.Unlock()

	resetConn(c.client)
	if server != nil {
		resetConn(server)
	}
}

// resetConn closes nc abruptly: the peer gets a reset, not a FIN, and loses
// what was in flight.
func resetConn(nc *net.TCPConn) {
	nc.SetLinger(0)
	nc.Close()
}
