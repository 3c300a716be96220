// These tests run the stream against a small in-process scripted server
// (internal/fakeserver), not against a real XMPP server: each test plays the
// server's side by hand to produce the edge cases a real server does not
// produce on demand (an h beyond what was sent, a torn stanza, a silent
// link, a refused resumption at a chosen moment). The tests against a real
// Prosody live in integration/.

package stream_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/sm"
	"github.com/xmpptrack/xmpptrack/stream"
)

const waitFor = 2 * time.Second

var (
	account = jid.MustParse("user@example.test")
	peer    = jid.MustParse("peer@example.test")
)

// harness is one stream connected to a scripted server whose first
// connection enabled stream management with the id S1.
type harness struct {
	t   *testing.T
	srv *fakeserver.Server
	s   *stream.Stream
	c   *fakeserver.Conn // the first connection
	cfg stream.Config    // as dialled

	mu     sync.Mutex
	events []stream.Event
	evCh   chan struct{}
}

// start dials a scripted server that enables stream management with the id
// S1. edit, if not nil, changes the test configuration (short backoff, long
// ack timeout) before the dial.
func start(t *testing.T, edit func(*stream.Config)) *harness {
	t.Helper()
	h := startWith(t, edit, func(c *fakeserver.Conn) { c.EnableSM(t, "S1") })
	if st := h.s.Stats(); !st.SMEnabled || st.ResumeWindow != time.Minute {
		t.Fatalf("after Dial: SMEnabled=%v ResumeWindow=%v, want true, 1m", st.SMEnabled, st.ResumeWindow)
	}
	return h
}

// startWith dials a scripted server; first plays the server's side of the
// first connection after binding, up to the point where Dial returns.
func startWith(t *testing.T, edit func(*stream.Config), first func(*fakeserver.Conn)) *harness {
	t.Helper()
	h := &harness{t: t, srv: fakeserver.New(t), evCh: make(chan struct{}, 1)}
	cfg := stream.Config{
		JID:            account,
		Password:       "secret",
		AllowPlaintext: true,
		Mechanisms:     []sasl.Mechanism{sasl.Plain},
		Dial:           h.srv.Dial,
		Backoff:        stream.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		AckTimeout:     5 * time.Second,
		KeepAlive:      time.Minute,
	}
	if edit != nil {
		edit(&cfg)
	}
	h.cfg = cfg
	wait := dialAsync(cfg)
	h.c = h.srv.Next(t)
	if h.c.Resume != nil {
		t.Fatalf("first connection sent <resume/>: %+v", h.c.Resume)
	}
	first(h.c)
	s, err := wait()
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	h.s = s
	h.s.OnEvent(h.onEvent)
	t.Cleanup(func() {
		// Tear the server down first so that Close does not wait for it.
		h.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		h.s.Close(ctx)
		checkNoStreamGoroutines(t)
	})
	if want := account.Bare().String() + "/r1"; h.s.Addr().String() != want {
		t.Fatalf("Addr() = %v, want %s", h.s.Addr(), want)
	}
	return h
}

// dialAsync starts stream.Dial of cfg, with a deadline of waitFor, and
// returns a function that waits for its outcome, so that the test can play
// the server's side meanwhile.
func dialAsync(cfg stream.Config) func() (*stream.Stream, error) {
	type result struct {
		s   *stream.Stream
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		s, err := stream.Dial(ctx, cfg)
		ch <- result{s, err}
	}()
	return func() (*stream.Stream, error) {
		r := <-ch
		return r.s, r.err
	}
}

func (h *harness) onEvent(ev stream.Event) {
	h.mu.Lock()
	h.events = append(h.events, ev)
	h.mu.Unlock()
	select {
	case h.evCh <- struct{}{}:
	default:
	}
}

// event waits for the first event of kind k not yet returned by event, and
// fails the test if none comes within waitFor.
func (h *harness) event(k stream.EventKind) stream.Event {
	h.t.Helper()
	deadline := time.After(waitFor)
	for {
		h.mu.Lock()
		for i, ev := range h.events {
			if ev.Kind == k {
				h.events = slices.Delete(h.events, i, i+1)
				h.mu.Unlock()
				return ev
			}
		}
		h.mu.Unlock()
		select {
		case <-h.evCh:
		case <-deadline:
			h.t.Fatalf("no %v event within %v", k, waitFor)
		}
	}
}

// noEvent fails the test if an event of kind k is pending.
func (h *harness) noEvent(k stream.EventKind) {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range h.events {
		if ev.Kind == k {
			h.t.Fatalf("unexpected %v event: %+v", k, ev)
		}
	}
}

func message(id string) xml.TokenReader {
	return stanza.Message{ID: id, To: peer, Type: stanza.ChatMessage}.Wrap(
		xmlstream.Wrap(xmlstream.Token(xml.CharData("hello "+id)), xml.StartElement{Name: xml.Name{Local: "body"}}),
	)
}

// send sends messages with the given ids and returns their tokens.
func (h *harness) send(ids ...string) []*stream.StanzaToken {
	h.t.Helper()
	toks := make([]*stream.StanzaToken, len(ids))
	for i, id := range ids {
		tok, err := h.s.Send(context.Background(), message(id))
		if err != nil {
			h.t.Fatalf("Send(%s): %v", id, err)
		}
		if tok.ID() != id {
			h.t.Fatalf("Send(%s): token id %q", id, tok.ID())
		}
		toks[i] = tok
	}
	return toks
}

func ids(prefix string, from, to int) []string {
	var s []string
	for i := from; i <= to; i++ {
		s = append(s, fmt.Sprintf("%s%d", prefix, i))
	}
	return s
}

// waitState waits until each token is in state want.
func waitState(t *testing.T, want stream.TokenState, toks ...*stream.StanzaToken) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for _, tok := range toks {
		for tok.State() != want {
			if time.Now().After(deadline) {
				t.Fatalf("token %s is %v (err %v), want %v", tok.ID(), tok.State(), tok.Err(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// checkState fails unless each token is in state want now.
func checkState(t *testing.T, want stream.TokenState, toks ...*stream.StanzaToken) {
	t.Helper()
	for _, tok := range toks {
		if s := tok.State(); s != want {
			t.Errorf("token %s is %v (err %v), want %v", tok.ID(), s, tok.Err(), want)
		}
	}
}

// ackOrder records the ids of tokens in the order they became ACKED.
type ackOrder struct {
	mu  sync.Mutex
	ids []string
}

func (a *ackOrder) watch(toks ...*stream.StanzaToken) {
	for _, tok := range toks {
		tok.Observe(func(c stream.TokenChange) {
			if c.State == stream.TokenAcked {
				a.mu.Lock()
				a.ids = append(a.ids, tok.ID())
				a.mu.Unlock()
			}
		})
	}
}

func (a *ackOrder) get() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.ids)
}

// wait returns the order once n tokens were seen acknowledged, or what it
// has after waitFor: a token's state changes before its observers run.
func (a *ackOrder) wait(n int) []string {
	deadline := time.Now().Add(waitFor)
	for {
		got := a.get()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(time.Millisecond)
	}
}

func waitDone(t *testing.T, s *stream.Stream) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(waitFor):
		t.Fatalf("stream did not end within %v", waitFor)
	}
}

// streamGoroutines returns the stacks of the goroutines that run code of
// package stream or were started by it.
func streamGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "xmpptrack/xmpptrack/stream.") {
			found = append(found, g)
		}
	}
	return found
}

