// These tests run the stream with an outbox against the scripted server of
// internal/fakeserver (see scripted_test.go): a process restart is played by
// a second stream that opens the first one's outbox while the server still
// holds the session, on cue.

package stream_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"mellium.im/sasl"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/stream"
)

// gateStore holds every commit until the test lets it through.
type gateStore struct {
	outbox.Store
	mu      sync.Mutex
	open    bool
	waiting chan struct{} // closed by the first commit that waits
	release chan struct{}
}

func (g *gateStore) Commit(c outbox.Changes) error {
	g.mu.Lock()
	open := g.open
	if !open && g.waiting != nil {
		close(g.waiting)
		g.waiting = nil
	}
	g.mu.Unlock()
	if !open {
		<-g.release
	}
	return g.Store.Commit(c)
}

// TestScriptedOutboxWritesAhead: a stanza reaches the socket only after the
// outbox has committed it.
func TestScriptedOutboxWritesAhead(t *testing.T) {
	g := &gateStore{Store: outbox.NewMemory(), open: true, release: make(chan struct{})}
	h := start(t, func(c *stream.Config) { c.Outbox = g })
	g.mu.Lock()
	g.open, g.waiting = false, make(chan struct{})
	waiting := g.waiting
	g.mu.Unlock()
	h.send("m1")
	<-waiting
	h.c.NoStanza(t, 100*time.Millisecond) // held while the commit waits
	g.mu.Lock()
	g.open = true
	g.mu.Unlock()
	close(g.release)
	if got := h.c.Stanzas(t, 1); got[0] != "m1" {
		t.Fatalf("server received %v, want m1", got)
	}
	st, _ := g.Load()
	if len(st.Unacked) != 1 || st.Unacked[0].ID != "m1" || st.Session.ResumeID != "S1" {
		t.Fatalf("outbox after the write: %+v", st)
	}
}

// crash returns a copy of what store holds now, as a killed process would
// leave it, and stops the old stream (the scripted server keeps no
// sessions: whether the session is still there is up to OnResume).
func crash(t *testing.T, h *harness, store outbox.Store) outbox.State {
	t.Helper()
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	h.s.Close(ctx)
	return st
}

// reopen starts a second process's stream on a copy of st, against the
// same server.
func reopen(t *testing.T, h *harness, st outbox.State) (*stream.Stream, chan stream.Event, error) {
	t.Helper()
	store := outbox.NewMemory()
	if err := store.Commit(outbox.Changes{Session: &st.Session, Append: st.Unacked}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cfg := h.cfg
	cfg.Outbox = store
	s, err := stream.Dial(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	events := make(chan stream.Event, 16)
	s.OnEvent(func(ev stream.Event) { events <- ev })
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		s.Close(ctx)
	})
	return s, events, nil
}

// TestScriptedOutboxResumesAfterRestart: a new process that opens the
// outbox resumes the session the old one left: the server's h acknowledges
// what it had, the rest is written again with the same ids, and the
// inbound count carries on where the old process stopped.
func TestScriptedOutboxResumesAfterRestart(t *testing.T) {
	store := outbox.NewMemory()
	h := start(t, func(c *stream.Config) { c.Outbox = store })
	h.send(ids("m", 1, 3)...)
	h.c.Stanzas(t, 3)
	h.c.Write(t, ackH(1))
	h.c.Write(t, serverMessage("in1"))
	h.c.Write(t, serverMessage("in2"))
	answerReaches(t, h.c, 2) // committed first: the new process resumes from it
	h.send("m4")             // a commit after the ack and the inbound stanzas
	h.c.Stanzas(t, 1)
	st := crash(t, h, store)

	var resumed fakeserver.Resume
	done := make(chan struct{})
	h.srv.OnResume(func(r fakeserver.Resume) string {
		resumed = r
		close(done)
		return fakeserver.Resumed(r.PrevID, 2)
	})
	type result struct {
		s   *stream.Stream
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, _, err := reopen(t, h, st)
		ch <- result{s, err}
	}()
	c2 := h.srv.Next(t)
	<-done
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if resumed.PrevID != "S1" || resumed.H != "2" {
		t.Fatalf("the new process resumed with %+v, want S1 with h 2", resumed)
	}
	if got := c2.Stanzas(t, 2); !slices.Equal(got, []string{"m3", "m4"}) {
		t.Fatalf("written again %v, want [m3 m4] (m2 is counted by the server's h)", got)
	}
	toks := r.s.Restored()
	if len(toks) < 3 {
		t.Fatalf("Restored() = %d tokens, want the unacknowledged m2 m3 m4", len(toks))
	}
	toks = toks[len(toks)-3:]
	if toks[0].ID() != "m2" || toks[0].State() != stream.TokenAcked {
		t.Fatalf("restored %s is %v, want m2 ACKED by <resumed h='2'/>", toks[0].ID(), toks[0].State())
	}
	c2.Write(t, ackH(4))
	waitState(t, stream.TokenAcked, toks...)
	c2.Write(t, serverMessage("in3"))
	answerReaches(t, c2, 3)
}

