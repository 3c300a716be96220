package muc_test

// These tests run the client against the scripted server of server_test.go.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// reflectionTests are answers of a room to one of our messages m, and
// whether each proves that the room distributed m.
var reflectionTests = [...]struct {
	name      string
	answer    func(h *harness, m sent) string
	delivered bool
}{
	0: {
		name:      "faithful",
		answer:    func(h *harness, m sent) string { return h.groupchat(testSelf, m.id, m.originID, m.body) },
		delivered: true,
	},
	1: {
		name:      "id rewritten",
		answer:    func(h *harness, m sent) string { return h.groupchat(testSelf, "room-made-id", m.originID, m.body) },
		delivered: true,
	},
	2: {
		name:      "origin-id dropped",
		answer:    func(h *harness, m sent) string { return h.groupchat(testSelf, m.id, "", m.body) },
		delivered: true,
	},
	3: {
		name:      "no id",
		answer:    func(h *harness, m sent) string { return h.groupchat(testSelf, "", m.originID, m.body) },
		delivered: true,
	},
	4: {
		name:   "id rewritten and origin-id dropped",
		answer: func(h *harness, m sent) string { return h.groupchat(testSelf, "room-made-id", "", m.body) },
	},
	5: {
		name:   "another occupant with our ids",
		answer: func(h *harness, m sent) string { return h.groupchat(testOther, m.id, m.originID, m.body) },
	},
	6: {
		name:   "another occupant with our id",
		answer: func(h *harness, m sent) string { return h.groupchat(testOther, m.id, "", m.body) },
	},
	7: {
		name:   "another occupant with our origin-id",
		answer: func(h *harness, m sent) string { return h.groupchat(testOther, "other-id", m.originID, m.body) },
	},
	8: {
		name:   "the room's bare JID",
		answer: func(h *harness, m sent) string { return h.groupchat(testRoom, m.id, m.originID, m.body) },
	},
	9: {
		name: "another room",
		answer: func(h *harness, m sent) string {
			return h.groupchat("other@muc.example.test/alice", m.id, m.originID, m.body)
		},
	},
	10: {
		name:   "our own bare JID",
		answer: func(h *harness, m sent) string { return h.groupchat("alice@example.test", m.id, m.originID, m.body) },
	},
	11: {
		name: "not groupchat",
		answer: func(h *harness, m sent) string {
			return fmt.Sprintf("<message from='%s' to='%s' id='%s' type='chat'><body>%s</body><origin-id xmlns='urn:xmpp:sid:0' id='%s'/></message>",
				testSelf, h.conn.JID, m.id, m.body, m.originID)
		},
	},
	12: {
		name: "no type",
		answer: func(h *harness, m sent) string {
			return fmt.Sprintf("<message from='%s' to='%s' id='%s'><body>%s</body><origin-id xmlns='urn:xmpp:sid:0' id='%s'/></message>",
				testSelf, h.conn.JID, m.id, m.body, m.originID)
		},
	},
	13: {
		name:   "origin-id of another message, our id",
		answer: func(h *harness, m sent) string { return h.groupchat(testSelf, m.id, "unknown-origin-id", m.body) },
		// The id is ours and the sender is us: the room replaced the
		// origin-id, as it may replace the id.
		delivered: true,
	},
}

func TestReflection(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	for i, tc := range reflectionTests {
		t.Run(fmt.Sprintf("%d/%s", i, tc.name), func(t *testing.T) {
			tr, m := h.send(t, r, fmt.Sprintf("message %d", i))
			h.write(t, "%s", tc.answer(h, m))
			h.sync(t)
			if !tc.delivered {
				checkState(t, tr, tracking.InTransit)
				if got := r.Pending(); got != 1 {
					t.Fatalf("the message is no longer pending: %d pending", got)
				}
				// The faithful reflection still counts.
				h.reflect(t, m)
				h.sync(t)
			}
			checkState(t, tr, tracking.DeliveredToRecipient)
			c := change(t, tr, tracking.DeliveredToRecipient)
			if c.Response == nil {
				t.Fatal("no response recorded with the reflection")
			}
			if from := c.Response.Message.From.String(); from != testSelf {
				t.Errorf("reflection from the wrong JID: want=%q, got=%q", testSelf, from)
			}
			if typ := c.Response.Message.Type; typ != stanza.GroupChatMessage {
				t.Errorf("wrong type of the response: want=%q, got=%q", stanza.GroupChatMessage, typ)
			}
			checkEmpty(t, r)
		})
	}
}

