package integration

import (
	"context"
	"encoding/xml"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	xchat "github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// received is a chat message as its recipient saw it.
type received struct {
	from, id, body string
}

// chatLog records the messages with a body that a stream receives.
type chatLog struct {
	mu     sync.Mutex
	msgs   []received
	signal chan struct{}
}

func newChatLog(s *stream.Stream) *chatLog {
	l := &chatLog{signal: make(chan struct{}, 1)}
	s.HandleElement(func(el *stream.Element) {
		if el.Name().Local != "message" {
			return
		}
		var msg struct {
			Body string `xml:"body"`
		}
		if el.Decode(&msg) != nil || msg.Body == "" {
			return
		}
		l.mu.Lock()
		l.msgs = append(l.msgs, received{from: el.Attr("from"), id: el.Attr("id"), body: msg.Body})
		l.mu.Unlock()
		select {
		case l.signal <- struct{}{}:
		default:
		}
	})
	return l
}

func (l *chatLog) waitFor(t testing.TB, n int, d time.Duration) []received {
	t.Helper()
	var got []received
	waitUntil(t, l.signal, d, func() (bool, string) {
		l.mu.Lock()
		got = append([]received(nil), l.msgs...)
		l.mu.Unlock()
		return len(got) >= n, fmt.Sprintf("received %d of %d messages", len(got), n)
	})
	return got
}

// markerLog counts the messages carrying a receipt or a chat marker that a
// stream receives, by sender. Registered after a xchat.Client on the same
// stream, it sees each such message after the client has matched it.
type markerLog struct {
	mu    sync.Mutex
	from  map[string]int
	total int
	// msgs holds each message as "type=T: NS LOCAL ID, …".
	msgs   []string
	signal chan struct{}
}

func newMarkerLog(s *stream.Stream) *markerLog {
	l := &markerLog{from: make(map[string]int), signal: make(chan struct{}, 1)}
	s.HandleElement(func(el *stream.Element) {
		if el.Name().Local != "message" {
			return
		}
		var kids []string
		for _, tok := range el.Tokens() {
			if st, ok := tok.(xml.StartElement); ok && (st.Name.Space == xchat.NSReceipts || st.Name.Space == xchat.NSMarkers) {
				var id string
				for _, a := range st.Attr {
					if a.Name.Local == "id" {
						id = a.Value
					}
				}
				kids = append(kids, st.Name.Space+" "+st.Name.Local+" "+id)
			}
		}
		if len(kids) == 0 {
			return
		}
		l.mu.Lock()
		l.from[el.Attr("from")]++
		l.total++
		l.msgs = append(l.msgs, "type="+el.Attr("type")+": "+strings.Join(kids, ", "))
		l.mu.Unlock()
		select {
		case l.signal <- struct{}{}:
		default:
		}
	})
	return l
}

func (l *markerLog) waitFor(t testing.TB, n int, d time.Duration) {
	t.Helper()
	waitUntil(t, l.signal, d, func() (bool, string) {
		l.mu.Lock()
		got := l.total
		l.mu.Unlock()
		return got >= n, fmt.Sprintf("saw %d of %d receipts and markers", got, n)
	})
}

// available sends s's initial presence, so that the server delivers
// messages to its bare JID, and waits until the server acknowledged it.
func available(t testing.TB, s *stream.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := s.Send(ctx, stanza.Presence{}.Wrap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := tok.Wait(ctx); st != stream.TokenAcked {
		t.Fatalf("presence: %v %v", st, err)
	}
}

// sendMarker sends, by hand, a message without a type holding one receipt
// or marker <local xmlns=ns id=id/>, as clients write them.
func sendMarker(t testing.TB, s *stream.Stream, to jid.JID, ns, local, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := xml.StartElement{Name: xml.Name{Local: "message"}, Attr: []xml.Attr{{Name: xml.Name{Local: "to"}, Value: to.String()}}}
	child := xml.StartElement{Name: xml.Name{Space: ns, Local: local}, Attr: []xml.Attr{{Name: xml.Name{Local: "id"}, Value: id}}}
	if _, err := s.Send(ctx, xmlstream.Wrap(xmlstream.Wrap(nil, child), msg)); err != nil {
		t.Fatal(err)
	}
}

func newChatClient(t testing.TB, s *stream.Stream, opts ...xchat.ClientOption) *xchat.Client {
	c := xchat.NewClient(s, opts...)
	t.Cleanup(func() { c.Close() })
	return c
}

func wantTracker(t testing.TB, what string, tr *tracking.MessageTracker, want tracking.MessageState) {
	t.Helper()
	if got := tr.State(); got != want {
		t.Errorf("%s: %v, want %v (history %v)", what, got, want, tr.Changes())
	}
}

// waitState waits until tr is at target or beyond, and fails unless it is
// then exactly at target.
func waitState(ctx context.Context, t testing.TB, what string, tr *tracking.MessageTracker, target tracking.MessageState) {
	t.Helper()
	st, err := tr.Wait(ctx, target)
	if err != nil || st != target {
		t.Fatalf("%s: %v, %v; want %v (history %v)", what, st, err, target, tr.Changes())
	}
}

// TestChatReceiptsAndDisplayed: alice sends 500 tracked messages to bob's
// bare JID, bob's responder answers every receipt request, and every tracker
// reaches DELIVERED_TO_RECIPIENT; bob then marks message 300 displayed, which
// makes messages 0 to 300 SEEN_BY_RECIPIENT and leaves the rest delivered.
func TestChatReceiptsAndDisplayed(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		alice := dialStream(t, srv, "alice", nil)
		bob := dialStream(t, srv, "bob", nil)
		resp := xchat.NewResponder(bob, xchat.WithReceivedMarkers())
		t.Cleanup(func() { resp.Close() })
		box := newChatLog(bob)
		available(t, bob)
		c := newChatClient(t, alice, xchat.WithTimeout(time.Minute))

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		const n, seen = 500, 300
		to := srv.JID("bob").Bare()
		trs := make([]*tracking.MessageTracker, n)
		for i := range n {
			tr, err := c.SendTracked(ctx, to, fmt.Sprintf("chat %d", i))
			if err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			trs[i] = tr
		}
		for i, tr := range trs {
			waitState(ctx, t, fmt.Sprintf("message %d", i), tr, tracking.DeliveredToRecipient)
		}
		if r := trs[0].Response(); r == nil || !r.Message.From.Equal(bob.Addr()) || r.Message.Type != "" {
			t.Errorf("receipt of message 0: %+v, want one without a type from %v", r, bob.Addr())
		}
		if got := resp.Answered(); got != n {
			t.Errorf("bob answered %d times, want %d", got, n)
		}
		if m, p := c.Pending(); m != n || p != 1 {
			t.Errorf("pending %d messages, %d peers; want %d, 1", m, p, n)
		}

		// Bob reads up to message 300, and says so to the sender he saw.
		var target received
		for _, m := range box.waitFor(t, n, 10*time.Second) {
			if m.body == fmt.Sprintf("chat %d", seen) {
				target = m
			}
		}
		if target.id != trs[seen].ID() || target.from != alice.Addr().String() {
			t.Fatalf("bob received message %d as %+v; sent with id %s by %v", seen, target, trs[seen].ID(), alice.Addr())
		}
		if err := resp.MarkDisplayed(ctx, jid.MustParse(target.from), target.id); err != nil {
			t.Fatal(err)
		}
		waitState(ctx, t, fmt.Sprintf("message %d", seen), trs[seen], tracking.SeenByRecipient)
		for i, tr := range trs {
			want := tracking.DeliveredToRecipient
			if i <= seen {
				want = tracking.SeenByRecipient
			}
			wantTracker(t, fmt.Sprintf("message %d", i), tr, want)
		}
		if m, p := c.Pending(); m != n-seen-1 || p != 1 {
			t.Errorf("pending %d messages, %d peers; want %d, 1", m, p, n-seen-1)
		}
		c.Close()
		if m, p := c.Pending(); m != 0 || p != 0 {
			t.Errorf("pending after Close: %d, %d", m, p)
		}
	})
}

