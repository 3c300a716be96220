// Package faultproxy is a fault-injecting TCP proxy for tests of XMPP clients
// against a real server on loopback.
//
// A Proxy listens on 127.0.0.1, forwards each accepted connection to one
// upstream server, and on demand breaks the live connections: Cut (a
// stanza-safe cut), CutRaw (a reset of both legs), CutEvery (cuts at random
// moments), CutMidStanza (a deliberate cut in the middle of a stanza), Stall
// (a silent dead link) and HoldServerToClient (a one-way stall). SetLatency
// makes the link slow instead: every byte arrives, late.
//
// # Stanza-safe cuts
//
// Some servers keep parsing a resumed stream (XEP-0198) with the parser of
// the connection it replaces; if that connection ended in the middle of a
// stanza, everything on the resumed stream nests inside the partial stanza
// and is lost. A test of the client's resumption must not trip over that, so
// on the client-to-server leg the proxy forwards only whole top-level
// elements: the XML declaration, the stream header, each stanza or nonza
// (such as <r/> or <a h='3'/>), whitespace between them and the closing
// </stream:stream>. A partial element is held until it is complete. Cut then
// ends the server leg with a FIN right after the last complete element and
// waits until the server has read it to the end, while the client sees its
// connection reset and loses whatever it had in flight.
//
// Because of this, the server never receives part of an element from the
// proxy (except from CutMidStanza, which exists to show what such a cut
// does). CutRaw resets the server leg wherever the server's reading is: the
// server is left in the middle of a stanza only if it had read part of one
// when the reset arrived, which is likely only for large stanzas.
//
// # What it does not do
//
// The proxy does not terminate TLS. Stanza-safe cuts need a plaintext stream
// (a client that logs in without STARTTLS). Once the client has sent
// <starttls/> the rest of the connection is opaque: it is passed through
// unchanged and Cut resets it like CutRaw. The same happens if the client's
// bytes are not a plaintext XMPP stream (for example direct TLS), or if one
// element grows past 16 MiB. Opaque reports how many live connections are
// opaque. Server-to-client bytes are never parsed.
//
// The proxy does not change, reorder or inject bytes: apart from what a cut
// discards, both legs carry exactly what their peer sent, also when
// SetLatency delays them.
package faultproxy // import "github.com/xmpptrack/xmpptrack/integration/faultproxy"

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// DefaultDrainTimeout is how long a cut waits, by default, for the server to
// close its side of a cut connection.
const DefaultDrainTimeout = 5 * time.Second

// dialTimeout bounds a dial to the upstream server.
const dialTimeout = 10 * time.Second

// Proxy forwards TCP connections from its listening address to an upstream
// server and injects faults on request. Create it with New; its methods may
// be called from any goroutine.
//
// The proxy dials the server for each connection it accepts; if that fails,
// the client's connection is reset. When either peer closes its side (a
// FIN), the proxy passes the FIN on; once the client has closed its side,
// the server has the drain timeout (see SetDrainTimeout) to close its own.
type Proxy struct {
	upstream string
	ln       net.Listener
	ctx      context.Context // cancelled by Close; ends dials to upstream
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the accept loop and every connection goroutine

	mu       sync.Mutex
	cond     *sync.Cond // on mu: broadcast when stalled, held, draining, closed or a cut changes
	conns    map[*conn]struct{}
	total    int
	stalled  bool
	held     bool // server-to-client bytes are held
	latency  time.Duration
	draining int // cuts still waiting for the server to close
	drain    time.Duration
	closed   bool
	midCuts  []*midCut // pending CutMidStanza calls, oldest first
}

// midCut is a request of CutMidStanza.
type midCut struct {
	done chan struct{} // closed when the request is over
	err  error         // set before done is closed
}

// New listens on 127.0.0.1:0 and forwards each accepted connection to
// upstream, a TCP address.
func New(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		upstream: upstream,
		ln:       ln,
		ctx:      ctx,
		cancel:   cancel,
		conns:    make(map[*conn]struct{}),
		drain:    DefaultDrainTimeout,
	}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the address the proxy listens on, for clients to dial.
func (p *Proxy) Addr() string {
	return p.ln.Addr().String()
}

