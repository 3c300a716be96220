package chat_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/bridge"
	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/reconcile"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// These tests lose a session on cue: the scripted server refuses the
// resumption, and then plays our own archive (XEP-0313) for the
// reconciler, which asks it over a bridge on the same stream.

var (
	alice = jid.MustParse("alice@example.test")
	bob   = jid.MustParse("bob@example.test")
)

// refused is the server's answer to a resumption it does not allow.
const refused = "<failed xmlns='urn:xmpp:sm:3' h='%d'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"

// world is a chat client with a reconciler, on a stream with an outbox in
// memory, connected to a scripted server.
type world struct {
	srv    *fakeserver.Server
	box    *outbox.Memory
	s      *stream.Stream
	c      *chat.Client
	policy reconcile.Policy
	// attached is set once the reconciler is.
	attached bool
}

// newWorld makes the stream with New (so that restored stanzas can be
// followed before Connect) and attaches a chat client that will reconcile
// with policy p. box, when not nil, is the outbox to start from.
func newWorld(t *testing.T, box *outbox.Memory, p reconcile.Policy) *world {
	t.Helper()
	w := &world{srv: fakeserver.New(t), box: box, policy: p}
	if w.box == nil {
		w.box = outbox.NewMemory()
	}
	s, err := stream.New(stream.Config{
		JID: alice, Password: "pw", AllowPlaintext: true,
		Mechanisms: []sasl.Mechanism{sasl.Plain}, Dial: w.srv.Dial, Outbox: w.box,
		Backoff: stream.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	w.s = s
	w.c = chat.NewClient(s, chat.WithTimeout(0))
	t.Cleanup(func() {
		w.c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		s.Close(ctx)
		w.srv.Close()
	})
	return w
}

// attach bridges the stream and gives the client a reconciler over the
// bridge. The bridge's session takes its address from the stream: call it
// once the stream has one (connected, or restored from the outbox).
func (w *world) attach(t *testing.T) {
	t.Helper()
	b, err := bridge.New(w.s)
	if err != nil {
		t.Fatal(err)
	}
	rc := reconcile.New(b.Session(), nil, reconcile.WithQueryTimeout(fakeserver.Timeout))
	served := make(chan error, 1)
	go func() { served <- b.Session().Serve(mux.New(stanza.NSClient, reconcile.Handle(rc))) }()
	w.c.SetReconciler(rc, w.policy)
	w.attached = true
	t.Cleanup(func() {
		b.Close()
		<-served
	})
}

// connect makes the stream's first connection and returns it, with stream
// management enabled unless the connection resumed, and attaches the
// reconciler unless it is already.
func (w *world) connect(t *testing.T) *fakeserver.Conn {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
		defer cancel()
		errc <- w.s.Connect(ctx)
	}()
	c := w.srv.Next(t)
	if c.JID.Localpart() != "" { // bound: not resumed
		c.EnableSM(t, "S1")
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !w.attached {
		w.attach(t)
	}
	return c
}

// nextMessage returns the next message the client wrote on c, skipping
// <r/> and <a/>.
func nextMessage(t *testing.T, c *fakeserver.Conn) fakeserver.Element {
	t.Helper()
	for {
		if el := c.Next(t); el.Start.Name.Local == "message" {
			return el
		}
	}
}

// sent is a message as the client wrote it.
type sent struct {
	ID       string `xml:"id,attr"`
	To       string `xml:"to,attr"`
	Body     string `xml:"body"`
	OriginID struct {
		ID string `xml:"id,attr"`
	} `xml:"urn:xmpp:sid:0 origin-id"`
}

func parseSent(t *testing.T, el fakeserver.Element) sent {
	t.Helper()
	var m sent
	if err := xml.Unmarshal([]byte(el.String()), &m); err != nil {
		t.Fatalf("%s: %v", el, err)
	}
	return m
}

// sendAcked sends body to to and has the server acknowledge it: the
// anchor of a later reconciliation. It returns the message's id.
func sendAcked(t *testing.T, w *world, c *fakeserver.Conn, to jid.JID, body string, h int) string {
	t.Helper()
	tr := send(t, w.c, to, body)
	if got := parseSent(t, nextMessage(t, c)); got.ID != tr.ID() {
		t.Fatalf("wrote %q, want %q", got.ID, tr.ID())
	}
	c.Write(t, fmt.Sprintf("<a xmlns='urn:xmpp:sm:3' h='%d'/>", h))
	waitFor(t, tr, tracking.DeliveredToServer)
	return tr.ID()
}

func send(t *testing.T, c *chat.Client, to jid.JID, body string, opts ...chat.SendOption) *tracking.MessageTracker {
	t.Helper()
	tr, err := c.SendTracked(context.Background(), to, body, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// waitFor waits until tr reaches want, and fails unless it is exactly
// there.
func waitFor(t *testing.T, tr *tracking.MessageTracker, want tracking.MessageState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*fakeserver.Timeout)
	defer cancel()
	if st, err := tr.Wait(ctx, want); st != want {
		t.Fatalf("%s: %v (%v), want %v; history %v", tr.ID(), st, err, want, tr.Changes())
	}
}

// afterLoss plays the server of the new session that follows a refused
// resumption: it acknowledges what the client writes, answers archive
// queries from what it holds, and hands on every message written.
type afterLoss struct {
	c    *fakeserver.Conn
	msgs chan sent
	// hold, when not nil, delays each archive answer until it is closed.
	hold chan struct{}
	quit chan struct{} // closed when the test ends
	wg   sync.WaitGroup

	mu       sync.Mutex // guards archived and withs, and writes to c
	archived []string   // the ids (and origin-ids) of our messages to bob it holds
	withs    []string   // the with of each query
}

// loseSession refuses the resumption of c's session (its <failed/>
// acknowledging h stanzas), and returns the server of the new session,
// which serves it from a goroutine with the archive given.
func (w *world) loseSession(t *testing.T, c *fakeserver.Conn, h int, archived []string, hold chan struct{}) *afterLoss {
	t.Helper()
	w.srv.OnResume(func(fakeserver.Resume) string { return fmt.Sprintf(refused, h) })
	c.Reset()
	c2 := w.srv.Next(t)
	c2.EnableSM(t, "S2")
	return serveAfterLoss(t, c2, archived, hold)
}

// serveAfterLoss serves c, the connection of the new session, until the
// test ends.
func serveAfterLoss(t *testing.T, c *fakeserver.Conn, archived []string, hold chan struct{}) *afterLoss {
	a := &afterLoss{c: c, msgs: make(chan sent, 16), hold: hold, quit: make(chan struct{}), archived: archived}
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.serve(t)
	}()
	t.Cleanup(func() {
		close(a.quit)
		c.Close()
		<-done
		a.wg.Wait()
	})
	return a
}

func (a *afterLoss) send(s string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.c.Send(s)
}

func (a *afterLoss) serve(t *testing.T) {
	stanzas := 0
	for el := range a.c.Elements() {
		if el.Start.Name.Local == "r" {
			a.send(fmt.Sprintf("<a xmlns='urn:xmpp:sm:3' h='%d'/>", stanzas))
			continue
		}
		if !el.IsStanza() {
			continue
		}
		stanzas++
		switch el.Start.Name.Local {
		case "message":
			var m sent
			if err := xml.Unmarshal([]byte(el.String()), &m); err != nil {
				t.Errorf("%s: %v", el, err)
			}
			a.msgs <- m
		case "iq":
			// Answered aside, so that what the client writes meanwhile
			// is read.
			a.wg.Go(func() {
				if a.hold != nil {
					select {
					case <-a.hold:
					case <-a.quit:
						return
					}
				}
				if err := a.answer(el); err != nil {
					t.Errorf("scripted archive: %v", err)
				}
			})
		}
	}
}

// answer answers a query of our own archive with every message it holds,
// in one complete page.
func (a *afterLoss) answer(el fakeserver.Element) error {
	var q struct {
		Query struct {
			ID     string `xml:"queryid,attr"`
			Fields []struct {
				Var   string `xml:"var,attr"`
				Value string `xml:"value"`
			} `xml:"jabber:x:data x>field"`
		} `xml:"urn:xmpp:mam:2 query"`
	}
	if err := xml.Unmarshal([]byte(el.String()), &q); err != nil {
		return err
	}
	a.mu.Lock()
	for _, f := range q.Query.Fields {
		if f.Var == "with" {
			a.withs = append(a.withs, f.Value)
		}
	}
	archived := append([]string(nil), a.archived...)
	a.mu.Unlock()
	var b strings.Builder
	stamp := time.Now().UTC().Format(time.RFC3339)
	for i, id := range archived {
		fmt.Fprintf(&b, "<message to='%s'><result xmlns='urn:xmpp:mam:2' queryid='%s' id='archived-%d'>"+
			"<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='%s'/>"+
			"<message xmlns='jabber:client' from='%s/old' to='%s' type='chat' id='%s'><body>b</body>"+
			"<origin-id xmlns='urn:xmpp:sid:0' id='%s'/></message></forwarded></result></message>",
			a.c.JID, q.Query.ID, i, stamp, alice, bob, id, id)
	}
	fmt.Fprintf(&b, "<iq type='result' id='%s'><fin xmlns='urn:xmpp:mam:2' complete='true'/></iq>", el.Attr("id"))
	return a.send(b.String())
}

// next returns the next message the client wrote in the new session.
func (a *afterLoss) next(t *testing.T) sent {
	t.Helper()
	select {
	case m := <-a.msgs:
		return m
	case <-time.After(2 * fakeserver.Timeout):
		t.Fatal("no message written in the new session")
		return sent{}
	}
}

// none fails the test if the client writes a message within d.
func (a *afterLoss) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-a.msgs:
		t.Fatalf("wrote %+v in the new session", m)
	case <-time.After(d):
	}
}

