package integration

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// wireTap keeps a copy of every byte a client writes on its connections.
type wireTap struct {
	mu  sync.Mutex
	buf []byte
}

// tap makes a stream config record what the stream writes on every
// connection it dials.
func (w *wireTap) tap(c *stream.Config) {
	dial := c.Dial
	c.Dial = func(ctx context.Context) (net.Conn, error) {
		nc, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		return &tappedConn{Conn: nc, w: w}, nil
	}
}

type tappedConn struct {
	net.Conn
	w *wireTap
}

func (c *tappedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.w.mu.Lock()
	c.w.buf = append(c.w.buf, p[:n]...)
	c.w.mu.Unlock()
	return n, err
}

// originID waits until the client has written the message whose id is id,
// and returns the message's origin-id.
func (w *wireTap) originID(t testing.TB, id string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		s := string(w.buf)
		w.mu.Unlock()
		if i := strings.Index(s, "id='"+id+"'"); i >= 0 {
			start := strings.LastIndex(s[:i], "<message")
			end := strings.Index(s[i:], "</message>")
			if start >= 0 && end >= 0 {
				var m struct {
					OriginID struct {
						ID string `xml:"id,attr"`
					} `xml:"urn:xmpp:sid:0 origin-id"`
				}
				raw := s[start : i+end+len("</message>")]
				if err := xml.Unmarshal([]byte(raw), &m); err != nil || m.OriginID.ID == "" {
					t.Fatalf("no origin-id in the message as written (%v): %s", err, raw)
				}
				return m.OriginID.ID
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s was never written", id)
		}
		time.Sleep(time.Millisecond)
	}
}

// arrivals records, in order, the senders of the groupchat messages with a
// given id that a stream receives.
type arrivals struct {
	id     string
	mu     sync.Mutex
	from   []string
	signal chan struct{}
}

func newArrivals(s *stream.Stream, id string) *arrivals {
	a := &arrivals{id: id, signal: make(chan struct{}, 1)}
	s.HandleElement(func(el *stream.Element) {
		if el.Name().Local != "message" || el.Attr("type") != "groupchat" || el.Attr("id") != id {
			return
		}
		a.mu.Lock()
		a.from = append(a.from, el.Attr("from"))
		a.mu.Unlock()
		select {
		case a.signal <- struct{}{}:
		default:
		}
	})
	return a
}

// waitFrom waits until a message from from has arrived.
func (a *arrivals) waitFrom(t testing.TB, from string, d time.Duration) {
	t.Helper()
	waitUntil(t, a.signal, d, func() (bool, string) {
		a.mu.Lock()
		defer a.mu.Unlock()
		return slices.Contains(a.from, from), fmt.Sprintf("no message %s from %s; got it from %q", a.id, from, a.from)
	})
}

func (a *arrivals) senders() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.from...)
}

// groupchatWithIDs is a groupchat message to room with the given id and
// origin-id.
func groupchatWithIDs(room jid.JID, id, originID, body string) xml.TokenReader {
	return stanza.Message{To: room, ID: id, Type: stanza.GroupChatMessage}.Wrap(xmlstream.MultiReader(
		xmlstream.Wrap(xmlstream.Token(xml.CharData(body)), xml.StartElement{Name: xml.Name{Local: "body"}}),
		stanza.OriginID{ID: originID}.TokenReader(),
	))
}

// deliveredBy returns the sender of the stanza that moved tr to
// DELIVERED_TO_RECIPIENT, and false if tr never got there.
func deliveredBy(tr *tracking.MessageTracker) (string, bool) {
	for _, c := range tr.Changes() {
		if c.To == tracking.DeliveredToRecipient {
			if c.Response == nil {
				return "", true
			}
			return c.Response.Message.From.String(), true
		}
	}
	return "", false
}

