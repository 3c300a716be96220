// These tests run the stream against the scripted server of
// internal/fakeserver (see scripted_test.go): they need callbacks to run at
// chosen moments (an ack, a refused resumption), which a real server does not
// produce on demand.

package stream_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/sm"
	"github.com/xmpptrack/xmpptrack/stream"
)

// autoServe plays a plain server on c from a goroutine of its own: it
// acknowledges what it received whenever the client asks, and answers every
// IQ get or set with an empty result. It returns when the client's stream
// ends.
func autoServe(c *fakeserver.Conn) {
	var n uint32
	for el := range c.Elements() {
		switch {
		case el.IsStanza():
			n++
			if typ := el.Attr("type"); el.Start.Name.Local == "iq" && (typ == "get" || typ == "set") {
				c.Send(fmt.Sprintf("<iq type='result' id='%s' from='%s'/>", el.Attr("id"), el.Attr("to")))
			}
		case el.Start.Name.Space == sm.NS && el.Start.Name.Local == "r":
			c.Send(ackH(n))
		}
	}
}

// TestScriptedCallbacksMayCallAnything calls each method a callback might
// call, from each kind of callback, and checks that the call returns and the
// stream keeps running: before, a callback ran on the stream's own
// goroutines, so that Close from an observer hung forever and a blocking Send
// from an observer during a reconnection wedged the stream for good.
func TestScriptedCallbacksMayCallAnything(t *testing.T) {
	// Each call runs inside a callback; tok is the token the callback
	// observes (nil for a handler).
	calls := map[string]func(h *harness, tok *stream.StanzaToken) error{
		"Send": func(h *harness, _ *stream.StanzaToken) error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err := h.s.Send(ctx, message("from-callback"))
			return err
		},
		"SendIQ": func(h *harness, _ *stream.StanzaToken) error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err := h.s.SendIQ(ctx, stanza.IQ{Type: stanza.GetIQ, To: peer},
				xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Space: "urn:xmpp:ping", Local: "ping"}}))
			return err
		},
		"Close": func(h *harness, _ *stream.StanzaToken) error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			return h.s.Close(ctx)
		},
		"Abort": func(h *harness, tok *stream.StanzaToken) error {
			if tok == nil {
				var err error
				if tok, err = h.s.Send(context.Background(), message("to-abort")); err != nil {
					return err
				}
			}
			if err := tok.Abort(); err != nil && !errors.Is(err, stream.ErrNotQueued) {
				return err
			}
			return nil
		},
		"Wait": func(h *harness, tok *stream.StanzaToken) error {
			if tok == nil {
				var err error
				if tok, err = h.s.Send(context.Background(), message("to-wait")); err != nil {
					return err
				}
			}
			// The token's final change may wait for this very callback:
			// Wait then ends with its context, and nothing else waits.
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if _, err := tok.Wait(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && tok.Err() == nil {
				return err
			}
			return nil
		},
	}
	// Each origin sets up a stream, arranges for call to run in one kind of
	// callback, and returns the stream's first connection to serve.
	origins := map[string]func(t *testing.T, call func(tok *stream.StanzaToken)) *harness{
		"ACKED observer": func(t *testing.T, call func(*stream.StanzaToken)) *harness {
			h := start(t, nil)
			go autoServe(h.c)
			observe(h, stream.TokenAcked, call)
			return h
		},
		"SENT observer": func(t *testing.T, call func(*stream.StanzaToken)) *harness {
			// m1 waits in the queue behind m0 until m0 is acknowledged,
			// so that the writer, not Observe, tells of SENT.
			h := start(t, func(c *stream.Config) { c.MaxUnacked = 1 })
			h.send("m0")
			observe(h, stream.TokenSent, call)
			go autoServe(h.c)
			return h
		},
		"DISCONNECTED observer, queue full": func(t *testing.T, call func(*stream.StanzaToken)) *harness {
			h := start(t, func(c *stream.Config) { c.QueueSize = 2 })
			observe(h, stream.TokenDisconnected, call)
			h.c.Stanzas(t, 1)
			release := make(chan struct{})
			h.srv.OnResume(func(fakeserver.Resume) string {
				<-release
				return "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
			})
			h.c.Reset()
			h.event(stream.EventDisconnected)
			h.send("q1", "q2") // the queue is full now
			close(release)
			c2 := h.srv.Next(t)
			c2.EnableSM(t, "S2")
			go autoServe(c2)
			return h
		},
		"handler": func(t *testing.T, call func(*stream.StanzaToken)) *harness {
			h := start(t, nil)
			var once sync.Once
			h.s.Handle(xmpp.HandlerFunc(func(xmlstream.TokenReadEncoder, *xml.StartElement) error {
				once.Do(func() { call(nil) })
				return nil
			}))
			h.c.Write(t, serverMessage("in1"))
			go autoServe(h.c)
			return h
		},
	}
	for callName, do := range calls {
		for originName, setUp := range origins {
			t.Run(callName+" from "+originName, func(t *testing.T) {
				result := make(chan error, 1)
				var h *harness
				ready := make(chan struct{})
				h = setUp(t, func(tok *stream.StanzaToken) {
					<-ready
					result <- do(h, tok)
				})
				close(ready)
				select {
				case err := <-result:
					if err != nil && !(callName == "Close" && errors.Is(err, context.DeadlineExceeded)) {
						t.Fatalf("%s from a callback: %v", callName, err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("%s from a callback did not return", callName)
				}
				if callName == "Close" {
					waitDone(t, h.s)
					return
				}
				// The stream still runs: a new stanza is written and
				// acknowledged.
				tok, err := h.s.Send(context.Background(), message("after"))
				if err != nil {
					t.Fatalf("Send after the callback: %v", err)
				}
				waitState(t, stream.TokenAcked, tok)
			})
		}
	}
}

// observe sends a stanza m1 and calls call, once, from its observer when the
// token reaches state.
func observe(h *harness, state stream.TokenState, call func(*stream.StanzaToken)) {
	h.t.Helper()
	tok := h.send("m1")[0]
	var once sync.Once
	tok.Observe(func(c stream.TokenChange) {
		if c.State == state {
			once.Do(func() { call(tok) })
		}
	})
}

// TestScriptedAckBatchOrder checks the order in which the observers of the
// tokens one <a/> acknowledges run: each token's SENT before its ACKED, the
// tokens in the order they were sent, all of them before the handler of a
// stanza the server sent after the <a/>, and those of a later <a/> after
// that handler.
func TestScriptedAckBatchOrder(t *testing.T) {
	h := start(t, nil)
	var (
		mu  sync.Mutex
		got []string
	)
	record := func(s string) {
		mu.Lock()
		got = append(got, s)
		mu.Unlock()
	}
	seen := make(chan struct{})
	h.s.HandleElement(func(el *stream.Element) {
		if el.Attr("id") == "in1" {
			record("handler in1")
			close(seen)
		}
	})
	toks := h.send(ids("m", 1, 6)...)
	for _, tok := range toks {
		tok.Observe(func(c stream.TokenChange) {
			if c.State != stream.TokenQueued {
				record(tok.ID() + " " + c.State.String())
			}
		})
	}
	h.c.Stanzas(t, 6)
	h.c.Write(t, ackH(4)+serverMessage("in1")+ackH(6))
	waitState(t, stream.TokenAcked, toks...)
	select {
	case <-seen:
	case <-time.After(waitFor):
		t.Fatal("the handler did not run")
	}
	for _, tok := range toks {
		<-tok.Done()
	}

	mu.Lock()
	defer mu.Unlock()
	// The observers may have joined before or after the writer took a
	// token: SENT is reported either way, before ACKED.
	pos := map[string]int{}
	for i, s := range got {
		pos[s] = i
	}
	if len(pos) != len(got) || len(got) != 13 {
		t.Fatalf("notifications %v, want SENT and ACKED once for each of 6 tokens and the handler once", got)
	}
	for i, tok := range toks {
		id := tok.ID()
		if pos[id+" SENT"] > pos[id+" ACKED"] {
			t.Errorf("%s: ACKED before SENT in %v", id, got)
		}
		if i > 0 && pos[toks[i-1].ID()+" ACKED"] > pos[id+" ACKED"] {
			t.Errorf("%s acknowledged before %s in %v", id, toks[i-1].ID(), got)
		}
		if before := i < 4; before != (pos[id+" ACKED"] < pos["handler in1"]) {
			t.Errorf("%s: ACKED on the wrong side of the handler in %v", id, got)
		}
	}
}
