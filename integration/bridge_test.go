package integration

import (
	"context"
	"encoding/xml"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/history"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/roster"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/bridge"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// TestBridgeMelliumProgram runs a program written only against mellium's
// API — roster.Set and roster.Fetch, disco.GetInfo on the room service,
// history of a room's archive, and a mux handler answering pings from
// another account — over the bridge, while the proxy cuts alice's link
// again and again. Every call gets the right answer, and everything mellium
// sent is counted and acknowledged by the server's <a h/>.
func TestBridgeMelliumProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
	p := newProxy(t, srv)
	alice := dialStream(t, srv, "alice", viaProxy(p))
	bob := dialStream(t, srv, "bob", nil)

	// Something for the room's archive, sent with xmpptrack's own client.
	room := roomJID(t, srv, "bridged")
	_, r := join(t, alice, room, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const archived = 5
	for i := range archived {
		tr, err := r.SendTrackedMessage(ctx, fmt.Sprintf("archived %d", i))
		if err != nil {
			t.Fatal(err)
		}
		if st, err := tr.Wait(ctx, tracking.DeliveredToRecipient); st != tracking.DeliveredToRecipient {
			t.Fatalf("archived %d: %v (%v)", i, st, err)
		}
	}

	b, err := bridge.New(alice)
	if err != nil {
		t.Fatal(err)
	}
	sess := b.Session()
	var archive bodies
	served := make(chan error, 1)
	go func() {
		served <- sess.Serve(mux.New(stanza.NSClient, ping.Handle(), history.Handle(history.NewHandler(&archive))))
	}()
	defer func() {
		b.Close()
		<-served
	}()

	cutCtx, stopCuts := context.WithCancel(ctx)
	cutsDone := make(chan int)
	go func() {
		cutsDone <- p.CutEvery(cutCtx, 20*time.Millisecond, 80*time.Millisecond, rand.New(rand.NewPCG(1, 2)), false)
	}()

	bobJID := srv.JID("bob").Bare()
	const rounds = 8
	for round := range rounds {
		p.Cut() // one more cut, besides those at random moments
		// The roster: set an item, read it back.
		name := fmt.Sprintf("Bob %d", round)
		if err := roster.Set(ctx, sess, roster.Item{JID: bobJID, Name: name}); err != nil {
			t.Fatalf("round %d: roster.Set: %v", round, err)
		}
		found := false
		iter := roster.Fetch(ctx, sess)
		for iter.Next() {
			if it := iter.Item(); it.JID.Equal(bobJID) && it.Name == name {
				found = true
			}
		}
		if err := iter.Err(); err != nil {
			t.Fatalf("round %d: roster.Fetch: %v", round, err)
		}
		iter.Close()
		if !found {
			t.Fatalf("round %d: roster.Fetch does not list %s as %q", round, bobJID, name)
		}

		// Service discovery on the room service.
		info, err := disco.GetInfo(ctx, "", jid.MustParse(srv.MUCDomain()), sess)
		if err != nil {
			t.Fatalf("round %d: disco.GetInfo: %v", round, err)
		}
		conference := false
		for _, id := range info.Identity {
			conference = conference || id.Category == "conference"
		}
		if !conference {
			t.Fatalf("round %d: disco#info of %s has no conference identity: %+v", round, srv.MUCDomain(), info.Identity)
		}

		// The room's archive: history.Fetch, whose results reach the
		// history handler of the mux, and from it archive.
		archive.reset()
		res, err := history.Fetch(ctx, history.Query{}, room, sess)
		if err != nil {
			t.Fatalf("round %d: history.Fetch: %v", round, err)
		}
		if bodies := archive.get(); !res.Complete || len(bodies) != archived || bodies[0] != "archived 0" {
			t.Fatalf("round %d: the archive gave %q (complete %t), want the %d archived messages", round, bodies, res.Complete, archived)
		}

		// Bob pings alice's full JID: mellium's ping handler answers.
		ping, err := bob.SendIQ(ctx, stanza.IQ{Type: stanza.GetIQ, To: alice.Addr()},
			xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Space: "urn:xmpp:ping", Local: "ping"}}))
		if err != nil {
			t.Fatalf("round %d: bob's ping: %v", round, err)
		}
		if ping.Attr("type") != "result" {
			t.Fatalf("round %d: bob's ping answered %s", round, ping.Attr("type"))
		}
	}
	stopCuts()
	cuts := <-cutsDone

	// Everything alice sent, mellium's stanzas included, is acknowledged:
	// the server's count and ours agree.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := alice.Stats()
		if st.Unacked == 0 && st.Queued == 0 && st.Acked == st.Sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not everything acknowledged: %+v", st)
		}
	}
	st := alice.Stats()
	if st.Resumptions == 0 || st.NewSessions != 0 {
		t.Fatalf("after %d cuts: %d resumptions, %d new sessions; want resumptions only", cuts, st.Resumptions, st.NewSessions)
	}
	cuts += rounds
	t.Logf("%d rounds of mellium calls through %d cuts: %d resumptions, %d stanzas sent and acknowledged", rounds, cuts, st.Resumptions, st.Sent)
	if err := alice.Err(); err != nil {
		t.Fatal(err)
	}
}

// bodies collects the bodies of the archived messages a history handler
// hands on.
type bodies struct {
	mu   sync.Mutex
	list []string
}

func (b *bodies) HandleMessage(_ stanza.Message, r xmlstream.TokenReadEncoder) error {
	body := bodyOf(r)
	b.mu.Lock()
	b.list = append(b.list, body)
	b.mu.Unlock()
	return nil
}

func (b *bodies) reset() {
	b.mu.Lock()
	b.list = nil
	b.mu.Unlock()
}

func (b *bodies) get() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.list...)
}

// bodyOf returns the body of the first message inside an archived result.
func bodyOf(r xml.TokenReader) string {
	d := xml.NewTokenDecoder(r)
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		if s, ok := tok.(xml.StartElement); ok && s.Name.Local == "body" {
			var b string
			d.DecodeElement(&b, &s)
			return b
		}
	}
}
