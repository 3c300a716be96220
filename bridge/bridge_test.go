// These tests run the bridge over a stream connected to the scripted server
// of internal/fakeserver, which answers (or fails to answer) on cue: a
// resumption refused while an IQ is out, for example. The test against a
// real Prosody, with mellium's roster, disco, history and ping packages, is
// in integration/.

package bridge_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/bridge"
	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/sm"
	"github.com/xmpptrack/xmpptrack/stream"
)

// setup dials a scripted server (stream management on, id S1), bridges the
// stream and serves the mellium session with a mux that answers pings.
func setup(t *testing.T, opts ...bridge.Option) (*fakeserver.Server, *fakeserver.Conn, *stream.Stream, *bridge.Bridge) {
	t.Helper()
	return setupServing(t, mux.New(stanza.NSClient, ping.Handle()), opts...)
}

// setupServing is setup with h serving the mellium session.
func setupServing(t *testing.T, h xmpp.Handler, opts ...bridge.Option) (*fakeserver.Server, *fakeserver.Conn, *stream.Stream, *bridge.Bridge) {
	t.Helper()
	srv := fakeserver.New(t)
	type result struct {
		s   *stream.Stream
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := stream.Dial(ctx, stream.Config{
			JID:            jid.MustParse("user@example.test"),
			Password:       "secret",
			AllowPlaintext: true,
			Mechanisms:     []sasl.Mechanism{sasl.Plain},
			Dial:           srv.Dial,
			Backoff:        stream.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		})
		ch <- result{s, err}
	}()
	c := srv.Next(t)
	c.EnableSM(t, "S1")
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	b, err := bridge.New(r.s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Session().Serve(h) }()
	t.Cleanup(func() {
		b.Close()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Error("mellium's Serve did not return after Close")
		}
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r.s.Close(ctx)
	})
	return srv, c, r.s, b
}

// nextStanza returns the next stanza the client wrote, skipping <r/> and
// <a/>.
func nextStanza(t *testing.T, c *fakeserver.Conn) fakeserver.Element {
	t.Helper()
	for {
		el := c.Next(t)
		if el.IsStanza() {
			return el
		}
	}
}

func pingIQ(to string) xml.TokenReader {
	return stanza.IQ{Type: stanza.GetIQ, To: jid.MustParse(to)}.Wrap(
		xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Space: ping.NS, Local: "ping"}}))
}

// sendIQ calls mellium's SendIQ in a goroutine and returns where its outcome
// arrives: the reply's start element, or an error.
func sendIQ(b *bridge.Bridge, to string) <-chan any {
	out := make(chan any, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := b.Session().SendIQ(ctx, pingIQ(to))
		if err != nil {
			out <- err
			return
		}
		defer r.Close()
		tok, err := r.Token()
		if err != nil {
			out <- err
			return
		}
		start := tok.(xml.StartElement)
		if start.Name.Local == "iq" && attr(start, "type") == "error" {
			var e stanza.Error
			d := xml.NewTokenDecoder(r)
			for {
				t, err := d.Token()
				if err != nil {
					break
				}
				if s, ok := t.(xml.StartElement); ok && s.Name.Local == "error" {
					d.DecodeElement(&e, &s)
					out <- e
					return
				}
			}
		}
		out <- start
	}()
	return out
}