// SetDrainTimeout sets how long Cut waits for the server to close its side
// of a cut connection before giving up on it (DefaultDrainTimeout unless
// set). It also bounds how long a Cut waits for a write of complete elements
// that the server does not read, after which that write is abandoned and the
// server leg reset.
func (p *Proxy) SetDrainTimeout(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drain = d
}

// SetLatency makes the proxy a slow link: every chunk of bytes it reads,
// from either side, is forwarded d after it was read, so that a round trip
// through the proxy takes at least 2d. Chunks are forwarded in their order
// and none is lost; each waits only for its own d, not for the chunks before
// it, so bytes in flight travel together as on a real link. It applies to
// the live connections, to what they read from now on, and to connections
// accepted later. Zero, the default, forwards at once.
//
// On the client-to-server leg the chunks are whole elements (see Stanza-safe
// cuts), each delayed from the read that completed it. Stall and
// HoldServerToClient hold delayed bytes too; a cut discards them, as it
// discards what Stall holds, and CutMidStanza forwards them before its half
// element, which it writes at once.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
}

// Connections returns the number of connections accepted so far.
func (p *Proxy) Connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// Live returns the number of connections accepted and not yet ended,
// including those waiting for a Cut to finish before they are forwarded.
func (p *Proxy) Live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Opaque returns the number of live connections that are passed through
// without looking for element boundaries (after STARTTLS, or because the
// client did not send a plaintext XMPP stream): Cut resets those like
// CutRaw.
func (p *Proxy) Opaque() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if c.opaque {
			n++
		}
	}
	return n
}

// Cut ends every live connection stanza-safely and returns when done.
//
// For each connection, the proxy stops reading from the client and discards
// the partial element it holds (and anything held by Stall), lets a write of
// complete elements to the server already under way finish, ends the server
// leg with a FIN (not a reset) after it, and resets the client leg so the
// client sees a torn connection and loses what was in flight. It then reads
// and discards what the server still sends until the server closes its side,
// that is until the server has read the connection to its end.
//
// Connections accepted during a Cut are held, neither read nor forwarded,
// until every connection it cut is done. A server that does not close its
// side within the drain timeout (see SetDrainTimeout) is given up on: its
// leg is closed and Cut returns anyway, after at most about twice the drain
// timeout. A Cut also waits for connections that another cut is already
// ending.
//
// An opaque connection (see Opaque) is reset on both legs, as by CutRaw.
func (p *Proxy) Cut() {
	p.cut(false)
}

// CutRaw resets every live connection at once, both legs, wherever the bytes
// are, possibly in the middle of a stanza. It returns when the connections'
// goroutines have ended, and does not hold new connections.
func (p *Proxy) CutRaw() {
	p.cut(true)
}

func (p *Proxy) cut(raw bool) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	if !raw {
		p.draining++
	}
	drain := p.drain
	var cut, wait []*conn
	for c := range p.conns {
		wait = append(wait, c)
		switch {
		case c.cut == notCut:
			c.cut = cutSafe
			if raw || c.opaque {
				c.cut = cutRaw
			}
		case c.cut == cutSafe && raw:
			c.cut = cutRaw
		default:
			// Already being cut: only wait for it.
			continue
		}
		cut = append(cut, c)
	}
	p.cond.Broadcast()
	p.mu.Unlock()

	for _, c := range cut {
		c.abort(drain)
	}
	for _, c := range wait {
		<-c.done
	}

	if !raw {
		p.mu.Lock()
		p.draining--
		p.cond.Broadcast()
		p.mu.Unlock()
	}
}

// CutMidStanza cuts one connection in the middle of a stanza, on purpose,
// to show how a server copes. It waits for the next time a client sends a
// whole child of the stream element (a stanza or a nonza such as <r/>),
// forwards only the first half of that element and what came before it,
// ends the server leg with a FIN right after, resets the client leg, and
// then, as Cut does, reads the server leg to its end while new connections
// are held. The server has thus read a partial stanza when its side of the
// connection ends.
//
// It returns nil once that connection is done, or ctx.Err() if ctx ends
// before a client sends an element (it then cuts nothing). Calls made at
// the same time cut one connection each, in the order they were made. Opaque
// connections are never cut this way.
func (p *Proxy) CutMidStanza(ctx context.Context) error {
	m := &midCut{done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("faultproxy: cut mid-stanza: %w", net.ErrClosed)
	}
	p.midCuts = append(p.midCuts, m)
	p.mu.Unlock()

	select {
	case <-m.done:
		return m.err
	case <-ctx.Done():
	}
	p.mu.Lock()
	for i, pending := range p.midCuts {
		if pending == m {
			p.midCuts = append(p.midCuts[:i], p.midCuts[i+1:]...)
			p.mu.Unlock()
			return ctx.Err()
		}
	}
	p.mu.Unlock()
	// A connection took the request meanwhile: wait until it is done.
	<-m.done
	return m.err
}

