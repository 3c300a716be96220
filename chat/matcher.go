package chat

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// A Matcher matches receipts, chat markers and error replies to tracked
// messages (see the package documentation for the rules). A Client sends
// messages and feeds its Matcher the stanzas of its stream; a Matcher alone
// serves messages sent by other means, or stanzas read from elsewhere.
type Matcher struct {
	limit int

	// mu guards every field below, and the entries and peers they hold.
	mu     sync.Mutex
	byID   map[string]*entry
	peers  map[string]*peer // by address as sent
	closed bool
	// The delivered messages that wait for a displayed marker, oldest
	// first, across all peers: WithUnseenLimit bounds them as a whole.
	dhead, dtail *entry
	nd           int
	// to caches the last parsed to of a matched stanza (our own address).
	to jidCache
}

// jidCache holds the last JID parsed from a string: parsing normalizes the
// JID (PRECIS), which costs more than all the rest of matching, and the
// same few addresses come back again and again.
type jidCache struct {
	s string
	j jid.JID
}

func (c *jidCache) parse(s string) jid.JID {
	if s != c.s || s == "" {
		j, err := jid.Parse(s)
		if err != nil {
			return jid.JID{}
		}
		c.s, c.j = s, j
	}
	return c.j
}

// entry is one tracked message. It is linked into its peer's lists while it
// is remembered; peer is nil once it is forgotten.
type entry struct {
	t    *tracking.MessageTracker
	id   string
	peer *peer

	prev, next *entry // the peer's messages, in the order they were tracked

	delivered    bool
	dprev, dnext *entry // the Matcher's delivered messages, oldest first
}

// peer is the address messages were sent to, as written in their to, and
// its remembered messages.
type peer struct {
	addr   string // bare or full JID, normalized
	bare   string // the bare JID of addr
	domain string

	head, tail *entry
	n          int

	from jidCache // the last sender of a matched stanza
}

// NewMatcher returns an empty Matcher.
func NewMatcher(opts ...MatcherOption) *Matcher {
	cfg := config{unseenLimit: DefaultUnseenLimit}
	for _, o := range opts {
		o.applyMatcher(&cfg)
	}
	return newMatcher(cfg)
}

func newMatcher(cfg config) *Matcher {
	return &Matcher{
		limit: cfg.unseenLimit,
		byID:  make(map[string]*entry),
		peers: make(map[string]*peer),
	}
}

// Track remembers that the message with id, sent to to, is followed by t, so
// that receipts, markers and errors for it move t. The message is forgotten
// when t's tracking ends. Displayed markers are cumulative: track the
// messages to one address in the order they were sent. Track fails on an empty id or address, an id already
// tracked (ErrDuplicateID), or a closed Matcher (ErrClosed).
func (m *Matcher) Track(to jid.JID, id string, t *tracking.MessageTracker) error {
	switch {
	case t == nil:
		return errors.New("chat: track: nil tracker")
	case id == "":
		return errors.New("chat: track: empty id")
	case to.Domainpart() == "":
		return fmt.Errorf("chat: track %q: no address", id)
	}
	e := &entry{t: t, id: id}
	addr := to.String()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("chat: track %q: %w", id, ErrClosed)
	}
	if _, dup := m.byID[id]; dup {
		m.mu.Unlock()
		return fmt.Errorf("chat: track %q: %w", id, ErrDuplicateID)
	}
	p := m.peers[addr]
	if p == nil {
		p = &peer{
			addr:   addr,
			bare:   to.Bare().String(),
			domain: to.Domainpart(),
		}
		m.peers[addr] = p
	}
	e.peer = p
	p.push(e)
	p.n++
	m.byID[id] = e
	m.mu.Unlock()
	// Forget the message as soon as nothing can change its tracker.
	t.OnChange(func(c tracking.Change) {
		if c.Ended {
			m.forget(e)
		}
	})
	return nil
}

// requeue moves the message id to the end of its address's messages: it is
// sent again after those sent meanwhile, and a displayed marker is
// cumulative in the order on the wire.
func (m *Matcher) requeue(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.byID[id]
	if e == nil || e.peer == nil || e.peer.tail == e {
		return
	}
	e.peer.remove(e)
	e.peer.push(e)
}

