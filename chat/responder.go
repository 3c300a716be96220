package chat

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
)

// ResponderOption configures a Responder.
type ResponderOption func(*Responder)

// WithReceivedMarkers makes the responder also send a XEP-0333 <received/>
// marker for every markable message it receives, in the same stanza as the
// receipt when one was requested.
func WithReceivedMarkers() ResponderOption { return func(r *Responder) { r.markers = true } }

// Received is a message with a body that the responder received.
type Received struct {
	// From is the sender, ID the message's id attribute: what
	// MarkDisplayed needs.
	From jid.JID
	ID   string
	Body string
	// Markable is set when the sender asked for chat markers (XEP-0333).
	Markable bool
}

// WithMessages registers f to learn of every message with a body and an id
// that the responder receives from another account (not of type error or
// groupchat), after its receipt is queued. f runs on a goroutine of the
// responder's, one message at a time and in the order received, so it may
// block and may call MarkDisplayed; messages wait in memory for it.
func WithMessages(f func(Received)) ResponderOption { return func(r *Responder) { r.onMessage = f } }

// A Responder answers the delivery receipt requests (XEP-0184) of the
// messages one stream receives, and sends chat markers (XEP-0333) on
// request.
//
// It answers a message that has an id, a <request xmlns='urn:xmpp:receipts'/>
// among its direct children and a sender, and is neither of type error nor
// of type groupchat nor from our own account (our own messages, whether
// carbons or sent to ourselves from another resource), with
//
//	<message to='SENDER' id='NEW'><received xmlns='urn:xmpp:receipts' id='THEIRS'/></message>
//
// written to the sender's address as the message gave it and without a type,
// as clients do. The answer is queued through the stream handler's own
// encoder, which never blocks the stream's reader goroutine and is not held
// back by a full send queue.
type Responder struct {
	s         *stream.Stream
	markers   bool
	onMessage func(Received)

	// mu guards the messages waiting for onMessage, and whether a
	// goroutine delivers them.
	mu         sync.Mutex
	inbox      []Received
	delivering bool
	closed     bool

	answered  atomic.Uint64
	closeOnce sync.Once
	remove    func()
}

// NewResponder attaches a responder to s. Close detaches it.
func NewResponder(s *stream.Stream, opts ...ResponderOption) *Responder {
	r := &Responder{s: s}
	for _, o := range opts {
		o(r)
	}
	r.remove = s.Handle(responderHandler{r})
	return r
}

// Answered returns how many answers (receipts, received markers) the
// responder has written.
func (r *Responder) Answered() uint64 { return r.answered.Load() }

// Close detaches the responder from its stream; messages not yet handed to
// the WithMessages function are dropped. Close the responders of a stream
// before the stream itself. Close always returns nil; it implements
// io.Closer.
func (r *Responder) Close() error {
	r.closeOnce.Do(func() {
		r.remove()
		r.mu.Lock()
		r.closed, r.inbox = true, nil
		r.mu.Unlock()
	})
	return nil
}

// deliver queues m for the WithMessages function, starting the goroutine
// that runs it when none runs. It runs on the stream's reader goroutine.
func (r *Responder) deliver(m Received) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.inbox = append(r.inbox, m)
	start := !r.delivering
	r.delivering = true
	r.mu.Unlock()
	if start {
		go r.run()
	}
}

func (r *Responder) run() {
	for {
		r.mu.Lock()
		if len(r.inbox) == 0 {
			r.inbox, r.delivering = nil, false
			r.mu.Unlock()
			return
		}
		m := r.inbox[0]
		r.inbox = r.inbox[1:]
		r.mu.Unlock()
		r.onMessage(m)
	}
}

