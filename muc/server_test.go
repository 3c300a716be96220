package muc_test

// The tests of this package run the client against a scripted server
// (internal/fakeserver), not a real one: the test reads what the client
// writes and writes, by hand, what a room would answer, including what real
// rooms rarely do (rewritten ids, missing origin-ids, another occupant reusing
// our ids, late errors). The tests against Prosody are in the integration
// package.

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/muc"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

const (
	testRoom  = "room@muc.example.test"
	testNick  = "alice"
	testSelf  = testRoom + "/" + testNick
	testOther = testRoom + "/carol"
	nsSM      = "urn:xmpp:sm:3"
)

// harness is one client stream with a muc.Client on it, connected to a
// scripted server.
type harness struct {
	srv    *fakeserver.Server
	conn   *fakeserver.Conn // the current connection
	s      *stream.Stream
	c      *muc.Client
	events chan muc.Event
	sm     bool
	// handled counts the stanzas the server read on the current session,
	// for its answers to <r/>.
	handled uint32
	syncs   int
}

type harnessConfig struct {
	// sm enables stream management; without it the tracker of a message
	// stays IN_TRANSIT until the room answers.
	sm   bool
	opts []muc.Option
	// stream, if set, changes the stream's configuration.
	stream func(*stream.Config)
}

func newHarness(t *testing.T, cfg harnessConfig) *harness {
	t.Helper()
	h := &harness{srv: fakeserver.New(t), events: make(chan muc.Event, 16), sm: cfg.sm}
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	type dialed struct {
		s   *stream.Stream
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		scfg := stream.Config{
			JID:            jid.MustParse("alice@example.test"),
			Password:       "pw",
			AllowPlaintext: true,
			Mechanisms:     []sasl.Mechanism{sasl.Plain},
			Dial:           h.srv.Dial,
			DisableSM:      !cfg.sm,
			Backoff:        stream.Backoff{Min: time.Millisecond, Max: 10 * time.Millisecond},
		}
		if cfg.stream != nil {
			cfg.stream(&scfg)
		}
		s, err := stream.Dial(ctx, scfg)
		ch <- dialed{s, err}
	}()
	h.conn = h.srv.Next(t)
	if cfg.sm {
		h.conn.EnableSM(t, "sm-1")
	}
	d := <-ch
	if d.err != nil {
		t.Fatalf("dial: %v", d.err)
	}
	h.s = d.s
	opts := append([]muc.Option{muc.WithEvents(func(ev muc.Event) { h.events <- ev })}, cfg.opts...)
	h.c = muc.NewClient(h.s, opts...)
	t.Cleanup(func() {
		h.c.Close()
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			done <- h.s.Close(ctx)
		}()
		// Answer the last ack requests and read up to </stream:stream>,
		// then close, as a server would.
		for {
			el, ok := h.conn.NextOrEnd(t)
			if !ok {
				break
			}
			select {
			case <-h.s.Done():
				// Closed already: nobody to answer.
			default:
				h.answerSM(t, el)
			}
		}
		h.conn.Close()
		if err := <-done; err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return h
}

// answerSM answers an ack request; it reports whether el was a stream
// management element.
func (h *harness) answerSM(t *testing.T, el fakeserver.Element) bool {
	t.Helper()
	if el.Start.Name.Space != nsSM {
		return false
	}
	if el.Start.Name.Local == "r" {
		h.conn.Write(t, fmt.Sprintf("<a xmlns='%s' h='%d'/>", nsSM, h.handled))
	}
	return true
}

// stanza returns the next stanza the client writes. Ack requests on the way
// are answered.
func (h *harness) stanza(t *testing.T) fakeserver.Element {
	t.Helper()
	for {
		el := h.conn.Next(t)
		if el.Start.Name.Space == nsSM {
			h.answerSM(t, el)
			continue
		}
		if !el.IsStanza() {
			t.Fatalf("got %s, want a stanza", el)
		}
		h.handled++
		return el
	}
}

// expect returns the next stanza and fails unless it is a local.
func (h *harness) expect(t *testing.T, local string) fakeserver.Element {
	t.Helper()
	el := h.stanza(t)
	if el.Start.Name.Local != local {
		t.Fatalf("got %s, want a %s", el, local)
	}
	return el
}

// write writes raw XML to the client; %s verbs in format are filled from
// args.
func (h *harness) write(t *testing.T, format string, args ...any) {
	t.Helper()
	h.conn.Write(t, fmt.Sprintf(format, args...))
}

// sync returns once the client has handled everything written before it: it
// pings the client and waits for the answer, which the stream writes after
// its reader has passed every earlier stanza to the handlers.
func (h *harness) sync(t *testing.T) {
	t.Helper()
	h.syncs++
	id := fmt.Sprintf("sync-%d", h.syncs)
	h.write(t, "<iq type='get' id='%s' from='example.test' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>", id, h.conn.JID)
	for {
		el := h.stanza(t)
		if el.Start.Name.Local == "iq" && el.Attr("id") == id {
			return
		}
		t.Fatalf("got %s while waiting for the answer to %s", el, id)
	}
}

// join joins testRoom as testNick: it reads the join presence and answers
// with the self-presence.
func (h *harness) join(t *testing.T) *muc.Room {
	t.Helper()
	type joined struct {
		r   *muc.Room
		err error
	}
	ch := make(chan joined, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
		defer cancel()
		r, err := h.c.Join(ctx, jid.MustParse(testRoom), testNick)
		ch <- joined{r, err}
	}()
	h.answerJoin(t)
	j := <-ch
	if j.err != nil {
		t.Fatalf("join: %v", j.err)
	}
	if got := j.r.OccupantJID().String(); got != testSelf {
		t.Fatalf("wrong occupant JID: want=%q, got=%q", testSelf, got)
	}
	return j.r
}

// answerJoin reads a join presence to testRoom and answers it with our
// self-presence.
func (h *harness) answerJoin(t *testing.T) {
	t.Helper()
	p := h.expect(t, "presence")
	if to := p.Attr("to"); to != testSelf {
		t.Fatalf("join presence to %q, want %q", to, testSelf)
	}
	if typ := p.Attr("type"); typ != "" {
		t.Fatalf("join presence of type %q", typ)
	}
	h.write(t, "<presence from='%s' to='%s' id='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant'/><status code='110'/></x></presence>",
		testSelf, h.conn.JID, p.Attr("id"))
}

// sent is a message the client wrote, as the server read it.
type sent struct {
	id, originID, body string
}

// send sends a tracked message and reads it on the server side.
func (h *harness) send(t *testing.T, r *muc.Room, body string, opts ...muc.SendOption) (*tracking.MessageTracker, sent) {
	t.Helper()
	tr, err := r.SendTrackedMessage(context.Background(), body, opts...)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	return tr, h.readMessage(t)
}

// readMessage reads a groupchat message to testRoom.
func (h *harness) readMessage(t *testing.T) sent {
	t.Helper()
	el := h.expect(t, "message")
	if to, typ := el.Attr("to"), el.Attr("type"); to != testRoom || typ != "groupchat" {
		t.Fatalf("message to %q of type %q, want a groupchat message to %q", to, typ, testRoom)
	}
	ids := xstanza.ReadIDs(el.Start, el.Inner)
	if ids.ID == "" || ids.OriginID == "" {
		t.Fatalf("message without id or origin-id: %s", el)
	}
	var m struct {
		Body string `xml:"body"`
	}
	if err := xml.Unmarshal([]byte(el.String()), &m); err != nil {
		t.Fatalf("decoding %s: %v", el, err)
	}
	return sent{id: ids.ID, originID: ids.OriginID, body: m.Body}
}

// groupchat returns a groupchat message from from to the client with the
// given id and, unless it is empty, origin-id.
func (h *harness) groupchat(from, id, originID, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<message from='%s' to='%s' type='groupchat'", from, h.conn.JID)
	if id != "" {
		fmt.Fprintf(&b, " id='%s'", id)
	}
	fmt.Fprintf(&b, "><body>%s</body>", body)
	if originID != "" {
		fmt.Fprintf(&b, "<origin-id xmlns='urn:xmpp:sid:0' id='%s'/>", originID)
	}
	fmt.Fprintf(&b, "<stanza-id xmlns='urn:xmpp:sid:0' by='%s' id='st-%s'/></message>", testRoom, id)
	return b.String()
}

// reflect writes the room's faithful reflection of m.
func (h *harness) reflect(t *testing.T, m sent) {
	t.Helper()
	h.conn.Write(t, h.groupchat(testSelf, m.id, m.originID, m.body))
}

// event waits for the next room event.
func (h *harness) event(t *testing.T) muc.Event {
	t.Helper()
	select {
	case ev := <-h.events:
		return ev
	case <-time.After(fakeserver.Timeout):
		t.Fatalf("no room event within %v", fakeserver.Timeout)
		return muc.Event{}
	}
}

// noEvent fails if a room event is reported within d.
func (h *harness) noEvent(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case ev := <-h.events:
		t.Fatalf("unexpected room event %v (%v)", ev.Kind, ev.Err)
	case <-time.After(d):
	}
}

