package chat

import (
	"encoding/xml"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// element parses one stanza, as the stream would hand it to a handler.
func element(tb testing.TB, s string) *stream.Element {
	tb.Helper()
	el, err := stream.ParseElement([]byte(s))
	if err != nil {
		tb.Fatalf("no element in %q: %v", s, err)
	}
	return el
}

func receipt(from, id string) string {
	return fmt.Sprintf(`<message from='%s' to='alice@example.net/desk' id='r-%s'><received xmlns='urn:xmpp:receipts' id='%s'/></message>`, from, id, id)
}

func chatMarker(from, name, id string) string {
	return fmt.Sprintf(`<message from='%s' to='alice@example.net/desk' id='k-%s'><%s xmlns='urn:xmpp:chat-markers:0' id='%s'/></message>`, from, id, name, id)
}

// track tracks a new message with id to addr.
func track(t *testing.T, m *Matcher, addr, id string) *tracking.MessageTracker {
	t.Helper()
	tr := tracking.NewMessageTracker(tracking.WithID(id))
	if err := m.Track(jid.MustParse(addr), id, tr); err != nil {
		t.Fatal(err)
	}
	return tr
}

func wantState(t *testing.T, tr *tracking.MessageTracker, want tracking.MessageState) {
	t.Helper()
	if got := tr.State(); got != want {
		t.Errorf("tracker %s is %v, want %v", tr.ID(), got, want)
	}
}

func wantPending(t *testing.T, m *Matcher, messages, peers int) {
	t.Helper()
	if gm, gp := m.Pending(); gm != messages || gp != peers {
		t.Errorf("Pending() = %d, %d; want %d, %d", gm, gp, messages, peers)
	}
	m.check(t)
}

// check verifies that the matcher's lists and maps agree.
func (m *Matcher) check(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for addr, p := range m.peers {
		if p.addr != addr || p.n == 0 {
			t.Errorf("peer %q: addr %q, %d messages", addr, p.addr, p.n)
		}
		k := 0
		var prev *entry
		for e := p.head; e != nil; e = e.next {
			if e.peer != p || e.prev != prev || m.byID[e.id] != e {
				t.Errorf("peer %q: broken entry %q", addr, e.id)
			}
			prev = e
			k++
		}
		if k != p.n || p.tail == nil || p.head.prev != nil || p.tail.next != nil {
			t.Errorf("peer %q: %d/%d messages", addr, k, p.n)
		}
		n += k
	}
	if n != len(m.byID) {
		t.Errorf("%d messages in lists, %d by id", n, len(m.byID))
	}
	kd := 0
	var prev *entry
	for e := m.dhead; e != nil; e = e.dnext {
		if !e.delivered || e.dprev != prev || e.peer == nil {
			t.Errorf("broken delivered entry %q", e.id)
		}
		prev = e
		kd++
	}
	if kd != m.nd {
		t.Errorf("%d/%d delivered", kd, m.nd)
	}
}

func TestReceiptSenders(t *testing.T) {
	for _, tc := range []struct {
		name, to, from string
		ok             bool
	}{
		{"bare, from a resource", "bob@example.net", "bob@example.net/phone", true},
		{"bare, from another resource", "bob@example.net", "bob@example.net/laptop", true},
		{"bare, from the bare JID", "bob@example.net", "bob@example.net", true},
		{"bare, in another case", "bob@example.net", "Bob@Example.NET/phone", true},
		{"full, from it", "bob@example.net/phone", "bob@example.net/phone", true},
		{"full, in another case", "bob@example.net/phone", "BOB@example.net/phone", true},
		// Rerouted by the server to another resource of the account
		// (RFC 6121 §8.5.3.2.1): the addressee's answer.
		{"full, from another resource", "bob@example.net/phone", "bob@example.net/laptop", true},
		{"full, from the bare JID", "bob@example.net/phone", "bob@example.net", true},
		{"full, resource in another case", "bob@example.net/phone", "bob@example.net/Phone", true},
		{"another account", "bob@example.net", "carol@example.net/phone", false},
		{"our own other resource", "bob@example.net", "alice@example.net/laptop", false},
		{"our own bare JID", "bob@example.net", "alice@example.net", false},
		{"the server", "bob@example.net", "example.net", false},
		{"another server", "bob@example.net", "bob@example.org/phone", false},
		{"not a JID", "bob@example.net", "@@/", false},
		{"to ourselves, from our other resource", "alice@example.net", "alice@example.net/laptop", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tracking.InTransit
			if tc.ok {
				want = tracking.DeliveredToRecipient
			}
			for _, stz := range []string{
				receipt(tc.from, "m1"),
				chatMarker(tc.from, "received", "m1"),
			} {
				m := NewMatcher()
				tr := track(t, m, tc.to, "m1")
				m.Handle(element(t, stz))
				wantState(t, tr, want)
				wantPending(t, m, 1, 1)
			}
			m := NewMatcher()
			tr := track(t, m, tc.to, "m1")
			m.Handle(element(t, chatMarker(tc.from, "displayed", "m1")))
			if tc.ok {
				wantState(t, tr, tracking.SeenByRecipient)
				wantPending(t, m, 0, 0)
			} else {
				wantState(t, tr, tracking.InTransit)
				wantPending(t, m, 1, 1)
			}
		})
	}
}

