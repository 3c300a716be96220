// Package fakeserver is a small scripted XMPP server for tests of the stream
// package. It is not a real XMPP server: it routes nothing and answers
// nothing on its own once a connection is set up. A test drives each
// connection by hand, reading what the client wrote and writing raw XML back,
// so that it can produce on demand what a real server rarely does (an h
// beyond what was sent, a torn stanza, a silent link, …).
//
// Each connection is negotiated with mellium's own server side
// (xmpp.ReceiveSession) on loopback TCP: SASL PLAIN that accepts any
// password, resource binding, and the XEP-0198 feature
// <sm xmlns='urn:xmpp:sm:3'/>. The connection is taken as secure without TLS,
// so the client must allow plaintext. The stream management feature also
// accepts the client's <resume/> in place of binding: the answer comes from
// the function set with Server.OnResume; when the answer is not <resumed/>
// the server binds a resource as usual. <enable/> is not answered during
// negotiation: it is the first element the test reads (see Conn.EnableSM).
//
// After SASL, mellium lists the features in the order given here, <bind/>
// then <sm/>; a client reads the whole list before it picks one, so the order
// does not matter to it. The <sm/> feature tells mellium it is required only
// so that mellium's negotiation loop ends after it (as it does after bind);
// the element it writes carries no <required/>.
package fakeserver

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

// NS is the XEP-0198 namespace.
const NS = "urn:xmpp:sm:3"

// Timeout bounds every wait of the server and of Conn's helpers.
const Timeout = 2 * time.Second

// Resume is a <resume/> element the client sent.
type Resume struct {
	PrevID string
	H      string // as written, so that tests see the exact text
}

// Server accepts connections on 127.0.0.1 and negotiates each of them.
type Server struct {
	ln    net.Listener
	conns chan result
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	mu       sync.Mutex
	onResume func(Resume) string
	all      []*Conn
	n        int
}

type result struct {
	c   *Conn
	err error
}

// New starts a server; it is closed when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakeserver: listen: %v", err)
	}
	s := &Server{ln: ln, conns: make(chan result, 64)}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

// Dial connects to the server; it fits stream.Config.Dial.
func (s *Server) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.ln.Addr().String())
}

// OnResume sets the function that answers a <resume/>: it returns the raw
// XML to write, for example Resumed(r.PrevID, 4) or a <failed/> element. It
// runs on the server's goroutine and may block (for example until the test
// has queued stanzas while the client waits). Without it every <resume/> is
// answered with <failed/> carrying <item-not-found/> and no h.
func (s *Server) OnResume(f func(Resume) string) {
	s.mu.Lock()
	s.onResume = f
	s.mu.Unlock()
}

// Resumed returns a <resumed/> answer.
func Resumed(previd string, h uint32) string {
	return fmt.Sprintf("<resumed xmlns='urn:xmpp:sm:3' previd='%s' h='%d'/>", previd, h)
}

// Next returns the next negotiated connection, failing the test when none
// arrives within Timeout or when its negotiation failed.
func (s *Server) Next(t testing.TB) *Conn {
	t.Helper()
	return s.NextWithin(t, Timeout)
}

// NextWithin is Next with d in place of Timeout.
func (s *Server) NextWithin(t testing.TB, d time.Duration) *Conn {
	t.Helper()
	select {
	case r := <-s.conns:
		if r.err != nil {
			t.Fatalf("fakeserver: negotiation failed: %v", r.err)
		}
		return r.c
	case <-time.After(d):
		t.Fatalf("fakeserver: no connection within %v", d)
		return nil
	}
}

// Close stops accepting, tears every connection and waits for the server's
// goroutines.
func (s *Server) Close() {
	s.stop()
	s.ln.Close()
	s.mu.Lock()
	all := s.all
	s.mu.Unlock()
	for _, c := range all {
		c.nc.Close()
	}
	s.wg.Wait()
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.n++
		c := &Conn{
			nc:   nc,
			rec:  &recorder{Conn: nc},
			els:  make(chan Element, 4096),
			done: make(chan struct{}),
			n:    s.n,
		}
		s.all = append(s.all, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := s.negotiate(c)
			if err != nil {
				nc.Close()
			}
			select {
			case s.conns <- result{c, err}:
			case <-s.ctx.Done():
			}
			if err == nil {
				c.read()
			}
		}()
	}
}