// TestScriptedOutboxRestartRefused: when the server no longer holds the
// session, what the old process wrote unacknowledged ends DISCONNECTED (its
// fate is unknown), and a new session begins.
func TestScriptedOutboxRestartRefused(t *testing.T) {
	store := outbox.NewMemory()
	h := start(t, func(c *stream.Config) { c.Outbox = store })
	h.send(ids("m", 1, 2)...)
	h.c.Stanzas(t, 2)
	st := crash(t, h, store)
	h.srv.OnResume(func(fakeserver.Resume) string {
		return "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
	})
	type result struct {
		s   *stream.Stream
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, _, err := reopen(t, h, st)
		ch <- result{s, err}
	}()
	c2 := h.srv.Next(t)
	if c2.Resume == nil {
		t.Fatal("the new process did not try to resume")
	}
	c2.EnableSM(t, "S2")
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, tok := range r.s.Restored() {
		if st, err := tok.Wait(context.Background()); st != stream.TokenDisconnected || !errors.Is(err, stream.ErrResumeRefused) {
			t.Fatalf("restored %s: %v (%v), want DISCONNECTED by the refused resumption", tok.ID(), st, err)
		}
	}
	if len(r.s.Restored()) != 2 {
		t.Fatalf("Restored() = %d tokens, want 2", len(r.s.Restored()))
	}
}

// TestScriptedOutboxClosedSessionIsNotResumed: a clean Close ends the
// session, and the outbox says so: a new process starts afresh.
func TestScriptedOutboxClosedSessionIsNotResumed(t *testing.T) {
	store := outbox.NewMemory()
	h := start(t, func(c *stream.Config) { c.Outbox = store })
	toks := h.send("m1")
	h.c.Stanzas(t, 1)
	h.c.Write(t, ackH(1))
	waitState(t, stream.TokenAcked, toks...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := h.s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ := store.Load()
	if st.Session.ResumeID != "" || len(st.Unacked) != 0 {
		t.Fatalf("outbox after Close: %+v, want no session to resume", st)
	}
}

// TestScriptedOutboxNoteWritten: a message noted before it is sent is
// recorded written in the same commit that holds its bytes, never before;
// later records keep saying so.
func TestScriptedOutboxNoteWritten(t *testing.T) {
	g := &gateStore{Store: outbox.NewMemory(), open: true, release: make(chan struct{})}
	h := start(t, func(c *stream.Config) { c.MaxUnacked = 1; c.Outbox = g })
	record := func(key string) outbox.Message {
		st, err := g.Load()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range st.Messages {
			if m.Key == key {
				return m
			}
		}
		t.Fatalf("no record of %s in %+v", key, st.Messages)
		return outbox.Message{}
	}
	h.send("m0") // m1 waits behind it (MaxUnacked 1)
	h.c.Stanzas(t, 1)
	h.s.Note(outbox.Message{Key: "m1", OriginID: "o1", Kind: outbox.Groupchat, State: "IN_TRANSIT"})
	h.send("m1")
	for deadline := time.Now().Add(waitFor); ; time.Sleep(time.Millisecond) {
		st, _ := g.Load()
		if len(st.Messages) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the note was not committed")
		}
	}
	if r := record("m1"); r.Written {
		t.Fatalf("m1 recorded written while it waits in the queue: %+v", r)
	}
	h.c.Write(t, ackH(1))
	if got := h.c.Stanzas(t, 1); got[0] != "m1" {
		t.Fatalf("server received %v", got)
	}
	if r := record("m1"); !r.Written || r.SentAt.IsZero() {
		t.Fatalf("m1 written, but its record says %+v", r)
	}
	h.s.NoteDone(outbox.Message{Key: "m1", OriginID: "o1", Kind: outbox.Groupchat, State: "DELIVERED_TO_RECIPIENT"})
	h.send("m2") // a commit
	h.c.Write(t, ackH(2))
	h.c.Stanzas(t, 1)
	if r := record("m1"); !r.Written || r.State != "DELIVERED_TO_RECIPIENT" {
		t.Fatalf("the last record of m1: %+v, want written and delivered", r)
	}
}

