// Package reconcile decides, with the server's message archive (XEP-0313) as
// the witness, what became of messages whose fate is unknown: written to a
// connection, never acknowledged, and the session lost (its resumption
// refused, or the process restarted).
//
// For each such message a Reconciler answers one of four outcomes:
//
//   - Delivered: a room's archive holds the message from our own occupant
//     JID: the room accepted and distributed it (DELIVERED_TO_RECIPIENT).
//   - Accepted: our own archive holds the one-to-one message from us: the
//     server took it (DELIVERED_TO_SERVER); a receipt may still come.
//   - SafeToResend: the archive does not hold it, and the archive is shown to
//     cover the window: it still holds our Anchor, a message of ours from
//     before the uncertain ones. Sending it again cannot make a duplicate.
//   - Unknown: nothing vouches either way (archiving off, expired, lost, no
//     anchor, or the archive could not be read). Do not send it again; end
//     its tracker CLOSED with the Decision's Reason.
//
// A Policy changes what absence means: ResendIfAbsent (the default) as above,
// NeverResend (everything Unknown, no query), AlwaysResend (everything not
// found is SafeToResend: duplicates rather than loss).
//
// No server searches an archive by origin-id, so the Reconciler fetches the
// window from the earliest uncertain send time (or the anchor, if earlier)
// minus a margin, page by page (RSM), and matches on its own side. Its
// queries carry only the form fields with and start and RSM paging: servers
// that know nothing beyond XEP-0313's required fields (ejabberd answers
// bad-request to ids, after-id and before-id) answer them too.
//
// design/reconciliation.md explains what an archive can prove and why
// absence needs the anchor.
//
// # Wiring
//
// The Reconciler runs over a mellium *xmpp.Session, usually the one of a
// bridge.Bridge, so that its queries pass through the managed stream. The
// archive's results arrive as messages: the mux that serves the session must
// route them to the Reconciler with Handle. Results of queries that are not
// the Reconciler's go on to the handler given with WithNext (for example a
// program's own history.Handler).
package reconcile

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
)

// Kind says which archive witnesses a message.
type Kind uint8

// The kinds of message. The zero Kind is invalid.
const (
	// Groupchat is a message to a room: the room's archive witnesses it.
	Groupchat Kind = iota + 1
	// Chat is a one-to-one message: our own archive witnesses it.
	Chat
)