// TestChatForgedReceipts: receipts and displayed markers for alice's pending
// messages from carol, from alice's own second resource, or, for a message
// sent to bob's phone, from bob's laptop, move nothing; the addressee's own
// receipts do.
func TestChatForgedReceipts(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw", "carol": "c-pw"}})
		alice := dialStream(t, srv, "alice", nil)
		c := newChatClient(t, alice)
		seen := newMarkerLog(alice) // after the client: it sees what the client has matched
		alice2 := dialStream(t, srv, "alice", nil)
		phone := dialStream(t, srv, "bob", nil)
		laptop := dialStream(t, srv, "bob", nil)
		carol := dialStream(t, srv, "carol", nil)
		available(t, phone)
		available(t, laptop)
		if alice2.Addr().Equal(alice.Addr()) || phone.Addr().Equal(laptop.Addr()) {
			t.Fatal("two streams of one account got the same resource")
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		toBare, err := c.SendTracked(ctx, srv.JID("bob").Bare(), "to bob")
		if err != nil {
			t.Fatal(err)
		}
		toPhone, err := c.SendTracked(ctx, phone.Addr(), "to bob's phone")
		if err != nil {
			t.Fatal(err)
		}
		waitState(ctx, t, "to bob", toBare, tracking.DeliveredToServer)
		waitState(ctx, t, "to bob's phone", toPhone, tracking.DeliveredToServer)

		me := alice.Addr()
		forged := 0
		for _, s := range []*stream.Stream{carol, alice2} {
			for _, id := range []string{toBare.ID(), toPhone.ID()} {
				sendMarker(t, s, me, xchat.NSReceipts, "received", id)
				sendMarker(t, s, me, xchat.NSMarkers, "received", id)
				sendMarker(t, s, me, xchat.NSMarkers, "displayed", id)
				forged += 3
			}
		}
		seen.waitFor(t, forged, 10*time.Second)
		wantTracker(t, "to bob, after forged receipts", toBare, tracking.DeliveredToServer)
		wantTracker(t, "to bob's phone, after forged receipts", toPhone, tracking.DeliveredToServer)
		if m, p := c.Pending(); m != 2 || p != 2 {
			t.Errorf("pending %d messages, %d peers; want 2, 2", m, p)
		}

		// Sent to the bare JID: any of bob's resources may answer.
		sendMarker(t, laptop, me, xchat.NSReceipts, "received", toBare.ID())
		waitState(ctx, t, "to bob", toBare, tracking.DeliveredToRecipient)
		if r := toBare.Response(); r == nil || !r.Message.From.Equal(laptop.Addr()) {
			t.Errorf("receipt %+v, want one from %v", r, laptop.Addr())
		}
		// Sent to the phone: any resource of bob's answers for it too (the
		// server reroutes a message whose resource went away).
		sendMarker(t, laptop, me, xchat.NSReceipts, "received", toPhone.ID())
		waitState(ctx, t, "to bob's phone", toPhone, tracking.DeliveredToRecipient)
		sendMarker(t, phone, me, xchat.NSMarkers, "displayed", toPhone.ID())
		waitState(ctx, t, "to bob's phone", toPhone, tracking.SeenByRecipient)
		wantTracker(t, "to bob", toBare, tracking.DeliveredToRecipient)
		if m, p := c.Pending(); m != 1 || p != 1 {
			t.Errorf("pending %d messages, %d peers; want 1, 1", m, p)
		}
	})
}

