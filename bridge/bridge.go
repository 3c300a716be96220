// Package bridge gives mellium's own packages (roster, disco, ping, history,
// pubsub, mux handlers…) an *xmpp.Session whose every stanza, in and out,
// passes through a managed stream.Stream.
//
// A mellium program keeps its code: it asks the Bridge for a Session and
// uses it as it would use one from xmpp.DialClientSession, serving it with
// Session.Serve. What mellium sends is queued on the stream: counted for
// XEP-0198, acknowledged, and written again after a resumption; what the
// server sends reaches mellium's handlers and its SendIQ waiters as it
// would on a plain session. A cut connection that the stream resumes is
// invisible to mellium.
//
// An IQ request that mellium sent and that the stream loses with its session
// (the resumption was refused: the request, or the reply on its way to a
// resource that no longer exists, is gone) would leave mellium's SendIQ
// waiting forever. The bridge answers it instead with an error reply of its
// own, type wait, condition undefined-condition and the text of
// ErrLostText, so that the caller gets an error, never a hang. The same
// happens to every request still waiting when the stream ends.
//
// The Session's address is the full JID bound when the bridge was made;
// after the stream starts a new session (stream.EventNewSession) mellium's
// idea of its own address may be stale, which none of mellium's client
// packages rely on.
//
// # Concurrency
//
// The bridge runs one goroutine (the pump) that reads what mellium writes
// and sends it on the stream. Inbound stanzas are handed over by a stream
// handler on the stream's callback goroutine into a buffer that mellium's
// Serve reads, so a slow mellium handler never holds up the stream.
package bridge

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sync"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
	xstream "mellium.im/xmpp/stream"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
)

// ErrLostText is the text of the error reply the bridge gives mellium for
// an IQ request lost with its session.
const ErrLostText = "xmpptrack: the request or its reply was lost with the session"

// ErrClosed is returned by Close when the bridge was closed already.
var ErrClosed = errors.New("bridge: closed")

// A Bridge connects one mellium Session to a managed stream. Make it with
// New; Close it before closing the stream.
type Bridge struct {
	s      *stream.Stream
	sess   *xmpp.Session
	conn   *pipeConn
	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	remove []func()
	pumped chan struct{} // closed when the pump has ended

	mu      sync.Mutex            // guards pending and closed
	pending map[string]*pendingIQ // IQ requests mellium sent, awaiting their reply
	closed  bool
}

// pendingIQ is an IQ request mellium sent through the bridge.
type pendingIQ struct {
	to  string
	tok *stream.StanzaToken
}

// New returns a Bridge over s. Its Session is ready to use: serve it with
// Session.Serve, as a mellium program does, so that inbound stanzas reach
// mellium's handlers and replies reach its SendIQ calls.
func New(s *stream.Stream) (*Bridge, error) {
	b := &Bridge{
		s:       s,
		conn:    newPipeConn(),
		pumped:  make(chan struct{}),
		pending: make(map[string]*pendingIQ),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	addr := s.Addr()
	sess, err := xmpp.NewSession(b.ctx, addr.Domain(), addr, b.conn, xmpp.Secure|xmpp.Authn,
		func(_ context.Context, in, out *xstream.Info, _ *xmpp.Session, _ interface{}) (xmpp.SessionState, io.ReadWriter, interface{}, error) {
			// The stream has negotiated everything already.
			in.XMLNS, out.XMLNS = stanza.NSClient, stanza.NSClient
			return xmpp.Ready, nil, nil, nil
		})
	if err != nil {
		b.cancel()
		return nil, fmt.Errorf("bridge: %w", err)
	}
	b.sess = sess
	b.remove = append(b.remove, s.Handle(inbound{b}), s.OnEvent(b.event))
	go b.pump()
	return b, nil
}

// Session returns the mellium session of the bridge.
func (b *Bridge) Session() *xmpp.Session { return b.sess }

// Close detaches the bridge from the stream: mellium's Serve returns, its
// waiting SendIQ calls get the lost-session error reply, and nothing more
// passes between them. The stream itself stays open.
func (b *Bridge) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	b.closed = true
	b.mu.Unlock()
	for _, f := range b.remove {
		f()
	}
	b.failPending(func(*pendingIQ) bool { return true })
	b.cancel()
	b.conn.Close()
	<-b.pumped
	return nil
}

// inbound is the bridge's stream handler: it hands every inbound stanza to
// mellium, and leaves IQ requests for mellium to answer.
type inbound struct{ b *Bridge }

