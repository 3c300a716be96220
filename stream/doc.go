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
// # Finding the server
//
// Config.Dial, when set, opens every connection; otherwise Config.Addr, when
// set, is dialed over TCP. When both are empty the stream finds the server as
// XMPP clients do, with mellium's dial package (mellium.im/xmpp/dial): it
// looks up the SRV records of the JID's domain, _xmpps-client._tcp (XEP-0368:
// TLS from the first byte) and _xmpp-client._tcp (RFC 6120 §3.2.1: STARTTLS),
// and tries their targets in turn, direct TLS first, until one connects. The
// domain itself stands in for a service without records (NXDOMAIN): port 5223
// with direct TLS, port 5222 with STARTTLS; a lone record with the target "."
// says that the domain offers no such service. (So a domain with only
// _xmpp-client._tcp records is first tried with direct TLS on port 5223.)
// Config.DialTimeout bounds each address tried, so that one that never answers
// leaves time for the next. Direct TLS uses Config.TLS (with the ALPN protocol
// "xmpp-client" unless NextProtos is set), and the stream then does no
// STARTTLS; without TLS (AllowPlaintext) no direct TLS is tried. The lookup is
// done again for every reconnection, so a server that moves is found where DNS
// says it now is. Config.Resolver replaces the system's resolver for these
// lookups.
//
// A resumption goes first to the location the server named in <enabled/>, if
// any (see below), and falls back to the above.
//
// # Tokens
//
// Send returns a token at once. It moves through these states (see
// TokenState):
//
//	QUEUED ──► SENT ──► ACKED
//	   │          ├───► DISCONNECTED
//	   │          └───► SENT_WITHOUT_SM
//	   └──► ABORTED | DROPPED | FAILED
//
// ACKED means the server counted the stanza in an <a h/> of XEP-0198 stream
// management, or in the h of <resumed/> or <failed/>: it has it. Nothing else
// makes a token ACKED. On a server without stream management a written
// stanza is SENT_WITHOUT_SM: nothing will ever confirm it; if its write
// fails it is DISCONNECTED instead.
//
// # Connection loss and resumption
//
// When the connection breaks (a read or write error, a reset, EOF without
// </stream:stream>, or a dead link, see below) the stream reconnects by
// itself with the configured backoff and resumes the session with <resume
// previd h/>, at the location the server named in <enabled/> if any, else
// at the usual address:
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
// Stream.OnEvent learns of each of these (EventResumed, EventNewSession…),
// so that higher layers can, for example, join their rooms again after a
// new session. Stats keeps a record of every reconnection attempt.
//
// A resumed connection whose first ack request is never answered is taken
// for broken and is not resumed again: a new session follows. (Prosody 0.12
// can resume onto a stream whose parser still holds a torn stanza, after
// which it silently ignores everything.) Likewise, when the server sends a
// stanza the stream cannot read, again on every resumption, the stream
// starts a new session after three such losses (ErrUnreadable).
//
// When the server ends its stream, the stream ends its own too and starts a
// new session. Close ends the stream as RFC 6120 asks: a last <a h/>, then
// </stream:stream>, then it waits briefly for the server's and closes the
// connection with a FIN.
//
// # Dead links
//
// The stream asks for an ack (<r/>) after each burst of stanzas, and, when
// nothing was received for Config.KeepAlive, as a probe of an idle link. It
// measures each request's round trip and keeps a smoothed estimate and its
// variance, as TCP does (RFC 6298). A link is dead when a request goes
// unanswered and nothing at all arrives for twice the estimate plus four
// times the variance (never less than Config.MinAckTimeout, 3 s by
// default): on a fast link a silent one is found within seconds, while a
// slow link is given the time its round trips take. A server that keeps
// sending is alive, however slow its acks, up to Config.AckTimeout. The
// rules live in sm.Pacer; Stats reports the estimate and the timeout.
//
// # Durability across restarts
//
// With Config.Outbox (package outbox; outbox/boltstore keeps it in a file),
// the writer commits each batch of stanzas, with the XEP-0198 state, before
// its bytes reach the socket, and Note lets the layers above record their
// messages in the same commits. A new process opens the same outbox with New:
// it restores the session the earlier one left, and Connect resumes it if
// the server still holds it; what the server had not acknowledged is written
// again with the same ids, and the inbound count carries on from the last
// stanza whose handlers had returned before a commit: the server sends the
// ones after it again, and the handlers see them (they must take a stanza
// whose effect is already recorded in their stride). Restored gives
// the restored stanzas' tokens, so that the layers above (set up between New
// and Connect, so that they see the first stanza the server resends) can
// follow them. When the session cannot be resumed, those tokens end
// DISCONNECTED: package reconcile asks the server's archive what became of
// them. A clean Close records that nothing is left to resume.
//
// # Bounds
//
// At most Config.MaxUnacked stanzas are written and unacknowledged, and at
// most Config.QueueSize wait to be written; Send waits for room (or for its
// context), or fails at once with ErrQueueFull in non-blocking mode.
//
// # Metrics
//
// Stats returns a snapshot of the stream's counters and gauges, copied
// under its lock: connections, resumptions (and those refused), new
// sessions, dead links, stanzas sent, acknowledged and received, the depth
// of the queues and the age of the oldest unacknowledged stanza, the ack
// round trip (smoothed, and the median and 99th percentile of the latest
// samples). A Hook, registered with AddHook, learns of each round trip and
// each connection event as it happens, on the callback goroutine. Nothing
// is registered globally; the adapters for Prometheus and OpenTelemetry
// live in their own packages (metrics/prommetrics, metrics/otelmetrics),
// which this one does not import.
//
// # Concurrency and callbacks
//
// All methods are safe for concurrent use. A Stream runs three goroutines:
// one that (re)connects, and per connection a reader and a writer. None of
// them runs user code. Handlers (Handle, HandleElement), event listeners
// (OnEvent), hooks (AddHook) and the observers of the changes the stream
// makes to tokens run on a fourth goroutine, the callback goroutine, one
// callback at a time, in the order things happened; it exists only while
// there is work for it. (A change the user makes, such as Abort, reaches
// the observers on the user's goroutine.)
//
// So a callback may call anything: Send (even one that waits for room in a
// full queue), SendIQ (its reply is matched by the reader, not by a
// callback), Abort, Close, a token's or a tracker's Wait. The stream keeps
// reading, writing, acknowledging and reconnecting meanwhile; only the
// callbacks queued behind it wait. Two consequences follow:
//
//   - a callback that waits for something only a later callback brings
//     about (a token's Wait on its own final state, which its observers
//     must see first) waits until its context ends: give it a deadline, or
//     hand the wait to a goroutine of your own;
//   - Close does not wait for callbacks (so a callback may call it); it
//     returns once every token is final and the stream's goroutines have
//     ended. Done is closed once the callbacks have run too.
//
// Each token's changes reach its observers once and in order, and a
// token's Wait and Done return only after its observers have seen its final
// state.
package stream