// push links e as p's latest message.
func (p *peer) push(e *entry) {
	e.prev, e.next = p.tail, nil
	if p.tail != nil {
		p.tail.next = e
	} else {
		p.head = e
	}
	p.tail = e
}

// remove unlinks e from p's messages.
func (p *peer) remove(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		p.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		p.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// Pending returns how many messages are remembered, and for how many
// distinct addresses. Both are zero when no tracker awaits anything.
func (m *Matcher) Pending() (messages, peers int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byID), len(m.peers)
}

// Close ends the tracking of every remembered message and makes Track fail
// from then on: an undelivered message's tracker ends CLOSED, a delivered
// one keeps DELIVERED_TO_RECIPIENT (see tracking.MessageTracker.Close).
// Handle still accepts stanzas, and changes nothing. Close always returns
// nil.
func (m *Matcher) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	ts := make([]*tracking.MessageTracker, 0, len(m.byID))
	for _, e := range m.byID {
		ts = append(ts, e.t)
		e.peer, e.prev, e.next, e.dprev, e.dnext = nil, nil, nil, nil, nil
	}
	clear(m.byID)
	clear(m.peers)
	m.dhead, m.dtail, m.nd = nil, nil, 0
	m.mu.Unlock()
	for _, t := range ts {
		// A tracker that became final meanwhile refuses; that is fine.
		_ = t.Close()
	}
	return nil
}

func (m *Matcher) forget(e *entry) {
	m.mu.Lock()
	m.unlinkLocked(e)
	m.mu.Unlock()
}

// unlinkLocked forgets e, and its peer when e was the peer's last message.
func (m *Matcher) unlinkLocked(e *entry) {
	p := e.peer
	if p == nil {
		return
	}
	p.remove(e)
	p.n--
	if e.delivered {
		if e.dprev != nil {
			e.dprev.dnext = e.dnext
		} else {
			m.dhead = e.dnext
		}
		if e.dnext != nil {
			e.dnext.dprev = e.dprev
		} else {
			m.dtail = e.dprev
		}
		m.nd--
	}
	e.peer, e.prev, e.next, e.dprev, e.dnext = nil, nil, nil, nil, nil
	if m.byID[e.id] == e {
		delete(m.byID, e.id)
	}
	if p.n == 0 && m.peers[p.addr] == p {
		delete(m.peers, p.addr)
	}
}

// deliveredLocked records that e was delivered and forgets the oldest
// delivered message of all when there are more than the limit. It returns
// the tracker of the message forgotten, whose tracking the caller ends after
// unlocking, or nil.
func (m *Matcher) deliveredLocked(e *entry) *tracking.MessageTracker {
	if e.delivered {
		return nil
	}
	e.delivered = true
	e.dprev = m.dtail
	if m.dtail != nil {
		m.dtail.dnext = e
	} else {
		m.dhead = e
	}
	m.dtail = e
	m.nd++
	if m.limit > 0 && m.nd > m.limit {
		oldest := m.dhead
		m.unlinkLocked(oldest)
		return oldest.t
	}
	return nil
}

// kind is what a receipt or marker says about a message.
type kind uint8

const (
	received  kind = iota // a XEP-0184 receipt or a XEP-0333 received marker
	displayed             // a XEP-0333 displayed or acknowledged marker
)

type marker struct {
	kind kind
	id   string
}

// move is a transition decided under the lock and made after it.
type move struct {
	t  *tracking.MessageTracker
	to tracking.MessageState
}

