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
	"strings"
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

	only func(*stream.Element) bool // which inbound stanzas mellium sees; nil: all

	mu      sync.Mutex            // guards pending and closed
	pending map[string]*pendingIQ // IQ requests mellium sent, awaiting their reply
	closed  bool
}

// pendingIQ is an IQ request mellium sent through the bridge.
type pendingIQ struct {
	to  string
	tok *stream.StanzaToken
}

// An Option configures a Bridge.
type Option func(*Bridge)

// Only hands mellium only the inbound stanzas for which keep returns true
// (it runs on the stream's callback goroutine, and must not keep el's
// reader busy). Replies to the IQ requests mellium sent always reach it.
// Mellium parses every stanza it is handed again: a program that needs
// little of what the server sends (an archive query among a busy room's
// traffic) saves that work. An IQ get or set that mellium is not handed is
// answered by the stream (see stream.Stream.Handle).
func Only(keep func(el *stream.Element) bool) Option {
	return func(b *Bridge) { b.only = keep }
}

// New returns a Bridge over s. Its Session is ready to use: serve it with
// Session.Serve, as a mellium program does, so that inbound stanzas reach
// mellium's handlers and replies reach its SendIQ calls.
func New(s *stream.Stream, opts ...Option) (*Bridge, error) {
	b := &Bridge{
		s:       s,
		conn:    newPipeConn(),
		pumped:  make(chan struct{}),
		pending: make(map[string]*pendingIQ),
	}
	for _, o := range opts {
		o(b)
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
// mellium (those Only keeps), and leaves IQ requests for mellium to answer.
type inbound struct{ b *Bridge }

// HandleElement hands el to mellium: its bytes as the server sent them, with
// the default namespace declared on the stanza (mellium's side of the pipe
// has no stream header to inherit it from).
func (h inbound) HandleElement(el *stream.Element) error {
	name := el.Name().Local
	typ := el.Attr("type")
	reply := name == "iq" && (typ == "result" || typ == "error")
	if reply {
		h.b.mu.Lock()
		_, mine := h.b.pending[el.Attr("id")]
		delete(h.b.pending, el.Attr("id"))
		h.b.mu.Unlock()
		reply = mine
	}
	if !reply && h.b.only != nil && !h.b.only(el) {
		return nil
	}
	b, ok := withDefaultNS(el)
	if !ok {
		var err error
		if b, err = encode(el.Reader()); err != nil {
			return err
		}
	}
	h.b.conn.deliver(b)
	if name == "iq" && (typ == "get" || typ == "set") {
		return stream.ErrAnswerLater // mellium answers it, or Serve does
	}
	return nil
}

// withDefaultNS returns el's bytes with its default namespace declared on
// its start tag, or false when el is not a plain stanza whose bytes can be
// handed on so (a prefixed name, a prefix declared around it).
func withDefaultNS(el *stream.Element) ([]byte, bool) {
	raw := el.String()
	local := el.Name().Local
	if strings.Contains(raw, "stream:") || len(raw) < len(local)+2 || raw[1:1+len(local)] != local {
		return nil, false
	}
	rest := raw[1+len(local):]
	end := strings.IndexByte(rest, '>')
	if end < 0 || rest[0] != ' ' && rest[0] != '>' && rest[0] != '/' && rest[0] != '\t' && rest[0] != '\n' && rest[0] != '\r' {
		return nil, false
	}
	if strings.Contains(rest[:end], "xmlns=") {
		return []byte(raw), true
	}
	ns := el.Name().Space
	if strings.ContainsAny(ns, "'&<") {
		return nil, false
	}
	b := make([]byte, 0, len(raw)+len(ns)+10)
	b = append(b, raw[:1+len(local)]...)
	b = append(b, " xmlns='"...)
	b = append(b, ns...)
	b = append(b, '\'')
	b = append(b, rest...)
	return b, true
}

// HandleXMPP hands the stanza read from r to mellium, for a caller that
// does not use HandleElement.
func (h inbound) HandleXMPP(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	b, err := encode(xmlstream.MultiReader(xmlstream.Token(*start), r))
	if err != nil {
		return err
	}
	el, err := stream.ParseElement(b)
	if err != nil {
		return err
	}
	return h.HandleElement(el)
}

// encode writes out the element that r reads, its namespace declared as
// encoding/xml does (once, on the element that needs it).
func encode(r xml.TokenReader) ([]byte, error) {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	for {
		tok, err := r.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if s, ok := tok.(xml.StartElement); ok {
			tok = xstanza.WithoutNSDecls(s)
		}
		if err := enc.EncodeToken(tok); err != nil {
			return nil, err
		}
	}
	if err := enc.Flush(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
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