func TestReceiptIgnored(t *testing.T) {
	for _, tc := range []struct{ name, stanza string }{
		{"no from", `<message to='alice@example.net/desk'><received xmlns='urn:xmpp:receipts' id='m1'/></message>`},
		{"other id", receipt("bob@example.net/phone", "m2")},
		{"no id", `<message from='bob@example.net/phone'><received xmlns='urn:xmpp:receipts'/></message>`},
		{"wrong namespace", `<message from='bob@example.net/phone'><received xmlns='urn:xmpp:receipts:1' id='m1'/></message>`},
		{"a request", `<message from='bob@example.net/phone' id='m1'><request xmlns='urn:xmpp:receipts'/></message>`},
		{"nested", `<message from='bob@example.net/phone'><x xmlns='urn:example'><received xmlns='urn:xmpp:receipts' id='m1'/></x></message>`},
		{"a carbon of our own", `<message from='alice@example.net' to='alice@example.net/desk'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message from='alice@example.net/laptop' to='alice@example.net/desk'><received xmlns='urn:xmpp:receipts' id='m1'/></message></forwarded></sent></message>`},
		{"a received carbon", `<message from='alice@example.net' to='alice@example.net/desk'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message from='bob@example.net/phone' to='alice@example.net/laptop'><received xmlns='urn:xmpp:receipts' id='m1'/></message></forwarded></received></message>`},
		{"an error", `<message from='bob@example.net/phone' type='error' id='x'><received xmlns='urn:xmpp:receipts' id='m1'/><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>`},
		{"a presence", `<presence from='bob@example.net/phone'><received xmlns='urn:xmpp:receipts' id='m1'/></presence>`},
		{"unknown marker", chatMarker("bob@example.net/phone", "markable", "m1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMatcher()
			tr := track(t, m, "bob@example.net", "m1")
			m.Handle(element(t, tc.stanza))
			wantState(t, tr, tracking.InTransit)
			wantPending(t, m, 1, 1)
		})
	}
}

func TestReceiptAnyType(t *testing.T) {
	for _, typ := range []string{"", "chat", "normal", "headline", "groupchat", "bogus"} {
		m := NewMatcher()
		tr := track(t, m, "bob@example.net", "m1")
		attr := ""
		if typ != "" {
			attr = " type='" + typ + "'"
		}
		m.Handle(element(t, `<message from='bob@example.net/phone'`+attr+`><received xmlns='urn:xmpp:receipts' id='m1'/></message>`))
		wantState(t, tr, tracking.DeliveredToRecipient)
		r := tr.Response()
		if r == nil || r.Message.From.String() != "bob@example.net/phone" || string(r.Message.Type) != typ {
			t.Errorf("type %q: response %+v", typ, r)
		}
	}
}