// TestOriginIDIsID checks that a message carries its id as its origin-id
// too, unless WithIDs sets them apart, and that a message whose ids differ
// is matched by either.
func TestOriginIDIsID(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "one id")
	if m.originID != m.id {
		t.Fatalf("origin-id %q, want the id %q", m.originID, m.id)
	}
	h.reflect(t, m)
	h.sync(t)
	checkState(t, tr, tracking.DeliveredToRecipient)

	for i, answer := range []func(m sent) string{
		func(m sent) string { return h.groupchat(testSelf, "room-made-id", m.originID, m.body) },
		func(m sent) string { return h.groupchat(testSelf, m.id, "", m.body) },
	} {
		id, origin := fmt.Sprintf("apart-%d", i), fmt.Sprintf("apart-origin-%d", i)
		tr, m := h.send(t, r, "two ids", muc.WithIDs(id, origin))
		if m.id != id || m.originID != origin {
			t.Fatalf("sent id %q and origin-id %q, want %q and %q", m.id, m.originID, id, origin)
		}
		h.write(t, "%s", answer(m))
		h.sync(t)
		checkState(t, tr, tracking.DeliveredToRecipient)
	}
	checkEmpty(t, r)
}

// TestReflectionKeepsStanzaID checks that the room's stanza-id (which chat
// markers refer to) is kept from the reflection, and only when the room
// itself assigned it.
func TestReflectionKeepsStanzaID(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)

	tr, m := h.send(t, r, "by the room")
	h.reflect(t, m)
	h.sync(t)
	resp := tr.Response()
	if resp == nil || resp.StanzaID != "st-"+m.id || resp.StanzaIDBy.String() != testRoom {
		t.Fatalf("wrong stanza-id: want=%q by %q, got=%+v", "st-"+m.id, testRoom, resp)
	}

	// The room spelt otherwise is still the room.
	tr, m = h.send(t, r, "by the room, spelt otherwise")
	h.write(t, "<message from='%s' to='%s' id='%s' type='groupchat'><body>x</body>"+
		"<stanza-id xmlns='urn:xmpp:sid:0' by='room@MUC.Example.Test' id='st-upper'/>"+
		"<origin-id xmlns='urn:xmpp:sid:0' id='%s'/></message>", testSelf, h.conn.JID, m.id, m.originID)
	h.sync(t)
	if resp := tr.Response(); resp == nil || resp.StanzaID != "st-upper" || resp.StanzaIDBy.String() != testRoom {
		t.Fatalf("wrong stanza-id: want=%q by %q, got=%+v", "st-upper", testRoom, resp)
	}

	tr, m = h.send(t, r, "by someone else")
	h.write(t, "<message from='%s' to='%s' id='%s' type='groupchat'><body>x</body>"+
		"<stanza-id xmlns='urn:xmpp:sid:0' by='alice@example.test' id='not-the-room'/>"+
		"<origin-id xmlns='urn:xmpp:sid:0' id='%s'/></message>", testSelf, h.conn.JID, m.id, m.originID)
	h.sync(t)
	checkState(t, tr, tracking.DeliveredToRecipient)
	if resp := tr.Response(); resp.StanzaID != "" || !resp.StanzaIDBy.Equal(jid.JID{}) {
		t.Fatalf("kept a stanza-id the room did not assign: %q by %q", resp.StanzaID, resp.StanzaIDBy)
	}
}