func (s *Server) negotiate(c *Conn) error {
	ctx, cancel := context.WithTimeout(s.ctx, Timeout)
	defer cancel()
	bind := xmpp.BindCustom(func(origin jid.JID, _ string) (jid.JID, error) {
		j, err := origin.Bare().WithResource("r" + strconv.Itoa(c.n))
		c.JID = j
		return j, err
	})
	features := []xmpp.StreamFeature{
		xmpp.SASLServer(func(*sasl.Negotiator) bool { return true }, sasl.Plain),
		bind,
		s.smFeature(c, bind),
	}
	// The connection counts as secure so that SASL is offered without TLS.
	sess, err := xmpp.ReceiveSession(ctx, c.rec, xmpp.Secure, xmpp.NewNegotiator(
		func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
			return xmpp.StreamConfig{Features: features}
		}))
	if err != nil {
		return err
	}
	c.sess = sess
	return nil
}

// smFeature lists <sm xmlns='urn:xmpp:sm:3'/> next to bind and handles a
// <resume/> sent in bind's place. It says it is required only so that
// mellium's negotiation loop stops after it, as it does after bind; the
// listed element carries no <required/>.
func (s *Server) smFeature(c *Conn, bind xmpp.StreamFeature) xmpp.StreamFeature {
	return xmpp.StreamFeature{
		Name:      xml.Name{Space: NS, Local: "sm"},
		Necessary: xmpp.Authn,
		List: func(ctx context.Context, e xmlstream.TokenWriter, start xml.StartElement) (bool, error) {
			if err := e.EncodeToken(start); err != nil {
				return true, err
			}
			return true, e.EncodeToken(start.End())
		},
		Parse: func(ctx context.Context, d *xml.Decoder, start *xml.StartElement) (bool, interface{}, error) {
			return false, nil, d.Skip()
		},
		Negotiate: func(ctx context.Context, sess *xmpp.Session, data interface{}) (xmpp.SessionState, io.ReadWriter, error) {
			r := sess.TokenReader()
			tok, err := r.Token()
			if err != nil {
				r.Close()
				return 0, nil, err
			}
			start, ok := tok.(xml.StartElement)
			if !ok || start.Name.Local != "resume" {
				r.Close()
				return 0, nil, fmt.Errorf("fakeserver: expected <resume/>, got %v", tok)
			}
			_, err = readElement(r, start)
			r.Close()
			if err != nil {
				return 0, nil, err
			}
			res := Resume{PrevID: attr(start, "previd"), H: attr(start, "h")}
			c.Resume = &res
			s.mu.Lock()
			f := s.onResume
			s.mu.Unlock()
			answer := "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
			if f != nil {
				answer = f(res)
			}
			if _, err := sess.Conn().Write([]byte(answer)); err != nil {
				return 0, nil, err
			}
			if strings.HasPrefix(strings.TrimSpace(answer), "<resumed") {
				return xmpp.Ready, nil, nil
			}
			return bind.Negotiate(ctx, sess, data)
		},
	}
}

// Conn is one negotiated connection, driven by the test.
type Conn struct {
	// Resume is the <resume/> the client sent during negotiation, nil if it
	// bound a resource directly.
	Resume *Resume
	// JID is the address bound on this connection, zero when it was resumed.
	JID jid.JID

	n    int
	nc   net.Conn
	rec  *recorder
	sess *xmpp.Session
	els  chan Element
	done chan struct{}
	err  error // why reading ended; set before done is closed
	// tcpEnd is how the client's side of the TCP connection ended after
	// its stream did: io.EOF for a FIN, the error of a reset. Set before
	// done is closed.
	tcpEnd error

	mu    sync.Mutex
	ended bool // the server has written </stream:stream>
}