func TestLegacyReceipt(t *testing.T) {
	m := NewMatcher()
	tr := track(t, m, "bob@example.net", "m1")
	m.Handle(element(t, `<message from='bob@example.net/phone' id='m1'><received xmlns='urn:xmpp:receipts'/></message>`))
	wantState(t, tr, tracking.DeliveredToRecipient)
}

func TestDuplicateReceipt(t *testing.T) {
	m := NewMatcher()
	tr := track(t, m, "bob@example.net", "m1")
	for range 3 {
		m.Handle(element(t, receipt("bob@example.net/phone", "m1")))
		m.Handle(element(t, chatMarker("bob@example.net/laptop", "received", "m1")))
	}
	if n := len(tr.Changes()); n != 1 {
		t.Errorf("%d changes, want 1: %v", n, tr.Changes())
	}
	wantPending(t, m, 1, 1)
}

func TestDisplayedIsCumulative(t *testing.T) {
	m := NewMatcher()
	const n = 10
	var trs []*tracking.MessageTracker
	for i := range n {
		trs = append(trs, track(t, m, "bob@example.net", fmt.Sprintf("m%d", i)))
	}
	// Receipts for all but 3 (lost, say); 5 timed out before its receipt.
	for i := range n {
		if i != 3 && i != 5 {
			m.Handle(element(t, receipt("bob@example.net/phone", fmt.Sprintf("m%d", i))))
		}
	}
	trs[5].SetDeadline(time.Now().Add(-time.Second))
	wantState(t, trs[5], tracking.TimedOut)
	wantPending(t, m, n-1, 1)

	// A marker for an unknown id, or from someone else, changes nothing.
	m.Handle(element(t, chatMarker("bob@example.net/phone", "displayed", "nope")))
	m.Handle(element(t, chatMarker("carol@example.net/phone", "displayed", "m7")))
	m.Handle(element(t, chatMarker("alice@example.net/laptop", "displayed", "m7")))
	wantPending(t, m, n-1, 1)

	m.Handle(element(t, chatMarker("bob@example.net/laptop", "displayed", "m6")))
	for i, tr := range trs {
		switch {
		case i == 5:
			wantState(t, tr, tracking.TimedOut)
		case i <= 6:
			wantState(t, tr, tracking.SeenByRecipient)
		default:
			wantState(t, tr, tracking.DeliveredToRecipient)
		}
	}
	if r := trs[3].Response(); r == nil || r.Message.ID != "k-m6" {
		t.Errorf("response of an earlier message: %+v", r)
	}
	wantPending(t, m, 3, 1)

	// An older marker that arrives late changes nothing.
	m.Handle(element(t, chatMarker("bob@example.net/laptop", "displayed", "m2")))
	wantPending(t, m, 3, 1)

	// acknowledged counts as displayed.
	m.Handle(element(t, chatMarker("bob@example.net/phone", "acknowledged", "m9")))
	for i, tr := range trs {
		if i != 5 {
			wantState(t, tr, tracking.SeenByRecipient)
		}
	}
	wantPending(t, m, 0, 0)
}

func TestDisplayedPerAddress(t *testing.T) {
	m := NewMatcher()
	bare := []*tracking.MessageTracker{
		track(t, m, "bob@example.net", "b0"),
		track(t, m, "bob@example.net", "b1"),
	}
	phone := track(t, m, "bob@example.net/phone", "p0")
	other := track(t, m, "carol@example.net", "c0")
	bare = append(bare, track(t, m, "bob@example.net", "b2"))
	wantPending(t, m, 5, 3)

	// Bob's phone marks a message sent to the bare JID: the earlier bare
	// messages are seen, the one sent to the phone and carol's are not.
	m.Handle(element(t, chatMarker("bob@example.net/phone", "displayed", "b1")))
	wantState(t, bare[0], tracking.SeenByRecipient)
	wantState(t, bare[1], tracking.SeenByRecipient)
	wantState(t, bare[2], tracking.InTransit)
	wantState(t, phone, tracking.InTransit)
	wantState(t, other, tracking.InTransit)
	wantPending(t, m, 3, 3)

	// The laptop answers for what was sent to the phone (the server
	// rerouted it there), and marks only that conversation.
	m.Handle(element(t, chatMarker("bob@example.net/laptop", "displayed", "p0")))
	wantState(t, phone, tracking.SeenByRecipient)
	wantState(t, bare[2], tracking.InTransit)
	wantPending(t, m, 2, 2)
}