// checkNoStreamGoroutines fails the test if goroutines of package stream are
// still running shortly after a stream ended.
func checkNoStreamGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		left := streamGoroutines()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of the stream still run:\n\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serverMessage is a stanza the server sends to the client.
func serverMessage(id string) string {
	return fmt.Sprintf("<message from='peer@example.test/x' to='user@example.test/r1' type='chat' id='%s'><body>%s</body></message>", id, id)
}

func ackH(h uint32) string { return fmt.Sprintf("<a xmlns='urn:xmpp:sm:3' h='%d'/>", h) }

const requestR = "<r xmlns='urn:xmpp:sm:3'/>"

// expectAnswer reads the client's next element other than <r/> and fails
// unless it is <a h='want'/>.
func expectAnswer(t *testing.T, c *fakeserver.Conn, want uint32) {
	t.Helper()
	for {
		el := c.Next(t)
		if el.Start.Name.Space == sm.NS && el.Start.Name.Local == "r" {
			continue
		}
		if el.Start.Name != (xml.Name{Space: sm.NS, Local: "a"}) || el.Attr("h") != fmt.Sprint(want) {
			t.Fatalf("client answered %s, want <a xmlns='urn:xmpp:sm:3' h='%d'/>", el, want)
		}
		return
	}
}

func TestScriptedAcks(t *testing.T) {
	h := start(t, nil)
	var order ackOrder
	toks := h.send(ids("m", 1, 10)...)
	order.watch(toks...)
	if got := h.c.Stanzas(t, 10); !slices.Equal(got, ids("m", 1, 10)) {
		t.Fatalf("server received %v, want %v", got, ids("m", 1, 10))
	}
	checkState(t, stream.TokenSent, toks...)

	// h is an xs:unsignedInt: a sign and leading zeros are valid.
	h.c.Write(t, "<a xmlns='urn:xmpp:sm:3' h='+04'/>")
	waitState(t, stream.TokenAcked, toks[:4]...)
	checkState(t, stream.TokenSent, toks[4:]...)
	if got := order.wait(4); !slices.Equal(got, ids("m", 1, 4)) {
		t.Fatalf("acknowledged in the order %v, want %v", got, ids("m", 1, 4))
	}
	if st := h.s.Stats(); st.Acked != 4 || st.Unacked != 6 {
		t.Fatalf("Stats: Acked=%d Unacked=%d, want 4, 6", st.Acked, st.Unacked)
	}

	h.c.Write(t, ackH(10))
	waitState(t, stream.TokenAcked, toks...)
	if got := order.wait(10); !slices.Equal(got, ids("m", 1, 10)) {
		t.Fatalf("acknowledged in the order %v, want %v", got, ids("m", 1, 10))
	}

	// The same h again changes nothing and is no error.
	h.c.Write(t, ackH(10))
	more := h.send("m11")
	if got := h.c.Stanzas(t, 1); got[0] != "m11" {
		t.Fatalf("server received %v, want m11", got)
	}
	h.c.Write(t, ackH(11))
	waitState(t, stream.TokenAcked, more...)
	if st := h.s.Stats(); st.Acked != 11 || st.Unacked != 0 || st.Sent != 11 || st.Disconnects != 0 {
		t.Fatalf("Stats: %+v; want Acked=Sent=11, Unacked=0, no disconnect", st)
	}
	if err := h.s.Err(); err != nil {
		t.Fatalf("Err() = %v after a repeated ack", err)
	}
}

// TestScriptedProtocolViolation checks that an <a/> the client cannot accept
// ends the stream for good with a stream error, and that no stanza is
// reported ACKED by it.
func TestScriptedProtocolViolation(t *testing.T) {
	tests := []struct {
		name      string
		a         string
		streamErr string // must appear in what the client wrote
	}{
		{"h too high", "<a xmlns='urn:xmpp:sm:3' h='50'/>",
			"<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><handled-count-too-high xmlns='urn:xmpp:sm:3' h='50' send-count='10'/>"},
		{"h not a number", "<a xmlns='urn:xmpp:sm:3' h='x'/>",
			"<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"},
		{"h missing", "<a xmlns='urn:xmpp:sm:3'/>",
			"<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"},
		{"h negative", "<a xmlns='urn:xmpp:sm:3' h='-1'/>",
			"<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"},
		// Serial-number arithmetic would call 3000000000 "older" than 4;
		// no queue of 6 stanzas can cover it.
		{"h far ahead", "<a xmlns='urn:xmpp:sm:3' h='3000000000'/>",
			"<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><handled-count-too-high xmlns='urn:xmpp:sm:3' h='3000000000' send-count='10'/>"},
		{"h behind the last ack", "<a xmlns='urn:xmpp:sm:3' h='2'/>",
			"<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><handled-count-too-high xmlns='urn:xmpp:sm:3' h='2' send-count='10'/>"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil)
			toks := h.send(ids("m", 1, 10)...)
			h.c.Stanzas(t, 10)
			h.c.Write(t, ackH(4))
			waitState(t, stream.TokenAcked, toks[:4]...)

			h.c.Write(t, tc.a)
			// mellium's stream.Error cannot decode the application
			// condition of XEP-0198 (it leaves the element unread), so the
			// bytes are checked rather than what the server parsed.
			if err := h.c.End(t); err == io.EOF {
				t.Fatalf("the client ended its stream without a stream error")
			}
			got := h.c.Received()
			if !strings.HasSuffix(got, "<stream:error>"+tc.streamErr+"</stream:error></stream:stream>") {
				t.Fatalf("the client wrote\n%s\nwant it to end with the stream error %s", got[max(0, len(got)-400):], tc.streamErr)
			}
			waitDone(t, h.s)
			if err := h.s.Err(); !errors.Is(err, stream.ErrProtocol) {
				t.Fatalf("Err() = %v, want ErrProtocol", err)
			}
			checkState(t, stream.TokenAcked, toks[:4]...)
			checkState(t, stream.TokenDisconnected, toks[4:]...)
			for _, tok := range toks[4:] {
				if !errors.Is(tok.Err(), stream.ErrProtocol) {
					t.Errorf("token %s: Err() = %v, want ErrProtocol", tok.ID(), tok.Err())
				}
			}
			ev := h.event(stream.EventClosed)
			if !errors.Is(ev.Err, stream.ErrProtocol) || ev.Lost != 6 {
				t.Errorf("closed event: %+v; want ErrProtocol, Lost=6", ev)
			}
			h.noEvent(stream.EventDisconnected)
			// The stream does not reconnect, refuses new stanzas and its
			// goroutines end.
			tok, err := h.s.Send(context.Background(), message("late"))
			if !errors.Is(err, stream.ErrProtocol) || tok.State() != stream.TokenFailed {
				t.Errorf("Send after the violation: %v, %v; want ErrProtocol, FAILED", err, tok.State())
			}
			if err := h.s.Close(context.Background()); !errors.Is(err, stream.ErrProtocol) {
				t.Errorf("Close() = %v, want ErrProtocol", err)
			}
			checkNoStreamGoroutines(t)
		})
	}
}

