package integration

import (
	"context"
	"encoding/xml"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// rawCapture keeps the raw form of the messages a stream receives whose
// body contains a marker.
type rawCapture struct {
	mu     sync.Mutex
	msgs   []*stream.Element
	signal chan struct{}
}

func newRawCapture(s *stream.Stream, marker string) *rawCapture {
	c := &rawCapture{signal: make(chan struct{}, 1)}
	s.HandleElement(func(el *stream.Element) {
		if el.Name().Local != "message" {
			return
		}
		var m struct {
			Body string `xml:"body"`
		}
		if el.Decode(&m) != nil || !strings.Contains(m.Body, marker) {
			return
		}
		c.mu.Lock()
		c.msgs = append(c.msgs, el)
		c.mu.Unlock()
		select {
		case c.signal <- struct{}{}:
		default:
		}
	})
	return c
}

func (c *rawCapture) wait(t testing.TB, n int) []*stream.Element {
	t.Helper()
	var got []*stream.Element
	waitUntil(t, c.signal, 10*time.Second, func() (bool, string) {
		c.mu.Lock()
		got = append([]*stream.Element(nil), c.msgs...)
		c.mu.Unlock()
		return len(got) >= n, fmt.Sprintf("captured %d of %d messages", len(got), n)
	})
	return got
}

// children returns "NS local" of each element inside el, space-separated.
func children(el *stream.Element) string {
	var b strings.Builder
	for _, tok := range el.Tokens() {
		if st, ok := tok.(xml.StartElement); ok {
			fmt.Fprintf(&b, "%s %s ", st.Name.Space, st.Name.Local)
		}
	}
	return b.String()
}

// TestServerDifferences pins down, per server, the room behaviour a tracker
// meets where ejabberd 23.01 and Prosody 0.12 differ, and checks that the
// tracker ends the same way on both:
//
//   - a message without an id: ejabberd reflects it without one, Prosody
//     makes one up (the room client always sends an id and an origin-id);
//   - <occupant-id/>: Prosody adds it, ejabberd does not;
//   - <stanza-id by=room/>: both, with the room archive;
//   - a groupchat message from a non-occupant: not-acceptable of type
//     modify with the body echoed (ejabberd), of type cancel without it
//     (Prosody); a tracker ends ERROR with not-acceptable either way.
func TestServerDifferences(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "carol": "c-pw"}})
		alice := dialStream(t, srv, "alice", nil)
		carol := dialStream(t, srv, "carol", nil)
		room := roomJID(t, srv, "differences")
		_, ra := join(t, alice, room, "alice")
		ejabberd := k.Name == servers.Ejabberd
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		capture := newRawCapture(alice, "difference")
		msg := fmt.Sprintf("<message to='%s' type='groupchat'><body>difference: no id</body><origin-id xmlns='urn:xmpp:sid:0' id='o-1'/></message>", room)
		if _, err := alice.SendBytes(ctx, "", []byte(msg)); err != nil {
			t.Fatal(err)
		}
		refl := capture.wait(t, 1)[0]
		if id := refl.Attr("id"); (id == "") != ejabberd {
			t.Errorf("reflection of an id-less message has id %q; want none on ejabberd, one on Prosody", id)
		}
		kids := children(refl)
		if has := strings.Contains(kids, "urn:xmpp:occupant-id:0"); has == ejabberd {
			t.Errorf("occupant-id present %v; want it on Prosody only: %s", has, kids)
		}
		if !strings.Contains(kids, "urn:xmpp:sid:0 stanza-id") || !strings.Contains(kids, "urn:xmpp:sid:0 origin-id") {
			t.Errorf("reflection lacks stanza-id or origin-id: %s", kids)
		}

		// carol is not in the room.
		bounced := make(chan *stream.Element, 1)
		carol.HandleElement(func(el *stream.Element) {
			if el.Name().Local == "message" && el.Attr("type") == "error" && el.Attr("id") == "c-1" {
				select {
				case bounced <- el:
				default:
				}
			}
		})
		msg = fmt.Sprintf("<message to='%s' type='groupchat' id='c-1'><body>difference: outsider</body></message>", room)
		if _, err := carol.SendBytes(ctx, "", []byte(msg)); err != nil {
			t.Fatal(err)
		}
		select {
		case el := <-bounced:
			se, _ := el.Error()
			wantType := map[bool]string{true: "modify", false: "cancel"}[ejabberd]
			if se == nil || se.Condition != "not-acceptable" || string(se.Type) != wantType {
				t.Errorf("error %+v; want not-acceptable of type %s", se, wantType)
			}
			var m struct {
				Body string `xml:"body"`
			}
			el.Decode(&m)
			if echoed := m.Body != ""; echoed != ejabberd {
				t.Errorf("error echoes the body %v (%q); want it on ejabberd only", echoed, m.Body)
			}
		case <-ctx.Done():
			t.Fatal("no error for a message from outside the room")
		}

		// Whatever the differences, a tracked message ends the same way.
		tr, err := ra.SendTrackedMessage(ctx, "tracked")
		if err != nil {
			t.Fatal(err)
		}
		waitState(ctx, t, "tracked", tr, tracking.DeliveredToRecipient)
		if r := tr.Response(); r == nil || r.StanzaID == "" {
			t.Errorf("no stanza-id kept from the reflection: %+v", r)
		}
	})
}