func TestSeveralMarkersInOneMessage(t *testing.T) {
	m := NewMatcher()
	a := track(t, m, "bob@example.net", "m1")
	b := track(t, m, "bob@example.net", "m2")
	c := track(t, m, "bob@example.net", "m3")
	m.Handle(element(t, `<message from='bob@example.net/phone'>`+
		`<received xmlns='urn:xmpp:receipts' id='m3'/>`+
		`<received xmlns='urn:xmpp:chat-markers:0' id='m3'/>`+
		`<displayed xmlns='urn:xmpp:chat-markers:0' id='m2'/>`+
		`</message>`))
	wantState(t, a, tracking.SeenByRecipient)
	wantState(t, b, tracking.SeenByRecipient)
	wantState(t, c, tracking.DeliveredToRecipient)
	wantPending(t, m, 1, 1)
}

func errorReply(from, id, cond string) string {
	return fmt.Sprintf(`<message from='%s' to='alice@example.net/desk' id='%s' type='error'><error type='cancel'><%s xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>`, from, id, cond)
}

func TestErrorReply(t *testing.T) {
	for _, tc := range []struct {
		name, to, from string
		ok             bool
	}{
		{"bare, from it", "bob@example.net", "bob@example.net", true},
		{"bare, from a resource", "bob@example.net", "bob@example.net/phone", true},
		{"bare, from the server", "bob@example.net", "example.net", true},
		{"full, from it", "bob@example.net/phone", "bob@example.net/phone", true},
		{"full, from the bare JID", "bob@example.net/phone", "bob@example.net", true},
		{"full, from the server", "bob@example.net/phone", "example.net", true},
		{"full, from another resource", "bob@example.net/phone", "bob@example.net/laptop", true},
		{"another account", "bob@example.net", "carol@example.net", false},
		{"our own server", "bob@example.org", "example.net", false},
		{"ourselves", "bob@example.net", "alice@example.net/laptop", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMatcher()
			tr := track(t, m, tc.to, "m1")
			m.Handle(element(t, errorReply(tc.from, "m1", "service-unavailable")))
			if !tc.ok {
				wantState(t, tr, tracking.InTransit)
				wantPending(t, m, 1, 1)
				return
			}
			wantState(t, tr, tracking.Error)
			if e := tr.Err(); !errors.Is(e, stanza.Error{Condition: stanza.ServiceUnavailable}) {
				t.Errorf("Err() = %v", e)
			}
			wantPending(t, m, 0, 0)
		})
	}

	t.Run("without an error element", func(t *testing.T) {
		m := NewMatcher()
		tr := track(t, m, "bob@example.net", "m1")
		m.Handle(element(t, `<message from='bob@example.net' id='m1' type='error'/>`))
		if e := tr.Err(); !errors.Is(e, stanza.Error{Condition: stanza.UndefinedCondition}) {
			t.Errorf("Err() = %v", e)
		}
	})
	t.Run("other id", func(t *testing.T) {
		m := NewMatcher()
		tr := track(t, m, "bob@example.net", "m1")
		m.Handle(element(t, errorReply("bob@example.net", "m2", "item-not-found")))
		wantState(t, tr, tracking.InTransit)
	})
	t.Run("after delivery", func(t *testing.T) {
		m := NewMatcher()
		tr := track(t, m, "bob@example.net", "m1")
		m.Handle(element(t, receipt("bob@example.net/phone", "m1")))
		m.Handle(element(t, errorReply("bob@example.net", "m1", "service-unavailable")))
		wantState(t, tr, tracking.DeliveredToRecipient)
		// Still remembered for its marker.
		wantPending(t, m, 1, 1)
		m.Handle(element(t, chatMarker("bob@example.net/phone", "displayed", "m1")))
		wantState(t, tr, tracking.SeenByRecipient)
		wantPending(t, m, 0, 0)
	})
}

