package outbox

import (
	"errors"
	"fmt"
	"time"
)

// Errors of a Store. They are wrapped with context (the file's name, the
// reason); compare with errors.Is.
var (
	// ErrInUse is returned when a store is opened while another open store
	// holds it, in this process or another: there is never more than one
	// writer.
	ErrInUse = errors.New("outbox: in use by another process")

	// ErrCorrupt is returned for a file that is truncated, corrupted or not
	// an outbox at all. The error says why. The file is left as it was:
	// starting afresh would send every message again.
	ErrCorrupt = errors.New("outbox: truncated or corrupted file")

	// ErrNewerFormat is returned for a file written by a newer version of
	// the format than this program reads. The file is left as it was.
	ErrNewerFormat = errors.New("outbox: written by a newer format version")

	// ErrClosed is returned by Load and Commit after Close.
	ErrClosed = errors.New("outbox: closed")

	// ErrInvalidChanges is returned by Commit (and Changes.Validate) for
	// changes that no store can apply: a negative Drop or one beyond the
	// unacknowledged log, a message without a Key or with an unknown Kind,
	// an empty Meta key. Nothing of such a commit is applied.
	ErrInvalidChanges = errors.New("outbox: invalid changes")
)

// Session is the XEP-0198 state of the stream's session.
//
// The stream keeps Acked and the unacknowledged log in step: a commit that
// raises Acked by n also drops n stanzas (Changes.Drop), so the log always
// starts with the stanza after Acked, and the outbound count (the h the
// server reports once it has everything) is Acked plus the length of the log,
// mod 2^32.
type Session struct {
	// ResumeID is the id of <enabled/>, "" when the session cannot be
	// resumed.
	ResumeID string
	// Location is the location attribute of <enabled/>, "" if none.
	Location string
	// Addr is the bound full JID.
	Addr string
	// Max is the server's resumption window (the max of <enabled/>), zero
	// when the server named none.
	Max time.Duration
	// In is the inbound h: the stanzas handled from the server, mod 2^32.
	In uint32
	// Acked is the h of the server's latest acknowledgement of our
	// stanzas, mod 2^32.
	Acked uint32
	// Saved is when the caller wrote this record, to judge after a restart
	// whether the server's window has passed. The store keeps it as given.
	Saved time.Time
}

// Stanza is one written, unacknowledged stanza of the session's log.
type Stanza struct {
	// ID is the stanza's id attribute ("" if it has none).
	ID string
	// Bytes is the serialised stanza, written again as it is.
	Bytes []byte
}

// Kind is the kind of a tracked message. Its values are part of the file
// format of a store on disk and never change.
type Kind uint8

// Kinds of message.
const (
	// Groupchat is a message to a Multi-User Chat room.
	Groupchat Kind = 1
	// Chat is a one-to-one message.
	Chat Kind = 2
)

// String returns "groupchat", "chat", or "Kind(n)" for any other value.
func (k Kind) String() string {
	switch k {
	case Groupchat:
		return "groupchat"
	case Chat:
		return "chat"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Message is one tracked message as the room or chat client records it.
type Message struct {
	// Key identifies the record: the tracker's id (the stanza's id). It
	// must not be empty.
	Key string
	// OriginID is the message's XEP-0359 origin-id.
	OriginID string
	// To is the room's bare JID or the contact's JID.
	To string
	// Kind is Groupchat or Chat.
	Kind Kind
	// Stanza is the serialised message, to send again with the same id and
	// origin-id.
	Stanza []byte
	// State is the tracker's state name when recorded, such as
	// "IN_TRANSIT" or "DELIVERED_TO_RECIPIENT".
	State string
	// Written is true once the message's bytes may have reached the
	// server: it was committed as part of a batch about to be written.
	Written bool
	// SentAt is when the message was first written; zero if never.
	SentAt time.Time
	// StanzaID is the room's stanza-id from the message's reflection, once
	// seen: the archive id that anchors a later search of the archive.
	StanzaID string
	// Reason says why tracking ended, for a final state.
	Reason string
}

// State is everything a Store holds.
type State struct {
	// Session is the stream's XEP-0198 session.
	Session Session
	// Unacked is the log of written, unacknowledged stanzas, oldest first.
	Unacked []Stanza
	// Messages are the recorded messages in the order they were first
	// recorded.
	Messages []Message
	// Meta is a free-form description of the job, never nil after Load.
	Meta map[string]string
}

// Changes is one commit: a Store applies all of it durably, or none of it.
// The fields apply in the order they are listed: Session, Reset, Drop,
// Append, Messages, Forget, Meta.
type Changes struct {
	// Session, when not nil, replaces the session.
	Session *Session
	// Reset empties the unacknowledged log: a new session starts.
	Reset bool
	// Drop removes that many stanzas from the head of the log: the server
	// acknowledged them. Dropping more than the log holds is an error.
	Drop int
	// Append adds stanzas to the end of the log, in order.
	Append []Stanza
	// Messages are upserted by Key: a new key is added after every other
	// message, an existing one is replaced where it stands. When a key
	// appears twice, the later record wins.
	Messages []Message
	// Forget removes the messages with these keys; an unknown key is
	// ignored. It applies after Messages.
	Forget []string
	// Meta sets these keys of State.Meta; an empty value deletes the key.
	Meta map[string]string
}

// Validate returns an error wrapping ErrInvalidChanges for changes that no
// store applies whatever it holds: a negative Drop, a Drop with Reset (the
// log is empty after a reset), a message without a Key or with a Kind other
// than Groupchat or Chat, an empty key in Forget or Meta. A Store also
// refuses a Drop beyond the length of its log.
func (c *Changes) Validate() error {
	if c.Drop < 0 {
		return fmt.Errorf("%w: drop %d", ErrInvalidChanges, c.Drop)
	}
	if c.Reset && c.Drop > 0 {
		return fmt.Errorf("%w: drop %d after a reset", ErrInvalidChanges, c.Drop)
	}
	for i, m := range c.Messages {
		if m.Key == "" {
			return fmt.Errorf("%w: message %d has no key", ErrInvalidChanges, i)
		}
		if m.Kind != Groupchat && m.Kind != Chat {
			return fmt.Errorf("%w: message %q has kind %v", ErrInvalidChanges, m.Key, m.Kind)
		}
	}
	for _, k := range c.Forget {
		if k == "" {
			return fmt.Errorf("%w: empty key to forget", ErrInvalidChanges)
		}
	}
	for k := range c.Meta {
		if k == "" {
			return fmt.Errorf("%w: empty meta key", ErrInvalidChanges)
		}
	}
	return nil
}

// Store keeps the State of one stream durably. Its methods are safe for
// concurrent use; Commit is normally called by the stream's writer alone.
type Store interface {
	// Load returns the whole state. The user of the store calls it once,
	// after opening.
	Load() (State, error)
	// Commit applies the changes atomically: when it returns nil they are
	// durable; when it returns an error, the caller must treat them as not
	// durable. Invalid changes (ErrInvalidChanges) change nothing.
	Commit(Changes) error
	// Close releases the store. Later calls of Load and Commit return
	// ErrClosed; Close itself may be called again and returns nil.
	Close() error
}