// TestMUCOtherOccupantReusesIDs has carol send a message with the id and
// origin-id of alice's pending message, and the room relay it to alice
// before alice's own reflection: alice's tracker must not move on carol's
// message, only on her own reflection.
//
// For carol's message to reach alice first, alice's message must reach the
// room after carol's: alice's link is stalled both ways while she sends, so
// the room learns nothing of her message, and her ids are read from what her
// stream writes.
func TestMUCOtherOccupantReusesIDs(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "carol": "c-pw"}})
		p := newProxy(t, srv)
		var wire wireTap
		alice := dialStream(t, srv, "alice", func(c *stream.Config) {
			viaProxy(p)(c)
			// The link stays stalled for a moment: no ack timeout meanwhile.
			c.AckTimeout = 30 * time.Second
			wire.tap(c)
		})
		carol := dialStream(t, srv, "carol", nil)
		room := roomJID(t, srv, "spoof")
		_, ra := join(t, alice, room, "alice")
		_, rc := join(t, carol, room, "carol")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		p.Stall()
		tr, err := ra.SendTrackedMessage(ctx, "from alice")
		if err != nil {
			t.Fatal(err)
		}
		id := tr.ID()
		originID := wire.originID(t, id)
		atAlice := newArrivals(alice, id)
		atCarol := newArrivals(carol, id)

		if _, err := carol.Send(ctx, groupchatWithIDs(room, id, originID, "from carol")); err != nil {
			t.Fatal(err)
		}
		// Once carol has her reflection, the room has sent her message to alice
		// too, where the stalled link holds it.
		atCarol.waitFrom(t, rc.OccupantJID().String(), 10*time.Second)
		if st := tr.State(); st == tracking.DeliveredToRecipient {
			t.Fatalf("delivered before alice's message reached the room: %v", tr.Changes())
		}

		p.Unstall()
		if st, err := tr.Wait(ctx, tracking.DeliveredToRecipient); st != tracking.DeliveredToRecipient {
			t.Fatalf("alice's message ended %v (%v): %v", st, err, tr.Changes())
		}
		if from, _ := deliveredBy(tr); from != ra.OccupantJID().String() {
			t.Fatalf("delivered by a message from %q, want %q", from, ra.OccupantJID().String())
		}
		atAlice.waitFrom(t, ra.OccupantJID().String(), 10*time.Second)
		got := atAlice.senders()
		if len(got) != 2 || got[0] != rc.OccupantJID().String() || got[1] != ra.OccupantJID().String() {
			t.Fatalf("alice received messages %s from %q, want carol's first, then her own", id, got)
		}
		if n := ra.Pending(); n != 0 {
			t.Fatalf("room still holds %d pending entries", n)
		}
	})
}

// TestMUCUnderCuts sends 2,000 tracked messages with 50 in flight while
// alice's connection is cut 5 times between stanzas: every session is
// resumed, every tracker ends DELIVERED_TO_RECIPIENT by alice's own
// reflection, bob sees each message exactly once, and the room keeps
// nothing of them afterwards.
func TestMUCUnderCuts(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		p := newProxy(t, srv)
		alice := dialStream(t, srv, "alice", viaProxyOneAtATime(t, p))
		bob := dialStream(t, srv, "bob", nil)
		room := roomJID(t, srv, "cuts")
		_, ra := join(t, alice, room, "alice", muc.WithTimeout(time.Minute))
		join(t, bob, room, "bob")
		seen := newGroupchatLog(bob, "alice")
		// ejabberd marks what it writes again after a resumption with
		// <delay>Resent</delay>, which looks like room history: such a
		// reflection must still deliver its tracker.
		var resent atomic.Int32
		alice.HandleElement(func(el *stream.Element) {
			if el.Name().Local != "message" || el.Attr("type") != "groupchat" {
				return
			}
			for _, tok := range el.Tokens() {
				if st, ok := tok.(xml.StartElement); ok && st.Name.Space == "urn:xmpp:delay" {
					resent.Add(1)
					return
				}
			}
		})

		const n, window, cuts = 2000, 50, 5
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cutDone := cutWhileSending(ctx, alice, n, cuts, true, resumableCut(k, p))
		trs := sendWindow(t, ctx, ra, n, window, "cut %d")
		<-cutDone

		self := ra.OccupantJID().String()
		for i, tr := range trs {
			if st := tr.State(); st != tracking.DeliveredToRecipient {
				t.Fatalf("message %d: %v (%v)", i, st, tr.Changes())
			}
			if from, _ := deliveredBy(tr); from != self {
				t.Fatalf("message %d delivered by a message from %q, want %q", i, from, self)
			}
		}
		seen.waitFor(t, n, 30*time.Second)
		time.Sleep(300 * time.Millisecond) // let a duplicate arrive
		seen.mu.Lock()
		if len(seen.bodies) != n {
			t.Errorf("bob saw %d distinct messages, want %d", len(seen.bodies), n)
		}
		for body, k := range seen.bodies {
			if k != 1 {
				t.Errorf("bob saw %q %d times", body, k)
			}
		}
		seen.mu.Unlock()
		if n := ra.Pending(); n != 0 {
			t.Fatalf("room still holds %d pending entries", n)
		}
		st := alice.Stats()
		t.Logf("connections %d, resumptions %d, new sessions %d; %d reflections came with a <delay/>", st.Connections, st.Resumptions, st.NewSessions, resent.Load())
		if st.Resumptions != cuts || st.NewSessions != 0 {
			t.Errorf("resumed %d times with %d new sessions, want %d and none (attempts %+v)", st.Resumptions, st.NewSessions, cuts, st.Attempts)
		}
	})
}