func TestForgetWhenFinal(t *testing.T) {
	m := NewMatcher()
	a := track(t, m, "bob@example.net", "m1")
	b := track(t, m, "bob@example.net", "m2")
	c := track(t, m, "carol@example.net", "m3")
	d := tracking.NewMessageTracker(tracking.WithTimeout(time.Millisecond))
	if err := m.Track(jid.MustParse("dave@example.net"), "m4", d); err != nil {
		t.Fatal(err)
	}
	<-d.Done()
	wantPending(t, m, 3, 2)

	m.Handle(element(t, receipt("bob@example.net/phone", "m2")))
	_ = b.Close() // a delivered tracker closed by its user
	wantPending(t, m, 2, 2)
	_ = a.Transition(tracking.Aborted, nil)
	wantPending(t, m, 1, 1)
	_ = c.Close()
	wantPending(t, m, 0, 0)

	// A tracker that is final already is forgotten at once.
	e := tracking.NewMessageTracker()
	_ = e.Close()
	if err := m.Track(jid.MustParse("bob@example.net"), "m5", e); err != nil {
		t.Fatal(err)
	}
	wantPending(t, m, 0, 0)
	// Its id can be used again.
	track(t, m, "bob@example.net", "m5")
	wantPending(t, m, 1, 1)
}

func TestUnseenLimit(t *testing.T) {
	m := NewMatcher(WithUnseenLimit(3))
	var trs []*tracking.MessageTracker
	for i := range 6 {
		trs = append(trs, track(t, m, "bob@example.net", fmt.Sprintf("m%d", i)))
	}
	// Undelivered messages count for nothing.
	wantPending(t, m, 6, 1)
	for _, i := range []int{0, 1, 2, 4, 5} {
		m.Handle(element(t, receipt("bob@example.net/phone", fmt.Sprintf("m%d", i))))
	}
	// m0 and m1 are forgotten; m3 waits for its receipt.
	wantPending(t, m, 4, 1)
	m.Handle(element(t, chatMarker("bob@example.net/phone", "displayed", "m5")))
	for i, tr := range trs {
		if i < 2 {
			wantState(t, tr, tracking.DeliveredToRecipient)
		} else {
			wantState(t, tr, tracking.SeenByRecipient)
		}
	}
	wantPending(t, m, 0, 0)

	// Without a limit, nothing is forgotten.
	m = NewMatcher(WithUnseenLimit(0))
	for i := range 2 * DefaultUnseenLimit {
		id := fmt.Sprintf("m%d", i)
		track(t, m, "bob@example.net", id)
		m.Handle(element(t, receipt("bob@example.net/phone", id)))
	}
	wantPending(t, m, 2*DefaultUnseenLimit, 1)
}

func TestMatcherClose(t *testing.T) {
	m := NewMatcher()
	a := track(t, m, "bob@example.net", "m1")
	b := track(t, m, "bob@example.net", "m2")
	m.Handle(element(t, receipt("bob@example.net/phone", "m2")))
	m.Close()
	wantState(t, a, tracking.Closed)
	// Delivered: the state is kept, tracking ends.
	wantState(t, b, tracking.DeliveredToRecipient)
	if !b.Ended() {
		t.Error("the tracking of a delivered message did not end")
	}
	wantPending(t, m, 0, 0)
	err := m.Track(jid.MustParse("bob@example.net"), "m3", tracking.NewMessageTracker())
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Track after Close: %v", err)
	}
	m.Handle(element(t, receipt("bob@example.net/phone", "m1")))
	m.Close()
}