// read hands every element the client writes to els until the stream or the
// connection ends. When the client ends its stream with </stream:stream>,
// the server does the same and closes the connection, as a server does.
func (c *Conn) read() {
	defer close(c.done)
	defer close(c.els)
	r := c.sess.TokenReader()
	defer r.Close()
	for {
		tok, err := r.Token()
		if err != nil {
			c.err = err
			var ne net.Error
			if !errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) {
				// The client ended its stream, or wrote something the
				// server cannot read (such as a stream error with an
				// application condition); the connection is still up.
				c.mu.Lock()
				ended := c.ended
				c.ended = true
				c.mu.Unlock()
				if !ended && err == io.EOF {
					c.nc.SetWriteDeadline(time.Now().Add(Timeout))
					c.sess.Conn().Write([]byte("</stream:stream>"))
				}
				// See how the client closes the connection: a FIN
				// reads as io.EOF, a reset as an error.
				c.nc.SetReadDeadline(time.Now().Add(Timeout))
				var b [512]byte
				for c.tcpEnd == nil {
					_, c.tcpEnd = c.nc.Read(b[:])
				}
				c.nc.Close()
			} else {
				c.tcpEnd = err
			}
			return
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		el, err := readElement(r, start)
		if err != nil {
			c.err = err
			return
		}
		c.els <- el
	}
}

// Next returns the next element the client wrote, failing the test when none
// comes within Timeout or the stream ended.
func (c *Conn) Next(t testing.TB) Element {
	t.Helper()
	select {
	case el, ok := <-c.els:
		if !ok {
			t.Fatalf("fakeserver: conn %d: stream ended (%v) while an element was expected", c.n, c.err)
		}
		return el
	case <-time.After(Timeout):
		t.Fatalf("fakeserver: conn %d: no element within %v", c.n, Timeout)
	}
	return Element{}
}

// Expect returns the next element and fails the test unless its local name
// is local (in any namespace).
func (c *Conn) Expect(t testing.TB, local string) Element {
	t.Helper()
	el := c.Next(t)
	if el.Start.Name.Local != local {
		t.Fatalf("fakeserver: conn %d: got %s, want <%s/>", c.n, el, local)
	}
	return el
}

// Stanzas reads n elements, failing the test if any of them is not a
// stanza, and returns their ids in order.
func (c *Conn) Stanzas(t testing.TB, n int) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for len(ids) < n {
		el := c.Next(t)
		if !el.IsStanza() {
			if el.Start.Name.Space == NS && el.Start.Name.Local == "r" {
				continue
			}
			t.Fatalf("fakeserver: conn %d: got %s, want a stanza", c.n, el)
		}
		ids = append(ids, el.Attr("id"))
	}
	return ids
}

// NextOrEnd returns the next element the client wrote, or false when its
// stream ended (see End for why). It fails the test when neither happens
// within Timeout.
func (c *Conn) NextOrEnd(t testing.TB) (Element, bool) {
	t.Helper()
	select {
	case el, ok := <-c.els:
		return el, ok
	case <-time.After(Timeout):
		t.Fatalf("fakeserver: conn %d: no element within %v", c.n, Timeout)
	}
	return Element{}, false
}

// NoStanza fails the test if the client writes a stanza within d; other
// elements (<r/>, <a/>) are read and ignored.
func (c *Conn) NoStanza(t testing.TB, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case el, ok := <-c.els:
			if !ok {
				return
			}
			if el.IsStanza() {
				t.Fatalf("fakeserver: conn %d: unexpected stanza %s", c.n, el)
			}
		case <-timer.C:
			return
		}
	}
}

// EnableSM reads <enable/> and answers with a resumable <enabled/> whose id
// is id and max 60.
func (c *Conn) EnableSM(t testing.TB, id string) {
	t.Helper()
	c.EnableSMAt(t, id, "")
}

// EnableSMAt is EnableSM with a location attribute, the address where the
// client should resume, unless location is empty.
func (c *Conn) EnableSMAt(t testing.TB, id, location string) {
	t.Helper()
	el := c.Expect(t, "enable")
	if el.Start.Name.Space != NS {
		t.Fatalf("fakeserver: enable in namespace %q", el.Start.Name.Space)
	}
	loc := ""
	if location != "" {
		loc = " location='" + location + "'"
	}
	c.Write(t, "<enabled xmlns='urn:xmpp:sm:3' id='"+id+"' resume='true' max='60'"+loc+"/>")
}