// waitState waits until tr is in state want, at most fakeserver.Timeout.
func waitState(t *testing.T, tr *tracking.MessageTracker, want tracking.MessageState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	if got, _ := tr.Wait(ctx, want); got != want {
		t.Fatalf("wrong state: want=%v, got=%v (changes %v)", want, got, tr.Changes())
	}
}

// checkState fails unless tr is in state want now.
func checkState(t *testing.T, tr *tracking.MessageTracker, want tracking.MessageState) {
	t.Helper()
	if got := tr.State(); got != want {
		t.Fatalf("wrong state: want=%v, got=%v (changes %v)", want, got, tr.Changes())
	}
}

// checkEmpty fails unless the room holds no pending message.
func checkEmpty(t *testing.T, r *muc.Room) {
	t.Helper()
	if n := r.Pending(); n != 0 {
		t.Fatalf("room still holds %d pending messages", n)
	}
}

// waitPending waits until the room holds n pending messages. A room forgets
// a timed-out message in the tracker's observer, just after the tracker
// changed.
func waitPending(t *testing.T, r *muc.Room, n int) {
	t.Helper()
	deadline := time.Now().Add(fakeserver.Timeout)
	for {
		got := r.Pending()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("wrong pending count: want=%d, got=%d", n, got)
		}
		time.Sleep(time.Millisecond)
	}
}

// change returns the change of tr to state to, failing if there is none or
// more than one.
func change(t *testing.T, tr *tracking.MessageTracker, to tracking.MessageState) tracking.Change {
	t.Helper()
	var found []tracking.Change
	for _, c := range tr.Changes() {
		if c.To == to {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d changes to %v, want 1: %v", len(found), to, tr.Changes())
	}
	return found[0]
}

// stanzaErr returns the stanza error of a tracker in ERROR, or nil.
func stanzaErr(tr *tracking.MessageTracker) *stanza.Error {
	var se *stanza.Error
	if errors.As(tr.Err(), &se) {
		return se
	}
	return nil
}
