package muc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// These tests script what Prosody cannot be made to do on demand (or not
// deterministically): a kick at a chosen moment, a rejoin refused or left
// unanswered, a full send queue, addresses in unusual case.

const kick = "<presence type='unavailable' from='%s' to='%s'><x xmlns='http://jabber.org/protocol/muc#user'>" +
	"<item affiliation='none' role='none'/><status code='307'/><status code='110'/></x></presence>"

// joinAsync starts a Join of testRoom and returns where its outcome goes.
func (h *harness) joinAsync(ctx context.Context) <-chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := h.c.Join(ctx, jid.MustParse(testRoom), testNick)
		errc <- err
	}()
	return errc
}

// newSession breaks the connection of a harness without stream management,
// so that the stream starts a new session, and returns the join presence of
// the rejoin.
func (h *harness) newSession(t *testing.T) fakeserver.Element {
	t.Helper()
	h.conn.Reset()
	h.conn = h.srv.Next(t)
	h.handled = 0
	return h.expect(t, "presence")
}

// TestRemovedLeaveAndJoinAtOnce (issue 10, defect 1): after a kick with
// messages in flight, Join enters the room again at once, the room's late
// error still reaches the old message, and Leave of the old room ends what
// is left CLOSED at once, without sending anything.
func TestRemovedLeaveAndJoinAtOnce(t *testing.T) {
	h := newHarness(t, harnessConfig{opts: []muc.Option{muc.WithTimeout(0)}})
	old := h.join(t)
	refused, m1 := h.send(t, old, "refused")
	stuck, _ := h.send(t, old, "never answered")
	h.write(t, kick, testSelf, h.conn.JID)
	if ev := h.event(t); ev.Kind != muc.EventRemoved {
		t.Fatalf("event %v, want %v", ev.Kind, muc.EventRemoved)
	}
	r := h.join(t) // fails with "already in" while a message is pending
	if r == old {
		t.Fatal("Join returned the room that removed us")
	}
	if got, ok := h.c.Room(jid.MustParse(testRoom)); !ok || got != r {
		t.Fatalf("Room() = %p, %v; want the new room %p", got, ok, r)
	}
	h.write(t, "%s", errorMessage(testRoom, h.conn.JID.String(), m1.id, "not-acceptable", ""))
	h.sync(t)
	checkState(t, refused, tracking.Error)
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	if err := old.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	checkState(t, stuck, tracking.Closed)
	checkEmpty(t, old)
	h.conn.NoStanza(t, 50*time.Millisecond)
	// The new room works.
	tr, m := h.send(t, r, "again")
	h.reflect(t, m)
	waitState(t, tr, tracking.DeliveredToRecipient)
}

// TestRejoinRefusedEndsHeldMessages (defect 2): a message sent while the
// rejoin is unanswered is held back, never written, and ends ERROR with the
// room's refusal.
func TestRejoinRefusedEndsHeldMessages(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	p := h.newSession(t)
	held, err := r.SendTrackedMessage(context.Background(), "held")
	if err != nil {
		t.Fatal(err)
	}
	h.conn.NoStanza(t, 50*time.Millisecond)
	h.write(t, "<presence from='%s' to='%s' id='%s' type='error'><x xmlns='http://jabber.org/protocol/muc'/>"+
		"<error type='auth'><registration-required xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
		testSelf, h.conn.JID, p.Attr("id"))
	if ev := h.event(t); ev.Kind != muc.EventRejoinFailed {
		t.Fatalf("event %v, want %v", ev.Kind, muc.EventRejoinFailed)
	}
	waitState(t, held, tracking.Error)
	if !errors.Is(held.Err(), muc.ErrRegistrationRequired) {
		t.Fatalf("error %v, want registration-required", held.Err())
	}
	h.conn.NoStanza(t, 50*time.Millisecond)
}

// TestLeaveDuringRejoin (defect 3): a deliberate leave while the rejoin is
// unanswered reports no failure, and nothing but the leave is sent.
func TestLeaveDuringRejoin(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	h.newSession(t) // not answered
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	if err := r.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if p := h.expect(t, "presence"); p.Attr("type") != "unavailable" {
		t.Fatalf("got %s, want the unavailable presence", p)
	}
	h.noEvent(t, 100*time.Millisecond)
	h.conn.NoStanza(t, 50*time.Millisecond)
}

