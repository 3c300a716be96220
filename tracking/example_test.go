package tracking_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// token stands in for the *stream.StanzaToken that the stream returns for an
// outgoing stanza; here it is driven by hand.
type token struct {
	mu    sync.Mutex
	state stream.TokenState
	obs   []func(stream.TokenChange)
}

func (t *token) Observe(f func(stream.TokenChange)) {
	t.mu.Lock()
	s := t.state
	if !s.IsFinal() {
		t.obs = append(t.obs, f)
	}
	t.mu.Unlock()
	f(stream.TokenChange{State: s})
}

// Abort moves a queued token to TokenAborted, as a stream's token does.
func (t *token) Abort() error {
	t.mu.Lock()
	if t.state != stream.TokenQueued {
		t.mu.Unlock()
		return stream.ErrNotQueued
	}
	t.mu.Unlock()
	t.set(stream.TokenAborted)
	return nil
}

func (t *token) set(s stream.TokenState) {
	t.mu.Lock()
	t.state = s
	obs := t.obs
	if s.IsFinal() {
		t.obs = nil
	}
	t.mu.Unlock()
	for _, f := range obs {
		f(stream.TokenChange{State: s})
	}
}

func Example() {
	room := jid.MustParse("lobby@rooms.example.net")
	me := jid.MustParse("lobby@rooms.example.net/alice")

	t := tracking.NewMessageTracker(tracking.WithTimeout(time.Minute))
	t.OnChange(func(c tracking.Change) {
		fmt.Printf("%v -> %v\n", c.From, c.To)
	})

	// The stream writes the stanza and the server acknowledges it.
	tok := &token{}
	if err := t.Bind(tok); err != nil {
		fmt.Println(err)
	}
	tok.set(stream.TokenSent)
	tok.set(stream.TokenAcked)

	// The room reflects the message to its sender: the room has it.
	reflection := &tracking.Response{
		Message:    stanza.Message{ID: "m1", From: me, Type: stanza.GroupChatMessage},
		StanzaID:   "b1f3c0de",
		StanzaIDBy: room,
	}
	if err := t.Transition(tracking.DeliveredToRecipient, reflection); err != nil {
		fmt.Println(err)
	}

	// An error reply that comes back now is too late to matter.
	late := &tracking.Response{
		Message: stanza.Message{ID: "m1", From: room, Type: stanza.ErrorMessage},
		Error:   &stanza.Error{Type: stanza.Cancel, Condition: stanza.NotAcceptable},
	}
	fmt.Println(t.Transition(tracking.Error, late))
	fmt.Println(t.State(), t.Response().StanzaID)

	// A chat marker: someone in the room displayed it.
	if err := t.Transition(tracking.SeenByRecipient, nil); err != nil {
		fmt.Println(err)
	}
	<-t.Done()
	fmt.Println(t.Close())

	// Output:
	// IN_TRANSIT -> DELIVERED_TO_SERVER
	// DELIVERED_TO_SERVER -> DELIVERED_TO_RECIPIENT
	// tracking: DELIVERED_TO_RECIPIENT -> ERROR: transition not allowed
	// DELIVERED_TO_RECIPIENT b1f3c0de
	// DELIVERED_TO_RECIPIENT -> SEEN_BY_RECIPIENT
	// tracking: SEEN_BY_RECIPIENT -> CLOSED: tracker is final
}

// Where tracking ends, for each kind of message: a room message ends at
// DELIVERED_TO_RECIPIENT (the room client closes its tracker at the
// reflection: Done fires, the state stays); a one-to-one message goes on to
// SEEN_BY_RECIPIENT when the peer sends a displayed marker, and a Wait for
// SEEN on a peer that sends none returns only at its context's deadline,
// unless the tracker is closed.
func Example_whereTrackingEnds() {
	// A room message: the room's reflection is the last word.
	room := tracking.NewMessageTracker()
	_ = room.Transition(tracking.DeliveredToRecipient, nil) // the reflection
	_ = room.Close()                                        // what muc does then
	<-room.Done()
	st, _ := room.Wait(context.Background(), tracking.SeenByRecipient)
	fmt.Println("room:", st, room.Ended())

	// A one-to-one message to a peer that sends receipts and markers.
	chat := tracking.NewMessageTracker()
	_ = chat.Transition(tracking.DeliveredToRecipient, nil) // receipt
	_ = chat.Transition(tracking.SeenByRecipient, nil)      // displayed marker
	<-chat.Done()
	fmt.Println("chat:", chat.State(), chat.Ended())

	// A one-to-one message to a peer that sends receipts only: waiting for
	// SEEN ends at the deadline; Close then ends tracking, keeping the
	// delivery.
	quiet := tracking.NewMessageTracker()
	_ = quiet.Transition(tracking.DeliveredToRecipient, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	st, err := quiet.Wait(ctx, tracking.SeenByRecipient)
	fmt.Println("quiet:", st, err)
	_ = quiet.Close()
	fmt.Println("quiet after Close:", quiet.State(), quiet.Ended())

	// Output:
	// room: DELIVERED_TO_RECIPIENT true
	// chat: SEEN_BY_RECIPIENT true
	// quiet: DELIVERED_TO_RECIPIENT context deadline exceeded
	// quiet after Close: DELIVERED_TO_RECIPIENT true
}
