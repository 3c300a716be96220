package tracking

import (
	"errors"
	"fmt"

	"github.com/xmpptrack/xmpptrack/stream"
)

// Token is what a tracker needs of the stream's token for an outgoing stanza;
// *stream.StanzaToken implements it. Observe must call f at once with the
// token's current state and then with each change, in order. Abort keeps a
// queued stanza from being written, and fails once it has been.
type Token interface {
	Observe(f func(stream.TokenChange))
	Abort() error
}

// Bind makes the tracker follow tok, the stream's token for the message's
// stanza (see the package documentation for what each token state means to
// the tracker). A tracker can be bound once: a second Bind returns ErrBound.
// Binding a tracker whose tracking has already ended (timed out, closed,
// aborted while its message waited for room in the stream's queue) aborts
// tok: a message whose tracking ended before it left is never sent.
//
// The tracker keeps a reference to tok only while tok is not final, so that
// Abort can reach it; tok keeps the tracker reachable until tok is final.
func (t *MessageTracker) Bind(tok Token) error {
	if tok == nil {
		return errors.New("tracking: bind to a nil token")
	}
	t.mu.Lock()
	if t.bound {
		t.mu.Unlock()
		return fmt.Errorf("tracking: bind: %w", ErrBound)
	}
	t.bound = true
	over := t.state.IsFinal() || t.ended
	if !over {
		t.tok = tok
	}
	t.mu.Unlock()
	if over {
		// Written already: nothing to abort, which is fine.
		_ = tok.Abort()
		return nil
	}
	tok.Observe(t.onToken)
	return nil
}

// fromToken maps a token state to the tracker state it implies, and reports
// false when it implies no change:
//
//	TokenAcked                              -> DeliveredToServer
//	TokenAborted, TokenDropped, TokenFailed -> Aborted (never sent)
//	TokenDisconnected                       -> Closed (written, unacknowledged,
//	                                           lost with the connection)
//	TokenQueued, TokenSent                  -> no change
//	TokenSentWithoutSM                      -> no change: nothing will ever
//	                                           acknowledge the stanza, so it
//	                                           stays InTransit
func fromToken(s stream.TokenState) (MessageState, bool) {
	switch s {
	case stream.TokenAcked:
		return DeliveredToServer, true
	case stream.TokenAborted, stream.TokenDropped, stream.TokenFailed:
		return Aborted, true
	case stream.TokenDisconnected:
		return Closed, true
	}
	return InTransit, false
}

// onToken applies a token change. A token only knows about the way to the
// server, so once the tracker is at DeliveredToRecipient or beyond (final
// included) the change is ignored, and a change the table rejects is ignored
// too: no error surfaces from a token event.
func (t *MessageTracker) onToken(c stream.TokenChange) {
	to, ok := fromToken(c.State)
	t.mu.Lock()
	if c.State.IsFinal() {
		t.tok = nil // nothing left to abort
	}
	if !ok || t.state >= DeliveredToRecipient || t.ended {
		t.mu.Unlock()
		return
	}
	a, _ := t.move(to, nil)
	t.mu.Unlock()
	a.run(&t.mu)
}