// TestChatUnknownUser: a message to an account that does not exist ends in
// ERROR with the server's answer, not in a timeout.
func TestChatUnknownUser(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw"}})
		alice := dialStream(t, srv, "alice", nil)
		c := newChatClient(t, alice, xchat.WithTimeout(30*time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		nobody := srv.JID("nobody").Bare()
		for _, to := range []jid.JID{nobody, jid.MustParse(nobody.String() + "/phone")} {
			tr, err := c.SendTracked(ctx, to, "hello?")
			if err != nil {
				t.Fatal(err)
			}
			waitState(ctx, t, "to "+to.String(), tr, tracking.Error)
			e := stanzaErr(tr)
			if e == nil || e.Condition != stanza.ServiceUnavailable {
				t.Errorf("to %v: error %+v, want service-unavailable", to, e)
			}
			if r := tr.Response(); r != nil && e != nil {
				t.Logf("to %v: %s error from %v: %s", to, e.Type, r.Message.From, e.Condition)
			}
		}
		if m, p := c.Pending(); m != 0 || p != 0 {
			t.Errorf("pending %d messages, %d peers", m, p)
		}
	})
}

// TestChatRecipientOffline: bob is not connected. A server that stores
// offline messages answers nothing, so the tracker stays
// DELIVERED_TO_SERVER until its timeout; Prosody without offline storage
// bounces the message with service-unavailable.
func TestChatRecipientOffline(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		users := map[string]string{"alice": "a-pw", "bob": "b-pw"}
		t.Run("stored", func(t *testing.T) {
			waitStoredUntilTimeout(t, testServer(t, k, servers.Options{Users: users, Offline: true}))
		})
		t.Run("not stored", func(t *testing.T) {
			srv := testServer(t, k, servers.Options{Users: users})
			alice := dialStream(t, srv, "alice", nil)
			c := newChatClient(t, alice)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			tr, err := c.SendTracked(ctx, srv.JID("bob").Bare(), "while you were out", xchat.Timeout(10*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			waitState(ctx, t, "to offline bob", tr, tracking.Error)
			e, r := stanzaErr(tr), tr.Response()
			if e == nil || e.Condition != stanza.ServiceUnavailable {
				t.Errorf("error %+v, want service-unavailable", e)
			} else {
				t.Logf("%s error from %v: %s", e.Type, r.Message.From, e.Condition)
			}
			if m, p := c.Pending(); m != 0 || p != 0 {
				t.Errorf("pending %d messages, %d peers", m, p)
			}
		})
	})
}

