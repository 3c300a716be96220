// Package tracking answers "where is my message?" for outgoing XMPP messages.
//
// A MessageTracker follows one sent message from the moment it is handed to
// the stream until the recipient has seen it, or until tracking ends some
// other way. Drivers (the stream binding, MUC reflection matching, delivery
// receipts, chat markers, the tracker's own timer and the user) report what
// they learn through a single entry point, Transition, and the tracker keeps
// only the changes its state machine allows.
//
// # States
//
// A tracker starts IN_TRANSIT. The other non-final states say how far the
// message is known to have got:
//
//	IN_TRANSIT              nothing has confirmed the message yet; this includes
//	                        a message written to a server without stream
//	                        management, which nothing will ever acknowledge
//	DELIVERED_TO_SERVER     the server acknowledged the stanza (XEP-0198)
//	DELIVERED_TO_RECIPIENT  the recipient (or the room) has it: a receipt or a
//	                        MUC reflection came back
//
// The final states end tracking; a final tracker never changes again:
//
//	SEEN_BY_RECIPIENT  the recipient displayed the message (a chat marker)
//	ABORTED            aborted or dropped before it left: never sent
//	TIMED_OUT          the tracker's timeout ran out before delivery to the
//	                   recipient
//	CLOSED             tracking was given up without knowing whether the
//	                   message arrived: closed by the user, or the connection
//	                   was lost with the stanza unacknowledged and could not
//	                   be resumed
//	ERROR              an error reply came back
//
// # Transitions
//
// The whole state machine is one table: each state, and the states it may
// move to.
//
//	IN_TRANSIT              -> DELIVERED_TO_SERVER, DELIVERED_TO_RECIPIENT,
//	                           SEEN_BY_RECIPIENT, ERROR, ABORTED, TIMED_OUT, CLOSED
//	DELIVERED_TO_SERVER     -> DELIVERED_TO_RECIPIENT, SEEN_BY_RECIPIENT,
//	                           ERROR, TIMED_OUT, CLOSED
//	DELIVERED_TO_RECIPIENT  -> SEEN_BY_RECIPIENT
//	final states            -> nothing
//
// So non-final states only move forward (skipping is allowed), nothing goes
// back to IN_TRANSIT, an error reply is ignored once the recipient has the
// message, a stanza the server acknowledged is never ABORTED, and a timeout
// only applies until delivery to the recipient. A rejected transition changes
// nothing, notifies no one and returns a *TransitionError; errors.Is reports
// ErrInvalidTransition for every rejection and, in addition, ErrFinal when
// the tracker was already final.
//
// # Where tracking ends
//
// Tracking ends at a final state, or when Close is called on a tracker at
// DELIVERED_TO_RECIPIENT: that tracker keeps its state (the recipient has the
// message, which Close must not hide) and only gives up waiting for
// SEEN_BY_RECIPIENT. The room and chat clients close a delivered tracker
// themselves once nothing can move it any more (a room's reflection is the
// last word about a groupchat message). Ended reports whether tracking has
// ended; Done is closed then, and Wait returns then whatever its target.
// After that, nothing changes the tracker.
//
// # Aborting
//
// A tracker whose tracking ends before its stanza was written (its timeout
// ran out while the stream's queue was full, it was closed, or Abort was
// called) aborts the stanza: the stream never sends it. Abort does so on
// request, and fails once the stanza has been written.
//
// # Binding to a stream token
//
// Bind connects a tracker to the token the stream gives the outgoing stanza
// (see stream.StanzaToken). The token speaks only about the way to the
// server: ACKED moves the tracker to DELIVERED_TO_SERVER; ABORTED, DROPPED and
// FAILED to ABORTED; DISCONNECTED (written, unacknowledged, lost with the
// connection) to CLOSED; QUEUED, SENT and SENT_WITHOUT_SM change nothing.
// Once the tracker is at DELIVERED_TO_RECIPIENT or beyond, token events are
// ignored, silently: a late acknowledgement cannot move it back, and a token
// event on a final tracker is no error. The tracker holds no reference to the
// token.
//
// # Timeouts
//
// SetTimeout and SetDeadline arm a timer: if the tracker has not reached
// DELIVERED_TO_RECIPIENT (or a final state) by then, it becomes TIMED_OUT.
// A timeout of zero or less means no timeout (here as in the room and chat
// clients); a deadline in the past times out at once.
// Reaching DELIVERED_TO_RECIPIENT or a final state stops and releases the
// timer. Timers are time.AfterFunc timers: a tracker never owns a goroutine.
// A client that tracks many messages at once gives its trackers one Timers
// (WithTimers), which runs all their timeouts on a single timer.
//
// # Metrics
//
// A Recorder counts a set of trackers (Stats: how many are under way, by
// state; how many ended, by outcome; the time to DELIVERED_TO_RECIPIENT) and
// tells its hooks (Hook) of each delivery and each end as it happens. The
// room and chat clients keep one each, behind their Stats and AddHook
// methods. The adapters for Prometheus and OpenTelemetry live in their own
// packages (metrics/prommetrics, metrics/otelmetrics).
//
// # Concurrency
//
// All methods are safe for use by many goroutines at once; one mutex per
// tracker guards its state. Observers registered with OnChange see every
// change of the tracker exactly once and in order (first the changes made
// before they registered, then the later ones), never concurrently with
// themselves and never with the tracker's lock held, so they may call back
// into the tracker: an observer that closes the tracker is told of the CLOSED
// change after the current one. A final tracker forgets its observers once
// they have been told. Done and Wait let a goroutine block until a state is
// reached instead.
package tracking
