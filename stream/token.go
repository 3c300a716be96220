package stream

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/xmpptrack/xmpptrack/internal/notify"
)

// TokenState is where an outgoing stanza is on its way to the server.
//
// A token starts in TokenQueued and ends in exactly one final state, along
// the arrows of the package documentation's drawing: QUEUED to SENT,
// ABORTED, DROPPED or FAILED; SENT to ACKED, DISCONNECTED or
// SENT_WITHOUT_SM. No other change ever happens.
type TokenState uint8

// The states of a StanzaToken.
const (
	// TokenQueued: accepted by Send, waiting for the writer.
	TokenQueued TokenState = iota
	// TokenSent: written to a stream with stream management, awaiting the
	// server's acknowledgement. A token stays TokenSent across a resumed
	// connection (the stanza is written again if the server had not counted it).
	TokenSent
	// TokenAcked: the server counted the stanza in an <a h='…'/> (XEP-0198).
	// This is the only state that proves the server has the stanza.
	TokenAcked
	// TokenSentWithoutSM: written to a stream without stream management
	// (the token is TokenSent while the write is under way). Nothing will
	// ever confirm or deny that the server received it. A write that fails
	// makes such a token TokenDisconnected instead.
	TokenSentWithoutSM
	// TokenAborted: aborted by the user while still queued; never written.
	TokenAborted
	// TokenDropped: refused before it was queued, for example because it
	// could not be serialised; never written.
	TokenDropped
	// TokenDisconnected: written, not acknowledged, and the connection was
	// lost and not resumed, or the stream was closed before the server
	// acknowledged it. The server may or may not have it.
	TokenDisconnected
	// TokenFailed: the stream failed (or was closed) before the stanza could
	// be written; never written.
	TokenFailed
)

var tokenStateNames = [...]string{
	TokenQueued:        "QUEUED",
	TokenSent:          "SENT",
	TokenAcked:         "ACKED",
	TokenSentWithoutSM: "SENT_WITHOUT_SM",
	TokenAborted:       "ABORTED",
	TokenDropped:       "DROPPED",
	TokenDisconnected:  "DISCONNECTED",
	TokenFailed:        "FAILED",
}

// String returns the state's name, e.g. "ACKED".
func (s TokenState) String() string {
	if int(s) < len(tokenStateNames) {
		return tokenStateNames[s]
	}
	return fmt.Sprintf("TokenState(%d)", s)
}

// IsFinal reports whether the state can never change again.
func (s TokenState) IsFinal() bool { return s >= TokenAcked }

// tokenNext is the token's whole state machine: tokenNext[from] holds the
// states it may move to. Final states have none.
var tokenNext = [...][]TokenState{
	TokenQueued: {TokenSent, TokenAborted, TokenDropped, TokenFailed},
	TokenSent:   {TokenAcked, TokenDisconnected, TokenSentWithoutSM},
}

func tokenMayMove(from, to TokenState) bool {
	if int(from) >= len(tokenNext) {
		return false
	}
	for _, s := range tokenNext[from] {
		if s == to {
			return true
		}
	}
	return false
}

// ErrNotQueued is returned by Abort when the stanza has already left the
// queue (it was written, or the token is final).
var ErrNotQueued = errors.New("stream: stanza is no longer queued")

// TokenChange is one state change of a StanzaToken, as seen by an observer.
type TokenChange struct {
	State TokenState
	// Err is the reason for TokenDropped, TokenFailed and TokenDisconnected,
	// nil otherwise.
	Err error
}

// A StanzaToken follows one outgoing stanza. It is returned by Stream.Send and
// is safe for use by many goroutines.
type StanzaToken struct {
	id string
	// session is the number of the session the stanza was written in, 0
	// until it is written. Set by the writer before the token leaves
	// TokenQueued, read under mu.
	session uint64

	mu    sync.Mutex // guards the fields below
	state TokenState
	err   error
	obs   notify.Serial[TokenChange]
	done  chan struct{} // made on demand, closed once the final state is settled
	// settled is set once every observer has seen the final state.
	settled bool
}

