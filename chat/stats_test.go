package chat_test

import (
	"context"
	"fmt"
	"testing"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/internal/hooktest"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// TestClientStats checks the client's tracker counts and its hook against
// what the peer did: a receipt (delivered, still waiting for a marker), a
// displayed marker (cumulative: two messages seen), and Close.
func TestClientStats(t *testing.T) {
	s, conn := dial(t)
	c := chat.NewClient(s)
	hook := &hooktest.Trackers{During: func() { c.Stats() }}
	c.AddHook(hook)
	bob := jid.MustParse("bob@example.test")
	var trs []*tracking.MessageTracker
	for i := range 4 {
		tr, err := c.SendTracked(context.Background(), bob, fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		conn.Expect(t, "message")
		trs = append(trs, tr)
	}
	if _, err := c.SendTracked(context.Background(), jid.JID{}, "nowhere"); err == nil {
		t.Fatal("a send without an address succeeded")
	}
	conn.Write(t, fmt.Sprintf("<message from='bob@example.test/x' id='r0'><received xmlns='urn:xmpp:receipts' id='%s'/></message>", trs[2].ID()))
	conn.Write(t, fmt.Sprintf("<message from='bob@example.test/x' id='d1'><displayed xmlns='urn:xmpp:chat-markers:0' id='%s'/></message>", trs[1].ID()))
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	for i, want := range []tracking.MessageState{tracking.SeenByRecipient, tracking.SeenByRecipient, tracking.DeliveredToRecipient} {
		if st, _ := trs[i].Wait(ctx, want); st != want {
			t.Fatalf("message %d: %v, want %v", i, st, want)
		}
	}

	st := c.Stats()
	var active, ended tracking.StateCounts
	active[tracking.InTransit] = 1            // without stream management
	active[tracking.DeliveredToRecipient] = 1 // waits for a marker
	ended[tracking.SeenByRecipient] = 2
	if st.Started != 4 || st.Active != active || st.Ended != ended || st.Delivered != 3 {
		t.Fatalf("Stats %+v; want 4 started, active %v, ended %v, 3 delivered", st, active, ended)
	}

	c.Close()
	st = c.Stats()
	ended[tracking.DeliveredToRecipient] = 1
	ended[tracking.Closed] = 1
	if st.Active != (tracking.StateCounts{}) || st.Ended != ended {
		t.Fatalf("after Close: Stats %+v; want none active, ended %v", st, ended)
	}
	delivered, hookEnded, _ := hook.Seen()
	if hookEnded != st.Ended || uint64(len(delivered)) != st.Delivered {
		t.Fatalf("the hook saw endings %v and deliveries %v; Stats %+v", hookEnded, delivered, st)
	}
}
