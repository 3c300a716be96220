package chat_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// These tests run a Client or a Responder against a scripted server
// (internal/fakeserver): what matters is the order of the stanzas on the
// wire, which a real server cannot be made to shuffle on demand.

// dial connects a stream without stream management to a scripted server.
func dial(t *testing.T) (*stream.Stream, *fakeserver.Conn) {
	t.Helper()
	srv := fakeserver.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	type dialed struct {
		s   *stream.Stream
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		s, err := stream.Dial(ctx, stream.Config{
			JID:            jid.MustParse("alice@example.test"),
			Password:       "pw",
			AllowPlaintext: true,
			Mechanisms:     []sasl.Mechanism{sasl.Plain},
			Dial:           srv.Dial,
			DisableSM:      true,
		})
		ch <- dialed{s, err}
	}()
	conn := srv.Next(t)
	d := <-ch
	if d.err != nil {
		t.Fatal(d.err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				if _, ok := conn.NextOrEnd(t); !ok {
					return
				}
			}
		}()
		d.s.Close(ctx)
		<-done
	})
	return d.s, conn
}

// TestConcurrentSendsWireOrder (issue 10, defect 10): messages sent to one
// peer from many goroutines at once are remembered in the order they go
// out, so that a displayed marker marks exactly the messages before it on
// the wire.
func TestConcurrentSendsWireOrder(t *testing.T) {
	s, conn := dial(t)
	c := chat.NewClient(s, chat.WithTimeout(0))
	defer c.Close()
	bob := jid.MustParse("bob@example.test")
	for round := range 5 {
		const n = 40
		trs := make(map[string]*tracking.MessageTracker, n)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				tr, err := c.SendTracked(context.Background(), bob, fmt.Sprintf("r%d m%d", round, i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				trs[tr.ID()] = tr
				mu.Unlock()
			})
		}
		wire := conn.Stanzas(t, n)
		wg.Wait()
		k := n / 2
		conn.Write(t, fmt.Sprintf("<message from='bob@example.test/phone' to='%s' id='d%d'>"+
			"<displayed xmlns='urn:xmpp:chat-markers:0' id='%s'/></message>", conn.JID, round, wire[k]))
		for i, id := range wire {
			tr := trs[id]
			if i <= k {
				ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
				st, _ := tr.Wait(ctx, tracking.SeenByRecipient)
				cancel()
				if st != tracking.SeenByRecipient {
					t.Fatalf("round %d: message %d on the wire is %v, want SEEN", round, i, st)
				}
			}
		}
		for i, id := range wire[k+1:] {
			if st := trs[id].State(); st != tracking.InTransit {
				t.Fatalf("round %d: message %d on the wire, after the marker, is %v", round, k+1+i, st)
			}
			_ = trs[id].Close()
		}
	}
}

// TestUnseenLimitAcrossPeers (defect 4): the delivered messages that wait for
// a displayed marker are bounded as a whole, not per address: the oldest
// ends its tracking, at DELIVERED_TO_RECIPIENT.
func TestUnseenLimitAcrossPeers(t *testing.T) {
	m := chat.NewMatcher(chat.WithUnseenLimit(3))
	var trs []*tracking.MessageTracker
	for i := range 6 {
		peer := fmt.Sprintf("peer%d@example.test", i%3)
		id := fmt.Sprintf("m%d", i)
		tr := tracking.NewMessageTracker()
		if err := m.Track(jid.MustParse(peer), id, tr); err != nil {
			t.Fatal(err)
		}
		trs = append(trs, tr)
		m.Handle(element(fmt.Sprintf("<message from='%s/x' id='r%d'><received xmlns='urn:xmpp:receipts' id='%s'/></message>", peer, i, id)))
	}
	if msgs, _ := m.Pending(); msgs != 3 {
		t.Fatalf("%d messages remembered, want 3", msgs)
	}
	for i, tr := range trs {
		if st := tr.State(); st != tracking.DeliveredToRecipient {
			t.Fatalf("message %d is %v", i, st)
		}
		if tr.Ended() != (i < 3) {
			t.Fatalf("message %d: Ended() = %v", i, tr.Ended())
		}
	}
}

// TestSendTrackedPayload: a payload built by the caller goes out in a
// tracked chat message with the receipt request and markable added.
func TestSendTrackedPayload(t *testing.T) {
	s, conn := dial(t)
	c := chat.NewClient(s)
	defer c.Close()
	body := xmlstream.Wrap(xmlstream.Token(xml.CharData("hi & bye")), xml.StartElement{Name: xml.Name{Local: "body"}})
	tr, err := c.SendTrackedPayload(context.Background(), jid.MustParse("bob@example.test"), body)
	if err != nil {
		t.Fatal(err)
	}
	el := conn.Expect(t, "message")
	got := el.String()
	for _, want := range []string{"hi &amp; bye", tr.ID(), chat.NSReceipts, chat.NSMarkers, `type="chat"`} {
		if !strings.Contains(got, want) {
			t.Fatalf("%s lacks %q", got, want)
		}
	}
	conn.Write(t, fmt.Sprintf("<message from='bob@example.test/x' id='r1'><received xmlns='urn:xmpp:receipts' id='%s'/></message>", tr.ID()))
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	if st, _ := tr.Wait(ctx, tracking.DeliveredToRecipient); st != tracking.DeliveredToRecipient {
		t.Fatalf("state %v", st)
	}
}

// TestResponderMessages: the responder hands received messages to the
// WithMessages function, which may mark them displayed at once.
func TestResponderMessages(t *testing.T) {
	s, conn := dial(t)
	var r *chat.Responder
	got := make(chan chat.Received, 1)
	r = chat.NewResponder(s, chat.WithMessages(func(m chat.Received) {
		if err := r.MarkDisplayed(context.Background(), m.From, m.ID); err != nil {
			t.Error(err)
		}
		got <- m
	}))
	defer r.Close()
	conn.Write(t, fmt.Sprintf("<message from='bob@example.test/x' to='%s' id='b1' type='chat'><body>hello</body>"+
		"<request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>", conn.JID))
	select {
	case m := <-got:
		if m.From.String() != "bob@example.test/x" || m.ID != "b1" || m.Body != "hello" || !m.Markable {
			t.Fatalf("got %+v", m)
		}
	case <-time.After(fakeserver.Timeout):
		t.Fatal("no message")
	}
	receipt := conn.Expect(t, "message")
	if !strings.Contains(receipt.String(), chat.NSReceipts) {
		t.Fatalf("got %s, want the receipt first", receipt)
	}
	marker := conn.Expect(t, "message")
	if !strings.Contains(marker.String(), "displayed") || !strings.Contains(marker.String(), `id="b1"`) {
		t.Fatalf("got %s, want the displayed marker", marker)
	}
}
