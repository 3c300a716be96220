package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	xstream "mellium.im/xmpp/stream"

	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// TestServerShutdown restarts the server gracefully while alice sends
// tracked room messages. The server ends her stream with
// <system-shutdown/>; the stream must wait before reconnecting (ejabberd
// 23.01 accepts logins for about a second after it, and a session there is
// lost with what it acknowledged: an early reconnection made it ack 51
// stanzas and archive 34 messages it never reflected), then start a new
// session and the room is joined again. Every tracker ends truthfully: a
// message is DELIVERED_TO_RECIPIENT only by alice's own reflection, and one
// the server lost ends TIMED_OUT (or CLOSED or ERROR), never stuck.
func TestServerShutdown(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := k.StartTB(t, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		type timedEvent struct {
			stream.Event
			seen time.Time
		}
		events := make(chan timedEvent, 64)
		alice := dialStream(t, srv, "alice", func(c *stream.Config) {
		})
		alice.OnEvent(func(ev stream.Event) {
			select {
			case events <- timedEvent{ev, time.Now()}:
			default:
			}
		})
		bob := dialStream(t, srv, "bob", nil)
		room := roomJID(t, srv, "shutdown")
		const timeout = 8 * time.Second
		// The rooms go down first and remove every occupant, with status
		// 332 (ejabberd: service shut down) or 333 (Prosody): the client
		// reports EventRemoved, and joining again is the application's
		// call. Had the stream gone first, the muc client would join again
		// by itself in the new session (EventRejoined).
		roomEvents := make(chan muc.Event, 16)
		events332 := muc.WithEvents(func(ev muc.Event) { roomEvents <- ev })
		mc, ra := join(t, alice, room, "alice", muc.WithTimeout(timeout), events332)
		join(t, bob, room, "bob")
		self := ra.OccupantJID().String()
		var mu sync.Mutex // guards ra
		current := func() *muc.Room {
			mu.Lock()
			defer mu.Unlock()
			return ra
		}

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		type record struct {
			tr     *tracking.MessageTracker
			sentAt time.Time
		}
		var records []record
		send := func(n int, pause time.Duration) {
			for range n {
				tr, err := current().SendTrackedMessage(ctx, fmt.Sprintf("shutdown %d", len(records)))
				if errors.Is(err, muc.ErrLeft) {
					time.Sleep(pause)
					continue // removed by the shutdown, not yet back
				}
				if err != nil {
					t.Fatalf("send %d: %v", len(records), err)
				}
				records = append(records, record{tr, time.Now()})
				time.Sleep(pause)
			}
		}
		send(50, time.Millisecond)
		restarted := make(chan error, 1)
		go func() { restarted <- srv.Restart(ctx) }()
		// Keep sending while the server goes down and comes back.
		send(150, 10*time.Millisecond)
		if err := <-restarted; err != nil {
			t.Fatal(err)
		}

		// ejabberd (stopped as ejabberdctl stop does) ends the stream with
		// <system-shutdown/>. Prosody 0.12 closes it too, but alice's
		// unread bytes make the close a reset, so her stream sees no
		// stream error and may reconnect at once: the port is closed.
		var lostAt time.Time
		var shutdown bool
		for lostAt.IsZero() {
			select {
			case ev := <-events:
				if ev.Kind != stream.EventDisconnected {
					continue
				}
				var se xstream.Error
				shutdown = errors.As(ev.Err, &se) && se.Err == "system-shutdown"
				if k.Name == servers.Ejabberd && !shutdown {
					t.Errorf("disconnected by %v, want <system-shutdown/>", ev.Err)
				}
				t.Logf("disconnected by %v", ev.Err)
				lostAt = ev.seen
			case <-ctx.Done():
				t.Fatal("the stream never lost its connection")
			}
		}
		for back := false; !back; {
			select {
			case ev := <-roomEvents:
				switch {
				case ev.Kind == muc.EventRejoined:
					back = true
				case ev.Kind == muc.EventRemoved:
					var re *muc.RemovedError
					// 332: service shut down (ejabberd); Prosody says 333.
					if !errors.As(ev.Err, &re) || !slices.ContainsFunc(re.Codes, func(c string) bool { return c == "332" || c == "333" }) {
						t.Fatalf("removed from the room: %v, want status 332 or 333", ev.Err)
					}
					jctx, jcancel := context.WithTimeout(ctx, 30*time.Second)
					r, err := mc.Join(jctx, room, "alice")
					jcancel()
					if err != nil {
						t.Fatalf("joining again after the shutdown: %v", err)
					}
					mu.Lock()
					ra = r
					mu.Unlock()
					back = true
				}
			case <-ctx.Done():
				t.Fatalf("the room was not joined again; attempts %+v", alice.Stats().Attempts)
			}
		}
		attempts := alice.Stats().Attempts
		if len(attempts) == 0 {
			t.Fatal("no reconnection attempt recorded")
		}
		if wait := attempts[0].At.Sub(lostAt); shutdown && wait < 1500*time.Millisecond {
			t.Errorf("reconnected %v after <system-shutdown/>, want a pause of seconds (attempts %+v)", wait, attempts)
		}
		send(20, time.Millisecond)

		states := make(map[tracking.MessageState]int)
		for i, r := range records {
			wctx, wcancel := context.WithDeadline(ctx, r.sentAt.Add(timeout+5*time.Second))
			st, _ := r.tr.Wait(wctx, tracking.DeliveredToRecipient)
			wcancel()
			states[st]++
			switch {
			case st == tracking.DeliveredToRecipient:
				if from, _ := deliveredBy(r.tr); from != self {
					t.Errorf("message %d delivered by a message from %q, want %q", i, from, self)
				}
			case !st.IsFinal():
				t.Errorf("message %d still %v past its timeout: %v", i, st, r.tr.Changes())
			case i >= len(records)-20:
				t.Errorf("message %d, sent after the rejoin, ended %v: %v", i, st, r.tr.Changes())
			}
		}
		t.Logf("%d messages: %v; first attempt %v after the shutdown; attempts %+v", len(records), states, attempts[0].At.Sub(lostAt).Round(time.Millisecond), attempts)
	})
}