// TestScriptedInboundCount checks the h the client answers <r/> with: every
// stanza counts, nonzas never do.
func TestScriptedInboundCount(t *testing.T) {
	h := start(t, nil)
	c := h.c
	for _, id := range ids("in", 1, 5) {
		c.Write(t, serverMessage(id))
	}
	c.Write(t, requestR)
	expectAnswer(t, c, 5)

	// Nonzas in between: an <a/> for nothing, an unknown SM element, <r/>.
	c.Write(t, ackH(0))
	c.Write(t, "<enabled xmlns='urn:xmpp:sm:3'/>")
	c.Write(t, requestR)
	expectAnswer(t, c, 5)

	// Every kind of stanza counts, including an IQ result nobody waits for
	// and a presence.
	c.Write(t, "<presence from='peer@example.test/x'/>")
	c.Write(t, "<iq type='result' id='nobody-asked' from='example.test'/>")
	c.Write(t, "<message from='peer@example.test/x' type='error' id='e1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
	c.Write(t, requestR+requestR)
	expectAnswer(t, c, 8)
	if st := h.s.Stats(); st.Received != 8 {
		t.Fatalf("Stats().Received = %d, want 8", st.Received)
	}
}

func TestScriptedWrap(t *testing.T) {
	h := start(t, nil)
	stream.SetCounts(h.s, 4294967290, 4294967294)
	var order ackOrder
	toks := h.send(ids("w", 1, 20)...)
	order.watch(toks...)
	if got := h.c.Stanzas(t, 20); !slices.Equal(got, ids("w", 1, 20)) {
		t.Fatalf("server received %v", got)
	}
	steps := []struct {
		h     uint32
		acked int
	}{
		{4294967295, 5}, // the last count before the wrap
		{4294967295, 5}, // the same again
		{4, 10},         // across the wrap
		{14, 20},        // 4294967290 + 20 mod 2^32
	}
	for _, st := range steps {
		h.c.Write(t, ackH(st.h))
		waitState(t, stream.TokenAcked, toks[:st.acked]...)
		checkState(t, stream.TokenSent, toks[st.acked:]...)
	}
	if got := order.wait(20); !slices.Equal(got, ids("w", 1, 20)) {
		t.Fatalf("acknowledged in the order %v", got)
	}
	// The inbound count wraps too.
	for _, id := range ids("in", 1, 3) {
		h.c.Write(t, serverMessage(id))
	}
	h.c.Write(t, requestR)
	expectAnswer(t, h.c, 1) // 4294967294 + 3 mod 2^32
	if err := h.s.Err(); err != nil {
		t.Fatalf("Err() = %v", err)
	}
	// One more beyond the last: handled-count-too-high names the wrapped
	// counts.
	h.c.Write(t, ackH(15))
	h.c.End(t)
	if got := h.c.Received(); !strings.Contains(got, "<handled-count-too-high xmlns='urn:xmpp:sm:3' h='15' send-count='14'/>") {
		t.Fatalf("no handled-count-too-high with the wrapped counts in %s", got[max(0, len(got)-300):])
	}
	waitDone(t, h.s)
}

// TestScriptedResume tears the connection after some acknowledgements and
// checks the resumption: the h the client sends, the stanzas the server
// acknowledged on <resumed/>, the order of what is written again and of what
// was sent while disconnected.
func TestScriptedResume(t *testing.T) {
	for _, tear := range []string{"reset", "close"} {
		t.Run(tear, func(t *testing.T) {
			h := start(t, nil)
			c := h.c
			var order ackOrder
			toks := h.send(ids("m", 1, 10)...)
			order.watch(toks...)
			c.Stanzas(t, 10)
			// The server sends three stanzas and makes sure the client
			// has them.
			for _, id := range ids("in", 1, 3) {
				c.Write(t, serverMessage(id))
			}
			c.Write(t, requestR)
			expectAnswer(t, c, 3)
			c.Write(t, ackH(4))
			waitState(t, stream.TokenAcked, toks[:4]...)

			release := make(chan struct{})
			h.srv.OnResume(func(r fakeserver.Resume) string {
				<-release
				// A stanza right behind <resumed/>, in the same write: the
				// client must not lose it to its negotiation.
				return fakeserver.Resumed(r.PrevID, 7) + serverMessage("in4")
			})
			if tear == "reset" {
				c.Reset()
			} else {
				c.Close()
			}
			ev := h.event(stream.EventDisconnected)
			if !errors.Is(ev.Err, stream.ErrConnectionLost) {
				t.Errorf("disconnected event: %+v, want ErrConnectionLost", ev)
			}
			// Sent while disconnected: the client waits for the answer to
			// its <resume/>.
			later := h.send(ids("m", 11, 13)...)
			order.watch(later...)
			checkState(t, stream.TokenQueued, later...)
			checkState(t, stream.TokenSent, toks[4:]...)
			close(release)

			c2 := h.srv.Next(t)
			if c2.Resume == nil || *c2.Resume != (fakeserver.Resume{PrevID: "S1", H: "3"}) {
				t.Fatalf("client resumed with %+v, want previd S1, h 3", c2.Resume)
			}
			ev = h.event(stream.EventResumed)
			if ev.Acked != 3 || ev.Resent != 3 || ev.Lost != 0 || ev.Addr.String() != "user@example.test/r1" {
				t.Errorf("resumed event: %+v; want Acked=3, Resent=3, Lost=0, Addr user@example.test/r1", ev)
			}
			waitState(t, stream.TokenAcked, toks[:7]...)
			want := append(ids("m", 8, 10), ids("m", 11, 13)...)
			if got := c2.Stanzas(t, 6); !slices.Equal(got, want) {
				t.Fatalf("after resumption the server received %v, want %v", got, want)
			}
			c2.NoStanza(t, 100*time.Millisecond)
			checkState(t, stream.TokenSent, toks[7:]...)
			checkState(t, stream.TokenSent, later...)

			// The server counts from its h on: 7 + 6.
			c2.Write(t, ackH(13))
			waitState(t, stream.TokenAcked, toks...)
			waitState(t, stream.TokenAcked, later...)
			if got := order.wait(13); !slices.Equal(got, ids("m", 1, 13)) {
				t.Fatalf("acknowledged in the order %v", got)
			}
			// The inbound count goes on from where it was, with the stanza
			// that came with <resumed/>.
			c2.Write(t, requestR)
			expectAnswer(t, c2, 4)

			st := h.s.Stats()
			if st.Resumptions != 1 || st.Disconnects != 1 || st.NewSessions != 0 || st.Connections != 2 {
				t.Errorf("Stats: %+v; want 1 resumption, 1 disconnect, 2 connections", st)
			}
			if len(st.Attempts) != 1 || !st.Attempts[0].Resume || st.Attempts[0].Outcome != "resumed" {
				t.Errorf("Stats().Attempts = %+v; want one resumed attempt", st.Attempts)
			}
			h.noEvent(stream.EventNewSession)
		})
	}
}

// failedIn returns the <failed/> answer wrapped in err, as a value or as a
// pointer.
func failedIn(err error) (sm.Failed, bool) {
	var f sm.Failed
	if errors.As(err, &f) {
		return f, true
	}
	var p *sm.Failed
	if errors.As(err, &p) && p != nil {
		return *p, true
	}
	return f, false
}

// TestScriptedResumeFailed answers the client's <resume/> with <failed/>, with
// and without h.
func TestScriptedResumeFailed(t *testing.T) {
	const itemNotFound = "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
	tests := []struct {
		name   string
		failed string
		acked  int // tokens ACKED in the end, of 10 sent
		cond   stanza.Condition
	}{
		{"with h", "<failed xmlns='urn:xmpp:sm:3' h='7'>" + itemNotFound + "</failed>", 7, stanza.ItemNotFound},
		{"without h", "<failed xmlns='urn:xmpp:sm:3'>" + itemNotFound + "</failed>", 3, stanza.ItemNotFound},
		{"h behind", "<failed xmlns='urn:xmpp:sm:3' h='2'/>", 3, ""},
		{"h too high", "<failed xmlns='urn:xmpp:sm:3' h='11'/>", 3, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil)
			c := h.c
			toks := h.send(ids("m", 1, 10)...)
			c.Stanzas(t, 10)
			c.Write(t, serverMessage("in1"))
			c.Write(t, ackH(3))
			waitState(t, stream.TokenAcked, toks[:3]...)

			release := make(chan struct{})
			h.srv.OnResume(func(fakeserver.Resume) string {
				<-release
				return tc.failed
			})
			c.Reset()
			h.event(stream.EventDisconnected)
			later := h.send("n1", "n2")
			close(release)

			c2 := h.srv.Next(t)
			if c2.Resume == nil || c2.Resume.PrevID != "S1" {
				t.Fatalf("client resumed with %+v, want previd S1", c2.Resume)
			}
			c2.EnableSM(t, "S2")
			ev := h.event(stream.EventNewSession)
			lost := 10 - tc.acked
			if !errors.Is(ev.Err, stream.ErrResumeRefused) || ev.Acked != tc.acked-3 || ev.Lost != lost {
				t.Errorf("new session event: %+v; want ErrResumeRefused, Acked=%d, Lost=%d", ev, tc.acked-3, lost)
			}
			if ev.Addr.String() != "user@example.test/r2" || h.s.Addr().String() != "user@example.test/r2" {
				t.Errorf("new session bound to %v (Addr() %v), want user@example.test/r2", ev.Addr, h.s.Addr())
			}
			checkState(t, stream.TokenAcked, toks[:tc.acked]...)
			checkState(t, stream.TokenDisconnected, toks[tc.acked:]...)
			for _, tok := range toks[tc.acked:] {
				if !errors.Is(tok.Err(), stream.ErrResumeRefused) {
					t.Errorf("token %s: Err() = %v, want ErrResumeRefused", tok.ID(), tok.Err())
				} else if _, ok := failedIn(tok.Err()); !ok {
					t.Errorf("token %s: Err() = %v, want the sm.Failed in it", tok.ID(), tok.Err())
				}
			}
			// What was queued goes out on the new session, and nothing of
			// the old one.
			if got := c2.Stanzas(t, 2); !slices.Equal(got, []string{"n1", "n2"}) {
				t.Fatalf("new session received %v, want [n1 n2]", got)
			}
			c2.NoStanza(t, 100*time.Millisecond)
			// Counters start again from zero, both ways.
			c2.Write(t, ackH(2))
			waitState(t, stream.TokenAcked, later...)
			c2.Write(t, serverMessage("in1"))
			c2.Write(t, requestR)
			expectAnswer(t, c2, 1)

			st := h.s.Stats()
			if st.NewSessions != 1 || st.Resumptions != 0 {
				t.Errorf("Stats: NewSessions=%d Resumptions=%d, want 1, 0", st.NewSessions, st.Resumptions)
			}
			if len(st.Attempts) != 1 || !st.Attempts[0].Resume || st.Attempts[0].Outcome != "new-session" {
				t.Errorf("Stats().Attempts = %+v; want one resumption attempt ending in a new session", st.Attempts)
			} else if f, ok := failedIn(st.Attempts[0].Err); !ok || f.Condition != tc.cond {
				t.Errorf("Stats().Attempts[0].Err = %v; want the sm.Failed with condition %q", st.Attempts[0].Err, tc.cond)
			}
			h.noEvent(stream.EventResumed)
		})
	}
}