func TestTrackErrors(t *testing.T) {
	m := NewMatcher()
	bob := jid.MustParse("bob@example.net")
	track(t, m, "bob@example.net", "m1")
	for _, tc := range []struct {
		name string
		to   jid.JID
		id   string
		tr   *tracking.MessageTracker
		is   error
	}{
		{"duplicate", bob, "m1", tracking.NewMessageTracker(), ErrDuplicateID},
		{"empty id", bob, "", tracking.NewMessageTracker(), nil},
		{"no address", jid.JID{}, "m2", tracking.NewMessageTracker(), nil},
		{"nil tracker", bob, "m2", nil, nil},
	} {
		err := m.Track(tc.to, tc.id, tc.tr)
		if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	wantPending(t, m, 1, 1)
}

// Receipts, markers, timeouts and new messages from many goroutines at once
// leave the matcher consistent and empty.
func TestMatcherConcurrent(t *testing.T) {
	m := NewMatcher(WithUnseenLimit(20))
	const workers, per = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			peer := fmt.Sprintf("peer%d@example.net", w%3)
			var trs []*tracking.MessageTracker
			for i := range per {
				id := fmt.Sprintf("w%d-%d", w, i)
				tr := tracking.NewMessageTracker(tracking.WithTimeout(time.Duration(i%7) * time.Millisecond))
				if err := m.Track(jid.MustParse(peer), id, tr); err != nil {
					t.Error(err)
					return
				}
				trs = append(trs, tr)
				m.Handle(element(t, receipt(peer+"/r", id)))
				if i%10 == 9 {
					m.Handle(element(t, chatMarker(peer+"/r", "displayed", id)))
				}
			}
			for _, tr := range trs {
				_ = tr.Close()
			}
		})
	}
	wg.Wait()
	wantPending(t, m, 0, 0)
}

func TestAppendChat(t *testing.T) {
	b := appendChat(nil, "bob@example.net/a'b", "ID1", append(xstanza.AppendEscaped([]byte("<body>"), "<b>&'\"x\r\n"), "</body>"...))
	var msg struct {
		XMLName xml.Name `xml:"message"`
		Type    string   `xml:"type,attr"`
		To      string   `xml:"to,attr"`
		ID      string   `xml:"id,attr"`
		Body    string   `xml:"body"`
		Origin  struct {
			ID string `xml:"id,attr"`
		} `xml:"urn:xmpp:sid:0 origin-id"`
		Request  *struct{} `xml:"urn:xmpp:receipts request"`
		Markable *struct{} `xml:"urn:xmpp:chat-markers:0 markable"`
	}
	if err := xml.Unmarshal(b, &msg); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if msg.Type != "chat" || msg.To != "bob@example.net/a'b" || msg.ID != "ID1" || msg.Origin.ID != "ID1" ||
		msg.Body != "<b>&'\"x\r\n" || msg.Request == nil || msg.Markable == nil {
		t.Errorf("%s parsed as %+v", b, msg)
	}
}

func TestReadRequest(t *testing.T) {
	for _, tc := range []struct {
		s                          string
		request, markable, receipt bool
	}{
		{`<message><body>x</body><request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>`, true, true, false},
		{`<message><body>x</body></message>`, false, false, false},
		{`<message><x><request xmlns='urn:xmpp:receipts'/></x></message>`, false, false, false},
		{`<message><received xmlns='urn:xmpp:receipts' id='a'/><request xmlns='urn:xmpp:receipts'/></message>`, true, false, true},
	} {
		el := element(t, tc.s)
		c, err := readRequest(el.InnerReader())
		if err != nil || c.request != tc.request || c.markable != tc.markable || c.receipt != tc.receipt {
			t.Errorf("%s: %+v %v", tc.s, c, err)
		}
	}
}