// Stall stops forwarding in both directions without closing anything, as on
// a silent dead link, until Unstall.
//
// While stalled the proxy reads at most one buffer from each side and holds
// it, with whatever SetLatency was delaying; the rest waits in the kernel's
// buffers, so the peers' writes eventually block. Nothing is lost: Unstall
// forwards what was held, in order. A Cut or CutRaw while stalled discards
// what is held.
//
// A connection accepted while stalled is dialled to the server, so both TCP
// handshakes succeed, but no byte crosses the proxy either way until
// Unstall: a client that reconnects over a stalled link finds it as silent
// as the one it gave up, and the server sees a connection that says
// nothing.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
	p.cond.Broadcast()
}

// Unstall resumes forwarding after Stall.
func (p *Proxy) Unstall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = false
	p.cond.Broadcast()
}

// HoldServerToClient holds back bytes from the server to the client, for
// example to keep a reflection or an ack from reaching the client, while
// bytes from the client still flow to the server. As with Stall, held bytes
// are forwarded by ReleaseServerToClient and discarded by a cut.
func (p *Proxy) HoldServerToClient() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = true
	p.cond.Broadcast()
}

// ReleaseServerToClient forwards what HoldServerToClient held back and lets
// server-to-client bytes flow again.
func (p *Proxy) ReleaseServerToClient() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = false
	p.cond.Broadcast()
}

// CutEvery cuts every live connection at random moments until ctx ends, and
// returns the number of cuts. The time before each cut is drawn uniformly
// from [minWait, maxWait], counted from the end of the previous cut;
// minWait must be positive and maxWait at least minWait. If raw is true it
// uses CutRaw, otherwise Cut. rng may be nil to use the global source; a
// *rand.Rand must not be used by other goroutines at the same time.
func (p *Proxy) CutEvery(ctx context.Context, minWait, maxWait time.Duration, rng *rand.Rand, raw bool) int {
	if minWait <= 0 || maxWait < minWait {
		panic("faultproxy: CutEvery needs 0 < minWait <= maxWait")
	}
	n := 0
	for {
		d := minWait
		if span := int64(maxWait - minWait); span > 0 {
			if rng != nil {
				d += time.Duration(rng.Int64N(span + 1))
			} else {
				d += time.Duration(rand.Int64N(span + 1))
			}
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return n
		case <-p.ctx.Done():
			t.Stop()
			return n
		case <-t.C:
		}
		if raw {
			p.CutRaw()
		} else {
			p.Cut()
		}
		n++
	}
}

// Close stops listening, resets every connection and returns when all the
// proxy's goroutines have ended. Calls after the first return nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	for _, m := range p.midCuts {
		m.err = fmt.Errorf("faultproxy: cut mid-stanza: %w", net.ErrClosed)
		close(m.done)
	}
	p.midCuts = nil
	p.cond.Broadcast()
	p.mu.Unlock()

	p.cancel()
	err := p.ln.Close()
	for _, c := range conns {
		c.reset()
	}
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("faultproxy: close listener: %w", err)
	}
	return nil
}

// accept runs the accept loop until the listener is closed.
func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Accept errors other than a closed listener (such as
			// running out of file descriptors) are usually temporary.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		c := &conn{
			p:      p,
			client: nc.(*net.TCPConn),
			done:   make(chan struct{}),
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			resetConn(c.client)
			return
		}
		p.total++
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go c.serve()
	}
}

// dial connects to the upstream server.
func (p *Proxy) dial() (*net.TCPConn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(p.ctx, "tcp", p.upstream)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: dial upstream: %w", err)
	}
	return nc.(*net.TCPConn), nil
}