// TestScriptedTornStanza checks that a stanza cut by the loss of the
// connection is not counted: the client resumes with the h of the complete
// stanzas only.
func TestScriptedTornStanza(t *testing.T) {
	h := start(t, nil)
	c := h.c
	c.Write(t, serverMessage("in1")+serverMessage("in2")+requestR)
	expectAnswer(t, c, 2)
	c.Write(t, "<message from='peer@example.test/x' to='user@example.test/r1' id='torn'><body>half of a")
	time.Sleep(50 * time.Millisecond) // let the client read the half
	h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	c.Reset()
	c2 := h.srv.Next(t)
	if c2.Resume == nil || c2.Resume.H != "2" {
		t.Fatalf("client resumed with %+v, want h 2", c2.Resume)
	}
	h.event(stream.EventResumed)
	if st := h.s.Stats(); st.Received != 2 {
		t.Fatalf("Stats().Received = %d, want 2", st.Received)
	}
}

// TestScriptedDeadLink has the server read everything and answer nothing:
// the client must notice within its AckTimeout and reconnect.
func TestScriptedDeadLink(t *testing.T) {
	tests := []struct {
		name string
		send bool // a stanza awaits its ack; otherwise the keepalive asks
	}{
		{"unanswered request", true},
		{"keepalive", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, func(c *stream.Config) {
				c.AckTimeout = 300 * time.Millisecond
				c.KeepAlive = 100 * time.Millisecond
			})
			h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
			begin := time.Now()
			var toks []*stream.StanzaToken
			if tc.send {
				toks = h.send("m1")
			}
			ev := h.event(stream.EventDisconnected)
			if !errors.Is(ev.Err, stream.ErrAckTimeout) {
				t.Fatalf("disconnected by %v, want ErrAckTimeout", ev.Err)
			}
			if d := time.Since(begin); d < 300*time.Millisecond {
				t.Fatalf("link taken for dead after %v, before AckTimeout", d)
			}
			// The client asked before giving up.
			if got := h.c.Received(); !strings.Contains(got, "<r xmlns='urn:xmpp:sm:3'/>") {
				t.Fatalf("the client never sent <r/>: %s", got)
			}
			c2 := h.srv.Next(t)
			if c2.Resume == nil || *c2.Resume != (fakeserver.Resume{PrevID: "S1", H: "0"}) {
				t.Fatalf("reconnected with %+v, want a resumption of S1", c2.Resume)
			}
			h.event(stream.EventResumed)
			st := h.s.Stats()
			if st.Disconnects != 1 || len(st.Attempts) != 1 || !st.Attempts[0].Resume || !errors.Is(st.LastErr, stream.ErrAckTimeout) {
				t.Fatalf("Stats: Disconnects=%d Attempts=%+v LastErr=%v", st.Disconnects, st.Attempts, st.LastErr)
			}
			if tc.send {
				if got := c2.Stanzas(t, 1); got[0] != "m1" {
					t.Fatalf("resent %v, want m1", got)
				}
				c2.Write(t, ackH(1))
				waitState(t, stream.TokenAcked, toks...)
			}
		})
	}
}