// receipt has bob's phone acknowledge the message id.
func (a *afterLoss) receipt(t *testing.T, id string) {
	t.Helper()
	if err := a.send(fmt.Sprintf("<message from='%s/phone' to='%s' id='r-%s'><received xmlns='urn:xmpp:receipts' id='%s'/></message>", bob, a.c.JID, id, id)); err != nil {
		t.Fatal(err)
	}
}

// record returns the outbox's record of the message key.
func (w *world) record(t *testing.T, key string) outbox.Message {
	t.Helper()
	st, err := w.box.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Messages {
		if m.Key == key {
			return m
		}
	}
	t.Fatalf("no record of %s in the outbox", key)
	return outbox.Message{}
}

// waitRecord waits until the outbox's record of key is in state.
func (w *world) waitRecord(t *testing.T, key, state string) outbox.Message {
	t.Helper()
	deadline := time.Now().Add(2 * fakeserver.Timeout)
	for {
		st, err := w.box.Load()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range st.Messages {
			if m.Key == key && m.State == state {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the outbox never recorded %s as %s: %+v", key, state, st.Messages)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lost sends an anchor that the server acknowledges and then a message it
// never acknowledges, and loses the session: the archive holds archived.
// It returns the anchor's id, the tracker of the lost message and the
// server of the new session.
func lost(t *testing.T, w *world, archived func(anchor, lost string) []string, hold chan struct{}) (string, *tracking.MessageTracker, *afterLoss) {
	t.Helper()
	c := w.connect(t)
	anchor := sendAcked(t, w, c, bob, "anchor", 1)
	tr := send(t, w.c, bob, "lost")
	if got := parseSent(t, nextMessage(t, c)); got.ID != tr.ID() {
		t.Fatalf("wrote %q, want %q", got.ID, tr.ID())
	}
	a := w.loseSession(t, c, 1, archived(anchor, tr.ID()), hold)
	return anchor, tr, a
}

// TestReconcileAccepted: a message lost with its session that our archive
// holds is DELIVERED_TO_SERVER, is not sent again, and stays tracked: the
// receipt that comes later makes it DELIVERED_TO_RECIPIENT.
func TestReconcileAccepted(t *testing.T) {
	w := newWorld(t, nil, reconcile.ResendIfAbsent)
	_, tr, a := lost(t, w, func(anchor, lost string) []string { return []string{anchor, lost} }, nil)
	waitFor(t, tr, tracking.DeliveredToServer)
	if resp := tr.Response(); resp == nil || resp.StanzaID != "archived-1" {
		t.Errorf("response %+v, want the archive id of the copy found", resp)
	}
	a.none(t, 200*time.Millisecond)
	if tr.Ended() {
		t.Fatal("tracking ended at DELIVERED_TO_SERVER: a receipt may still come")
	}
	a.receipt(t, tr.ID())
	waitFor(t, tr, tracking.DeliveredToRecipient)
	a.mu.Lock()
	withs := a.withs
	a.mu.Unlock()
	if len(withs) != 1 || withs[0] != bob.String() {
		t.Errorf("queries with %q, want one with %s", withs, bob)
	}
	w.waitRecord(t, tr.ID(), "DELIVERED_TO_RECIPIENT")
}

// TestReconcileSafeToResend: a lost message that our archive does not
// hold, while it holds the anchor, is sent again with the same id and
// origin-id, after what was sent in the new session meanwhile; its receipt
// moves its tracker, and a displayed marker for the message sent before it
// leaves it unseen.
func TestReconcileSafeToResend(t *testing.T) {
	w := newWorld(t, nil, reconcile.ResendIfAbsent)
	hold := make(chan struct{})
	_, tr, a := lost(t, w, func(anchor, _ string) []string { return []string{anchor} }, hold)
	meanwhile := send(t, w.c, bob, "meanwhile")
	if got := a.next(t); got.ID != meanwhile.ID() {
		t.Fatalf("wrote %+v, want the message sent in the new session", got)
	}
	close(hold)
	again := a.next(t)
	if again.ID != tr.ID() || again.OriginID.ID != tr.ID() || again.Body != "lost" {
		t.Fatalf("wrote %+v again, want %s with the same id and origin-id", again, tr.ID())
	}
	waitFor(t, tr, tracking.DeliveredToServer) // the new session's ack
	if err := a.send(fmt.Sprintf("<message from='%s/phone' to='%s' id='d1'><displayed xmlns='urn:xmpp:chat-markers:0' id='%s'/></message>",
		bob, a.c.JID, meanwhile.ID())); err != nil {
		t.Fatal(err)
	}
	waitFor(t, meanwhile, tracking.SeenByRecipient)
	if st := tr.State(); st != tracking.DeliveredToServer {
		t.Fatalf("the message sent again is %v after a marker for the one before it on the wire", st)
	}
	a.receipt(t, tr.ID())
	waitFor(t, tr, tracking.DeliveredToRecipient)
	a.none(t, 100*time.Millisecond)
}

// TestReconcileUnknown: when the archive does not hold the anchor, the
// absence of a lost message proves nothing: it is not sent again, and ends
// CLOSED with the reason in its outbox record.
func TestReconcileUnknown(t *testing.T) {
	w := newWorld(t, nil, reconcile.ResendIfAbsent)
	anchor, tr, a := lost(t, w, func(string, string) []string { return nil }, nil)
	waitFor(t, tr, tracking.Closed)
	rec := w.waitRecord(t, tr.ID(), "CLOSED")
	if !strings.Contains(rec.Reason, "does not hold our earlier message") || !strings.Contains(rec.Reason, anchor) {
		t.Errorf("outbox reason %q does not name the anchor missing", rec.Reason)
	}
	if !rec.Written || rec.Kind != outbox.Chat {
		t.Errorf("record %+v", rec)
	}
	a.none(t, 200*time.Millisecond)
}

// TestReconcileNeverResend: the policy keeps every lost message from being
// sent again; the archive is not asked.
func TestReconcileNeverResend(t *testing.T) {
	w := newWorld(t, nil, reconcile.NeverResend)
	_, tr, a := lost(t, w, func(anchor, _ string) []string { return []string{anchor} }, nil)
	waitFor(t, tr, tracking.Closed)
	if rec := w.waitRecord(t, tr.ID(), "CLOSED"); !strings.Contains(rec.Reason, "never resend") {
		t.Errorf("outbox reason %q", rec.Reason)
	}
	a.none(t, 200*time.Millisecond)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.withs) != 0 {
		t.Errorf("the archive was asked %d times", len(a.withs))
	}
}

// TestReconcileReceiptFirst: a receipt that comes before the archive
// answers makes the lost message DELIVERED_TO_RECIPIENT, and the archive's
// answer, absent though it is, sends nothing again.
func TestReconcileReceiptFirst(t *testing.T) {
	w := newWorld(t, nil, reconcile.ResendIfAbsent)
	hold := make(chan struct{})
	_, tr, a := lost(t, w, func(anchor, _ string) []string { return []string{anchor} }, hold)
	a.receipt(t, tr.ID())
	waitFor(t, tr, tracking.DeliveredToRecipient)
	close(hold)
	a.none(t, 300*time.Millisecond)
	if st := tr.State(); st != tracking.DeliveredToRecipient {
		t.Fatalf("%v after the archive answered", st)
	}
}

// TestNoReconcilerCloses: without a reconciler a lost message ends CLOSED
// as soon as its session is lost, and nothing is sent again.
func TestNoReconcilerCloses(t *testing.T) {
	w := newWorld(t, nil, reconcile.ResendIfAbsent)
	w.attached = true // never
	_, tr, a := lost(t, w, func(anchor, lost string) []string { return []string{anchor, lost} }, nil)
	waitFor(t, tr, tracking.Closed)
	a.none(t, 200*time.Millisecond)
}

// TestOutboxRecords: the client records each tracked message in the
// outbox, addressed as sent, its id as origin-id, and each change of its
// state, up to the last.
func TestOutboxRecords(t *testing.T) {
	w := newWorld(t, nil, reconcile.ResendIfAbsent)
	c := w.connect(t)
	phone := jid.MustParse("bob@example.test/phone")
	tr := send(t, w.c, phone, "recorded")
	rec := w.waitRecord(t, tr.ID(), "IN_TRANSIT")
	if rec.To != phone.String() || rec.Kind != outbox.Chat || rec.OriginID != tr.ID() || !strings.Contains(string(rec.Stanza), ">recorded<") {
		t.Fatalf("record %+v", rec)
	}
	nextMessage(t, c)
	if rec = w.record(t, tr.ID()); !rec.Written || rec.SentAt.IsZero() {
		t.Fatalf("record after the write: %+v", rec)
	}
	c.Write(t, "<a xmlns='urn:xmpp:sm:3' h='1'/>")
	w.waitRecord(t, tr.ID(), "DELIVERED_TO_SERVER")
	c.Write(t, fmt.Sprintf("<message from='%s' id='r1'><received xmlns='urn:xmpp:receipts' id='%s'/></message>", phone, tr.ID()))
	w.waitRecord(t, tr.ID(), "DELIVERED_TO_RECIPIENT")
	c.Write(t, fmt.Sprintf("<message from='%s' id='d1'><displayed xmlns='urn:xmpp:chat-markers:0' id='%s'/></message>", phone, tr.ID()))
	waitFor(t, tr, tracking.SeenByRecipient)
	// The last record rides on the next commit: send something.
	send(t, w.c, bob, "next")
	w.waitRecord(t, tr.ID(), "SEEN_BY_RECIPIENT")
}

// TestWithID: a message sent with a given id carries it as id and
// origin-id, escaped on the wire; an empty id, or one already tracked, is
// refused and nothing is sent.
func TestWithID(t *testing.T) {
	w := newWorld(t, nil, reconcile.ResendIfAbsent)
	c := w.connect(t)
	const id = "given'<id>"
	tr := send(t, w.c, bob, "with an id", chat.WithID(id))
	got := parseSent(t, nextMessage(t, c))
	if tr.ID() != id || got.ID != id || got.OriginID.ID != id {
		t.Fatalf("tracker %q, wrote id %q origin-id %q; want %q", tr.ID(), got.ID, got.OriginID.ID, id)
	}
	if _, err := w.c.SendTracked(context.Background(), bob, "again", chat.WithID(id)); !errors.Is(err, chat.ErrDuplicateID) {
		t.Fatalf("same id while tracked: %v, want ErrDuplicateID", err)
	}
	if _, err := w.c.SendTracked(context.Background(), bob, "empty", chat.WithID("")); !errors.Is(err, chat.ErrBadID) {
		t.Fatalf("empty id: %v, want ErrBadID", err)
	}
	c.NoStanza(t, 100*time.Millisecond)
	c.Write(t, fmt.Sprintf("<message from='%s/phone' id='r1'><received xmlns='urn:xmpp:receipts' id='%s'/></message>", bob, "given&apos;&lt;id&gt;"))
	waitFor(t, tr, tracking.DeliveredToRecipient)
}

// restoredBox is the outbox an earlier process left: a session S1 to
// resume, and one chat message to bob written and not acknowledged.
func restoredBox(t *testing.T, id string) (*outbox.Memory, []byte) {
	t.Helper()
	b := []byte(fmt.Sprintf("<message type='chat' to='%s' id='%s'><body>restored</body><origin-id xmlns='urn:xmpp:sid:0' id='%s'/>"+
		"<request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>", bob, id, id))
	box := outbox.NewMemory()
	sentAt := time.Now().Add(-time.Second)
	err := box.Commit(outbox.Changes{
		Session: &outbox.Session{ResumeID: "S1", Addr: alice.String() + "/old", Max: time.Minute, Saved: time.Now()},
		Append:  []outbox.Stanza{{ID: id, Bytes: b}},
		Messages: []outbox.Message{{Key: id, OriginID: id, To: bob.String(), Kind: outbox.Chat, Stanza: b,
			State: "IN_TRANSIT", Written: true, SentAt: sentAt}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return box, b
}

// follow follows the one stanza the stream restored.
func (w *world) follow(t *testing.T, b []byte) *tracking.MessageTracker {
	t.Helper()
	toks := w.s.Restored()
	if len(toks) != 1 {
		t.Fatalf("%d restored tokens, want 1", len(toks))
	}
	st, err := w.box.Load()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := w.c.Follow(toks[0], bob, b, st.Messages[0].SentAt)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestFollowResumed: a message an earlier process wrote is followed from
// the outbox: the resumed session writes it again, and the receipt moves
// its tracker.
func TestFollowResumed(t *testing.T) {
	box, b := restoredBox(t, "m1")
	w := newWorld(t, box, reconcile.ResendIfAbsent)
	w.attach(t) // the stream has the address restored
	tr := w.follow(t, b)
	w.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	c := w.connect(t)
	if got := parseSent(t, nextMessage(t, c)); got.ID != "m1" {
		t.Fatalf("wrote %+v again, want m1", got)
	}
	c.Write(t, "<a xmlns='urn:xmpp:sm:3' h='1'/>")
	waitFor(t, tr, tracking.DeliveredToServer)
	c.Write(t, fmt.Sprintf("<message from='%s/phone' id='r1'><received xmlns='urn:xmpp:receipts' id='m1'/></message>", bob))
	waitFor(t, tr, tracking.DeliveredToRecipient)
	if _, err := w.c.Follow(w.s.Restored()[0], bob, b, time.Now()); !errors.Is(err, chat.ErrDuplicateID) {
		t.Fatalf("following it twice: %v, want ErrDuplicateID", err)
	}
}

// TestFollowRefused: when the earlier process's session cannot be resumed,
// a followed message is decided by the archive like one lost live: our
// archive holds it, so it is DELIVERED_TO_SERVER and not sent again.
func TestFollowRefused(t *testing.T) {
	box, b := restoredBox(t, "m1")
	w := newWorld(t, box, reconcile.ResendIfAbsent)
	w.attach(t) // the stream has the address restored
	tr := w.follow(t, b)
	w.srv.OnResume(func(fakeserver.Resume) string { return fmt.Sprintf(refused, 0) })
	c := w.connect(t)
	if c.Resume == nil {
		t.Fatal("the stream did not try to resume")
	}
	a := serveAfterLoss(t, c, []string{"m1"}, nil)
	waitFor(t, tr, tracking.DeliveredToServer)
	a.none(t, 200*time.Millisecond)
	a.receipt(t, "m1")
	waitFor(t, tr, tracking.DeliveredToRecipient)
}
