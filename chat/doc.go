// Package chat sends one-to-one chat messages and tracks each one with
// XEP-0184 delivery receipts and XEP-0333 chat markers; it also answers the
// receipt requests of messages received.
//
// # Sending
//
// A Client is attached to a stream.Stream. Client.SendTracked sends a
// message of type chat that carries a random id, a XEP-0359 <origin-id/> with
// the same value, a XEP-0184 <request/> and a XEP-0333 <markable/>, and
// returns a tracking.MessageTracker that moves to
//
//   - DELIVERED_TO_SERVER when the server acknowledges the stanza
//     (XEP-0198), unless it is already further;
//   - DELIVERED_TO_RECIPIENT when the addressee answers with a receipt
//     (<received xmlns='urn:xmpp:receipts'/>) or a <received/> chat marker;
//   - SEEN_BY_RECIPIENT when the addressee sends a <displayed/> (or an
//     <acknowledged/>) chat marker for it or for a later message;
//   - ERROR when an error reply comes back before delivery to the recipient
//     (a user that does not exist, or an offline user on a server that
//     stores nothing);
//   - TIMED_OUT when nothing confirmed delivery to the recipient in time
//     (WithTimeout, Timeout), CLOSED when the client is closed, ABORTED when
//     the stanza never left.
//
// # Matching
//
// Receipts, markers and errors name the message by its id; the client finds
// it in a map by id (one lookup, never a scan). What matters is who sends
// them: only the addressee can say it has the message.
//
//   - A message sent to a bare JID (bob@example.net) or to a full JID
//     (bob@example.net/phone) is answered by any resource of that account,
//     or by the bare JID itself: the server delivers a message to a bare
//     JID to the resources it chooses, and reroutes one whose resource went
//     away to another resource of the account (RFC 6121 §8.5.3.2.1).
//     JIDs are compared as XMPP compares them.
//   - Anything else is ignored: another account that learnt or guessed the
//     id, our own other resources (they are not the addressee unless we
//     wrote to ourselves), and carbons (XEP-0280) of messages, whose receipt
//     is forwarded inside the carbon and is not the stanza's own child.
//   - An error reply must carry our id and come from the addressee (under
//     the rules above), from the addressee's bare JID, or from its server's
//     domain.
//
// Receipts and markers are matched on any message that is not of type
// error, whatever its type: clients send them as messages without a type.
// Only direct children of the message count. A XEP-0184 <received/> without
// an id attribute (as sent by implementations of its first version) refers
// to the message whose id the receipt itself carries.
//
// # Displayed markers are cumulative
//
// A <displayed/> marker means that the recipient displayed that message and
// every one before it. The client keeps, per address as written in the
// messages' to (a bare JID and each full JID are distinct conversations),
// the tracked messages in the order they were sent: a displayed marker for
// one of them moves it and every earlier one that is not final yet to
// SEEN_BY_RECIPIENT, including earlier ones whose receipt never came. The
// marker must come from a sender that may answer that message (see above).
// A marker for an id the client does not know changes nothing; a message
// sent to bob's phone is not marked by a displayed marker for a message sent
// to bob's bare JID, and the other way round. The order kept is the order
// on the wire: concurrent SendTracked calls take turns from Track to the
// stream's acceptance of the message.
//
// # What is kept, and for how long
//
// A message is remembered from SendTracked until its tracking ends: seen,
// timed out, in error, aborted, closed (without a timeout, a message that
// nobody answers is kept until Client.Close). DELIVERED_TO_RECIPIENT is not
// final, because a displayed marker may still come, and tracker timeouts
// stop at delivery; so that peers whose clients send receipts but never
// markers do not make the client grow without bound, at most
// WithUnseenLimit (DefaultUnseenLimit) delivered messages are remembered,
// across all addresses: when one more is delivered, the oldest delivered
// one is forgotten and its tracking ends. Its tracker stays
// DELIVERED_TO_RECIPIENT, which is the truth, and Done is closed. Closing a
// tracker forgets its message at once; Client.Close ends the tracking of
// every remembered message: undelivered ones end CLOSED, delivered ones keep
// DELIVERED_TO_RECIPIENT. Close the Client (and a Responder) before the
// stream.
//
// # Connection loss
//
// While the stream resumes its session (XEP-0198), nothing is lost: the
// server keeps the receipts addressed to us and delivers them after the
// resumption, and the stream writes again what the server had not
// acknowledged. When the stream has to start a new session instead, the
// messages the server had not acknowledged end CLOSED, and receipts sent to
// the previous session's full JID may be lost on the way (the server decides
// what to do with them): the trackers of such messages end TIMED_OUT unless
// a displayed marker reaches the new session.
//
// With a reconciler (Client.SetReconciler), the messages the lost session
// had written and the server had not acknowledged are not ended CLOSED:
// after the new session starts, those without a receipt are looked for in
// our own message archive (XEP-0313, package reconcile). One the archive
// holds is DELIVERED_TO_SERVER and stays tracked, as its receipt may still
// come; one it shows absent (it holds the anchor: the latest message to the
// same contact that the server had acknowledged before) is sent again with
// the same id and origin-id, after the messages sent meanwhile; the rest end
// CLOSED, with the archive's reason. Messages still queued simply go out in
// the new session.
//
// # Across a restart
//
// With an outbox (stream.Config.Outbox), the client records each tracked
// message (outbox.Message of Kind outbox.Chat, To as sent, its id as
// origin-id) before it is sent, and again at each change of its state, up
// to the last. A new process follows the messages the stream restored with
// Client.Follow, so that their receipts and markers still move a tracker,
// and the archive decides about them when the old session cannot be
// resumed. Client.Expect waits for the receipts of the messages the server
// had acknowledged before the process ended (they are no longer in the
// stream's log), and Client.SetAnchor gives the anchor the records hold,
// since the new process has no acknowledgement of its own yet; all three
// before Connect. WithID sends a message with a given id, to send one again
// that an earlier process recorded but never wrote.
//
// # Without a stream
//
// A Matcher is the matching part alone, without a stream: it tracks
// messages sent by other means and reads stanzas from anywhere, for example
// receipts and markers found in a message archive.
//
// # Receiving
//
// A Responder, attached to a stream, answers the XEP-0184 receipt requests
// of the messages the stream receives with a receipt of its own (a message
// without a type, with a new id, to the sender's full JID), and, when asked,
// adds a XEP-0333 <received/> marker for markable messages.
// Responder.MarkDisplayed tells a sender that the user has seen a message;
// WithMessages hands each received message to a function of yours, on a
// goroutine of the responder's, where it may call MarkDisplayed.
//
// # Metrics
//
// Client.Stats counts the trackers the client handed out: how many are
// under way, by state; how many ended, by outcome; the time to
// DELIVERED_TO_RECIPIENT (see tracking.Stats). Client.AddHook registers a
// tracking.Hook that learns of each delivery and outcome as it happens.
//
// # Concurrency
//
// Client, Matcher and Responder are safe for concurrent use. Stanzas are
// matched and answered on the stream's reader goroutine, which must never
// wait: the Responder's receipts are queued through the handler's own
// encoder, which never blocks, and tracker observers run on that goroutine
// too, so they must not block either.
package chat

import "errors"

// Namespaces of XEP-0184 and XEP-0333.
const (
	NSReceipts = "urn:xmpp:receipts"
	NSMarkers  = "urn:xmpp:chat-markers:0"
)

var (
	// ErrClosed is the error of operations on a closed Client or Matcher.
	ErrClosed = errors.New("chat: closed")
	// ErrDuplicateID is returned by Matcher.Track for an id that is already
	// tracked.
	ErrDuplicateID = errors.New("chat: id already tracked")
	// ErrInvalidText is returned for a body that is not valid UTF-8 or
	// holds characters that XML does not allow (such as most control
	// characters): sent as is, it would break the stream.
	ErrInvalidText = errors.New("chat: text not allowed in XML")
	// ErrBadID is returned for a WithID whose id is empty or holds
	// characters that XML does not allow.
	ErrBadID = errors.New("chat: bad id")
)