// TestScriptedIQ checks the answers to IQ requests nobody handles, and that
// they are counted like any stanza the client sends.
func TestScriptedIQ(t *testing.T) {
	tests := []struct {
		name    string
		iq      string
		typ     string
		errCond string
	}{
		{"unknown get", "<iq type='get' id='q1' from='example.test' to='user@example.test/r1'><query xmlns='urn:example:unknown'/></iq>",
			"error", "service-unavailable"},
		{"unknown set", "<iq type='set' id='q1' from='example.test'><query xmlns='urn:example:unknown'><x/></query></iq>",
			"error", "service-unavailable"},
		{"ping", "<iq type='get' id='q1' from='example.test' to='user@example.test/r1'><ping xmlns='urn:xmpp:ping'/></iq>",
			"result", ""},
		{"ping set", "<iq type='set' id='q1' from='example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
			"error", "service-unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil)
			c := h.c
			toks := h.send("m1")
			c.Stanzas(t, 1)
			c.Write(t, tc.iq)
			var reply fakeserver.Element
			for {
				reply = c.Next(t)
				if reply.IsStanza() {
					break
				}
			}
			if reply.Start.Name.Local != "iq" || reply.Attr("type") != tc.typ || reply.Attr("id") != "q1" || reply.Attr("to") != "example.test" {
				t.Fatalf("reply %s, want <iq type='%s' id='q1' to='example.test'>", reply, tc.typ)
			}
			cond := ""
			for _, tok := range reply.Inner {
				if s, ok := tok.(xml.StartElement); ok && s.Name.Space == stanza.NSError {
					cond = s.Name.Local
				}
			}
			if cond != tc.errCond {
				t.Fatalf("reply %s: condition %q, want %q", reply, cond, tc.errCond)
			}
			// The reply is the client's second stanza.
			c.Write(t, ackH(2))
			waitState(t, stream.TokenAcked, toks...)
			if st := h.s.Stats(); st.Acked != 2 || st.Unacked != 0 {
				t.Fatalf("Stats: Acked=%d Unacked=%d, want 2, 0", st.Acked, st.Unacked)
			}
			if err := h.s.Err(); err != nil {
				t.Fatalf("Err() = %v", err)
			}
		})
	}
}

func TestScriptedAbort(t *testing.T) {
	h := start(t, func(c *stream.Config) { c.MaxUnacked = 1 })
	c := h.c
	toks := h.send("m1", "m2", "m3")
	if got := c.Stanzas(t, 1); got[0] != "m1" {
		t.Fatalf("server received %v, want m1", got)
	}
	c.NoStanza(t, 50*time.Millisecond) // the writer holds m2 and m3
	checkState(t, stream.TokenQueued, toks[1:]...)

	if err := toks[1].Abort(); err != nil {
		t.Fatalf("Abort of a queued stanza: %v", err)
	}
	if err := toks[0].Abort(); !errors.Is(err, stream.ErrNotQueued) {
		t.Fatalf("Abort of a sent stanza: %v, want ErrNotQueued", err)
	}
	checkState(t, stream.TokenSent, toks[0])
	checkState(t, stream.TokenAborted, toks[1])

	c.Write(t, ackH(1))
	if got := c.Stanzas(t, 1); got[0] != "m3" {
		t.Fatalf("server received %v, want m3", got)
	}
	// m2 was never written, so m3 is the second stanza.
	c.Write(t, ackH(2))
	waitState(t, stream.TokenAcked, toks[0], toks[2])
	checkState(t, stream.TokenAborted, toks[1])
	if strings.Contains(c.Received(), `"m2"`) {
		t.Fatal("the aborted stanza reached the server")
	}
	if err := toks[1].Abort(); !errors.Is(err, stream.ErrNotQueued) {
		t.Fatalf("second Abort: %v, want ErrNotQueued", err)
	}
}