// TestMUCResumeRefused stalls alice's link while she sends until her stream
// declares it dead. The server does not notice a stalled link, so the
// connection is then cut: the server hibernates the session for its short
// hibernation time and drops it, and only then may the stream reconnect. Its
// resumption is refused, it starts a new session, and the muc client joins
// the room again by itself. Every tracker ends truthfully: none is
// DELIVERED_TO_RECIPIENT without alice's own reflection of a message bob
// saw, none is left waiting past its timeout, and every message sent after
// the rejoin is DELIVERED_TO_RECIPIENT.
func TestMUCResumeRefused(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		const hibernation = 2 * time.Second
		srv := testServer(t, k, servers.Options{
			Users:         map[string]string{"alice": "a-pw", "bob": "b-pw"},
			ResumeTimeout: hibernation,
		})
		p := newProxy(t, srv)
		var gate sync.RWMutex // held while alice must not reconnect
		alice := dialStream(t, srv, "alice", gatedViaProxy(t, p, &gate, hibernation+5*time.Second))
		streamEvents := eventsOf(alice)
		bob := dialStream(t, srv, "bob", nil)
		room := roomJID(t, srv, "refused")

		// Longer than the outage, so that the trackers in flight live to see the
		// new session.
		const timeout = 15 * time.Second
		var rejoined atomic.Bool
		roomEvents := make(chan muc.Event, 16)
		_, ra := join(t, alice, room, "alice", muc.WithTimeout(timeout), muc.WithEvents(func(ev muc.Event) {
			if ev.Kind == muc.EventRejoined {
				rejoined.Store(true)
			}
			roomEvents <- ev
		}))
		join(t, bob, room, "bob")
		seen := newGroupchatLog(bob, "alice")
		self := ra.OccupantJID().String()
		aliceLeft := make(chan struct{})
		var leftOnce sync.Once
		bob.HandleElement(func(el *stream.Element) {
			if el.Name().Local == "presence" && el.Attr("type") == "unavailable" && el.Attr("from") == self {
				leftOnce.Do(func() { close(aliceLeft) })
			}
		})

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()

		type record struct {
			body        string
			tr          *tracking.MessageTracker
			afterRejoin bool
			sentAt      time.Time
		}
		const window, before, after = 50, 300, 200
		var (
			mu      sync.Mutex
			records []record
		)
		sendDone := make(chan error, 1)
		go func() {
			sem := make(chan struct{}, window)
			k := 0
			for i := 0; k < after; i++ {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					sendDone <- ctx.Err()
					return
				}
				isAfter := rejoined.Load()
				body := fmt.Sprintf("refused %d", i)
				now := time.Now()
				tr, err := ra.SendTrackedMessage(ctx, body)
				if err != nil {
					sendDone <- fmt.Errorf("send %d: %w", i, err)
					return
				}
				mu.Lock()
				records = append(records, record{body: body, tr: tr, afterRejoin: isAfter, sentAt: now})
				mu.Unlock()
				if isAfter {
					k++
				}
				go func() {
					tr.Wait(ctx, tracking.DeliveredToRecipient)
					<-sem
				}()
			}
			sendDone <- nil
		}()

		base := alice.Stats().Sent
		for alice.Stats().Sent < base+before {
			select {
			case err := <-sendDone:
				t.Fatalf("sending ended early: %v", err)
			case <-time.After(time.Millisecond):
			}
		}
		gate.Lock()
		p.Stall()
		// The stream declares the link dead after its ack timeout.
		var lost time.Time
		for disconnected := false; !disconnected; {
			select {
			case ev := <-streamEvents:
				if ev.Kind == stream.EventDisconnected {
					if !errors.Is(ev.Err, stream.ErrAckTimeout) {
						t.Errorf("disconnected by %v, want an ack timeout", ev.Err)
					}
					disconnected, lost = true, time.Now()
				}
			case <-ctx.Done():
				t.Fatal("the stream never declared the stalled link dead")
			}
		}
		// The server learns that the connection is gone, hibernates the session
		// and drops it: then alice leaves the room.
		p.Cut()
		select {
		case <-aliceLeft:
		case <-time.After(hibernation + 10*time.Second):
			t.Fatal("the server did not drop alice's session")
		}
		t.Logf("the server dropped the session %v after the stream declared the link dead", time.Since(lost).Round(time.Millisecond))
		p.Unstall()
		gate.Unlock()

		for newSession := false; !newSession; {
			select {
			case ev := <-streamEvents:
				if ev.Kind == stream.EventNewSession {
					if !errors.Is(ev.Err, stream.ErrResumeRefused) {
						t.Errorf("new session after %v, want a refused resumption (attempts %+v)", ev.Err, alice.Stats().Attempts)
					}
					t.Logf("new session: acked %d, lost %d (%v)", ev.Acked, ev.Lost, ev.Err)
					newSession = true
				}
			case <-ctx.Done():
				t.Fatalf("no new session; attempts %+v", alice.Stats().Attempts)
			}
		}
		select {
		case ev := <-roomEvents:
			if ev.Kind != muc.EventRejoined || ev.Room != ra {
				t.Fatalf("room event %v (%v), want %v", ev.Kind, ev.Err, muc.EventRejoined)
			}
		case <-ctx.Done():
			t.Fatal("the room was not joined again")
		}
		if err := <-sendDone; err != nil {
			t.Fatal(err)
		}

		// Wait until nothing is left in flight: every tracker is final or
		// delivered, at the latest when its timeout has run out.
		mu.Lock()
		defer mu.Unlock()
		states := make(map[tracking.MessageState]int)
		for _, r := range records {
			wctx, wcancel := context.WithDeadline(ctx, r.sentAt.Add(timeout+5*time.Second))
			st, _ := r.tr.Wait(wctx, tracking.DeliveredToRecipient)
			wcancel()
			if st != tracking.DeliveredToRecipient && !st.IsFinal() {
				t.Errorf("%q still %v past its timeout: %v", r.body, st, r.tr.Changes())
			}
			states[st]++
			if r.afterRejoin && st != tracking.DeliveredToRecipient {
				t.Errorf("%q, sent after the rejoin, ended %v: %v", r.body, st, r.tr.Changes())
			}
			// Written in the new session before the rejoin, a message reaches
			// a room that no longer has alice.
			if se := stanzaErr(r.tr); st == tracking.Error && (se == nil || se.Condition != stanza.NotAcceptable) {
				t.Errorf("%q refused with %+v, want not-acceptable", r.body, se)
			}
		}
		t.Logf("%d messages, %d after the rejoin; states %v", len(records), after, states)

		// Every delivered message was reflected to alice and seen by bob.
		deadline := time.Now().Add(10 * time.Second)
		for _, r := range records {
			if r.tr.State() != tracking.DeliveredToRecipient {
				continue
			}
			if from, _ := deliveredBy(r.tr); from != self {
				t.Errorf("%q delivered by a message from %q, want %q", r.body, from, self)
			}
			for {
				seen.mu.Lock()
				k := seen.bodies[r.body]
				seen.mu.Unlock()
				if k > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%q is DELIVERED_TO_RECIPIENT but bob never saw it", r.body)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		seen.mu.Lock()
		for body, k := range seen.bodies {
			if k != 1 {
				t.Errorf("bob saw %q %d times", body, k)
			}
		}
		seen.mu.Unlock()
		if n := ra.Pending(); n != 0 {
			t.Fatalf("room still holds %d pending entries", n)
		}
	})
}
