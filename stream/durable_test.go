// These tests check, against the scripted server (see scripted_test.go),
// that a stream with an outbox commits and acknowledges only the inbound
// stanzas whose handlers have returned: a handler blocked at will plays a
// process that is killed between reading a stanza and recording its effect,
// which a real server cannot be asked to produce.

package stream_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/sm"
	"github.com/xmpptrack/xmpptrack/stream"
)

// blocker is a handler that reports every stanza it sees and holds the one
// with the id block until released.
type blocker struct {
	seen    chan string
	entered chan struct{} // closed when the handler holds block
	release chan struct{}
	once    sync.Once
}

// blockOn registers a blocker for s; the test's cleanup releases it.
func blockOn(t *testing.T, s *stream.Stream, block string) *blocker {
	t.Helper()
	b := &blocker{seen: make(chan string, 64), entered: make(chan struct{}), release: make(chan struct{})}
	s.HandleElement(func(el *stream.Element) {
		id := el.Attr("id")
		b.seen <- id
		if id == block {
			close(b.entered)
			<-b.release
		}
	})
	t.Cleanup(b.free)
	return b
}

func (b *blocker) free() { b.once.Do(func() { close(b.release) }) }

func (b *blocker) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-b.entered:
	case <-time.After(waitFor):
		t.Fatal("the handler never saw the stanza it blocks on")
	}
}

// expectSeen fails unless the handler sees exactly ids next.
func (b *blocker) expectSeen(t *testing.T, ids ...string) {
	t.Helper()
	for _, want := range ids {
		select {
		case got := <-b.seen:
			if got != want {
				t.Fatalf("handler saw %s, want %s", got, want)
			}
		case <-time.After(waitFor):
			t.Fatalf("handler never saw %s", want)
		}
	}
}

// answerReaches asks with <r/> until the client answers want: the handled
// count follows a handler a moment after it returns. An answer above want,
// or one lower than the one before, fails the test.
func answerReaches(t *testing.T, c *fakeserver.Conn, want uint32) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	last := -1
	for {
		c.Write(t, requestR)
		el := c.Next(t)
		for el.Start.Name.Space == sm.NS && el.Start.Name.Local == "r" {
			el = c.Next(t)
		}
		if el.Start.Name != (xml.Name{Space: sm.NS, Local: "a"}) {
			t.Fatalf("client answered <r/> with %s", el)
		}
		h, err := strconv.Atoi(el.Attr("h"))
		if err != nil || h > int(want) || h < last {
			t.Fatalf("client answered %s after h=%d, want h up to %d", el, last, want)
		}
		if h == int(want) {
			return
		}
		last = h
		if time.Now().After(deadline) {
			t.Fatalf("client still answers h=%d, want %d", h, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func storedIn(t *testing.T, store outbox.Store) uint32 {
	t.Helper()
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	return st.Session.In
}

// TestScriptedOutboxAcksHandled: with an outbox, neither the committed
// inbound count nor the <a h/> the client sends counts a stanza whose
// handler has not returned, nor an IQ reply handed to SendIQ behind it;
// once the handler returns, the next answer counts both.
func TestScriptedOutboxAcksHandled(t *testing.T) {
	store := outbox.NewMemory()
	h := start(t, func(c *stream.Config) { c.Outbox = store })
	b := blockOn(t, h.s, "in2")
	h.c.Write(t, serverMessage("in1"))
	h.c.Write(t, serverMessage("in2"))
	b.waitEntered(t) // in1 is handled, in2 is not

	iq := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		ping := xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Space: "urn:xmpp:ping", Local: "ping"}})
		_, err := h.s.SendIQ(ctx, stanza.IQ{ID: "q1", Type: stanza.GetIQ, To: jid.MustParse("example.test")}, ping)
		iq <- err
	}()
	h.c.Stanzas(t, 1)
	h.c.Write(t, "<iq type='result' id='q1' from='example.test' to='user@example.test/r1'/>")
	if err := <-iq; err != nil {
		t.Fatalf("SendIQ: %v", err)
	}

	h.c.Write(t, requestR)
	expectAnswer(t, h.c, 1)
	h.send("m1") // a commit while in2 is still in its handler
	h.c.Stanzas(t, 1)
	if in := storedIn(t, store); in != 1 {
		t.Fatalf("committed In = %d while the handler of in2 runs, want 1", in)
	}

	b.free()
	answerReaches(t, h.c, 3)
	if in := storedIn(t, store); in != 3 {
		t.Fatalf("committed In = %d after answering h=3, want 3 (the answer must not run ahead of the outbox)", in)
	}
}