// String returns the name of k.
func (k Kind) String() string {
	switch k {
	case Groupchat:
		return "groupchat"
	case Chat:
		return "chat"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Outcome is what the archive says about an uncertain message.
type Outcome uint8

// The outcomes. The zero Outcome is Unknown, so that a Decision nobody
// filled in never permits a resend.
const (
	// Unknown: nothing vouches either way. Do not send the message again.
	Unknown Outcome = iota
	// Delivered: the room's archive holds the message from our occupant
	// JID (DELIVERED_TO_RECIPIENT).
	Delivered
	// Accepted: our own archive holds the one-to-one message from us
	// (DELIVERED_TO_SERVER: the server took it, a receipt may still come).
	Accepted
	// SafeToResend: the message is absent from an archive shown to cover
	// the window (or the policy is AlwaysResend).
	SafeToResend
)

// String returns the name of o.
func (o Outcome) String() string {
	switch o {
	case Unknown:
		return "unknown"
	case Delivered:
		return "delivered"
	case Accepted:
		return "accepted"
	case SafeToResend:
		return "safe to resend"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Policy says what absence from the archive means.
type Policy uint8

// The policies. The zero Policy is ResendIfAbsent.
const (
	// ResendIfAbsent: a message absent from an archive that holds our
	// anchor is SafeToResend; without that proof it is Unknown.
	ResendIfAbsent Policy = iota
	// NeverResend: every uncertain message is Unknown, and the archive is
	// not asked.
	NeverResend
	// AlwaysResend: every message the archive does not show delivered or
	// accepted is SafeToResend, whatever the archive can prove: duplicates
	// rather than loss.
	AlwaysResend
)

// String returns the name of p.
func (p Policy) String() string {
	switch p {
	case ResendIfAbsent:
		return "resend if absent"
	case NeverResend:
		return "never resend"
	case AlwaysResend:
		return "always resend"
	}
	return fmt.Sprintf("Policy(%d)", uint8(p))
}

// Uncertain is a message whose fate is unknown: written, unacknowledged, its
// session lost.
type Uncertain struct {
	// Key is the caller's name for the message (a tracker's id, an outbox
	// key), copied into its Decision.
	Key string
	// ID is the stanza's id, and OriginID its XEP-0359 origin-id. A copy in
	// the archive is matched by origin-id, or by id when the archived copy
	// carries no origin-id. At least one must be set.
	ID       string
	OriginID string
	// To is the room (groupchat) or the contact (chat); only its bare JID
	// counts.
	To   jid.JID
	Kind Kind
	// SentAt is when the message was first written. The archive is read from
	// the earliest SentAt of an archive's messages (or its anchor's At, if
	// earlier) minus the margin (WithMargin).
	SentAt time.Time
}

// An Anchor is our own evidence that an archive covers the window: a message
// of ours, written before the uncertain messages to the same room or contact,
// that we know the archive received. If the archive still holds it, the
// archive was neither lost nor expired since, and absence means something.
//
// For a room, StanzaID is the room's <stanza-id/> of the last reflection of
// ours we saw before the uncertain messages. For a contact, where the server
// does not tell us the archive id of our own messages, OriginID is the
// origin-id of an earlier message of ours that the server acknowledged
// (XEP-0198); StanzaID may instead be our archive's stanza-id of a message
// of that conversation we received. Either field may be used for either
// kind; the anchor is found when the archive holds an item whose archive id
// is StanzaID, or a message from us carrying OriginID.
type Anchor struct {
	// To is the room or the contact; only its bare JID counts.
	To       jid.JID
	StanzaID string
	OriginID string
	// At is when we saw the reflection, or when the server acknowledged
	// the message.
	At time.Time
}

// Decision is the Reconciler's answer for one Uncertain message.
type Decision struct {
	// Key is the Uncertain's Key.
	Key     string
	Outcome Outcome
	// Reason says why, in words for a user.
	Reason string
	// StanzaID is the archive id of the copy found, if any.
	StanzaID string
}

// ErrMisuse is wrapped by the errors Decide returns for input it cannot
// decide on, and when the archive's results do not reach the Reconciler
// (see Handle).
var ErrMisuse = errors.New("reconcile: misuse")

// Defaults of the options.
const (
	DefaultMargin       = 2 * time.Minute
	DefaultPageSize     = 50
	DefaultMaxPages     = 200
	DefaultQueryTimeout = 30 * time.Second
)

// A Reconciler asks archives about uncertain messages. Make it with New; it
// is safe for use by many goroutines at once.
type Reconciler struct {
	sess     *xmpp.Session
	occupant func(room jid.JID) (jid.JID, bool)

	margin   time.Duration
	pageSize uint64
	maxPages int
	timeout  time.Duration
	next     mux.MessageHandler

	mu      sync.Mutex
	queries map[string]*collector // running queries, by queryid
}

// An Option configures a Reconciler.
type Option func(*Reconciler)

// WithMargin sets how far before the earliest send time (or anchor) the
// archive is read, to allow for clocks that disagree and for the server's
// timestamps in whole seconds. Default DefaultMargin; a negative d counts as
// zero.
func WithMargin(d time.Duration) Option {
	return func(r *Reconciler) { r.margin = max(d, 0) }
}

// WithPageSize sets the RSM <max> of each page asked for. Zero sends no
// <max>: the server's default. Default DefaultPageSize.
func WithPageSize(n uint64) Option {
	return func(r *Reconciler) { r.pageSize = n }
}

// WithMaxPages bounds the pages read from one archive in one Decide. An
// archive not read to its end proves no absence: the messages not found are
// Unknown. Default DefaultMaxPages; n < 1 means 1.
func WithMaxPages(n int) Option {
	return func(r *Reconciler) { r.maxPages = max(n, 1) }
}

// WithQueryTimeout bounds the wait for each page. A page that does not come
// makes the messages not yet found Unknown. Default DefaultQueryTimeout;
// zero or less means no bound but Decide's context.
func WithQueryTimeout(d time.Duration) Option {
	return func(r *Reconciler) { r.timeout = d }
}

// WithNext passes the archive results of other queries (not the
// Reconciler's) to h, which would otherwise not see them: the mux takes one
// handler for MAM results.
func WithNext(h mux.MessageHandler) Option {
	return func(r *Reconciler) { r.next = h }
}

// New returns a Reconciler that queries archives over sess. occupant returns
// our occupant JID in a room (room@service/nick) and whether we know it; it
// may be nil when only one-to-one messages are decided. The mux serving sess
// must include Handle(r).
func New(sess *xmpp.Session, occupant func(room jid.JID) (jid.JID, bool), opts ...Option) *Reconciler {
	r := &Reconciler{
		sess:     sess,
		occupant: occupant,
		margin:   DefaultMargin,
		pageSize: DefaultPageSize,
		maxPages: DefaultMaxPages,
		timeout:  DefaultQueryTimeout,
		queries:  make(map[string]*collector),
	}
	for _, o := range opts {
		o(r)
	}
	return r
}
