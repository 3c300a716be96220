package stream

import (
	"bytes"
	"encoding/xml"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"

	"github.com/xmpptrack/xmpptrack/sm"
)

// FuzzRead feeds arbitrary bytes, after a stream header, to the reader of a
// connection with three stanzas unacknowledged and handlers registered (one
// that reads elements, one that writes a reply). No input may panic or leave
// a callback running, and no token may become ACKED unless an <a/> whose h
// the unacked queue covers says so.
//
// Run it with: go test -fuzz=FuzzRead ./stream
func FuzzRead(f *testing.F) {
	seeds := []string{
		"<message from='a@b/c' id='1'><body>hi</body></message>",
		"<a xmlns='urn:xmpp:sm:3' h='2'/>",
		"<a xmlns='urn:xmpp:sm:3' h='3'/><a xmlns='urn:xmpp:sm:3' h='3'/>",
		"<a xmlns='urn:xmpp:sm:3' h='4'/>",
		"<a xmlns='urn:xmpp:sm:3' h='3000000000'/>",
		"<a xmlns='urn:xmpp:sm:3' h='+02'/>",
		"<a xmlns='urn:xmpp:sm:3'/>",
		"<r xmlns='urn:xmpp:sm:3'/><r xmlns='urn:xmpp:sm:3'/>",
		"<enabled xmlns='urn:xmpp:sm:3' id='x'/>",
		"<iq type='get' id='q' from='a@b/c'><ping xmlns='urn:xmpp:ping'/></iq>",
		"<iq type='set' id='q'><query xmlns='x'/></iq>",
		"<iq type='result' id='q'/>",
		"<message type='error' id='1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
		"<message id='torn'><body>half of a",
		"<message><body>&undefined;</body></message>",
		"<presence/><!-- c --><?pi x?> <presence/>",
		"</stream:stream>",
		"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
		"\x00\xff<",
		strings.Repeat("<x>", 5000) + strings.Repeat("</x>", 5000),
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, c, toks := fuzzStream()
		var elements atomic.Int32
		s.HandleElement(func(*Element) { elements.Add(1) })
		s.Handle(xmpp.HandlerFunc(func(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
			_, err := xmlstream.Copy(r, xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Local: "presence"}}))
			return err
		}))
		err := s.read(c, newFramer(bytes.NewReader(b), "jabber:client"))
		if err == nil {
			t.Fatal("read returned without an error")
		}
		done := make(chan struct{})
		s.cb.finish(done)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("callbacks still running 5s after the input ended")
		}
		s.mu.Lock()
		acked := s.out.AckedCount()
		s.mu.Unlock()
		n := uint32(0)
		for _, tok := range toks {
			if tok.State() == TokenAcked {
				n++
			}
		}
		if n != acked {
			t.Fatalf("%d tokens ACKED, but the acknowledgements accepted cover %d", n, acked)
		}
		if acked > 0 && !bytes.Contains(b, []byte("h=")) {
			t.Fatalf("tokens ACKED without any h in the input")
		}
		if errors.Is(err, ErrProtocol) && acked > uint32(len(toks)) {
			t.Fatalf("acked %d of %d", acked, len(toks))
		}
	})
}

// fuzzStream returns a stream and a connection with no goroutines and no
// network (writes go nowhere), and stream management on with three stanzas
// written and unacknowledged.
func fuzzStream() (*Stream, *conn, []*StanzaToken) {
	cfg := Config{AckTimeout: 10 * time.Millisecond}.withDefaults()
	s := &Stream{cfg: cfg, log: cfg.Logger, iqs: make(map[string]*pendingIQ), smOn: true}
	nc, other := net.Pipe()
	other.Close()
	c := &conn{nc: nc, raw: nc, kick: make(chan struct{}, 1), dead: make(chan struct{}), pace: sm.NewPacer(cfg.pacer(), time.Now(), 0)}
	var toks []*StanzaToken
	for _, id := range []string{"m1", "m2", "m3"} {
		tok := newToken(id)
		tok.move(TokenQueued, TokenSent, nil)
		s.out.Sent(&entry{tok: tok})
		toks = append(toks, tok)
	}
	return s, c, toks
}