// TestScriptedNewThenConnect: handlers registered between New and Connect
// see the very first stanza the server sends; a stream closed before
// Connect never connects.
func TestScriptedNewThenConnect(t *testing.T) {
	srv := fakeserver.New(t)
	cfg := stream.Config{JID: account, Password: "secret", AllowPlaintext: true,
		Mechanisms: []sasl.Mechanism{sasl.Plain}, Dial: srv.Dial}
	s, err := stream.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 1)
	s.HandleElement(func(el *stream.Element) { seen <- el.Attr("id") })
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		errc <- s.Connect(ctx)
	}()
	c := srv.Next(t)
	c.EnableSM(t, "S1")
	c.Write(t, serverMessage("first"))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-seen:
		if id != "first" {
			t.Fatalf("handler saw %q first", id)
		}
	case <-time.After(waitFor):
		t.Fatal("the handler never saw the first stanza")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	s.Close(ctx)

	s2, err := stream.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Close(context.Background()); err != nil {
		t.Fatalf("Close before Connect: %v", err)
	}
	if err := s2.Connect(context.Background()); !errors.Is(err, stream.ErrClosed) {
		t.Fatalf("Connect after Close: %v, want ErrClosed", err)
	}
	waitDone(t, s2)
}

// TestScriptedOutboxNoteKeepsWrittenAcrossRestart: a message an earlier
// process wrote, which the server acknowledged (so it is no longer in the
// log), is noted again by a new process that follows it for its outcome:
// its record still says written, and when. A record saying not written
// would have the next process send it again.
func TestScriptedOutboxNoteKeepsWrittenAcrossRestart(t *testing.T) {
	box := outbox.NewMemory()
	sentAt := time.Now().Add(-time.Minute).Round(0)
	if err := box.Commit(outbox.Changes{Messages: []outbox.Message{{Key: "m1", OriginID: "m1", To: "bob@example.test",
		Kind: outbox.Chat, Stanza: []byte("<message/>"), State: "DELIVERED_TO_SERVER", Written: true, SentAt: sentAt}}}); err != nil {
		t.Fatal(err)
	}
	h := start(t, func(c *stream.Config) { c.Outbox = box })
	h.s.Note(outbox.Message{Key: "m1", OriginID: "m1", To: "bob@example.test", Kind: outbox.Chat, Stanza: []byte("<message/>"), State: "IN_TRANSIT"})
	h.send("m2") // the note rides with this batch
	h.c.Stanzas(t, 1)
	st, err := box.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Messages {
		if m.Key == "m1" {
			if m.State != "IN_TRANSIT" || !m.Written || !m.SentAt.Equal(sentAt) {
				t.Fatalf("record of m1 after the note: %+v; want IN_TRANSIT, written at %v", m, sentAt)
			}
			return
		}
	}
	t.Fatal("no record of m1")
}