// TestScriptedQueueBounds fills the send queue while the client is between
// connections (nothing is written) or while the server holds MaxUnacked
// stanzas unacknowledged.
func TestScriptedQueueBounds(t *testing.T) {
	t.Run("non-blocking", func(t *testing.T) {
		h := start(t, func(c *stream.Config) {
			c.QueueSize = 2
			c.NonBlocking = true
		})
		release := make(chan struct{})
		h.srv.OnResume(func(r fakeserver.Resume) string {
			<-release
			return fakeserver.Resumed(r.PrevID, 0)
		})
		h.c.Reset()
		h.event(stream.EventDisconnected)
		toks := h.send("m1", "m2")
		tok, err := h.s.Send(context.Background(), message("m3"))
		if !errors.Is(err, stream.ErrQueueFull) || tok.State() != stream.TokenFailed || !errors.Is(tok.Err(), stream.ErrQueueFull) {
			t.Fatalf("third Send: %v, token %v (%v); want ErrQueueFull, FAILED", err, tok.State(), tok.Err())
		}
		if st := h.s.Stats(); st.Queued != 2 {
			t.Fatalf("Stats().Queued = %d, want 2", st.Queued)
		}
		close(release)
		c2 := h.srv.Next(t)
		if got := c2.Stanzas(t, 2); !slices.Equal(got, []string{"m1", "m2"}) {
			t.Fatalf("server received %v", got)
		}
		c2.NoStanza(t, 50*time.Millisecond)
		c2.Write(t, ackH(2))
		waitState(t, stream.TokenAcked, toks...)
	})
	t.Run("blocking", func(t *testing.T) {
		h := start(t, func(c *stream.Config) {
			c.QueueSize = 2
			c.MaxUnacked = 1
		})
		c := h.c
		toks := h.send("m1")
		c.Stanzas(t, 1)
		toks = append(toks, h.send("m2", "m3")...)

		// No room: Send waits for its context.
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		tok, err := h.s.Send(ctx, message("x"))
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || tok.State() != stream.TokenFailed {
			t.Fatalf("Send with a full queue and an expiring ctx: %v, %v; want DeadlineExceeded, FAILED", err, tok.State())
		}

		// No room: Send waits until the writer takes m2.
		type result struct {
			tok *stream.StanzaToken
			err error
		}
		ch := make(chan result, 1)
		go func() {
			tok, err := h.s.Send(context.Background(), message("m4"))
			ch <- result{tok, err}
		}()
		select {
		case r := <-ch:
			t.Fatalf("Send returned %v with the queue full", r.err)
		case <-time.After(50 * time.Millisecond):
		}
		c.Write(t, ackH(1))
		var r result
		select {
		case r = <-ch:
			if r.err != nil {
				t.Fatalf("Send after room was made: %v", r.err)
			}
		case <-time.After(waitFor):
			t.Fatal("Send still waits after the queue had room")
		}
		toks = append(toks, r.tok)
		for i := 2; i <= 4; i++ {
			if got := c.Stanzas(t, 1); got[0] != fmt.Sprintf("m%d", i) {
				t.Fatalf("server received %v, want m%d", got, i)
			}
			c.Write(t, ackH(uint32(i)))
		}
		waitState(t, stream.TokenAcked, toks...)
	})
}

func TestScriptedClose(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		h := start(t, func(c *stream.Config) { c.MaxUnacked = 2 })
		c := h.c
		toks := h.send(ids("m", 1, 5)...)
		closed := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			closed <- h.s.Close(ctx)
		}()
		// The server acknowledges only when asked; the client writes the
		// queue out (two at a time), asks, and ends the stream once all are
		// counted.
		var got []string
		var n uint32
		for {
			el, ok := c.NextOrEnd(t)
			if !ok {
				break
			}
			switch {
			case el.IsStanza():
				got = append(got, el.Attr("id"))
				n++
			case el.Start.Name == xml.Name{Space: sm.NS, Local: "r"}:
				c.Write(t, ackH(n))
			default:
				t.Fatalf("unexpected %s", el)
			}
		}
		if err := c.End(t); err != io.EOF {
			t.Fatalf("the client's stream ended with %v, want </stream:stream>", err)
		}
		if !strings.HasSuffix(c.Received(), "</stream:stream>") {
			t.Fatalf("the client's last bytes: %q", c.Received()[max(0, len(c.Received())-100):])
		}
		// The server has answered with </stream:stream>.
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("Close() = %v", err)
			}
		case <-time.After(waitFor):
			t.Fatal("Close did not return")
		}
		if !slices.Equal(got, ids("m", 1, 5)) {
			t.Fatalf("server received %v", got)
		}
		checkState(t, stream.TokenAcked, toks...)
		waitDone(t, h.s)
		if err := h.s.Err(); !errors.Is(err, stream.ErrClosed) {
			t.Fatalf("Err() = %v, want ErrClosed", err)
		}
		ev := h.event(stream.EventClosed)
		if !errors.Is(ev.Err, stream.ErrClosed) || ev.Lost != 0 {
			t.Fatalf("closed event %+v", ev)
		}
		checkNoStreamGoroutines(t)

		tok, err := h.s.Send(context.Background(), message("late"))
		if !errors.Is(err, stream.ErrClosed) || tok.State() != stream.TokenFailed {
			t.Fatalf("Send after Close: %v, %v; want ErrClosed, FAILED", err, tok.State())
		}
		if err := h.s.Close(context.Background()); err != nil {
			t.Fatalf("second Close() = %v", err)
		}
		h.srv.Close()
	}()
	// Everything the test started is gone: stream and server alike.
	deadline := time.Now().Add(waitFor)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", base, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestScriptedCloseUnacked closes while the server acknowledges nothing:
