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
	s       *stream.Stream
	markers bool

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

// Close detaches the responder from its stream.
func (r *Responder) Close() {
	r.closeOnce.Do(func() { r.remove() })
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
	request, markable, isReceipt, err := readRequest(t)
	if err != nil {
		return fmt.Errorf("chat: read message: %w", err)
	}
	markable = markable && h.r.markers
	if isReceipt || (!request && !markable) {
		return nil
	}
	sender, err := jid.Parse(from)
	if err != nil || sender.Bare().Equal(h.r.s.Addr().Bare()) {
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

// readRequest reads the content of a message and reports which of a receipt
// request, a markable and a receipt are among its direct children.
func readRequest(r xml.TokenReader) (request, markable, receipt bool, err error) {
	depth := 0
	for {
		tok, err := r.Token()
		if tok != nil {
			switch t := tok.(type) {
			case xml.StartElement:
				depth++
				if depth == 1 {
					switch {
					case t.Name.Space == NSReceipts && t.Name.Local == "request":
						request = true
					case t.Name.Space == NSReceipts && t.Name.Local == "received":
						receipt = true
					case t.Name.Space == NSMarkers && t.Name.Local == "markable":
						markable = true
					}
				}
			case xml.EndElement:
				depth--
			}
		}
		if err == io.EOF {
			return request, markable, receipt, nil
		}
		if err != nil {
			return false, false, false, err
		}
	}
}