// TestPendingLimit (defect 4): messages without a timeout are bounded per
// client: the oldest is given up (CLOSED) when one more is sent.
func TestPendingLimit(t *testing.T) {
	h := newHarness(t, harnessConfig{opts: []muc.Option{muc.WithTimeout(0), muc.WithPendingLimit(2)}})
	r := h.join(t)
	first, _ := h.send(t, r, "1")
	second, _ := h.send(t, r, "2")
	timed, _ := h.send(t, r, "with a timeout", muc.Timeout(time.Hour))
	checkState(t, first, tracking.InTransit)
	third, _ := h.send(t, r, "3")
	waitState(t, first, tracking.Closed)
	checkState(t, second, tracking.InTransit)
	checkState(t, third, tracking.InTransit)
	checkState(t, timed, tracking.InTransit)
	if n := r.Pending(); n != 3 {
		t.Fatalf("%d pending, want 3", n)
	}
}

// TestEventsInOrder (defect 6): a kick right after the rejoin is reported
// after EventRejoined, even when the function handling events is slow.
func TestEventsInOrder(t *testing.T) {
	events := make(chan muc.Event, 4)
	h := newHarness(t, harnessConfig{opts: []muc.Option{muc.WithEvents(func(ev muc.Event) {
		if ev.Kind == muc.EventRejoined {
			time.Sleep(50 * time.Millisecond) // slow on the first event
		}
		events <- ev
	})}})
	h.join(t)
	p := h.newSession(t)
	h.write(t, "<presence from='%s' to='%s' id='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant'/><status code='110'/></x></presence>", testSelf, h.conn.JID, p.Attr("id"))
	h.write(t, kick, testSelf, h.conn.JID)
	var got []muc.EventKind
	for range 2 {
		select {
		case ev := <-events:
			got = append(got, ev.Kind)
		case <-time.After(fakeserver.Timeout):
			t.Fatalf("events %v, want two", got)
		}
	}
	if got[0] != muc.EventRejoined || got[1] != muc.EventRemoved {
		t.Fatalf("events %v, want [rejoined removed]", got)
	}
}

// blockedWriter returns a harness whose stream writes at most one stanza
// unacknowledged and queues one more, and a room joined on it.
func blockedWriter(t *testing.T) (*harness, *muc.Room) {
	h := newHarness(t, harnessConfig{sm: true, stream: func(c *stream.Config) {
		c.MaxUnacked, c.QueueSize = 1, 1
	}})
	r := h.join(t)
	h.write(t, "<a xmlns='urn:xmpp:sm:3' h='%d'/>", h.handled)
	return h, r
}

// fill sends one message that is written and left unacknowledged and one
// that stays queued: the queue is full then.
func (h *harness) fill(t *testing.T, r *muc.Room) {
	t.Helper()
	if _, err := r.SendTrackedMessage(context.Background(), "unacked"); err != nil {
		t.Fatal(err)
	}
	h.readMessage(t)
	if _, err := r.SendTrackedMessage(context.Background(), "queued"); err != nil {
		t.Fatal(err)
	}
}

// drain acknowledges what the server has read and reads the queued message.
func (h *harness) drain(t *testing.T) {
	t.Helper()
	h.write(t, "<a xmlns='urn:xmpp:sm:3' h='%d'/>", h.handled)
	if m := h.readMessage(t); !strings.Contains(m.body, "queued") {
		t.Fatalf("got %q, want the queued message", m.body)
	}
	h.write(t, "<a xmlns='urn:xmpp:sm:3' h='%d'/>", h.handled)
}