func newToken(id string) *StanzaToken {
	return &StanzaToken{id: id}
}

// ID returns the id attribute of the stanza.
func (t *StanzaToken) ID() string { return t.id }

// Session returns the number of the session the stanza was written in (see
// Event.Session), or 0 if it has not been written.
func (t *StanzaToken) Session() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.session
}

// State returns the token's current state.
func (t *StanzaToken) State() TokenState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state
}

// Err returns the error behind TokenDropped, TokenFailed or TokenDisconnected,
// or nil.
func (t *StanzaToken) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// Observe registers f to learn the token's state: f is called at once with
// the current state and then with every later change, once each, in order,
// never concurrently with itself and never with the token's lock held.
func (t *StanzaToken) Observe(f func(TokenChange)) {
	t.mu.Lock()
	if t.obs.Settler == nil {
		t.obs.Settler = (*tokenSettler)(t)
	}
	run := t.obs.Subscribe(f, TokenChange{State: t.state, Err: t.err})
	t.mu.Unlock()
	if run {
		t.obs.Deliver(&t.mu)
	}
}

// Done returns a channel that is closed when the token reaches a final
// state, once every observer (Observe) has been told of it.
func (t *StanzaToken) Done() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done == nil {
		t.done = make(chan struct{})
		if t.settled {
			close(t.done)
		}
	}
	return t.done
}

// settleLocked closes Done once every observer has seen the final change,
// so that a waiter never runs ahead of the observers. Called with t.mu
// held.
func (t *StanzaToken) settleLocked(c TokenChange) {
	if c.State.IsFinal() {
		t.settled = true
		if t.done != nil {
			close(t.done)
		}
	}
}

// tokenSettler is a StanzaToken as the notify.Settler of its observers.
type tokenSettler StanzaToken

func (t *tokenSettler) Settled(c TokenChange) { (*StanzaToken)(t).settleLocked(c) }

// Wait blocks until the token reaches a final state or ctx ends, and returns
// the state it is in then. The error is ctx's when ctx ended first, otherwise
// the token's own error (see Err).
func (t *StanzaToken) Wait(ctx context.Context) (TokenState, error) {
	select {
	case <-t.Done():
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.state, t.err
	case <-ctx.Done():
		return t.State(), ctx.Err()
	}
}

// Abort keeps a queued stanza from being written: the token becomes
// TokenAborted. It returns an error wrapping ErrNotQueued when the stanza
// has already been written or the token is final.
func (t *StanzaToken) Abort() error {
	if !t.move(TokenQueued, TokenAborted, nil) {
		return fmt.Errorf("stream: abort %q in state %v: %w", t.id, t.State(), ErrNotQueued)
	}
	return nil
}

// move changes the state from `from` to `to` when the token is in `from` and
// the table allows it, and reports whether it did. Observers learn of the
// change on the calling goroutine; the stream's own goroutines use
// Stream.move instead, which hands that to the callback goroutine.
func (t *StanzaToken) move(from, to TokenState, err error) bool {
	moved, deliver := t.change(from, to, err)
	if deliver {
		t.deliver()
	}
	return moved
}

// change is move without telling the observers: it reports whether the
// token moved and whether deliver must be called (once, without any lock
// held) to tell them.
func (t *StanzaToken) change(from, to TokenState, err error) (moved, deliver bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != from || !tokenMayMove(from, to) {
		return false, false
	}
	t.state = to
	t.err = err
	c := TokenChange{State: to, Err: err}
	if t.obs.Settler == nil {
		t.settleLocked(c) // nobody observes: settled at once
	}
	deliver = t.obs.Emit(c)
	if to.IsFinal() {
		t.obs.Drop()
	}
	return true, deliver
}

// deliver tells the observers of the changes queued by change.
func (t *StanzaToken) deliver() { t.obs.Deliver(&t.mu) }
