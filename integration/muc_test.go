package integration

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"sync"
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

// roomJID returns the room name on srv's MUC service; on an isolated view
// of a shared server, a room of the test's own.
func roomJID(t testing.TB, srv server, name string) jid.JID {
	t.Helper()
	if v, ok := srv.(*isolated); ok {
		name = v.local(name)
	}
	j, err := jid.New(name, srv.MUCDomain(), "")
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func join(t testing.TB, s *stream.Stream, room jid.JID, nick string, opts ...muc.Option) (*muc.Client, *muc.Room) {
	t.Helper()
	c := muc.NewClient(s, opts...)
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Join(ctx, room, nick)
	if err != nil {
		t.Fatalf("%s joins %s: %v", nick, room, err)
	}
	return c, r
}

// groupchatLog records the groupchat bodies a stream receives from a room,
// with who sent them.
type groupchatLog struct {
	mu     sync.Mutex
	bodies map[string]int
	order  []string
	signal chan struct{}
}

func newGroupchatLog(s *stream.Stream, fromNick string) *groupchatLog {
	l := &groupchatLog{bodies: make(map[string]int), signal: make(chan struct{}, 1)}
	s.HandleElement(func(el *stream.Element) {
		if el.Name().Local != "message" || el.Attr("type") != "groupchat" {
			return
		}
		from, err := jid.Parse(el.Attr("from"))
		if err != nil || from.Resourcepart() != fromNick {
			return
		}
		var msg struct {
			Body string `xml:"body"`
		}
		if el.Decode(&msg) != nil || msg.Body == "" {
			return
		}
		l.mu.Lock()
		l.bodies[msg.Body]++
		l.order = append(l.order, msg.Body)
		l.mu.Unlock()
		select {
		case l.signal <- struct{}{}:
		default:
		}
	})
	return l
}

func (l *groupchatLog) waitFor(t testing.TB, n int, d time.Duration) {
	t.Helper()
	waitUntil(t, l.signal, d, func() (bool, string) {
		l.mu.Lock()
		k := len(l.bodies)
		l.mu.Unlock()
		return k >= n, fmt.Sprintf("saw %d of %d distinct messages", k, n)
	})
}

// sendWindow sends n tracked messages with at most window awaiting their
// outcome, and returns the trackers.
func sendWindow(t testing.TB, ctx context.Context, r *muc.Room, n, window int, body string) []*tracking.MessageTracker {
	t.Helper()
	trs := make([]*tracking.MessageTracker, n)
	sem := make(chan struct{}, window)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		tr, err := r.SendTrackedMessage(ctx, fmt.Sprintf(body, i))
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		trs[i] = tr
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr.Wait(ctx, tracking.DeliveredToRecipient)
			<-sem
		}()
	}
	wg.Wait()
	return trs
}

func TestMUCReflections(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a", "bob": "b"}})
		room := roomJID(t, srv, "reflect")
		alice := dialStream(t, srv, "alice", nil)
		bob := dialStream(t, srv, "bob", nil)
		_, ra := join(t, alice, room, "alice")
		_, _ = join(t, bob, room, "bob")
		seen := newGroupchatLog(bob, "alice")

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		const n = 1000
		trs := sendWindow(t, ctx, ra, n, 50, "hello %d")
		for i, tr := range trs {
			if st := tr.State(); st != tracking.DeliveredToRecipient {
				t.Fatalf("message %d: %v", i, st)
			}
			if resp := tr.Response(); resp == nil || resp.StanzaID == "" {
				t.Fatalf("message %d: no stanza-id kept from the reflection: %+v", i, resp)
			}
		}
		// Prosody reflects before it acknowledges; ejabberd usually
		// acknowledges first. Either way the tracker ends delivered.
		ackedFirst := 0
		for _, tr := range trs {
			if ch := tr.Changes(); len(ch) > 0 && ch[0].To == tracking.DeliveredToServer {
				ackedFirst++
			}
		}
		t.Logf("%d of %d messages acknowledged before their reflection", ackedFirst, n)
		seen.waitFor(t, n, 20*time.Second)
		seen.mu.Lock()
		for body, k := range seen.bodies {
			if k != 1 {
				t.Errorf("bob saw %q %d times", body, k)
			}
		}
		seen.mu.Unlock()
		// Every tracker acked eventually; the room forgot them all.
		if n := ra.Pending(); n != 0 {
			t.Fatalf("room still holds %d pending entries", n)
		}
	})
}

func TestMUCErrors(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{
			Users:                map[string]string{"alice": "a", "bob": "b"},
			RestrictRoomCreation: true,
			// bob, an admin, may create rooms; alice may not.
			Admins: []string{"bob"},
		})
		alice := dialStream(t, srv, "alice", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		t.Run("room that does not exist", func(t *testing.T) {
			c := muc.NewClient(alice)
			defer c.Close()
			_, err := c.Join(ctx, roomJID(t, srv, "nosuchroom"), "alice")
			var je *muc.JoinError
			if !errors.As(err, &je) {
				t.Fatalf("join: %v", err)
			}
			t.Logf("join refused: %v", err)
		})

		t.Run("not an occupant", func(t *testing.T) {
			// alice leaves with a bare unavailable presence and sends a tracked
			// message right after it. The room handles both in order: the
			// message comes from someone no longer in the room, and Prosody
			// answers not-acceptable. Everything the server sends alice is held
			// back until then, so her client learns of the leave only after it
			// sent the message: the tracker must still end ERROR.
			room := roomJID(t, srv, "open")
			admin := dialStream(t, srv, "bob", nil)
			join(t, admin, room, "bob")
			p := newProxy(t, srv)
			alice2 := dialStream(t, srv, "alice", viaProxy(p))
			events := make(chan muc.Event, 1)
			_, r := join(t, alice2, room, "alice", muc.WithEvents(func(ev muc.Event) { events <- ev }))
			p.HoldServerToClient()
			leave := stanza.Presence{To: r.OccupantJID(), Type: stanza.UnavailablePresence}.Wrap(nil)
			if _, err := alice2.Send(ctx, leave); err != nil {
				t.Fatal(err)
			}
			tr, err := r.SendTrackedMessage(ctx, "anyone?")
			if err != nil {
				t.Fatal(err)
			}
			p.ReleaseServerToClient()
			if st, _ := tr.Wait(ctx, tracking.DeliveredToRecipient); st != tracking.Error {
				t.Fatalf("state %v, want ERROR", st)
			}
			if se := stanzaErr(tr); se == nil || se.Condition != stanza.NotAcceptable {
				t.Fatalf("error %+v, want not-acceptable", tr.Err())
			}
			if n := r.Pending(); n != 0 {
				t.Fatalf("room still holds %d pending entries", n)
			}
			select {
			case ev := <-events:
				if ev.Kind != muc.EventRemoved {
					t.Fatalf("event %v, want removed", ev.Kind)
				}
			case <-ctx.Done():
				t.Fatal("the client did not notice that it left")
			}
			if _, err := r.SendTrackedMessage(ctx, "again?"); !errors.Is(err, muc.ErrLeft) {
				t.Fatalf("send after leaving: %v, want ErrLeft", err)
			}
		})
	})
}

func mustJID(t testing.TB, s string) jid.JID {
	t.Helper()
	j, err := jid.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

var _ = xmlstream.Token
var _ = xml.Name{}

// stanzaErr returns the stanza error of a tracker in ERROR, or nil.
func stanzaErr(tr *tracking.MessageTracker) *stanza.Error {
	var se *stanza.Error
	if errors.As(tr.Err(), &se) {
		return se
	}
	return nil
}