// EndStream writes </stream:stream>: the server ends its stream first. The
// client should answer in kind (End then returns io.EOF).
func (c *Conn) EndStream(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	c.ended = true
	c.mu.Unlock()
	c.Write(t, "</stream:stream>")
}

// TCPEnd waits until the client's stream has ended (with
// </stream:stream>, or a stream error and </stream:stream>) and returns how
// the client then closed the TCP connection: nil for an orderly close (a
// FIN), otherwise the error the server's read saw (such as a reset).
func (c *Conn) TCPEnd(t testing.TB) error {
	t.Helper()
	c.End(t)
	if c.tcpEnd == io.EOF {
		return nil
	}
	return c.tcpEnd
}

// Addr returns the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Write writes raw XML to the client.
func (c *Conn) Write(t testing.TB, s string) {
	t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(Timeout))
	if _, err := c.sess.Conn().Write([]byte(s)); err != nil {
		t.Fatalf("fakeserver: conn %d: write: %v", c.n, err)
	}
}

// Reset tears the connection with a TCP reset, without </stream:stream>.
func (c *Conn) Reset() {
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.nc.Close()
}

// Close closes the connection without </stream:stream>.
func (c *Conn) Close() { c.nc.Close() }

// End waits until the client's stream ends and returns why reading ended:
// io.EOF after </stream:stream> (which the server has answered in kind), a
// stream.Error after a stream error, or the connection's error. Elements not
// yet read are discarded.
func (c *Conn) End(t testing.TB) error {
	t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-c.els:
			if !ok {
				<-c.done
				return c.err
			}
		case <-timer.C:
			t.Fatalf("fakeserver: conn %d: stream did not end within %v", c.n, Timeout)
		}
	}
}

// Elements returns the channel of the elements the client writes, closed
// when its stream ends, for a test that serves the connection from a
// goroutine of its own (Next and the other helpers must then not be used).
func (c *Conn) Elements() <-chan Element { return c.els }

// Send writes raw XML to the client and returns the error, for use outside
// the test's goroutine.
func (c *Conn) Send(s string) error {
	c.nc.SetWriteDeadline(time.Now().Add(Timeout))
	_, err := c.sess.Conn().Write([]byte(s))
	return err
}

// Received returns every byte the client wrote on this connection so far.
func (c *Conn) Received() string { return c.rec.String() }

// Element is one top-level element the client wrote.
type Element struct {
	Start xml.StartElement
	// Inner holds the tokens after Start, its end element last.
	Inner []xml.Token
}

// Attr returns the value of the unqualified attribute local.
func (e Element) Attr(local string) string { return attr(e.Start, local) }

// IsStanza reports whether e is a message, presence or iq.
func (e Element) IsStanza() bool {
	switch e.Start.Name.Local {
	case "message", "presence", "iq":
		return e.Start.Name.Space == "jabber:client" || e.Start.Name.Space == ""
	}
	return false
}

// Child returns the first child element's start and whether there is one.
func (e Element) Child() (xml.StartElement, bool) {
	for _, tok := range e.Inner {
		if s, ok := tok.(xml.StartElement); ok {
			return s, true
		}
	}
	return xml.StartElement{}, false
}

// String re-encodes the element for failure messages.
func (e Element) String() string {
	var b strings.Builder
	enc := xml.NewEncoder(&b)
	enc.EncodeToken(e.Start)
	for _, tok := range e.Inner {
		if enc.EncodeToken(tok) != nil {
			break
		}
	}
	enc.Flush()
	return b.String()
}

func readElement(r xml.TokenReader, start xml.StartElement) (Element, error) {
	el := Element{Start: start.Copy()}
	for depth := 1; depth > 0; {
		tok, err := r.Token()
		if err != nil {
			return el, err
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
		el.Inner = append(el.Inner, xml.CopyToken(tok))
	}
	return el, nil
}

func attr(start xml.StartElement, local string) string {
	for _, a := range start.Attr {
		if a.Name.Local == local && a.Name.Space == "" {
			return a.Value
		}
	}
	return ""
}

// recorder keeps a copy of every byte read from the connection.
type recorder struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.buf = append(r.buf, p[:n]...)
	r.mu.Unlock()
	return n, err
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.buf)
}