// TestTimedOutWhileQueueFull (defect 9): a message whose timeout runs out
// while it waits for room in the stream's queue returns TIMED_OUT and is
// never sent.
func TestTimedOutWhileQueueFull(t *testing.T) {
	h, r := blockedWriter(t)
	h.fill(t, r)
	type result struct {
		tr  *tracking.MessageTracker
		err error
	}
	done := make(chan result, 1)
	go func() {
		tr, err := r.SendTrackedMessage(context.Background(), "too late", muc.Timeout(20*time.Millisecond))
		done <- result{tr, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(fakeserver.Timeout):
		h.drain(t) // the send waits for room: the bug
		res = <-done
	}
	if res.err != nil || res.tr.State() != tracking.TimedOut {
		t.Fatalf("send = %v, %v; want a TIMED_OUT tracker", res.tr.State(), res.err)
	}
	h.drain(t)
	h.conn.NoStanza(t, 50*time.Millisecond)
}

// TestAbortQueued: a tracked message still queued is aborted through its
// tracker and never sent; one already written cannot be.
func TestAbortQueued(t *testing.T) {
	h, r := blockedWriter(t)
	if _, err := r.SendTrackedMessage(context.Background(), "unacked"); err != nil {
		t.Fatal(err)
	}
	h.readMessage(t)
	queued, err := r.SendTrackedMessage(context.Background(), "aborted")
	if err != nil {
		t.Fatal(err)
	}
	if err := queued.Abort(); err != nil {
		t.Fatal(err)
	}
	checkState(t, queued, tracking.Aborted)
	h.write(t, "<a xmlns='urn:xmpp:sm:3' h='%d'/>", h.handled)
	h.conn.NoStanza(t, 50*time.Millisecond)
	if n := r.Pending(); n != 1 {
		t.Fatalf("%d pending, want 1 (the unacknowledged one)", n)
	}

	written, _ := h.send(t, r, "written")
	if err := written.Abort(); !errors.Is(err, stream.ErrNotQueued) {
		t.Fatalf("Abort of a written message: %v, want ErrNotQueued", err)
	}
}

// TestJIDsComparedAsXMPP (defect 11): a reflection whose from differs from
// our occupant JID only in the case of the room's localpart and domain is
// ours; one whose nick differs in case is not.
func TestJIDsComparedAsXMPP(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "case")
	h.write(t, "%s", h.groupchat("Alice-Nick@Example.Test/alice", m.id, m.originID, m.body)) // another room
	h.write(t, "%s", h.groupchat("Room@MUC.example.test/Alice", m.id, m.originID, m.body))   // another nick
	h.sync(t)
	checkState(t, tr, tracking.InTransit)
	h.write(t, "%s", h.groupchat("Room@MUC.Example.Test/alice", m.id, m.originID, m.body))
	h.sync(t)
	checkState(t, tr, tracking.DeliveredToRecipient)
	// An error from the room's bare JID in another case counts too.
	tr, m = h.send(t, r, "error")
	h.write(t, "%s", errorMessage("ROOM@muc.example.test", h.conn.JID.String(), m.id, "forbidden", ""))
	h.sync(t)
	checkState(t, tr, tracking.Error)
}

// TestStanzaIDOfTheRoom (defect 13): of several stanza-ids, the one whose
// by is the room is kept.
func TestStanzaIDOfTheRoom(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "ids")
	h.write(t, "<message from='%s' to='%s' type='groupchat' id='%s'><body>ids</body>"+
		"<origin-id xmlns='urn:xmpp:sid:0' id='%s'/>"+
		"<stanza-id xmlns='urn:xmpp:sid:0' by='alice@example.test' id='ours'/>"+
		"<stanza-id xmlns='urn:xmpp:sid:0' by='Room@muc.example.test' id='the-rooms'/></message>",
		testSelf, h.conn.JID, m.id, m.originID)
	h.sync(t)
	c := change(t, tr, tracking.DeliveredToRecipient)
	if c.Response.StanzaID != "the-rooms" || c.Response.StanzaIDBy.String() != testRoom {
		t.Fatalf("stanza-id %q by %v, want %q by %s", c.Response.StanzaID, c.Response.StanzaIDBy, "the-rooms", testRoom)
	}
}

// TestJoinTimeoutLeaves (defect 14): a join whose answer does not come in
// time is followed by an unavailable presence, so that a late answer does
// not leave us in the room.
func TestJoinTimeoutLeaves(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	errc := h.joinAsync(ctx)
	h.expect(t, "presence")
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("join: %v, want the deadline", err)
	}
	p := h.expect(t, "presence")
	if p.Attr("type") != "unavailable" || p.Attr("to") != testSelf {
		t.Fatalf("got %s, want an unavailable presence to %s", p, testSelf)
	}
	if len(h.c.Rooms()) != 0 {
		t.Fatal("the room is kept")
	}
}

// TestRejoinTimeoutLeaves (defect 14): the same for a rejoin.
func TestRejoinTimeoutLeaves(t *testing.T) {
	h := newHarness(t, harnessConfig{opts: []muc.Option{muc.WithRejoinTimeout(50 * time.Millisecond)}})
	h.join(t)
	h.newSession(t)
	if ev := h.event(t); ev.Kind != muc.EventRejoinFailed || !errors.Is(ev.Err, context.DeadlineExceeded) {
		t.Fatalf("event %v (%v), want %v", ev.Kind, ev.Err, muc.EventRejoinFailed)
	}
	if p := h.expect(t, "presence"); p.Attr("type") != "unavailable" {
		t.Fatalf("got %s, want an unavailable presence", p)
	}
}

