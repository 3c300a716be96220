// Package stream is a client XMPP stream over mellium.im/xmpp that owns all of
// the connection's I/O and gives every outgoing stanza a StanzaToken that
// says, truthfully, how far the stanza got.
//
// mellium negotiates the connection (STARTTLS, SASL, resource binding); from
// then on every stanza in and out passes through one reader and one writer
// goroutine of the Stream, so that the XEP-0198 counters (package sm) are
// exact: the stream answers IQ requests that no handler answered itself, and
// nothing is written behind its back.
//
// # Tokens
//
// Send returns a token at once. It moves through these states (see
// TokenState):
//
//	QUEUED ──► SENT ──► ACKED
//	   │          └───► DISCONNECTED
//	   ├──► SENT_WITHOUT_SM
//	   └──► ABORTED | DROPPED | FAILED
//
// ACKED means the server counted the stanza in an <a h/> of XEP-0198 stream
// management, or in the h of <resumed/> or <failed/>: it has it. Nothing else
// makes a token ACKED. On a server without stream management a written
// stanza is SENT_WITHOUT_SM: nothing will ever confirm it.
//
// # Connection loss and resumption
//
// When the connection breaks (a read or write error, a reset, EOF without
// </stream:stream>, or an ack request unanswered for Config.AckTimeout, which
// catches a silent dead link) the stream reconnects by itself with the
// configured backoff and resumes the session with <resume previd h/>:
//
//   - on <resumed h/> the stanzas up to h become ACKED, the rest are written
//     again in their original order, and only then the stanzas sent while
//     disconnected. Nothing is lost, duplicated or reordered.
//   - on <failed/> (the server forgot the session, or the resumption window
//     ran out) the stanzas its h counts become ACKED and the rest become
//     DISCONNECTED: the server may or may not have them, and the stream never
//     sends them again on its own. A new session is bound, stream
//     management enabled again, and the queued stanzas are written there.
//
// An <a/> or <resumed/> whose h counts more stanzas than were sent is a
// protocol violation: the stream writes the <handled-count-too-high/> stream
// error of XEP-0198 and ends for good with ErrProtocol; no token becomes
// ACKED by it.
//
// Config.OnEvent learns of each of these (EventResumed, EventNewSession…),
// so that higher layers can, for example, join their rooms again after a
// new session. Stats keeps a record of every reconnection attempt.
//
// A resumed connection whose first ack request is never answered is taken
// for broken and is not resumed again: a new session follows. (Prosody 0.12
// can resume onto a stream whose parser still holds a torn stanza, after
// which it silently ignores everything.)
//
// # Bounds
//
// At most Config.MaxUnacked stanzas are written and unacknowledged, and at
// most Config.QueueSize wait to be written; Send waits for room (or for its
// context), or fails at once with ErrQueueFull in non-blocking mode.
//
// # Concurrency
//
// All methods are safe for concurrent use. A Stream runs three goroutines:
// one that (re)connects, and per connection a reader and a writer. Handlers
// (see Handle) run on the reader; token observers run on whichever goroutine
// changed the token, never with the stream's lock held. Close ends them all.
package stream