// TestScriptedOutboxRestartResendsUnhandled: a process killed while a
// handler runs leaves an outbox whose inbound count stops before that
// stanza; the new process resumes from there, and its handlers see the
// stanza the server sends again.
func TestScriptedOutboxRestartResendsUnhandled(t *testing.T) {
	store := outbox.NewMemory()
	h := start(t, func(c *stream.Config) { c.Outbox = store })
	b := blockOn(t, h.s, "in2")
	h.c.Write(t, serverMessage("in1"))
	h.c.Write(t, serverMessage("in2"))
	b.waitEntered(t)
	h.send("m1") // a commit after in2 was read
	h.c.Stanzas(t, 1)
	st := crash(t, h, store)
	b.free()
	if st.Session.In != 1 {
		t.Fatalf("the killed process left In = %d, want 1 (in2 was never handled)", st.Session.In)
	}

	resumed := make(chan fakeserver.Resume, 1)
	h.srv.OnResume(func(r fakeserver.Resume) string {
		resumed <- r
		return fakeserver.Resumed(r.PrevID, 1) + serverMessage("in2")
	})
	store2 := outbox.NewMemory()
	if err := store2.Commit(outbox.Changes{Session: &st.Session, Append: st.Unacked}); err != nil {
		t.Fatal(err)
	}
	cfg := h.cfg
	cfg.Outbox = store2
	s2, err := stream.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 8)
	s2.HandleElement(func(el *stream.Element) { seen <- el.Attr("id") })
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		s2.Close(ctx)
	})
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		errc <- s2.Connect(ctx)
	}()
	c2 := h.srv.Next(t)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if r := <-resumed; r.PrevID != "S1" || r.H != "1" {
		t.Fatalf("the new process resumed with %+v, want S1 with h 1", r)
	}
	select {
	case id := <-seen:
		if id != "in2" {
			t.Fatalf("the new process handled %s, want in2", id)
		}
	case <-time.After(waitFor):
		t.Fatal("the new process never handled in2")
	}
	answerReaches(t, c2, 2)
}

// TestScriptedOutboxResumeSkipsHandled: with an outbox, a resumption in the
// same process acknowledges only what was committed; the stanzas the server
// sends again that were already read are counted once and not handled
// twice.
func TestScriptedOutboxResumeSkipsHandled(t *testing.T) {
	store := outbox.NewMemory()
	h := start(t, func(c *stream.Config) { c.Outbox = store })
	b := blockOn(t, h.s, "")
	for i := 1; i <= 3; i++ {
		h.c.Write(t, serverMessage(fmt.Sprint("in", i)))
	}
	b.expectSeen(t, "in1", "in2", "in3")
	answerReaches(t, h.c, 3) // commits In = 3
	h.c.Write(t, serverMessage("in4"))
	h.c.Write(t, serverMessage("in5"))
	b.expectSeen(t, "in4", "in5") // handled, not committed

	resumed := make(chan fakeserver.Resume, 1)
	h.srv.OnResume(func(r fakeserver.Resume) string {
		resumed <- r
		return fakeserver.Resumed(r.PrevID, 0) + serverMessage("in4") + serverMessage("in5") + serverMessage("in6")
	})
	h.c.Reset()
	c2 := h.srv.Next(t)
	if r := <-resumed; r.PrevID != "S1" || r.H != "3" {
		t.Fatalf("resumed with %+v, want S1 with h 3 (the committed count)", r)
	}
	b.expectSeen(t, "in6")
	answerReaches(t, c2, 6)
	select {
	case id := <-b.seen:
		t.Fatalf("handler saw %s again", id)
	default:
	}
	if st := h.s.Stats(); st.Received != 6 {
		t.Errorf("Stats().Received = %d, want 6", st.Received)
	}
}

// TestScriptedAcksReadWithoutOutbox: without an outbox, <a h/> counts every
// stanza read, whether or not its handler has returned.
func TestScriptedAcksReadWithoutOutbox(t *testing.T) {
	h := start(t, nil)
	b := blockOn(t, h.s, "in2")
	for i := 1; i <= 3; i++ {
		h.c.Write(t, serverMessage(fmt.Sprint("in", i)))
	}
	b.waitEntered(t)
	h.c.Write(t, requestR)
	expectAnswer(t, h.c, 3)
}