// Close gives up when its context ends and every token is final.
func TestScriptedCloseUnacked(t *testing.T) {
	h := start(t, func(c *stream.Config) { c.MaxUnacked = 2 })
	toks := h.send(ids("m", 1, 4)...)
	h.c.Stanzas(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	err := h.s.Close(ctx)
	if d := time.Since(begin); d > time.Second {
		t.Fatalf("Close took %v with a 100ms context", d)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close() = %v, want the context's error", err)
	}
	checkState(t, stream.TokenDisconnected, toks[:2]...)
	checkState(t, stream.TokenFailed, toks[2:]...)
	for _, tok := range toks {
		if !errors.Is(tok.Err(), stream.ErrClosed) {
			t.Errorf("token %s: Err() = %v, want ErrClosed", tok.ID(), tok.Err())
		}
	}
	waitDone(t, h.s)
	checkNoStreamGoroutines(t)
}

func TestScriptedUnserialisable(t *testing.T) {
	msgStart := xml.StartElement{Name: xml.Name{Local: "message"}, Attr: []xml.Attr{{Name: xml.Name{Local: "id"}, Value: "bad"}}}
	tests := []struct {
		name string
		r    xml.TokenReader
	}{
		{"two roots", xmlstream.MultiReader(message("bad1"), message("bad2"))},
		{"unclosed", xmlstream.Token(msgStart)},
		{"mismatched end", xmlstream.MultiReader(xmlstream.Token(msgStart), xmlstream.Token(xml.EndElement{Name: xml.Name{Local: "iq"}}))},
		{"empty", xmlstream.MultiReader()},
		{"text only", xmlstream.Token(xml.CharData("hello"))},
		{"comment", xmlstream.MultiReader(xmlstream.Token(msgStart), xmlstream.Token(xml.Comment("x")), xmlstream.Token(msgStart.End()))},
	}
	h := start(t, nil)
	for _, tc := range tests {
		tok, err := h.s.Send(context.Background(), tc.r)
		if !errors.Is(err, stream.ErrSerialize) {
			t.Errorf("%s: Send error %v, want ErrSerialize", tc.name, err)
		}
		if tok == nil || tok.State() != stream.TokenDropped || !errors.Is(tok.Err(), stream.ErrSerialize) {
			t.Errorf("%s: token %v; want DROPPED with ErrSerialize", tc.name, tok)
		}
	}
	// Nothing of them reached the server, and counting is unaffected.
	good := h.send("good")
	if got := h.c.Stanzas(t, 1); got[0] != "good" {
		t.Fatalf("server received %v, want good", got)
	}
	h.c.Write(t, ackH(1))
	waitState(t, stream.TokenAcked, good...)
	if strings.Contains(h.c.Received(), "bad") {
		t.Fatalf("a dropped stanza reached the server: %s", h.c.Received())
	}
}

// TestScriptedSendAssignsID checks that a stanza without an id gets the
// token's id on the wire.
func TestScriptedSendAssignsID(t *testing.T) {
	h := start(t, nil)
	tok, err := h.s.Send(context.Background(), message(""))
	if err != nil {
		t.Fatal(err)
	}
	if tok.ID() == "" {
		t.Fatal("token without id")
	}
	if got := h.c.Stanzas(t, 1); got[0] != tok.ID() {
		t.Fatalf("server received id %q, token id %q", got[0], tok.ID())
	}
}

// TestScriptedServerEndsStream checks that a session the server ended on
// purpose is not resumed: the client binds a new one, and what the server
// had not acknowledged is DISCONNECTED.
func TestScriptedServerEndsStream(t *testing.T) {
	tests := []struct {
		name string
		end  string
		// pause is the least wait before the next connection: after
		// <system-shutdown/> the server may still accept logins for a
		// while, into a session it then loses.
		pause time.Duration
	}{
		{"stream end", "</stream:stream>", 0},
		{"stream error", "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>", 1900 * time.Millisecond},
		{"see other host", "<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>elsewhere.example:5222</see-other-host></stream:error></stream:stream>", 1900 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil)
			c := h.c
			toks := h.send("m1", "m2", "m3")
			c.Stanzas(t, 3)
			c.Write(t, ackH(1))
			waitState(t, stream.TokenAcked, toks[0])
			ended := time.Now()
			c.Write(t, tc.end)
			// Close only once the client has read the end and ended its
			// own stream: a close with its reply unread would be a reset,
			// which could reach the client before the end it answers.
			c.End(t)
			c.Close()

			c2 := h.srv.NextWithin(t, tc.pause+fakeserver.Timeout)
			if waited := time.Since(ended); waited < tc.pause {
				t.Errorf("reconnected %v after the stream ended, want at least %v", waited, tc.pause)
			}
			if c2.Resume != nil {
				t.Fatalf("the client resumed a session the server ended: %+v", c2.Resume)
			}
			c2.EnableSM(t, "S2")
			ev := h.event(stream.EventNewSession)
			if !errors.Is(ev.Err, stream.ErrConnectionLost) || ev.Lost != 2 {
				t.Errorf("new session event %+v; want ErrConnectionLost, Lost=2", ev)
			}
			checkState(t, stream.TokenDisconnected, toks[1:]...)
			for _, tok := range toks[1:] {
				if !errors.Is(tok.Err(), stream.ErrConnectionLost) {
					t.Errorf("token %s: Err() = %v, want ErrConnectionLost", tok.ID(), tok.Err())
				}
			}
			c2.NoStanza(t, 50*time.Millisecond)
			more := h.send("m4")
			if got := c2.Stanzas(t, 1); got[0] != "m4" {
				t.Fatalf("new session received %v, want m4", got)
			}
			c2.Write(t, ackH(1))
			waitState(t, stream.TokenAcked, more...)
		})
	}
}

// TestScriptedResumedLinkDeadAgain checks that a resumed connection that
// never answers the client's ack request is not resumed once more: the
// client binds a new session.
func TestScriptedResumedLinkDeadAgain(t *testing.T) {
	h := start(t, func(c *stream.Config) { c.AckTimeout = 300 * time.Millisecond })
	toks := h.send("m1")
	h.c.Stanzas(t, 1)
	h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	h.c.Reset()

	c2 := h.srv.Next(t)
	if c2.Resume == nil {
		t.Fatal("the client did not resume after a reset")
	}
	if got := c2.Stanzas(t, 1); got[0] != "m1" {
		t.Fatalf("resent %v, want m1", got)
	}
	h.event(stream.EventResumed)
	// The server says nothing more.
	c3 := h.srv.Next(t)
	if c3.Resume != nil {
		t.Fatalf("the client resumed onto a silent session again: %+v", c3.Resume)
	}
	c3.EnableSM(t, "S2")
	ev := h.event(stream.EventNewSession)
	if ev.Lost != 1 {
		t.Errorf("new session event %+v, want Lost=1", ev)
	}
	checkState(t, stream.TokenDisconnected, toks...)
	if st := h.s.Stats(); st.Disconnects != 2 || st.Resumptions != 1 || st.NewSessions != 1 {
		t.Errorf("Stats: Disconnects=%d Resumptions=%d NewSessions=%d, want 2, 1, 1", st.Disconnects, st.Resumptions, st.NewSessions)
	}
}

// TestScriptedEnableRefused checks a server that answers <enable/> with
// <failed/>: the stream works without stream management and never claims an
// acknowledgement.
func TestScriptedEnableRefused(t *testing.T) {
	h := startWith(t, nil, func(c *fakeserver.Conn) {
		c.Expect(t, "enable")
		c.Write(t, "<failed xmlns='urn:xmpp:sm:3'><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>")
	})
	if st := h.s.Stats(); st.SMEnabled {
		t.Fatal("SMEnabled after <failed/>")
	}
	toks := h.send("m1", "m2")
	if got := h.c.Stanzas(t, 2); !slices.Equal(got, []string{"m1", "m2"}) {
		t.Fatalf("server received %v", got)
	}
	waitState(t, stream.TokenSentWithoutSM, toks...)
	if strings.Contains(h.c.Received(), "<r xmlns='urn:xmpp:sm:3'/>") {
		t.Fatal("the client asked for acks without stream management")
	}
	if err := h.s.Close(context.Background()); err != nil {
		t.Fatalf("Close() = %v", err)
	}
}

// TestScriptedDisableSM checks Config.DisableSM against a server that offers
// stream management.
func TestScriptedDisableSM(t *testing.T) {
	h := startWith(t, func(c *stream.Config) { c.DisableSM = true }, func(*fakeserver.Conn) {})
	toks := h.send("m1")
	el := h.c.Next(t)
	if !el.IsStanza() || el.Attr("id") != "m1" {
		t.Fatalf("first element after binding: %s, want the message m1", el)
	}
	waitState(t, stream.TokenSentWithoutSM, toks...)
	if st := h.s.Stats(); st.SMEnabled {
		t.Fatal("SMEnabled with DisableSM")
	}
}

