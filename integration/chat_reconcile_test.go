package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	xchat "github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/reconcile"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// TestChatResumeRefusedReconciled: alice sends tracked one-to-one messages
// to bob through the fault proxy, with the chat client's reconciler over
// her own archive (mod_mam). Some reach the server while its answers are
// held back, others never leave the stalled proxy; then the link is cut and
// the server drops her session after a short hibernation, so the
// resumption is refused. No message ends CLOSED: each is
// DELIVERED_TO_SERVER (Prosody's <failed h/>, or the archive, vouches for
// it) or DELIVERED_TO_RECIPIENT; those that never reached the server are
// absent from an archive that holds alice's anchor, so they are sent again,
// and bob's receipts make them DELIVERED_TO_RECIPIENT. Bob receives every
// body exactly once.
func TestChatResumeRefusedReconciled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own Prosody")
	}
	const hibernation = 2 * time.Second
	srv := prosody.StartTB(t, prosody.Options{
		Users:           map[string]string{"alice": "a-pw", "bob": "b-pw"},
		MAM:             true,
		NoMUC:           true,
		HibernationTime: hibernation,
	})
	p := newProxy(t, srv)
	var gate sync.RWMutex // held while alice must not reconnect
	alice := dialStream(t, srv, "alice", gatedViaProxy(t, p, &gate, hibernation+10*time.Second))
	events := eventsOf(alice)
	bob := dialStream(t, srv, "bob", nil)
	seen := newChatLog(bob)
	responder := xchat.NewResponder(bob)
	t.Cleanup(func() { responder.Close() })
	available(t, bob)
	bobJID := srv.JID("bob").Bare()

	c := newChatClient(t, alice, xchat.WithTimeout(0))
	c.SetReconciler(reconciler(t, alice, nil), reconcile.ResendIfAbsent)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type sentMsg struct {
		body    string
		tr      *tracking.MessageTracker
		stalled bool // never reached the server before the cut
	}
	var all []sentMsg
	sendTo := func(body string, stalled bool) {
		t.Helper()
		tr, err := c.SendTracked(ctx, bobJID, body)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, sentMsg{body: body, tr: tr, stalled: stalled})
	}

	// The anchor: acknowledged by the server, in the archive.
	sendTo("anchor", false)
	waitState(ctx, t, "anchor", all[0].tr, tracking.DeliveredToRecipient)
	for alice.Stats().Unacked > 0 {
		time.Sleep(5 * time.Millisecond)
	}

	// These reach the server (and bob); its acks and bob's receipts are
	// held back, and the cut discards them.
	const held, stalled = 4, 4
	p.HoldServerToClient()
	for i := range held {
		sendTo(fmt.Sprintf("held %d", i), false)
	}
	seen.waitFor(t, 1+held, 10*time.Second)

	// These never reach the server.
	p.Stall()
	base := alice.Stats().Sent
	for i := range stalled {
		sendTo(fmt.Sprintf("stalled %d", i), true)
	}
	for alice.Stats().Sent < base+stalled {
		select {
		case <-ctx.Done():
			t.Fatal("the stalled messages were never written")
		case <-time.After(5 * time.Millisecond):
		}
	}

	// The link breaks; alice may not reconnect until the server has
	// dropped her hibernating session.
	gate.Lock()
	p.Cut()
	time.Sleep(hibernation + 2*time.Second)
	p.Unstall()
	p.ReleaseServerToClient()
	gate.Unlock()

	for newSession := false; !newSession; {
		select {
		case ev := <-events:
			if ev.Kind == stream.EventNewSession {
				if !errors.Is(ev.Err, stream.ErrResumeRefused) {
					t.Fatalf("new session after %v, want a refused resumption (attempts %+v)", ev.Err, alice.Stats().Attempts)
				}
				t.Logf("new session: acked %d, lost %d", ev.Acked, ev.Lost)
				newSession = true
			}
		case <-ctx.Done():
			t.Fatalf("no new session; attempts %+v", alice.Stats().Attempts)
		}
	}

	// Every message reaches DELIVERED_TO_SERVER at least; those sent
	// again reach bob, whose receipts go to alice's new session.
	states := make(map[tracking.MessageState]int)
	byArchive := 0
	for _, m := range all {
		want := tracking.DeliveredToServer
		if m.stalled {
			want = tracking.DeliveredToRecipient
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		st, _ := m.tr.Wait(wctx, want)
		wcancel()
		if st != tracking.DeliveredToServer && st != tracking.DeliveredToRecipient {
			t.Errorf("%q ended %v: %v", m.body, st, m.tr.Changes())
		}
		if m.stalled && st != tracking.DeliveredToRecipient {
			t.Errorf("%q, which never reached the server, is %v: %v", m.body, st, m.tr.Changes())
		}
		if resp := m.tr.Response(); st == tracking.DeliveredToServer && resp != nil && resp.StanzaID != "" {
			byArchive++
		}
		states[st]++
	}
	t.Logf("states %v; %d DELIVERED_TO_SERVER by the archive", states, byArchive)

	// Bob has each body exactly once: nothing the server had was sent
	// again, and nothing it lacked was lost.
	got := seen.waitFor(t, len(all), 10*time.Second)
	time.Sleep(500 * time.Millisecond) // room for a duplicate to show
	seen.mu.Lock()
	got = append(got[:0], seen.msgs...)
	seen.mu.Unlock()
	count := make(map[string]int)
	for _, r := range got {
		count[r.body]++
	}
	for _, m := range all {
		if count[m.body] != 1 {
			t.Errorf("bob received %q %d times", m.body, count[m.body])
		}
	}
	if len(got) != len(all) {
		t.Errorf("bob received %d messages, want %d", len(got), len(all))
	}
}

// gatedViaProxy is viaProxyOneAtATime, and dials only while gate is not
// held for writing, so that a test can keep the stream from reconnecting
// until the server has dropped its session. ackTimeout bounds a
// reconnection attempt, which starts as the link is lost and must outlast
// the hold while its dial waits.
func gatedViaProxy(t testing.TB, p *faultproxy.Proxy, gate *sync.RWMutex, ackTimeout time.Duration) func(*stream.Config) {
	return func(c *stream.Config) {
		viaProxyOneAtATime(t, p)(c)
		c.AckTimeout = ackTimeout
		dial := c.Dial
		c.Dial = func(ctx context.Context) (net.Conn, error) {
			gate.RLock()
			defer gate.RUnlock()
			return dial(ctx)
		}
	}
}

// eventsOf returns the channel that learns of s's connection events (the
// latest ones are dropped when it is full).
func eventsOf(s *stream.Stream) <-chan stream.Event {
	events := make(chan stream.Event, 64)
	s.OnEvent(func(ev stream.Event) {
		select {
		case events <- ev:
		default:
		}
	})
	return events
}