// TestOtherOccupantReusesIDs has another occupant send a message with the id
// and origin-id of our pending message before the room reflects ours: only
// our own reflection moves the tracker.
func TestOtherOccupantReusesIDs(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "mine")
	for range 3 {
		h.write(t, "%s", h.groupchat(testOther, m.id, m.originID, "not mine"))
	}
	h.sync(t)
	checkState(t, tr, tracking.InTransit)
	h.reflect(t, m)
	h.sync(t)
	checkState(t, tr, tracking.DeliveredToRecipient)
	if from := tr.Response().Message.From.String(); from != testSelf {
		t.Fatalf("delivered by a message from %q, want %q", from, testSelf)
	}
	checkEmpty(t, r)
}

// TestDuplicateReflection checks that a second reflection of a delivered
// message changes nothing.
func TestDuplicateReflection(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "once")
	h.reflect(t, m)
	h.reflect(t, m)
	h.sync(t)
	if n := len(tr.Changes()); n != 1 {
		t.Fatalf("wrong number of changes: want=1, got=%d (%v)", n, tr.Changes())
	}
	checkState(t, tr, tracking.DeliveredToRecipient)
}

// TestManyPending sends several messages and reflects them out of order.
func TestManyPending(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	const n = 20
	trs := make([]*tracking.MessageTracker, n)
	ms := make([]sent, n)
	for i := range n {
		trs[i], ms[i] = h.send(t, r, fmt.Sprintf("m%d", i))
	}
	if got := r.Pending(); got != n {
		t.Fatalf("wrong pending count: want=%d, got=%d", n, got)
	}
	for i := n - 1; i >= 0; i -= 2 {
		h.reflect(t, ms[i])
	}
	h.sync(t)
	for i, tr := range trs {
		want := tracking.InTransit
		if i%2 == 1 {
			want = tracking.DeliveredToRecipient
		}
		checkState(t, tr, want)
	}
	for i := 0; i < n; i += 2 {
		h.reflect(t, ms[i])
	}
	h.sync(t)
	for _, tr := range trs {
		checkState(t, tr, tracking.DeliveredToRecipient)
	}
	checkEmpty(t, r)
}

func errorMessage(from, to, id, condition, text string) string {
	s := fmt.Sprintf("<message from='%s' to='%s' type='error'", from, to)
	if id != "" {
		s += fmt.Sprintf(" id='%s'", id)
	}
	s += "><error type='cancel'>"
	if condition != "" {
		s += fmt.Sprintf("<%s xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>", condition)
	}
	if text != "" {
		s += fmt.Sprintf("<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>%s</text>", text)
	}
	return s + "</error></message>"
}

var errorTests = [...]struct {
	name      string
	from      string
	id        func(m sent) string
	condition string
	// opts are the options of the send.
	opts []muc.SendOption
	// want is the condition the tracker must end with, or "" when the
	// error must not be taken for the message's.
	want stanza.Condition
}{
	0: {
		name:      "from the room",
		from:      testRoom,
		id:        func(m sent) string { return m.id },
		condition: "not-acceptable",
		want:      stanza.NotAcceptable,
	},
	1: {
		name:      "from our occupant JID",
		from:      testSelf,
		id:        func(m sent) string { return m.id },
		condition: "forbidden",
		want:      stanza.Forbidden,
	},
	2: {
		name: "without a condition",
		from: testRoom,
		id:   func(m sent) string { return m.id },
		want: stanza.UndefinedCondition,
	},
	3: {
		name:      "from another occupant",
		from:      testOther,
		id:        func(m sent) string { return m.id },
		condition: "not-acceptable",
	},
	4: {
		name:      "another id",
		from:      testRoom,
		id:        func(m sent) string { return "not-ours" },
		condition: "not-acceptable",
	},
	5: {
		name:      "by origin-id",
		from:      testRoom,
		id:        func(m sent) string { return m.originID },
		condition: "not-acceptable",
		// Apart: by default the origin-id is the id.
		opts: []muc.SendOption{muc.WithIDs("error-5-id", "error-5-origin")},
	},
	6: {
		name:      "from the service",
		from:      "muc.example.test",
		id:        func(m sent) string { return m.id },
		condition: "item-not-found",
	},
	7: {
		name:      "from our server",
		from:      "example.test",
		id:        func(m sent) string { return m.id },
		condition: "remote-server-not-found",
	},
}