func (h inbound) HandleXMPP(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	typ := xstanza.Attr(*start, "type")
	isIQ := start.Name.Local == "iq"
	if isIQ && (typ == "result" || typ == "error") {
		h.b.mu.Lock()
		delete(h.b.pending, xstanza.Attr(*start, "id"))
		h.b.mu.Unlock()
	}
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	for tok, err := xml.Token(*start), error(nil); err != io.EOF; tok, err = r.Token() {
		if err != nil {
			return err
		}
		if s, ok := tok.(xml.StartElement); ok {
			tok = xstanza.WithoutNSDecls(s)
		}
		if err := enc.EncodeToken(tok); err != nil {
			return err
		}
	}
	if err := enc.Flush(); err != nil {
		return err
	}
	h.b.conn.deliver(buf.Bytes())
	if isIQ && (typ == "get" || typ == "set") {
		return stream.ErrAnswerLater // mellium answers it, or Serve does
	}
	return nil
}

// event fails the requests whose replies the stream can no longer bring.
func (b *Bridge) event(ev stream.Event) {
	switch ev.Kind {
	case stream.EventNewSession:
		// Written in the lost session: the reply, if any, went to a
		// resource that no longer exists.
		b.failPending(func(p *pendingIQ) bool {
			if p.tok == nil {
				return false // not queued yet: it goes out in the new session
			}
			w := p.tok.Session()
			return w != 0 && w < ev.Session
		})
	case stream.EventClosed:
		b.failPending(func(*pendingIQ) bool { return true })
		b.conn.Close()
	}
}

// failPending answers each pending request that lost reports with the
// lost-session error reply.
func (b *Bridge) failPending(lost func(*pendingIQ) bool) {
	var replies [][]byte
	b.mu.Lock()
	for id, p := range b.pending {
		if lost(p) {
			delete(b.pending, id)
			replies = append(replies, lostReply(id, p.to))
		}
	}
	b.mu.Unlock()
	for _, r := range replies {
		b.conn.deliver(r)
	}
}

func lostReply(id, to string) []byte {
	iq := stanza.IQ{ID: id, Type: stanza.ErrorIQ}
	iq.From, _ = jid.Parse(to)
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	e := stanza.Error{Type: stanza.Wait, Condition: stanza.UndefinedCondition, Text: map[string]string{"": ErrLostText}}
	xmlstream.Copy(enc, iq.Wrap(e.TokenReader()))
	enc.Flush()
	return buf.Bytes()
}

// pump reads what mellium writes and sends each stanza on the stream. It
// ends when mellium's side is closed or writes something that is not XML.
func (b *Bridge) pump() {
	defer close(b.pumped)
	d := xml.NewDecoder(b.conn.out)
	for {
		tok, err := d.Token()
		if err != nil {
			// Closed, or mellium ended its stream (a stray
			// </stream:stream>).
			b.conn.out.CloseWithError(io.ErrClosedPipe)
			return
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue // white space between stanzas
		}
		toks, err := readElement(d, start)
		if err != nil {
			b.conn.out.CloseWithError(io.ErrClosedPipe)
			return
		}
		switch start.Name.Local {
		case "message", "presence", "iq":
		default:
			continue // a stream error mellium writes before it stops
		}
		b.send(start, toks)
	}
}

// send queues one stanza of mellium's on the stream, and follows an IQ
// request until its reply comes or it is lost.
func (b *Bridge) send(start xml.StartElement, toks []xml.Token) {
	typ := xstanza.Attr(start, "type")
	request := start.Name.Local == "iq" && (typ == "get" || typ == "set")
	id, to := xstanza.Attr(start, "id"), xstanza.Attr(start, "to")
	var p *pendingIQ
	if request && id != "" {
		// Registered before the stanza is queued, so that no reply can
		// outrun it.
		p = &pendingIQ{to: to}
		b.mu.Lock()
		b.pending[id] = p
		b.mu.Unlock()
	}
	tok, err := b.s.Send(b.ctx, &sliceReader{toks: append([]xml.Token{start}, toks...)})
	if p == nil {
		return
	}
	if err != nil {
		b.failPending(func(q *pendingIQ) bool { return q == p })
		return
	}
	b.mu.Lock()
	p.tok = tok
	b.mu.Unlock()
	tok.Observe(func(c stream.TokenChange) {
		switch c.State {
		case stream.TokenDisconnected, stream.TokenFailed, stream.TokenAborted, stream.TokenDropped:
			b.failPending(func(q *pendingIQ) bool { return q == p })
		}
	})
}

// readElement reads the rest of the element that begins with start, its end
// element last.
func readElement(d *xml.Decoder, start xml.StartElement) ([]xml.Token, error) {
	var toks []xml.Token
	depth := 1
	for depth > 0 {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
		toks = append(toks, xml.CopyToken(tok))
	}
	return toks, nil
}

type sliceReader struct{ toks []xml.Token }

func (r *sliceReader) Token() (xml.Token, error) {
	if len(r.toks) == 0 {
		return nil, io.EOF
	}
	t := r.toks[0]
	r.toks = r.toks[1:]
	return t, nil
}