// waitStoredUntilTimeout sends alice's message to bob, who is offline, and
// checks that nothing answers it: the tracker stays DELIVERED_TO_SERVER
// until its timeout and ends TIMED_OUT.
func waitStoredUntilTimeout(t *testing.T, srv server) {
	t.Helper()
	alice := dialStream(t, srv, "alice", nil)
	c := newChatClient(t, alice)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const timeout = 2 * time.Second
	start := time.Now()
	tr, err := c.SendTracked(ctx, srv.JID("bob").Bare(), "while you were out", xchat.Timeout(timeout))
	if err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, "to offline bob", tr, tracking.DeliveredToServer)
	select {
	case <-tr.Done():
		t.Fatalf("final before the timeout: %v", tr.Changes())
	case <-time.After(timeout - time.Since(start) - 200*time.Millisecond):
	}
	wantTracker(t, "before the timeout", tr, tracking.DeliveredToServer)
	select {
	case <-tr.Done():
	case <-ctx.Done():
		t.Fatal("no timeout")
	}
	wantTracker(t, "after the timeout", tr, tracking.TimedOut)
	if m, p := c.Pending(); m != 0 || p != 0 {
		t.Errorf("pending %d messages, %d peers", m, p)
	}
}

// TestChatUnderCuts sends 1,000 tracked messages from alice, whose
// connection goes through a proxy that cuts it several times, to bob, who
// answers receipts: every tracker reaches DELIVERED_TO_RECIPIENT, and bob
// receives each message exactly once.
func TestChatUnderCuts(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		if testing.Short() {
			t.Skip("long")
		}
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		p := newProxy(t, srv)
		alice := dialStream(t, srv, "alice", viaProxyOneAtATime(t, p))
		t.Cleanup(func() {
			if t.Failed() {
				st := alice.Stats()
				t.Logf("alice's stream: %d connections, %d resumptions (%d refused), %d new sessions, %d dead links; last error %v",
					st.Connections, st.Resumptions, st.ResumeRefused, st.NewSessions, st.DeadLinks, st.LastErr)
			}
		})
		bob := dialStream(t, srv, "bob", nil)
		resp := xchat.NewResponder(bob)
		t.Cleanup(func() { resp.Close() })
		box := newChatLog(bob)
		c := newChatClient(t, alice, xchat.WithTimeout(2*time.Minute))

		// At most window messages await their receipt: while alice's link
		// is cut, bob's receipts pile up in her session's queue on the
		// server, and a queue over Prosody's smacks_max_queue_size (500)
		// makes the session not resumable.
		const n, cuts, window = 1000, 6, 200
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cutDone := cutWhileSending(ctx, alice, n, cuts, true, resumableCut(k, p))
		trs := make([]*tracking.MessageTracker, n)
		for i := range n {
			if i >= window {
				waitState(ctx, t, fmt.Sprintf("message %d", i-window), trs[i-window], tracking.DeliveredToRecipient)
			}
			tr, err := c.SendTracked(ctx, bob.Addr(), fmt.Sprintf("cut %d", i))
			if err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			trs[i] = tr
			if i%50 == 0 {
				time.Sleep(2 * time.Millisecond) // spread the sends over the cuts
			}
		}
		<-cutDone
		for i, tr := range trs {
			waitState(ctx, t, fmt.Sprintf("message %d", i), tr, tracking.DeliveredToRecipient)
		}
		box.waitFor(t, n, 10*time.Second)
		time.Sleep(300 * time.Millisecond) // let any duplicate arrive
		count := make(map[string]int, n)
		for _, m := range box.waitFor(t, n, time.Second) {
			count[m.body]++
		}
		for i := range n {
			if k := count[fmt.Sprintf("cut %d", i)]; k != 1 {
				t.Errorf("bob received message %d %d times", i, k)
			}
		}
		if len(count) != n {
			t.Errorf("bob received %d distinct messages, want %d", len(count), n)
		}
		if got := resp.Answered(); got != n {
			t.Errorf("bob answered %d receipt requests, want %d", got, n)
		}
		st := alice.Stats()
		t.Logf("connections %d, resumptions %d, new sessions %d, proxy connections %d", st.Connections, st.Resumptions, st.NewSessions, p.Connections())
		if st.Resumptions < cuts {
			t.Errorf("resumed %d times, want %d", st.Resumptions, cuts)
		}
	})
}