// TestErrorWithoutError checks that an error reply without an <error/>
// element still ends the tracker in ERROR, as an undefined-condition.
func TestErrorWithoutError(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "bad answer")
	h.write(t, "<message from='%s' to='%s' id='%s' type='error'/>", testRoom, h.conn.JID, m.id)
	h.sync(t)
	checkState(t, tr, tracking.Error)
	if se := stanzaErr(tr); se == nil || se.Condition != stanza.UndefinedCondition {
		t.Fatalf("wrong error: want %q, got %+v", stanza.UndefinedCondition, se)
	}
	checkEmpty(t, r)
}

func TestErrorReply(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	for i, tc := range errorTests {
		t.Run(fmt.Sprintf("%d/%s", i, tc.name), func(t *testing.T) {
			tr, m := h.send(t, r, fmt.Sprintf("message %d", i), tc.opts...)
			h.write(t, "%s", errorMessage(tc.from, h.conn.JID.String(), tc.id(m), tc.condition, "text "+tc.name))
			h.sync(t)
			if tc.want == "" {
				checkState(t, tr, tracking.InTransit)
				h.reflect(t, m)
				h.sync(t)
				checkState(t, tr, tracking.DeliveredToRecipient)
				checkEmpty(t, r)
				return
			}
			checkState(t, tr, tracking.Error)
			se := stanzaErr(tr)
			if se == nil {
				t.Fatal("no stanza error kept")
			}
			if se.Condition != tc.want {
				t.Errorf("wrong condition: want=%q, got=%q", tc.want, se.Condition)
			}
			if se.Type != stanza.Cancel {
				t.Errorf("wrong error type: want=%q, got=%q", stanza.Cancel, se.Type)
			}
			if tc.condition != "" && se.Text[""] != "text "+tc.name {
				t.Errorf("wrong error text: want=%q, got=%q", "text "+tc.name, se.Text)
			}
			if !errors.Is(*se, stanza.Error{Condition: tc.want}) {
				t.Errorf("errors.Is does not match %v against its condition", se)
			}
			c := change(t, tr, tracking.Error)
			if from := c.Response.Message.From.String(); from != tc.from {
				t.Errorf("error from the wrong JID: want=%q, got=%q", tc.from, from)
			}
			checkEmpty(t, r)
			// A reflection after the error changes nothing.
			h.reflect(t, m)
			h.sync(t)
			checkState(t, tr, tracking.Error)
		})
	}
}

// TestErrorAfterReflection checks that an error reply for a message the room
// already reflected changes nothing: the room has it.
func TestErrorAfterReflection(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "delivered")
	h.reflect(t, m)
	h.write(t, "%s", errorMessage(testRoom, h.conn.JID.String(), m.id, "not-acceptable", ""))
	h.write(t, "%s", errorMessage(testSelf, h.conn.JID.String(), m.id, "forbidden", ""))
	h.sync(t)
	checkState(t, tr, tracking.DeliveredToRecipient)
	if n := len(tr.Changes()); n != 1 {
		t.Fatalf("wrong number of changes: want=1, got=%d (%v)", n, tr.Changes())
	}
	if tr.Err() != nil {
		t.Fatalf("a delivered tracker reports an error: %v", tr.Err())
	}
}