func TestScriptedSendIQ(t *testing.T) {
	h := start(t, nil)
	c := h.c
	ping := xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Space: "urn:xmpp:ping", Local: "ping"}})
	tests := []struct {
		id, reply string
		errCond   stanza.Condition
	}{
		{"q1", "<iq type='result' id='q1' from='example.test' to='user@example.test/r1'/>", ""},
		{"q2", "<iq type='error' id='q2' from='example.test' to='user@example.test/r1'><error type='cancel'>" +
			"<feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>", stanza.FeatureNotImplemented},
	}
	for i, tc := range tests {
		type result struct {
			el  *stream.Element
			err error
		}
		ch := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			el, err := h.s.SendIQ(ctx, stanza.IQ{ID: tc.id, Type: stanza.GetIQ, To: jid.MustParse("example.test")}, ping)
			ch <- result{el, err}
		}()
		if got := c.Stanzas(t, 1); got[0] != tc.id {
			t.Fatalf("server received %v, want %s", got, tc.id)
		}
		c.Write(t, tc.reply)
		r := <-ch
		if r.err != nil {
			t.Fatalf("SendIQ(%s): %v", tc.id, r.err)
		}
		if r.el.Attr("id") != tc.id {
			t.Fatalf("SendIQ(%s) returned %+v", tc.id, r.el)
		}
		se, isErr := r.el.Error()
		if isErr != (tc.errCond != "") || (isErr && se.Condition != tc.errCond) {
			t.Fatalf("SendIQ(%s): Error() = %+v, %v; want condition %q", tc.id, se, isErr, tc.errCond)
		}
		// The reply was counted although no handler saw it.
		c.Write(t, requestR)
		expectAnswer(t, c, uint32(i+1))
	}
	c.Write(t, ackH(2))
	deadline := time.Now().Add(waitFor)
	for h.s.Stats().Acked != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("Stats().Acked = %d, want 2", h.s.Stats().Acked)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestScriptedHandlerAnswersIQ checks that an IQ a handler answered is not
// answered a second time by the stream, and that the handler's reply is
// counted.
func TestScriptedHandlerAnswersIQ(t *testing.T) {
	h := start(t, nil)
	c := h.c
	h.s.Handle(xmpp.HandlerFunc(func(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
		iq, err := stanza.NewIQ(*start)
		if err != nil || start.Name.Local != "iq" || iq.Type != stanza.GetIQ {
			return err
		}
		_, err = xmlstream.Copy(r, iq.Result(nil))
		return err
	}))
	toks := h.send("m1")
	c.Stanzas(t, 1)
	c.Write(t, "<iq type='get' id='q1' from='example.test' to='user@example.test/r1'><query xmlns='urn:example:unknown'/></iq>")
	var reply fakeserver.Element
	for !reply.IsStanza() {
		reply = c.Next(t)
	}
	if reply.Attr("type") != "result" || reply.Attr("id") != "q1" {
		t.Fatalf("reply %s, want the handler's result", reply)
	}
	c.NoStanza(t, 50*time.Millisecond)
	c.Write(t, ackH(2))
	waitState(t, stream.TokenAcked, toks...)
	if err := h.s.Err(); err != nil {
		t.Fatalf("Err() = %v", err)
	}
}

// TestScriptedEnabledThenStanza has the server send a stanza right behind
// <enabled/>, in the same write: the client reads exactly one element to
// enable stream management, and counts the stanza.
func TestScriptedEnabledThenStanza(t *testing.T) {
	h := startWith(t, nil, func(c *fakeserver.Conn) {
		c.Expect(t, "enable")
		c.Write(t, "<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='true'/>"+serverMessage("early"))
	})
	h.c.Write(t, requestR)
	expectAnswer(t, h.c, 1)
	if st := h.s.Stats(); !st.SMEnabled || st.Received != 1 {
		t.Fatalf("Stats: SMEnabled=%v Received=%d, want true, 1", st.SMEnabled, st.Received)
	}
}

// TestScriptedCloseWhileReconnecting closes the stream while its resumption
// waits for the server's answer.
func TestScriptedCloseWhileReconnecting(t *testing.T) {
	h := start(t, nil)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	waiting := make(chan struct{}, 1)
	h.srv.OnResume(func(r fakeserver.Resume) string {
		waiting <- struct{}{}
		<-release
		return fakeserver.Resumed(r.PrevID, 0)
	})
	sent := h.send("m1")
	h.c.Stanzas(t, 1)
	h.c.Reset()
	h.event(stream.EventDisconnected)
	queued := h.send("m2")
	select {
	case <-waiting: // the client waits for the answer to its <resume/>
	case <-time.After(waitFor):
		t.Fatal("the client did not try to resume")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	if err := h.s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close() = %v, want the context's error (it gave up)", err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Fatalf("Close took %v", d)
	}
	checkState(t, stream.TokenDisconnected, sent...)
	checkState(t, stream.TokenFailed, queued...)
	if err := h.s.Err(); !errors.Is(err, stream.ErrClosed) {
		t.Fatalf("Err() = %v, want ErrClosed", err)
	}
	checkNoStreamGoroutines(t)
}

// TestScriptedDialContext has the server never answer <enable/>: Dial must
// give up when its context ends and leave nothing running.
func TestScriptedDialContext(t *testing.T) {
	srv := fakeserver.New(t)
	ch := make(chan error, 1)
	begin := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		s, err := stream.Dial(ctx, stream.Config{
			JID:            account,
			Password:       "secret",
			AllowPlaintext: true,
			Mechanisms:     []sasl.Mechanism{sasl.Plain},
			Dial:           srv.Dial,
		})
		if s != nil {
			s.Close(context.Background())
		}
		ch <- err
	}()
	srv.Next(t).Expect(t, "enable")
	select {
	case err := <-ch:
		if err == nil {
			t.Fatal("Dial succeeded without <enabled/>")
		}
	case <-time.After(waitFor):
		t.Fatalf("Dial still waits %v after its context ended", waitFor-200*time.Millisecond)
	}
	if d := time.Since(begin); d > time.Second {
		t.Fatalf("Dial returned after %v with a 200ms context", d)
	}
	checkNoStreamGoroutines(t)
}

// TestScriptedResumedTooHigh: a <resumed/> whose h counts more stanzas than
// the client sent ends the stream for good with <handled-count-too-high/>;
// no token is ACKED by it.
func TestScriptedResumedTooHigh(t *testing.T) {
	h := start(t, nil)
	c := h.c
	toks := h.send(ids("m", 1, 5)...)
	c.Stanzas(t, 5)
	c.Write(t, ackH(2))
	waitState(t, stream.TokenAcked, toks[:2]...)
	h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 9) })
	c.Reset()
	c2 := h.srv.Next(t)
	c2.End(t)
	got := c2.Received()
	if want := "<handled-count-too-high xmlns='urn:xmpp:sm:3' h='9' send-count='5'/></stream:error></stream:stream>"; !strings.HasSuffix(got, want) {
		t.Fatalf("the client wrote\n%s\nwant it to end with %s", got[max(0, len(got)-300):], want)
	}
	waitDone(t, h.s)
	if err := h.s.Err(); !errors.Is(err, stream.ErrProtocol) || !errors.Is(err, sm.ErrHandledCountTooHigh) {
		t.Fatalf("Err() = %v, want ErrProtocol and ErrHandledCountTooHigh", err)
	}
	checkState(t, stream.TokenAcked, toks[:2]...)
	checkState(t, stream.TokenDisconnected, toks[2:]...)
	checkNoStreamGoroutines(t)
}
