// Package muc sends messages to XEP-0045 multi-user chat rooms and tracks
// each one until the room reflects it.
//
// A Client is attached to a stream.Stream. Client.Join enters a room;
// Room.SendTrackedMessage sends a groupchat message and returns a
// tracking.MessageTracker that moves to
//
//   - DELIVERED_TO_SERVER when the server acknowledges the stanza
//     (XEP-0198), unless it is already further;
//   - DELIVERED_TO_RECIPIENT when the room reflects that very message back
//     from our own occupant JID: XEP-0045 requires a room to send every
//     occupant's message back to its sender, so the reflection proves that
//     the room accepted and distributed it;
//   - ERROR when the room answers with an error (for example not-acceptable
//     when we are no longer an occupant, or forbidden without voice);
//   - TIMED_OUT when neither happens in time, CLOSED when the room is left
//     or the client closed, ABORTED when the stanza never left.
//
// The reflection is the room's last word: the room closes the tracker then,
// so tracking ends at DELIVERED_TO_RECIPIENT (Done is closed, the state
// stays). A timeout of zero or less means no timeout; WithPendingLimit
// bounds the messages without one.
//
// # Matching
//
// Every message carries a random id, and the same value in a XEP-0359
// <origin-id/>, known before it is sent (WithIDs sets them apart). A reflection must be of type groupchat and come from our
// occupant JID, compared as XMPP compares JIDs (the room's localpart and
// domain normalized, the nick exactly); when the room gave us a XEP-0421
// occupant id, the reflection must carry it too. It is matched by its
// origin-id or, when the room dropped that, by its id: one map lookup each,
// never a scan. Another occupant who sends a message with our id and
// origin-id does not move our tracker, because the room relays it from that
// occupant's JID. An error must come from the room's bare JID or our
// occupant JID and carry our id. Of the XEP-0359 stanza-ids of a reflection,
// the one assigned by the room is kept (tracking.Response.StanzaID). Once a
// tracker is DELIVERED_TO_RECIPIENT or final, the room forgets it. After a
// nick change (Room.SetNick, or the room's), reflections are expected from
// the new occupant JID.
//
// # Connection loss
//
// When the stream resumes its session (XEP-0198), nothing changes: the room
// still has us and the stream writes again what the server had not
// acknowledged. When the stream has to start a new session, the server has
// taken us out of every room: the Client joins them again by itself and
// reports EventRejoined (or EventRejoinFailed). Messages that were written
// end CLOSED unless their reflection already arrived. Messages still queued,
// and those sent meanwhile, are held until the room's self-presence
// confirms the rejoin, then sent in order; if the rejoin fails they end
// ERROR with the room's refusal, or CLOSED. Leave and Client.Close during a
// rejoin win: no event, and no join presence after the leave. A join or
// rejoin that gets no answer in time is followed by an unavailable presence.
//
// # Removal
//
// When the room removes us (kicked, banned, destroyed, shut down), the client
// reports EventRemoved and refuses new messages with ErrLeft. The room is
// out of Client.Rooms at once: Join may enter it again straight away.
// Messages already written stay pending: the room either reflected them
// before the removal or will answer them with an error, and their tracker
// says which (or TIMED_OUT). Leave ends them CLOSED at once, as does
// Client.Close.
//
// # Metrics
//
// Client.Stats counts the trackers the client handed out in all its rooms: how many are
// under way, by state; how many ended, by outcome; the time to
// DELIVERED_TO_RECIPIENT (see tracking.Stats). Client.AddHook registers a
// tracking.Hook that learns of each delivery and outcome as it happens.
//
// # Concurrency
//
// Client and Room are safe for concurrent use. Stanzas are matched on the
// stream's reader goroutine; tracker observers run there too, so they must
// not block. Room events go to the WithEvents function on a goroutine of
// the room's, one at a time and in order. Room.mu guards a room's state and
// indexes; Client.mu the room maps, and is taken after a Room's lock, never
// before it.
//
// # Closing
//
// Close the Client before the stream it is attached to: Client.Close ends
// the trackers, Stream.Close ends the session (and with it our presence in
// the rooms).
package muc

import (
	"errors"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Namespaces of XEP-0045.
const (
	NS      = "http://jabber.org/protocol/muc"
	NSUser  = "http://jabber.org/protocol/muc#user"
	NSOwner = "http://jabber.org/protocol/muc#owner"
)

// Join errors: a failed Join returns a *JoinError, which errors.Is matches
// against these (and against any mellium stanza.Error condition).
var (
	// ErrNickConflict: the nick is taken by another occupant.
	ErrNickConflict = stanza.Error{Condition: stanza.Conflict}
	// ErrRegistrationRequired: the room is members-only and we are not a
	// member.
	ErrRegistrationRequired = stanza.Error{Condition: stanza.RegistrationRequired}
	// ErrRoomNotFound: the room does not exist (and we may not create it).
	ErrRoomNotFound = stanza.Error{Condition: stanza.ItemNotFound}
	// ErrNotAllowed: room creation is restricted.
	ErrNotAllowed = stanza.Error{Condition: stanza.NotAllowed}
	// ErrNotAuthorized: a password is required or wrong.
	ErrNotAuthorized = stanza.Error{Condition: stanza.NotAuthorized}
	// ErrForbidden: we are banned from the room.
	ErrForbidden = stanza.Error{Condition: stanza.Forbidden}
)

// ErrLeft is the error of operations on a room that was left or whose client
// was closed.
var ErrLeft = errors.New("muc: not in the room")

// ErrBadIDs: the ids given with WithIDs are empty, not valid XML text, or in
// use by a pending message of the room.
var ErrBadIDs = errors.New("muc: unusable message ids")

// ErrInvalidText is returned for a body that is not valid UTF-8 or holds
// characters XML does not allow; nothing is sent.
var ErrInvalidText = errors.New("muc: text not allowed in XML")

// RemovedError says why the room removed us (see EventRemoved).
type RemovedError struct {
	Room jid.JID
	// Codes are the XEP-0045 status codes of the room's presence: 301
	// banned, 307 kicked, 321 affiliation change, 322 members-only, 332
	// service shut down, 333 an error of ours.
	Codes []string
	// Destroyed is set when the room was destroyed.
	Destroyed bool
}

// Error implements error.
func (e *RemovedError) Error() string {
	reason := "removed"
	for _, c := range e.Codes {
		switch c {
		case "301":
			reason = "banned"
		case "307":
			reason = "kicked"
		case "321", "322":
			reason = "removed (affiliation change)"
		case "332":
			reason = "removed (service shut down)"
		case "333":
			reason = "removed (error)"
		}
	}
	if e.Destroyed {
		reason = "room destroyed"
	}
	return "muc: " + e.Room.String() + ": " + reason
}

// Unwrap lets errors.Is match ErrLeft.
func (e *RemovedError) Unwrap() error { return ErrLeft }

// JoinError is the room's refusal of a join.
type JoinError struct {
	Room jid.JID
	// Err is the error the room answered with.
	Err *stanza.Error
}

// Error implements error.
func (e *JoinError) Error() string {
	s := "muc: join " + e.Room.String() + ": " + string(e.Err.Condition)
	for _, t := range e.Err.Text {
		if t != "" {
			s += " (" + t + ")"
			break
		}
	}
	return s
}

// Unwrap returns the stanza error, so that errors.Is matches it against a
// condition such as ErrNickConflict.
func (e *JoinError) Unwrap() error { return *e.Err }
