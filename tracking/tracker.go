package tracking

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/notify"
	"github.com/xmpptrack/xmpptrack/stream"
)

// Change is one state change of a MessageTracker.
type Change struct {
	From, To MessageState
	// At is when the tracker changed.
	At time.Time
	// Response is the stanza that caused the change, or nil (an
	// acknowledgement, a timeout, Close).
	Response *Response
	// Ended is set on the last change an observer is told of: the move to
	// a final state, or the end of tracking at DeliveredToRecipient (see
	// Close), which is no change of state: From and To are both
	// DeliveredToRecipient, and Changes does not list it.
	Ended bool
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
	StanzaIDBy jid.JID
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
	ended   bool         // tracking ended at DeliveredToRecipient: the state never changes again
	endedAt time.Time
	// settledEnded is set once every observer has been told that tracking
	// ended; Wait and Done follow it.
	settledEnded bool
	// tok is the bound token while the tracker may still abort it: until
	// the token or the tracker is final.
	tok     Token
	timerID uint32      // identifies the armed timer; a timer that fires with an older id is stale
	timer   *time.Timer // the armed timer of a tracker without timers
	timers  *Timers     // set at creation by WithTimers
	slot    int         // the index of the armed deadline in timers, plus one; guarded by timers.mu
	// history holds every change, in order. Entries are never modified once
	// appended, so observers are handed sub-slices of it without copying.
	history []Change
	obs     notify.Serial[[]Change] // its Settler is set by the first OnChange
	done    chan struct{}           // made by Done, closed at a final state
	changed chan struct{}           // made by Wait, closed and cleared at every change
}

// Option configures a MessageTracker created by NewMessageTracker.
type Option func(*MessageTracker)

// WithTimeout arms the tracker's timeout at creation (see SetTimeout).
func WithTimeout(d time.Duration) Option {
	return func(t *MessageTracker) { t.SetTimeout(d) }
}

// settleLocked wakes the waiters (Wait, Done) for the changes cs, once every
// observer has seen them. Called with t.mu held.
func (t *MessageTracker) settleLocked(cs []Change) {
	last := cs[len(cs)-1]
	t.settled = last.To
	t.settledEnded = last.Ended
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
	if t.done != nil && t.settledOver() {
		// Nothing settles after the end of tracking: closed once.
		close(t.done)
	}
}

// settler is a MessageTracker as the notify.Settler of its observers.
type settler MessageTracker

func (t *settler) Settled(cs []Change) { (*MessageTracker)(t).settleLocked(cs) }

// settledOver reports whether every observer knows that tracking has ended.
// Called with t.mu held.
func (t *MessageTracker) settledOver() bool { return t.settledEnded }

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

// Err returns the error of the reply that moved the tracker to Error, or nil
// when the tracker is not in Error or the change carried no error. The
// reply's *stanza.Error is reachable with errors.As, and errors.Is matches it
// against a condition such as stanza.Error{Condition: stanza.NotAcceptable}.
func (t *MessageTracker) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != Error {
		return nil
	}
	if r := t.history[len(t.history)-1].Response; r != nil && r.Error != nil {
		return r.Error
	}
	return nil
}

// Ended reports whether tracking has ended: the tracker is in a final state,
// or Close ended it at DeliveredToRecipient (see Close). Its state never
// changes again.
func (t *MessageTracker) Ended() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state.IsFinal() || t.ended
}

// Transition moves the tracker to state to, recording r (which may be nil) as
// the stanza that caused the change. It is the one entry point for everything
// that drives a tracker.
//
// A transition the table does not allow (see the package documentation)
// changes nothing, notifies no one and returns a *TransitionError wrapping
// ErrInvalidTransition, and ErrFinal too if tracking has ended.
func (t *MessageTracker) Transition(to MessageState, r *Response) error {
	t.mu.Lock()
	a, err := t.move(to, r)
	t.mu.Unlock()
	a.run(&t.mu)
	return err
}

// Close ends tracking. A tracker that is not yet DeliveredToRecipient becomes
// Closed: nobody can say any more whether the message arrived; if its stanza
// is still queued in the stream, it is aborted and never sent. A tracker at
// DeliveredToRecipient keeps its state, which is the truth: the recipient has
// the message; only a later SeenByRecipient is given up. Either way Done is
// closed, Wait returns, the timer is released and the observers are
// forgotten. On a tracker whose tracking has already ended, Close changes
// nothing and returns an error wrapping ErrFinal.
func (t *MessageTracker) Close() error {
	t.mu.Lock()
	if t.state != DeliveredToRecipient || t.ended {
		a, err := t.move(Closed, nil)
		t.mu.Unlock()
		a.run(&t.mu)
		return err
	}
	t.ended, t.endedAt = true, time.Now()
	end := []Change{t.endChange()}
	var a after
	if t.obs.Settler == nil {
		t.settleLocked(end)
	} else {
		if t.obs.Emit(end) {
			a.obs = &t.obs
		}
		t.obs.Drop()
	}
	t.mu.Unlock()
	a.run(&t.mu)
	return nil
}