func attr(s xml.StartElement, local string) string {
	for _, a := range s.Attr {
		if a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

// TestBridgeIQ: an IQ mellium sends goes out on the stream, counted (the
// server's ack covers it), and the reply reaches mellium's SendIQ.
func TestBridgeIQ(t *testing.T) {
	_, c, s, b := setup(t)
	res := sendIQ(b, "example.test")
	iq := nextStanza(t, c)
	if iq.Start.Name.Local != "iq" || iq.Attr("type") != "get" {
		t.Fatalf("server received %s, want the ping", iq)
	}
	c.Write(t, fmt.Sprintf("<iq type='result' id='%s' from='example.test' to='user@example.test/r1'/>", iq.Attr("id")))
	select {
	case r := <-res:
		if start, ok := r.(xml.StartElement); !ok || attr(start, "type") != "result" {
			t.Fatalf("SendIQ got %v, want the result", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply reached mellium")
	}
	c.Write(t, "<a xmlns='urn:xmpp:sm:3' h='1'/>")
	for deadline := time.Now().Add(2 * time.Second); s.Stats().Acked != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("Stats: %+v; want mellium's IQ acknowledged", s.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBridgeAnswersPing: a ping from the server reaches mellium's mux,
// whose handler answers; the stream sends no service-unavailable of its own.
func TestBridgeAnswersPing(t *testing.T) {
	_, c, _, _ := setup(t)
	c.Write(t, "<iq type='get' id='p1' from='example.test' to='user@example.test/r1'><ping xmlns='urn:xmpp:ping'/></iq>")
	reply := nextStanza(t, c)
	if reply.Attr("id") != "p1" || reply.Attr("type") != "result" {
		t.Fatalf("first reply %s, want mellium's result", reply)
	}
	c.NoStanza(t, 100*time.Millisecond)
}

// TestBridgeResumed: an IQ written before a cut is written again after the
// resumption; its reply still reaches mellium.
func TestBridgeResumed(t *testing.T) {
	srv, c, _, b := setup(t)
	res := sendIQ(b, "example.test")
	id := nextStanza(t, c).Attr("id")
	srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	c.Reset()
	c2 := srv.Next(t)
	if again := nextStanza(t, c2); again.Attr("id") != id {
		t.Fatalf("after the resumption the client wrote %s, want the IQ %s again", again, id)
	}
	c2.Write(t, fmt.Sprintf("<iq type='result' id='%s' from='example.test'/>", id))
	select {
	case r := <-res:
		if start, ok := r.(xml.StartElement); !ok || attr(start, "type") != "result" {
			t.Fatalf("SendIQ got %v, want the result", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply reached mellium")
	}
}

// TestBridgeLostIQ: when the resumption is refused, mellium's SendIQ gets an
// error reply at once instead of waiting for a reply that cannot come.
func TestBridgeLostIQ(t *testing.T) {
	for _, acked := range []bool{false, true} {
		t.Run(fmt.Sprintf("acked=%t", acked), func(t *testing.T) {
			srv, c, _, b := setup(t)
			res := sendIQ(b, "example.test")
			nextStanza(t, c)
			if acked {
				c.Write(t, "<a xmlns='urn:xmpp:sm:3' h='1'/>")
			}
			srv.OnResume(func(fakeserver.Resume) string {
				return "<failed xmlns='" + sm.NS + "'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
			})
			c.Reset()
			srv.Next(t).EnableSM(t, "S2")
			select {
			case r := <-res:
				e, ok := r.(stanza.Error)
				if !ok || e.Condition != stanza.UndefinedCondition || !strings.Contains(e.Text[""], "lost with the session") {
					t.Fatalf("SendIQ got %#v, want the lost-session error", r)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("mellium's SendIQ still waits after its session was lost")
			}
		})
	}
}

// TestBridgeClose: closing the bridge ends mellium's Serve and its waiting
// SendIQ; the stream goes on.
func TestBridgeClose(t *testing.T) {
	_, c, s, b := setup(t)
	res := sendIQ(b, "example.test")
	nextStanza(t, c)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); !errors.Is(err, bridge.ErrClosed) {
		t.Fatalf("second Close: %v, want ErrClosed", err)
	}
	select {
	case <-res:
	case <-time.After(5 * time.Second):
		t.Fatal("mellium's SendIQ still waits after Close")
	}
	tok, err := s.Send(context.Background(), stanza.Message{To: jid.MustParse("peer@example.test")}.Wrap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := nextStanza(t, c); got.Attr("id") != tok.ID() {
		t.Fatalf("stream wrote %s after the bridge closed, want its own message", got)
	}
}

// TestBridgeHandsStanzasAsSent: mellium gets each inbound stanza in its
// namespace, whether the bridge hands on the server's bytes (a plain
// stanza) or writes it out again (one that names the stream's prefix), and
// with Only, just what it keeps, besides the replies to its own requests.
func TestBridgeHandsStanzasAsSent(t *testing.T) {
	type seen struct {
		name xml.Name
		id   string
	}
	got := make(chan seen, 16)
	serve := xmpp.HandlerFunc(func(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
		got <- seen{start.Name, attr(*start, "id")}
		return nil
	})
	keep := func(el *stream.Element) bool { return !strings.HasPrefix(el.Attr("id"), "drop") }
	_, c, _, b := setupServing(t, serve, bridge.Only(keep))

	c.Write(t, "<message from='a@example.test/r' id='drop1'><body>not for mellium</body></message>")
	c.Write(t, "<message from='a@example.test/r' id='plain'><body>hello</body></message>")
	c.Write(t, "<message from='a@example.test/r' id='prefixed'><body>stream:features</body></message>")
	c.Write(t, "<message xmlns='jabber:client' from='a@example.test/r' id='declared'/>")
	for _, want := range []string{"plain", "prefixed", "declared"} {
		select {
		case s := <-got:
			if s.id != want || s.name != (xml.Name{Space: stanza.NSClient, Local: "message"}) {
				t.Fatalf("mellium got %v id %q, want a message in %s with id %q", s.name, s.id, stanza.NSClient, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("mellium never got %q", want)
		}
	}

	// An IQ request mellium is not handed is answered by the stream.
	c.Write(t, "<iq type='get' from='example.test' id='drop-q'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
	if el := nextStanza(t, c); el.Attr("id") != "drop-q" || el.Attr("type") != "error" {
		t.Fatalf("the IQ no one was handed got %s, want an error reply", el)
	}

	// The reply to mellium's own request reaches it, kept or not.
	out := sendIQ(b, "example.test")
	req := nextStanza(t, c)
	c.Write(t, fmt.Sprintf("<iq type='result' from='example.test' id='%s'/>", req.Attr("id")))
	select {
	case r := <-out:
		if err, ok := r.(error); ok {
			t.Fatalf("SendIQ: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("mellium's SendIQ never got its reply")
	}
	select {
	case s := <-got:
		t.Fatalf("mellium got %v id %q, which Only dropped", s.name, s.id)
	default:
	}
}
