package tracking

import (
	"context"
	"slices"
	"sync"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/notify"
)

// Change is one state change of a MessageTracker.
type Change struct {
	From, To MessageState
	// At is when the tracker changed.
	At time.Time
	// Response is the stanza that caused the change, or nil (an
	// acknowledgement, a timeout, Close).
	Response *Response
}

// Response describes the incoming stanza that caused a change: a reflection,
// a receipt, a chat marker or an error reply.
type Response struct {
	// Message holds the top-level attributes (from, to, id, type) of the
	// stanza.
	Message stanza.Message
	// Error is the parsed error of an error reply, nil otherwise.
	Error *stanza.Error
	// StanzaID and StanzaIDBy are the XEP-0359 stanza-id, and the JID that
	// assigned it, that a room or server gave the message, if any. Chat
	// markers in rooms refer to the message by this id.
	StanzaID   string
	StanzaIDBy string
}

// A MessageTracker follows one outgoing message. The zero value is a tracker
// in InTransit, ready for use; NewMessageTracker also applies options. All
// methods are safe for use by many goroutines at once. A MessageTracker must
// not be copied after first use.
type MessageTracker struct {
	id string // the message's stanza id; set once at creation

	// mu guards every field below, and the queue of obs.
	mu      sync.Mutex
	state   MessageState
	settled MessageState // the latest state every observer has seen; Wait and Done follow it
	bound   bool         // Bind was called
	timerID uint32       // identifies the armed timer; a timer that fires with an older id is stale
	timer   *time.Timer
	// history holds every change, in order. Entries are never modified once
	// appended, so observers are handed sub-slices of it without copying.
	history []Change
	obs     *notify.Serial[[]Change] // made by the first OnChange
	done    chan struct{}            // made by Done, closed at a final state
	changed chan struct{}            // made by Wait, closed and cleared at every change
}

// Option configures a MessageTracker created by NewMessageTracker.
type Option func(*MessageTracker)

// WithTimeout arms the tracker's timeout at creation (see SetTimeout).
func WithTimeout(d time.Duration) Option {
	return func(t *MessageTracker) { t.SetTimeout(d) }
}

// settleLocked wakes the waiters (Wait, Done) for a change that every
// observer has seen. Called with t.mu held.
func (t *MessageTracker) settleLocked(to MessageState) {
	t.settled = to
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
	if to.IsFinal() && t.done != nil {
		close(t.done)
	}
}

// WithID records the stanza id of the tracked message (see ID).
func WithID(id string) Option {
	return func(t *MessageTracker) { t.id = id }
}

// ID returns the stanza id of the tracked message, as given by WithID.
func (t *MessageTracker) ID() string { return t.id }

// NewMessageTracker returns a tracker in state InTransit.
func NewMessageTracker(opts ...Option) *MessageTracker {
	t := &MessageTracker{}
	for _, o := range opts {
		o(t)
	}
	return t
}

// State returns the tracker's current state.
func (t *MessageTracker) State() MessageState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state
}

// Changes returns a copy of the tracker's history, oldest change first.
func (t *MessageTracker) Changes() []Change {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.history)
}

// Response returns the stanza behind the latest change that had one, or nil.
func (t *MessageTracker) Response() *Response {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := len(t.history) - 1; i >= 0; i-- {
		if r := t.history[i].Response; r != nil {
			return r
		}
	}
	return nil
}

// Err returns the parsed error of the reply that moved the tracker to Error,
// or nil when the tracker is not in Error or the change carried no error.
func (t *MessageTracker) Err() *stanza.Error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != Error {
		return nil
	}
	if r := t.history[len(t.history)-1].Response; r != nil {
		return r.Error
	}
	return nil
}

// Transition moves the tracker to state to, recording r (which may be nil) as
// the stanza that caused the change. It is the one entry point for everything
// that drives a tracker.
//
// A transition the table does not allow (see the package documentation)
// changes nothing, notifies no one and returns a *TransitionError wrapping
// ErrInvalidTransition, and ErrFinal too if the tracker is final.
func (t *MessageTracker) Transition(to MessageState, r *Response) error {
	t.mu.Lock()
	obs, err := t.move(to, r)
	t.mu.Unlock()
	if obs != nil {
		obs.Deliver(&t.mu)
	}
	return err
}

// Close gives up tracking: a non-final tracker becomes Closed and its timer is
// released. On a final tracker Close changes nothing and returns an error
// wrapping ErrFinal.
func (t *MessageTracker) Close() error {
	return t.Transition(Closed, nil)
}

// move applies a transition with t.mu held. When observers must be told, it
// returns their queue, to be delivered after unlocking.
func (t *MessageTracker) move(to MessageState, r *Response) (*notify.Serial[[]Change], error) {
	if err := checkTransition(t.state, to); err != nil {
		return nil, err
	}
	t.history = append(t.history, Change{From: t.state, To: to, At: time.Now(), Response: r})
	t.state = to
	if to >= DeliveredToRecipient {
		t.stopTimer()
	}
	if t.obs == nil {
		t.settleLocked(to)
		return nil, nil
	}
	n := len(t.history)
	run := t.obs.Emit(t.history[n-1 : n : n])
	if to.IsFinal() {
		t.obs.Drop()
	}
	if run {
		return t.obs, nil
	}
	return nil, nil
}

// OnChange registers f to learn the tracker's changes. f is first called with
// every change already made, then with each later one: once per change, in
// order, never concurrently with itself and never with the tracker's lock
// held. f may call the tracker's methods; a change it causes is delivered
// after the current one. A final tracker forgets its observers once they have
// been told.
func (t *MessageTracker) OnChange(f func(Change)) {
	if f == nil {
		return
	}
	each := func(cs []Change) {
		for _, c := range cs {
			f(c)
		}
	}
	t.mu.Lock()
	if t.obs == nil {
		t.obs = &notify.Serial[[]Change]{Settled: func(cs []Change) { t.settleLocked(cs[len(cs)-1].To) }}
	}
	n := len(t.history)
	run := t.obs.Subscribe(each, t.history[:n:n])
	if t.state.IsFinal() {
		t.obs.Drop()
	}
	obs := t.obs
	t.mu.Unlock()
	if run {
		obs.Deliver(&t.mu)
	}
}

// Done returns a channel that is closed when the tracker reaches a final
// state, once every observer (OnChange) has been told of it.
func (t *MessageTracker) Done() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done == nil {
		t.done = make(chan struct{})
		if t.settled.IsFinal() {
			close(t.done)
		}
	}
	return t.done
}

// Wait blocks until the tracker is final or, for a non-final target, has
// reached target or gone beyond it (DeliveredToServer is reached by a tracker
// that went straight to DeliveredToRecipient). It returns the state then.
// When ctx ends first, it returns the current state and ctx's error.
// Wait returns only once every observer (OnChange) has been told of the
// change it returns for, so that what observers do is visible to the caller.
func (t *MessageTracker) Wait(ctx context.Context, target MessageState) (MessageState, error) {
	for {
		t.mu.Lock()
		s := t.settled
		if s.IsFinal() || s >= target {
			t.mu.Unlock()
			return s, nil
		}
		if t.changed == nil {
			t.changed = make(chan struct{})
		}
		changed := t.changed
		t.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return t.State(), ctx.Err()
		}
	}
}