// TestLeave checks that leaving ends every pending tracker CLOSED, tells the
// room, and that nothing the room sends afterwards changes a tracker.
func TestLeave(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	delivered, dm := h.send(t, r, "delivered")
	h.reflect(t, dm)
	h.sync(t)
	var trs []*tracking.MessageTracker
	var ms []sent
	for i := range 3 {
		tr, m := h.send(t, r, fmt.Sprintf("pending %d", i))
		trs, ms = append(trs, tr), append(ms, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	if err := r.Leave(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	for _, tr := range trs {
		checkState(t, tr, tracking.Closed)
	}
	checkState(t, delivered, tracking.DeliveredToRecipient)
	checkEmpty(t, r)
	p := h.expect(t, "presence")
	if to, typ := p.Attr("to"), p.Attr("type"); to != testSelf || typ != "unavailable" {
		t.Fatalf("wrong leave presence: want type unavailable to %q, got type %q to %q", testSelf, typ, to)
	}
	if rooms := h.c.Rooms(); len(rooms) != 0 {
		t.Fatalf("the client is still in %d rooms", len(rooms))
	}

	// Late answers of the room change nothing.
	h.reflect(t, ms[0])
	h.write(t, "%s", errorMessage(testRoom, h.conn.JID.String(), ms[1].id, "not-acceptable", ""))
	h.sync(t)
	for _, tr := range trs {
		checkState(t, tr, tracking.Closed)
	}

	if _, err := r.SendTrackedMessage(ctx, "too late"); !errors.Is(err, muc.ErrLeft) {
		t.Fatalf("send after leave: want %v, got %v", muc.ErrLeft, err)
	}
	if err := r.Leave(ctx); err != nil {
		t.Fatalf("second leave: %v", err)
	}
	// Leaving again sends nothing.
	h.conn.NoStanza(t, 50*time.Millisecond)
}

// TestClientClose checks that closing the client ends every pending tracker
// of every room CLOSED.
func TestClientClose(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "pending")
	h.c.Close()
	checkState(t, tr, tracking.Closed)
	checkEmpty(t, r)
	h.reflect(t, m)
	h.sync(t)
	checkState(t, tr, tracking.Closed)
	if _, err := r.SendTrackedMessage(context.Background(), "after close"); !errors.Is(err, muc.ErrLeft) {
		t.Fatalf("send after close: want %v, got %v", muc.ErrLeft, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	if _, err := h.c.Join(ctx, jid.MustParse(testRoom), testNick); !errors.Is(err, muc.ErrLeft) {
		t.Fatalf("join after close: want %v, got %v", muc.ErrLeft, err)
	}
}

// TestTimeout checks that a message the room does not answer in time ends
// TIMED_OUT, with the client's default timeout or a message's own, and that
// the room forgets it.
func TestTimeout(t *testing.T) {
	h := newHarness(t, harnessConfig{opts: []muc.Option{muc.WithTimeout(100 * time.Millisecond)}})
	r := h.join(t)
	byDefault, dm := h.send(t, r, "default timeout")
	own, om := h.send(t, r, "own timeout", muc.Timeout(50*time.Millisecond))
	none, nm := h.send(t, r, "no timeout", muc.Timeout(0))
	if got := r.Pending(); got != 3 {
		t.Fatalf("wrong pending count: want=3, got=%d", got)
	}
	waitState(t, own, tracking.TimedOut)
	waitState(t, byDefault, tracking.TimedOut)
	waitPending(t, r, 1)
	// Late reflections change nothing; the message without a timeout is
	// still waiting for its own.
	h.reflect(t, dm)
	h.reflect(t, om)
	h.sync(t)
	checkState(t, byDefault, tracking.TimedOut)
	checkState(t, own, tracking.TimedOut)
	checkState(t, none, tracking.InTransit)
	h.reflect(t, nm)
	h.sync(t)
	checkState(t, none, tracking.DeliveredToRecipient)
	checkEmpty(t, r)
}

// TestTimeoutMany times out many messages at once and checks that the room
// forgets every one of them.
func TestTimeoutMany(t *testing.T) {
	h := newHarness(t, harnessConfig{opts: []muc.Option{muc.WithTimeout(20 * time.Millisecond)}})
	r := h.join(t)
	const n = 200
	trs := make([]*tracking.MessageTracker, n)
	for i := range n {
		var err error
		trs[i], err = r.SendTrackedMessage(context.Background(), fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, tr := range trs {
		waitState(t, tr, tracking.TimedOut)
	}
	waitPending(t, r, 0)
}

var joinErrorTests = [...]struct {
	errType, condition string
	is                 error
}{
	0: {"cancel", "conflict", muc.ErrNickConflict},
	1: {"auth", "registration-required", muc.ErrRegistrationRequired},
	2: {"cancel", "item-not-found", muc.ErrRoomNotFound},
	3: {"cancel", "not-allowed", muc.ErrNotAllowed},
	4: {"auth", "not-authorized", muc.ErrNotAuthorized},
	5: {"auth", "forbidden", muc.ErrForbidden},
}

func TestJoinRefused(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	for i, tc := range joinErrorTests {
		t.Run(fmt.Sprintf("%d/%s", i, tc.condition), func(t *testing.T) {
			errc := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
				defer cancel()
				_, err := h.c.Join(ctx, jid.MustParse(testRoom), testNick)
				errc <- err
			}()
			p := h.expect(t, "presence")
			h.write(t, "<presence from='%s' to='%s' id='%s' type='error'><x xmlns='http://jabber.org/protocol/muc'/>"+
				"<error type='%s'><%s xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"+
				"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text></error></presence>",
				testSelf, h.conn.JID, p.Attr("id"), tc.errType, tc.condition)
			err := <-errc
			var je *muc.JoinError
			if !errors.As(err, &je) {
				t.Fatalf("wrong error: want a *muc.JoinError, got %T %v", err, err)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("errors.Is(%v, %v) is false", err, tc.is)
			}
			if je.Room.String() != testRoom {
				t.Errorf("wrong room: want=%q, got=%q", testRoom, je.Room)
			}
			if len(h.c.Rooms()) != 0 {
				t.Errorf("a refused room is kept")
			}
		})
	}
}

// TestJoinIgnoresOtherErrors checks that an error presence that does not
// answer our join (another id) leaves the join waiting.
func TestJoinIgnoresOtherErrors(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	errc := make(chan error, 1)
	var room *muc.Room
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
		defer cancel()
		r, err := h.c.Join(ctx, jid.MustParse(testRoom), testNick)
		room = r
		errc <- err
	}()
	p := h.expect(t, "presence")
	h.write(t, "<presence from='%s' to='%s' id='not-the-join' type='error'><error type='cancel'>"+
		"<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>", testSelf, h.conn.JID)
	// Another occupant's presence is no answer either.
	h.write(t, "<presence from='%s' to='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant'/></x></presence>", testOther, h.conn.JID)
	h.sync(t)
	select {
	case err := <-errc:
		t.Fatalf("join ended early: %v", err)
	default:
	}
	h.write(t, "<presence from='%s' to='%s' id='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant'/><status code='110'/></x></presence>", testSelf, h.conn.JID, p.Attr("id"))
	if err := <-errc; err != nil {
		t.Fatalf("join: %v", err)
	}
	if room.Nick() != testNick {
		t.Fatalf("wrong nick: want=%q, got=%q", testNick, room.Nick())
	}
}

func TestJoinBadAddress(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	ctx := context.Background()
	for _, tc := range []struct{ room, nick string }{
		{"muc.example.test", testNick},
		{testSelf, testNick},
		{testRoom, ""},
	} {
		if _, err := h.c.Join(ctx, jid.MustParse(tc.room), tc.nick); err == nil {
			t.Errorf("joined %q as %q", tc.room, tc.nick)
		}
	}
	r := h.join(t)
	if _, err := h.c.Join(ctx, r.Addr(), "again"); err == nil {
		t.Error("joined the same room twice")
	}
}

// TestNickChange checks that after the room changes our nick, our
// reflections come from the new occupant JID and no longer from the old one.
func TestNickChange(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	tr, m := h.send(t, r, "before")
	const newSelf = testRoom + "/alice2"
	h.write(t, "<presence from='%s' to='%s' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant' nick='alice2'/><status code='303'/><status code='110'/></x></presence>",
		testSelf, h.conn.JID)
	h.write(t, "<presence from='%s' to='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='participant'/><status code='110'/></x></presence>", newSelf, h.conn.JID)
	h.sync(t)
	if r.Nick() != "alice2" || r.OccupantJID().String() != newSelf {
		t.Fatalf("wrong nick after the change: want=%q (%q), got=%q (%q)", "alice2", newSelf, r.Nick(), r.OccupantJID())
	}
	// Whoever has our old nick now is someone else.
	h.reflect(t, m)
	h.sync(t)
	checkState(t, tr, tracking.InTransit)
	h.write(t, "%s", h.groupchat(newSelf, m.id, m.originID, m.body))
	h.sync(t)
	checkState(t, tr, tracking.DeliveredToRecipient)
	checkEmpty(t, r)
}

// TestNewSession breaks the connection and refuses to resume the session:
// the client joins the room again by itself and reports it; messages that
// were in flight end CLOSED, as their reflection can no longer come; a
// message queued while disconnected is held until the room confirmed the
// rejoin, then written and delivered; messages sent after the rejoin are
// tracked as usual.
func TestNewSession(t *testing.T) {
	for _, ackedByFailed := range []bool{false, true} {
		t.Run(fmt.Sprintf("h in failed=%t", ackedByFailed), func(t *testing.T) {
			h := newHarness(t, harnessConfig{sm: true})
			r := h.join(t)
			delivered, dm := h.send(t, r, "delivered")
			h.reflect(t, dm)
			acked, _ := h.send(t, r, "acked")
			h.write(t, "<a xmlns='%s' h='%d'/>", nsSM, h.handled)
			waitState(t, acked, tracking.DeliveredToServer)
			unacked, _ := h.send(t, r, "unacked")

			release := make(chan struct{})
			resumed := make(chan fakeserver.Resume, 1)
			handled := h.handled
			h.srv.OnResume(func(res fakeserver.Resume) string {
				resumed <- res
				<-release
				if ackedByFailed {
					return fmt.Sprintf("<failed xmlns='%s' h='%d'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>", nsSM, handled)
				}
				return fmt.Sprintf("<failed xmlns='%s'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>", nsSM)
			})
			h.conn.Reset()
			select {
			case <-resumed:
			case <-time.After(fakeserver.Timeout):
				t.Fatal("the stream did not try to resume")
			}
			// Queued while the stream negotiates.
			queued, err := r.SendTrackedMessage(context.Background(), "queued")
			if err != nil {
				t.Fatal(err)
			}
			close(release)
			h.conn = h.srv.Next(t)
			h.handled = 0
			h.conn.EnableSM(t, "sm-2")

			// The queued message waits for the rejoin: the join presence
			// comes first, the message only once the room has confirmed it.
			h.answerJoin(t)
			qm := h.readMessage(t)
			if ev := h.event(t); ev.Kind != muc.EventRejoined || ev.Room != r || ev.Err != nil {
				t.Fatalf("wrong event: want %v, got %v (%v)", muc.EventRejoined, ev.Kind, ev.Err)
			}
			h.reflect(t, qm)
			waitState(t, queued, tracking.DeliveredToRecipient)
			checkState(t, delivered, tracking.DeliveredToRecipient)
			waitState(t, unacked, tracking.Closed)
			waitState(t, acked, tracking.Closed)
			checkEmpty(t, r)

			after, am := h.send(t, r, "after")
			h.reflect(t, am)
			waitState(t, after, tracking.DeliveredToRecipient)
			checkEmpty(t, r)
			h.noEvent(t, 50*time.Millisecond)
		})
	}
}

// TestRejoinRefused has the room refuse the rejoin after a new session: the
// client reports it and leaves the room.
func TestRejoinRefused(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	r := h.join(t)
	h.conn.Reset()
	h.conn = h.srv.Next(t)
	p := h.expect(t, "presence")
	h.write(t, "<presence from='%s' to='%s' id='%s' type='error'><x xmlns='http://jabber.org/protocol/muc'/>"+
		"<error type='auth'><registration-required xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
		testSelf, h.conn.JID, p.Attr("id"))
	ev := h.event(t)
	if ev.Kind != muc.EventRejoinFailed || ev.Room != r {
		t.Fatalf("wrong event: want %v, got %v", muc.EventRejoinFailed, ev.Kind)
	}
	if !errors.Is(ev.Err, muc.ErrRegistrationRequired) {
		t.Fatalf("wrong error: want %v, got %v", muc.ErrRegistrationRequired, ev.Err)
	}
	if _, err := r.SendTrackedMessage(context.Background(), "gone"); !errors.Is(err, muc.ErrLeft) {
		t.Fatalf("send after a failed rejoin: want %v, got %v", muc.ErrLeft, err)
	}
	if len(h.c.Rooms()) != 0 {
		t.Fatal("the client is still in the room")
	}
}

// TestRejoinTwice loses the new session before the room answered the rejoin:
// the second rejoin succeeds and the room stays joined.
func TestRejoinTwice(t *testing.T) {
	h := newHarness(t, harnessConfig{opts: []muc.Option{muc.WithRejoinTimeout(200 * time.Millisecond)}})
	r := h.join(t)
	h.conn.Reset()
	h.conn = h.srv.Next(t)
	h.expect(t, "presence") // not answered
	h.conn.Reset()
	h.conn = h.srv.Next(t)
	h.answerJoin(t)
	if ev := h.event(t); ev.Kind != muc.EventRejoined {
		t.Fatalf("wrong event: want %v, got %v (%v)", muc.EventRejoined, ev.Kind, ev.Err)
	}
	// The first rejoin, whose presence was lost, must not undo the second.
	h.noEvent(t, 500*time.Millisecond)
	tr, m := h.send(t, r, "still there")
	h.reflect(t, m)
	waitState(t, tr, tracking.DeliveredToRecipient)
}

// TestStreamClosed checks that the trackers of messages in flight when the
// stream is closed end in a final state.
func TestStreamClosed(t *testing.T) {
	h := newHarness(t, harnessConfig{sm: true})
	r := h.join(t)
	tr, _ := h.send(t, r, "in flight")
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		h.s.Close(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	if st, _ := tr.Wait(ctx, tracking.SeenByRecipient); st != tracking.Closed {
		t.Fatalf("wrong state after close: want=%v, got=%v", tracking.Closed, st)
	}
	<-h.s.Done()
	if _, err := r.SendTrackedMessage(ctx, "after close"); !errors.Is(err, stream.ErrClosed) {
		t.Fatalf("send after the stream closed: want %v, got %v", stream.ErrClosed, err)
	}
	checkEmpty(t, r)
}

// TestRemoved: the room kicks us while messages are in flight. The client
// reports EventRemoved and refuses new messages; the pending ones still get
// the room's answer (here: one reflection that came before the kick, one
// error after it), and the room is forgotten once nothing is pending.
func TestRemoved(t *testing.T) {
	events := make(chan muc.Event, 4)
	h := newHarness(t, harnessConfig{opts: []muc.Option{muc.WithEvents(func(ev muc.Event) { events <- ev })}})
	r := h.join(t)
	first, m1 := h.send(t, r, "before the kick")
	second, m2 := h.send(t, r, "after the kick")
	h.reflect(t, m1)
	h.write(t, "<presence type='unavailable' from='%s' to='%s'><x xmlns='http://jabber.org/protocol/muc#user'>"+
		"<item affiliation='none' role='none'/><status code='307'/><status code='110'/></x></presence>", testSelf, h.conn.JID)
	h.sync(t)
	select {
	case ev := <-events:
		var re *muc.RemovedError
		if ev.Kind != muc.EventRemoved || !errors.As(ev.Err, &re) || !errors.Is(ev.Err, muc.ErrLeft) {
			t.Fatalf("event %v %v, want removed", ev.Kind, ev.Err)
		}
		if got := re.Error(); got != "muc: "+testRoom+": kicked" {
			t.Fatalf("removal reason %q", got)
		}
	case <-time.After(fakeserver.Timeout):
		t.Fatal("no EventRemoved")
	}
	checkState(t, first, tracking.DeliveredToRecipient)
	checkState(t, second, tracking.InTransit)
	if _, err := r.SendTrackedMessage(context.Background(), "no more"); !errors.Is(err, muc.ErrLeft) {
		t.Fatalf("send after the kick: want %v, got %v", muc.ErrLeft, err)
	}
	h.write(t, "%s", errorMessage(testRoom, h.conn.JID.String(), m2.id, "not-acceptable", ""))
	h.sync(t)
	checkState(t, second, tracking.Error)
	checkEmpty(t, r)
	if rooms := h.c.Rooms(); len(rooms) != 0 {
		t.Fatalf("the client is still in %d rooms", len(rooms))
	}
}