// TestChatResponderAnswers checks what bob's responder answers: a message
// with a receipt request, or a markable one when received markers are on;
// not groupchat or error messages, not messages without a request, not a
// receipt, and not bob's own messages.
func TestChatResponderAnswers(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		alice := dialStream(t, srv, "alice", nil)
		answers := newMarkerLog(alice)
		bob := dialStream(t, srv, "bob", nil)
		bob2 := dialStream(t, srv, "bob", nil)
		resp := xchat.NewResponder(bob, xchat.WithReceivedMarkers())
		t.Cleanup(func() { resp.Close() })
		box := newChatLog(bob)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		to := bob.Addr().String()
		const request = "<request xmlns='urn:xmpp:receipts'/>"
		const markable = "<markable xmlns='urn:xmpp:chat-markers:0'/>"
		ignored := []struct {
			s    *stream.Stream
			attr string
			body string
			more string
		}{
			{bob2, "type='chat' id='own'", "from bob's other resource", request},
			{alice, "type='groupchat' id='gc'", "groupchat", request},
			{alice, "type='error' id='err'", "error", request},
			{alice, "type='chat'", "no id", request},
			{alice, "type='chat' id='plain'", "no request", ""},
			{alice, "id='rcpt'", "a receipt", request + "<received xmlns='urn:xmpp:receipts' id='x'/>"},
		}
		for i, m := range ignored {
			b := fmt.Appendf(nil, "<message to='%s' %s><body>%s</body>%s</message>", to, m.attr, m.body, m.more)
			if _, err := m.s.SendBytes(ctx, fmt.Sprintf("ignored-%d", i), b); err != nil {
				t.Fatal(err)
			}
		}
		box.waitFor(t, len(ignored), 10*time.Second)
		for _, m := range []string{
			"<message to='%s' type='chat' id='asked'><body>receipt requested</body>" + request + markable + "</message>",
			"<message to='%s' id='marked'><body>markable only</body>" + markable + "</message>",
		} {
			if _, err := alice.SendBytes(ctx, "", fmt.Appendf(nil, m, to)); err != nil {
				t.Fatal(err)
			}
		}
		answers.waitFor(t, 2, 10*time.Second)
		time.Sleep(200 * time.Millisecond) // let any wrong answer arrive
		if got := resp.Answered(); got != 2 {
			t.Errorf("bob answered %d messages, want 2", got)
		}
		answers.mu.Lock()
		defer answers.mu.Unlock()
		if answers.total != 2 || answers.from[to] != 2 {
			t.Errorf("alice got answers %v", answers.from)
		}
		want := []string{
			"type=: urn:xmpp:receipts received asked, urn:xmpp:chat-markers:0 received asked",
			"type=: urn:xmpp:chat-markers:0 received marked",
		}
		if !slices.Equal(answers.msgs, want) {
			t.Errorf("alice got answers\n%q\nwant\n%q", answers.msgs, want)
		}
	})
}

// TestChatReroutedReceipt (issue 10, defect 12): a message to a full JID
// whose resource is gone is rerouted by Prosody to bob's other resource
// (RFC 6121 §8.5.3.2.1), whose receipt is bob's: DELIVERED_TO_RECIPIENT.
func TestChatReroutedReceipt(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		alice := dialStream(t, srv, "alice", nil)
		c := newChatClient(t, alice, xchat.WithTimeout(time.Minute))
		laptop := dialStream(t, srv, "bob", nil)
		resp := xchat.NewResponder(laptop)
		t.Cleanup(func() { resp.Close() })
		available(t, laptop)
		gone, err := srv.JID("bob").WithResource("gone-phone")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tr, err := c.SendTracked(ctx, gone, "to a phone that is off")
		if err != nil {
			t.Fatal(err)
		}
		waitState(ctx, t, "to bob's gone phone", tr, tracking.DeliveredToRecipient)
		if r := tr.Response(); r == nil || !r.Message.From.Equal(laptop.Addr()) {
			t.Fatalf("receipt %+v, want one from %v", r, laptop.Addr())
		}
	})
}