// Handle matches one inbound stanza: a message carrying receipts or chat
// markers, or an error reply. Other stanzas are ignored. The observers of
// the trackers it moves run on the calling goroutine (unless another
// goroutine is already notifying them).
func (m *Matcher) Handle(el *stream.Element) {
	if el == nil || el.Name().Local != "message" {
		return
	}
	from := el.Attr("from")
	if from == "" {
		// From our own account or its server: never the addressee's answer.
		return
	}
	if el.Attr("type") == "error" {
		m.handleError(el, from)
		return
	}
	var buf [4]marker
	ms := readMarkers(el, buf[:0])
	if len(ms) == 0 {
		return
	}
	var mbuf [4]move
	moves := mbuf[:0]
	var ended []*tracking.MessageTracker // forgotten: their tracking ends
	var hdr stanza.Message
	m.mu.Lock()
	for _, mk := range ms {
		e := m.byID[mk.id]
		if e == nil || !e.peer.accepts(from) {
			continue
		}
		if len(moves) == 0 {
			hdr = m.headerLocked(el, e.peer, from)
		}
		switch mk.kind {
		case received:
			moves = append(moves, move{e.t, tracking.DeliveredToRecipient})
			if old := m.deliveredLocked(e); old != nil {
				ended = append(ended, old)
			}
		case displayed:
			// Everything up to e was displayed: pop it all, oldest first.
			p := e.peer
			for q := p.head; q != nil; {
				next := q.next
				m.unlinkLocked(q)
				moves = append(moves, move{q.t, tracking.SeenByRecipient})
				if q == e {
					break
				}
				q = next
			}
		}
	}
	m.mu.Unlock()
	if len(moves) == 0 {
		return
	}
	resp := &tracking.Response{Message: hdr}
	for _, mv := range moves {
		// A rejected transition (a receipt after a timeout, a second
		// receipt) changes nothing, which is what we want.
		_ = mv.t.Transition(mv.to, resp)
	}
	for _, t := range ended {
		// No marker can reach it any more: it stays delivered, and its
		// tracking ends.
		_ = t.Close()
	}
}

func (m *Matcher) handleError(el *stream.Element, from string) {
	id := el.Attr("id")
	if id == "" {
		return
	}
	m.mu.Lock()
	e := m.byID[id]
	if e == nil || !e.peer.acceptsError(from) {
		m.mu.Unlock()
		return
	}
	t := e.t
	hdr := m.headerLocked(el, e.peer, from)
	m.mu.Unlock()
	se, ok := xstanza.Error(el.Tokens())
	if !ok {
		se = &stanza.Error{Type: stanza.Cancel, Condition: stanza.UndefinedCondition}
	}
	// Once the message is delivered to the recipient the tracker refuses
	// the error and the message stays remembered for its marker; otherwise
	// the tracker becomes final and its observer forgets the message.
	_ = t.Transition(tracking.Error, &tracking.Response{Message: hdr, Error: se})
}

// readMarkers appends the receipts and markers among the direct children of
// el to ms.
func readMarkers(el *stream.Element, ms []marker) []marker {
	el.Children(func(t stream.Tag) bool {
		name := t.Name()
		switch name.Space {
		case NSReceipts:
			if name.Local != "received" {
				return true
			}
			id := t.Attr("id")
			if id == "" {
				// XEP-0184 1.0: the receipt carries the message's id.
				id = el.Attr("id")
			}
			if id != "" {
				ms = append(ms, marker{received, id})
			}
		case NSMarkers:
			var k kind
			switch name.Local {
			case "received":
				k = received
			case "displayed", "acknowledged":
				k = displayed
			default:
				return true
			}
			if id := t.Attr("id"); id != "" {
				ms = append(ms, marker{k, id})
			}
		}
		return true
	})
	return ms
}

// accepts reports whether from may answer a message sent to p: any resource
// of the addressee's account, or its bare JID. A message to a full JID whose
// resource went away is rerouted by the server to another resource of the
// same account (RFC 6121 §8.5.3.2.1), whose answer is the addressee's.
//
// from must be a valid JID: a server never sends an invalid one, so one
// (such as "bob@example.net/", with an empty resource) proves nothing.
func (p *peer) accepts(from string) bool {
	// The server may write the address in another form (case): compare
	// the normalized JIDs.
	j, err := jid.Parse(from)
	if err != nil {
		return false
	}
	return j.Bare().String() == p.bare
}

// acceptsError reports whether an error reply from from may be about a
// message sent to p: from the addressee, its bare JID, or its server.
func (p *peer) acceptsError(from string) bool {
	j, err := jid.Parse(from)
	if err != nil {
		return false
	}
	return j.Bare().String() == p.bare || j.String() == p.domain
}

func bareOf(s string) string {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i]
	}
	return s
}

// headerLocked returns the top-level attributes of a stanza from from,
// matched to a message sent to p.
func (m *Matcher) headerLocked(el *stream.Element, p *peer, from string) stanza.Message {
	return stanza.Message{
		ID:   el.Attr("id"),
		Type: stanza.MessageType(el.Attr("type")),
		From: p.from.parse(from),
		To:   m.to.parse(el.Attr("to")),
	}
}