// TestSetNick: our nick changes on request, and a message in flight is
// matched from the new occupant JID.
func TestSetNick(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "before")
	const newSelf = testRoom + "/alice2"
	errc := make(chan error, 1)
	go func() { errc <- r.SetNick(context.Background(), "alice2") }()
	p := h.expect(t, "presence")
	if p.Attr("to") != newSelf {
		t.Fatalf("nick change to %q, want %q", p.Attr("to"), newSelf)
	}
	h.write(t, "<presence from='%s' to='%s' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant' nick='alice2'/><status code='303'/><status code='110'/></x></presence>",
		testSelf, h.conn.JID)
	h.write(t, "<presence from='%s' to='%s' id='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant'/><status code='110'/></x></presence>", newSelf, h.conn.JID, p.Attr("id"))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if r.Nick() != "alice2" || r.OccupantJID().String() != newSelf {
		t.Fatalf("nick %q (%v) after the change", r.Nick(), r.OccupantJID())
	}
	h.write(t, "%s", h.groupchat(newSelf, m.id, m.originID, m.body))
	h.sync(t)
	checkState(t, tr, tracking.DeliveredToRecipient)

	// A refusal is a JoinError.
	go func() { errc <- r.SetNick(context.Background(), "carol") }()
	p = h.expect(t, "presence")
	h.write(t, "<presence from='%s' to='%s' id='%s' type='error'><error type='cancel'>"+
		"<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>", testOther, h.conn.JID, p.Attr("id"))
	if err := <-errc; !errors.Is(err, muc.ErrNickConflict) {
		t.Fatalf("SetNick: %v, want a conflict", err)
	}
	if r.Nick() != "alice2" {
		t.Fatalf("nick %q after a refused change", r.Nick())
	}
}

// TestInstantRoom: when the service creates the room locked (status 201),
// Join accepts the default configuration before it returns.
func TestInstantRoom(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	errc := h.joinAsync(context.Background())
	p := h.expect(t, "presence")
	h.write(t, "<presence from='%s' to='%s' id='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='owner' role='moderator'/><status code='110'/><status code='201'/></x></presence>",
		testSelf, h.conn.JID, p.Attr("id"))
	iq := h.expect(t, "iq")
	if iq.Attr("type") != "set" || iq.Attr("to") != testRoom ||
		!strings.Contains(iq.String(), muc.NSOwner) || !strings.Contains(iq.String(), `type="submit"`) {
		t.Fatalf("got %s, want an instant room configuration", iq)
	}
	select {
	case err := <-errc:
		t.Fatalf("Join returned before the room was configured: %v", err)
	default:
	}
	h.write(t, "<iq type='result' from='%s' to='%s' id='%s'/>", testRoom, h.conn.JID, iq.Attr("id"))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestOccupantID: when the room gives us an occupant id (XEP-0421), a
// reflection from our occupant JID with another occupant id is not ours.
func TestOccupantID(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	errc := h.joinAsync(context.Background())
	p := h.expect(t, "presence")
	h.write(t, "<presence from='%s' to='%s' id='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant'/><status code='110'/></x>"+
		"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='me'/></presence>", testSelf, h.conn.JID, p.Attr("id"))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	r, _ := h.c.Room(jid.MustParse(testRoom))
	tr, m := h.send(t, r, "who")
	with := func(occupantID string) string {
		return fmt.Sprintf("<message from='%s' to='%s' type='groupchat' id='%s'><body>who</body>"+
			"<origin-id xmlns='urn:xmpp:sid:0' id='%s'/><occupant-id xmlns='urn:xmpp:occupant-id:0' id='%s'/></message>",
			testSelf, h.conn.JID, m.id, m.originID, occupantID)
	}
	h.write(t, "%s", with("someone-else"))
	h.sync(t)
	checkState(t, tr, tracking.InTransit)
	h.write(t, "%s", with("me"))
	h.sync(t)
	checkState(t, tr, tracking.DeliveredToRecipient)
}

// TestReflectionEndsTracking: a reflected message's tracking ends at
// DELIVERED_TO_RECIPIENT, so that Done is closed and Wait for SEEN returns.
func TestReflectionEndsTracking(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "done")
	h.reflect(t, m)
	select {
	case <-tr.Done():
	case <-time.After(fakeserver.Timeout):
		t.Fatal("Done not closed after the reflection")
	}
	if st, err := tr.Wait(context.Background(), tracking.SeenByRecipient); st != tracking.DeliveredToRecipient || err != nil {
		t.Fatalf("Wait = %v, %v", st, err)
	}
}

func TestEventKindZero(t *testing.T) {
	var k muc.EventKind
	if k == muc.EventRejoined || k == muc.EventRejoinFailed || k == muc.EventRemoved {
		t.Fatalf("the zero EventKind is %v", k)
	}
}

// TestClientCloseKeepsDelivery: Client is an io.Closer; a delivered tracker keeps
// its state when the client closes.
func TestClientCloseKeepsDelivery(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "kept")
	h.reflect(t, m)
	waitState(t, tr, tracking.DeliveredToRecipient)
	var c interface{ Close() error } = h.c
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	checkState(t, tr, tracking.DeliveredToRecipient)
}