// MarkDisplayed tells to, the sender of the message whose id attribute is
// id, that the user has displayed it and every earlier message of the
// conversation: it sends a XEP-0333 <displayed/> marker in a message without
// a type. It returns once the marker is queued (the stream's Send rules
// apply: it waits for room in the queue, or for ctx).
func (r *Responder) MarkDisplayed(ctx context.Context, to jid.JID, id string) error {
	if to.Domainpart() == "" {
		return errors.New("chat: mark displayed: no address")
	}
	if id == "" || !xstanza.ValidText(id) {
		return fmt.Errorf("chat: mark displayed: bad id %q", id)
	}
	addr := to.String()
	mid := xstanza.NewID()
	b := make([]byte, 0, 128+len(addr)+len(id))
	b = append(b, "<message to='"...)
	b = xstanza.AppendEscaped(b, addr)
	b = append(b, "' id='"...)
	b = append(b, mid...)
	b = append(b, "'><displayed xmlns='"+NSMarkers+"' id='"...)
	b = xstanza.AppendEscaped(b, id)
	b = append(b, "'/></message>"...)
	if _, err := r.s.SendBytes(ctx, mid, b); err != nil {
		return fmt.Errorf("chat: mark displayed %q for %s: %w", id, addr, err)
	}
	return nil
}

// responderHandler is the stream handler of a Responder; it keeps
// HandleXMPP out of the Responder's API.
type responderHandler struct{ r *Responder }

func (h responderHandler) HandleXMPP(t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	if start.Name.Local != "message" {
		return nil
	}
	switch xstanza.Attr(*start, "type") {
	case "error", "groupchat":
		return nil
	}
	id, from := xstanza.Attr(*start, "id"), xstanza.Attr(*start, "from")
	if id == "" || from == "" {
		return nil
	}
	m, err := readRequest(t)
	if err != nil {
		return fmt.Errorf("chat: read message: %w", err)
	}
	sender, err := jid.Parse(from)
	if err != nil || sender.Bare().Equal(h.r.s.Addr().Bare()) {
		return nil
	}
	if h.r.onMessage != nil && m.hasBody {
		defer h.r.deliver(Received{From: sender, ID: id, Body: m.body, Markable: m.markable})
	}
	request, markable := m.request, m.markable && h.r.markers
	if m.receipt || (!request && !markable) {
		return nil
	}

	idAttr := []xml.Attr{{Name: xml.Name{Local: "id"}, Value: id}}
	msg := xml.StartElement{
		Name: xml.Name{Local: "message"},
		Attr: []xml.Attr{
			{Name: xml.Name{Local: "to"}, Value: from},
			{Name: xml.Name{Local: "id"}, Value: xstanza.NewID()},
		},
	}
	toks := make([]xml.Token, 0, 6)
	toks = append(toks, msg)
	if request {
		rcv := xml.StartElement{Name: xml.Name{Space: NSReceipts, Local: "received"}, Attr: idAttr}
		toks = append(toks, rcv, rcv.End())
	}
	if markable {
		rcv := xml.StartElement{Name: xml.Name{Space: NSMarkers, Local: "received"}, Attr: idAttr}
		toks = append(toks, rcv, rcv.End())
	}
	toks = append(toks, msg.End())
	for _, tok := range toks {
		if err := t.EncodeToken(tok); err != nil {
			return fmt.Errorf("chat: answer %q from %s: %w", id, from, err)
		}
	}
	h.r.answered.Add(1)
	return nil
}

// content is what the responder needs of a received message.
type content struct {
	request, markable, receipt bool // among the direct children
	hasBody                    bool
	body                       string
}

// readRequest reads the content of a message: which of a receipt request, a
// markable and a receipt are among its direct children, and its body.
func readRequest(r xml.TokenReader) (content, error) {
	var c content
	depth := 0
	inBody := false
	for {
		tok, err := r.Token()
		if tok != nil {
			switch t := tok.(type) {
			case xml.StartElement:
				depth++
				if depth == 1 {
					switch {
					case t.Name.Space == NSReceipts && t.Name.Local == "request":
						c.request = true
					case t.Name.Space == NSReceipts && t.Name.Local == "received":
						c.receipt = true
					case t.Name.Space == NSMarkers && t.Name.Local == "markable":
						c.markable = true
					case t.Name.Local == "body" && !c.hasBody:
						c.hasBody, inBody = true, true
					}
				}
			case xml.CharData:
				if inBody && depth == 1 {
					c.body += string(t)
				}
			case xml.EndElement:
				if depth == 1 {
					inBody = false
				}
				depth--
			}
		}
		if err == io.EOF {
			return c, nil
		}
		if err != nil {
			return content{}, err
		}
	}
}