// Abort keeps the message from being sent: if its stanza is still queued in
// the stream, the stanza is aborted and the tracker becomes Aborted. A
// tracker not bound to a token yet becomes Aborted too, and the token it is
// bound to later is aborted at once. Abort fails, and changes nothing, when
// the stanza has already been written (the error wraps the token's, such as
// stream.ErrNotQueued) or tracking has ended (ErrFinal).
func (t *MessageTracker) Abort() error {
	t.mu.Lock()
	tok, bound := t.tok, t.bound
	if t.state.IsFinal() || t.ended {
		bound, tok = false, nil
	}
	t.mu.Unlock()
	if tok != nil {
		if err := tok.Abort(); err != nil {
			return fmt.Errorf("tracking: abort: %w", err)
		}
	} else if bound {
		// Bound, and the token is final: the stanza has left.
		return fmt.Errorf("tracking: abort: %w", stream.ErrNotQueued)
	}
	// The token's own change may be on its way to the tracker; the first
	// of the two wins, and both say Aborted.
	err := t.Transition(Aborted, nil)
	if err != nil && tok != nil && t.State() == Aborted {
		return nil
	}
	return err
}

// endChange is what observers are told when Close ends tracking at
// DeliveredToRecipient. Called with t.mu held.
func (t *MessageTracker) endChange() Change {
	return Change{From: DeliveredToRecipient, To: DeliveredToRecipient, At: t.endedAt, Ended: true}
}

// after is what a change leaves to do once t.mu is released: tell the
// observers, abort the stanza of a message whose tracking ended before it
// was written.
type after struct {
	obs   *notify.Serial[[]Change]
	abort Token
}

func (a after) run(mu sync.Locker) {
	if a.obs != nil {
		a.obs.Deliver(mu)
	}
	if a.abort != nil {
		// Written already: nothing to abort, which is fine.
		_ = a.abort.Abort()
	}
}

// move applies a transition with t.mu held, and returns what is left to do
// after unlocking.
func (t *MessageTracker) move(to MessageState, r *Response) (after, error) {
	var a after
	if err := checkTransition(t.state, to, t.ended); err != nil {
		return a, err
	}
	t.history = append(t.history, Change{From: t.state, To: to, At: time.Now(), Response: r, Ended: to.IsFinal()})
	t.state = to
	if to >= DeliveredToRecipient {
		t.stopTimer()
	}
	if to.IsFinal() && t.tok != nil {
		a.abort, t.tok = t.tok, nil
	}
	if t.obs.Settler == nil {
		t.settleLocked(t.history[len(t.history)-1:])
		return a, nil
	}
	n := len(t.history)
	if t.obs.Emit(t.history[n-1 : n : n]) {
		a.obs = &t.obs
	}
	if to.IsFinal() {
		t.obs.Drop()
	}
	return a, nil
}

// OnChange registers f to learn the tracker's changes. f is first called with
// every change already made, then with each later one: once per change, in
// order, never concurrently with itself and never with the tracker's lock
// held. f may call the tracker's methods; a change it causes is delivered
// after the current one. A tracker whose tracking has ended forgets its
// observers once they have been told.
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
	if t.obs.Settler == nil {
		t.obs.Settler = (*settler)(t)
	}
	n := len(t.history)
	replay := t.history[:n:n]
	if t.ended {
		replay = append(replay, t.endChange())
	}
	run := t.obs.Subscribe(each, replay)
	if t.state.IsFinal() || t.ended {
		t.obs.Drop()
	}
	t.mu.Unlock()
	if run {
		t.obs.Deliver(&t.mu)
	}
}

// Done returns a channel that is closed when tracking ends (see Ended), once
// every observer (OnChange) has been told of the last change.
func (t *MessageTracker) Done() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done == nil {
		t.done = make(chan struct{})
		if t.settledOver() {
			close(t.done)
		}
	}
	return t.done
}

// Wait blocks until tracking has ended (see Ended) or, for a non-final
// target, the tracker has reached target or gone beyond it
// (DeliveredToServer is reached by a tracker that went straight to
// DeliveredToRecipient). It returns the state then. When ctx ends first, it
// returns the current state and ctx's error.
// Wait returns only once every observer (OnChange) has been told of the
// change it returns for, so that what observers do is visible to the caller.
func (t *MessageTracker) Wait(ctx context.Context, target MessageState) (MessageState, error) {
	for {
		t.mu.Lock()
		s := t.settled
		if t.settledOver() || s >= target {
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
