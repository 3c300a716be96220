package tracking

import (
	"errors"
	"fmt"
)

// MessageState is where a tracked message is known to be.
//
// The non-final states are ordered: InTransit < DeliveredToServer <
// DeliveredToRecipient, and a tracker only moves forward through them. The
// final states follow them in the numbering, so s >= DeliveredToRecipient
// means "delivered to the recipient, or final".
type MessageState uint8

// The states of a MessageTracker. The zero value is InTransit.
const (
	// InTransit: nothing has confirmed the message yet. This includes a
	// message written to a server without stream management: nothing
	// acknowledged it, so it is not DeliveredToServer.
	InTransit MessageState = iota
	// DeliveredToServer: the server acknowledged the stanza (XEP-0198).
	DeliveredToServer
	// DeliveredToRecipient: the recipient has the message, as shown by a
	// delivery receipt or, in a room, by the room's reflection of it.
	DeliveredToRecipient
	// SeenByRecipient: the recipient displayed the message (a chat marker).
	// Final.
	SeenByRecipient
	// Aborted: the message was aborted or dropped before it left; it was
	// never sent. Final.
	Aborted
	// TimedOut: the tracker's timeout ran out before the message was
	// delivered to the recipient. Final.
	TimedOut
	// Closed: tracking was given up before the message was known to be
	// delivered to the recipient, so nobody can say whether it arrived:
	// the user closed the tracker, or the connection was lost with the
	// stanza unacknowledged and could not be resumed. (Closing a tracker at
	// DeliveredToRecipient keeps that state; see MessageTracker.Close.)
	// Final.
	Closed
	// Error: an error reply came back for the message (see
	// MessageTracker.Err). Final.
	Error

	numStates = iota
)

var stateNames = [...]string{
	InTransit:            "IN_TRANSIT",
	DeliveredToServer:    "DELIVERED_TO_SERVER",
	DeliveredToRecipient: "DELIVERED_TO_RECIPIENT",
	SeenByRecipient:      "SEEN_BY_RECIPIENT",
	Aborted:              "ABORTED",
	TimedOut:             "TIMED_OUT",
	Closed:               "CLOSED",
	Error:                "ERROR",
}

// String returns the state's name, e.g. "DELIVERED_TO_SERVER".
func (s MessageState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("MessageState(%d)", s)
}

// IsFinal reports whether the state can never change again.
func (s MessageState) IsFinal() bool { return s >= SeenByRecipient }

// next is the tracker's whole state machine: next[from] holds the states it
// may move to. Final states have none.
var next = [numStates][]MessageState{
	InTransit:            {DeliveredToServer, DeliveredToRecipient, SeenByRecipient, Error, Aborted, TimedOut, Closed},
	DeliveredToServer:    {DeliveredToRecipient, SeenByRecipient, Error, TimedOut, Closed},
	DeliveredToRecipient: {SeenByRecipient},
}

// checkTransition returns nil if the table allows from -> to on a tracker
// whose tracking has not ended, and the *TransitionError that explains the
// rejection otherwise.
func checkTransition(from, to MessageState, ended bool) error {
	if from.IsFinal() || ended {
		return &TransitionError{From: from, To: to, Err: ErrFinal}
	}
	if int(from) < len(next) {
		for _, s := range next[from] {
			if s == to {
				return nil
			}
		}
	}
	return &TransitionError{From: from, To: to, Err: ErrInvalidTransition}
}

var (
	// ErrInvalidTransition is wrapped by every rejected transition: the
	// table does not allow the requested state from the current one.
	ErrInvalidTransition = errors.New("tracking: transition not allowed")
	// ErrFinal is wrapped by a transition rejected because tracking has
	// ended: the tracker is in a final state, or was closed at
	// DeliveredToRecipient. It wraps ErrInvalidTransition.
	ErrFinal = fmt.Errorf("%w: tracker is final", ErrInvalidTransition)
	// ErrBound is returned by Bind when the tracker is already bound to a
	// token.
	ErrBound = errors.New("tracking: tracker is already bound to a token")
)

// TransitionError is the error of a rejected transition.
type TransitionError struct {
	From, To MessageState
	Err      error // ErrFinal or ErrInvalidTransition
}

// Error says which transition was rejected and why.
func (e *TransitionError) Error() string {
	if e.Err == ErrFinal {
		if !e.From.IsFinal() {
			return fmt.Sprintf("tracking: %v -> %v: tracking has ended", e.From, e.To)
		}
		return fmt.Sprintf("tracking: %v -> %v: tracker is final", e.From, e.To)
	}
	return fmt.Sprintf("tracking: %v -> %v: transition not allowed", e.From, e.To)
}

// Unwrap returns ErrFinal or ErrInvalidTransition.
func (e *TransitionError) Unwrap() error { return e.Err }
