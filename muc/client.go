package muc

import (
	"context"
	"encoding/xml"
	"fmt"
	"sync"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/reconcile"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// DefaultTimeout is how long a tracked message waits for its reflection
// unless WithTimeout says otherwise.
const DefaultTimeout = 30 * time.Second

// DefaultPendingLimit is how many messages without a timeout a Client keeps
// waiting for their reflection, across all its rooms, unless
// WithPendingLimit says otherwise.
const DefaultPendingLimit = 10000

// EventKind says what happened to a room. The zero EventKind is no event.
type EventKind uint8

// Kinds of Event.
const (
	// EventRejoined: after the stream started a new session, the room was
	// joined again.
	EventRejoined EventKind = iota + 1
	// EventRejoinFailed: joining again failed; Err says why. The room is
	// left.
	EventRejoinFailed
	// EventRemoved: the room removed us (kicked, banned, destroyed, shut
	// down); Err is a *RemovedError. The room is left: messages in flight
	// still learn the room's answer, Leave ends them CLOSED, and Join may
	// enter the room again at once.
	EventRemoved
)

// String returns a short name of the kind.
func (k EventKind) String() string {
	switch k {
	case EventRejoined:
		return "rejoined"
	case EventRejoinFailed:
		return "rejoin-failed"
	case EventRemoved:
		return "removed"
	}
	return "unknown"
}

// Event is something that happened to a joined room without being asked.
type Event struct {
	Kind EventKind
	Room *Room
	Err  error
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout sets the default time a tracked message waits for its
// reflection before it is TIMED_OUT. Zero or less means no timeout (see
// WithPendingLimit).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithPendingLimit bounds how many messages without a timeout the client
// keeps waiting for their reflection, across all its rooms. When one more is
// sent, the oldest of them is given up: its tracker ends CLOSED. Zero or
// less removes the bound. Messages with a timeout are bounded by it instead.
func WithPendingLimit(n int) Option { return func(c *Client) { c.pendingLimit = n } }

// DefaultRejoinTimeout bounds how long a rejoin after a new session waits
// for the room's answer, unless WithRejoinTimeout says otherwise.
const DefaultRejoinTimeout = 30 * time.Second

// WithRejoinTimeout sets how long a rejoin after a new session waits for the
// room's answer before the room is given up (EventRejoinFailed).
func WithRejoinTimeout(d time.Duration) Option { return func(c *Client) { c.rejoinTimeout = d } }

// WithEvents registers f to learn of room events, such as a rejoin after a
// new session. The events of one room reach f one at a time, in the order
// they happened, on a goroutine of their own: f may block without holding
// up the stream, but the room's next event waits for it.
func WithEvents(f func(Event)) Option { return func(c *Client) { c.onEvent = f } }

// A Client tracks the rooms one stream takes part in.
type Client struct {
	s             *stream.Stream
	timeout       time.Duration
	rejoinTimeout time.Duration
	pendingLimit  int
	onEvent       func(Event)

	// ctx ends when the client is closed; sends of the client's own (a
	// leave after a join that timed out) wait for room in the stream's
	// queue no longer than that.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex       // guards rooms, departed and closed
	rooms  map[string]*Room // joined or joining, by normalized bare room JID
	closed bool
	// departed holds the rooms that removed us while messages were in
	// flight, until the room's answers have ended them: the room's errors
	// still find their tracker after we joined the room again.
	departed map[string]*Room

	// untimed is the FIFO of pending messages without a timeout, for
	// WithPendingLimit. Its lock is taken after a Room's, never before.
	untimed struct {
		sync.Mutex
		head, tail *pending
		n          int
	}

	removeHandler, removeEvents func()

	rec tracking.Recorder // counts the trackers handed out, for Stats
	// timers runs the timeouts of the client's trackers on one timer.
	timers tracking.Timers

	recMu      sync.Mutex // guards reconciler and policy
	reconciler *reconcile.Reconciler
	policy     reconcile.Policy
}

// SetReconciler makes the rooms ask rc, with policy p, what became of the
// messages a lost session had written and the room had not reflected,
// instead of ending them CLOSED: after the stream starts a new session (its
// resumption refused, live or after a restart of the process), each room
// joins again, then asks the room's archive (package reconcile), and ends
// each such message DELIVERED_TO_RECIPIENT when the archive holds it, sends
// it again with the same id and origin-id when the archive shows it absent,
// and ends it CLOSED when nothing vouches either way. The room's anchor is
// the stanza-id of the last reflection of ours it saw. rc must serve the
// session of a bridge over the same stream (see reconcile.Handle); its
// occupant function may be Client.Occupant. nil restores the default.
func (c *Client) SetReconciler(rc *reconcile.Reconciler, p reconcile.Policy) {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	c.reconciler, c.policy = rc, p
}

func (c *Client) getReconciler() (*reconcile.Reconciler, reconcile.Policy) {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	return c.reconciler, c.policy
}

// Occupant returns our occupant JID in room, if the client is in it: the
// occupant function of a reconcile.Reconciler.
func (c *Client) Occupant(room jid.JID) (jid.JID, bool) {
	r, ok := c.Room(room)
	if !ok {
		return jid.JID{}, false
	}
	return r.OccupantJID(), true
}

// NewClient attaches a MUC client to s. Close detaches it.
func NewClient(s *stream.Stream, opts ...Option) *Client {
	c := newClient(opts)
	c.s = s
	c.removeHandler = s.HandleElement(c.handle)
	c.removeEvents = s.OnEvent(c.streamEvent)
	return c
}

func newClient(opts []Option) *Client {
	c := &Client{
		timeout:       DefaultTimeout,
		rejoinTimeout: DefaultRejoinTimeout,
		pendingLimit:  DefaultPendingLimit,
		rooms:         make(map[string]*Room),
		departed:      make(map[string]*Room),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	for _, o := range opts {
		o(c)
	}
	return c
}

// Close detaches the client from its stream and ends every pending tracker
// of every room CLOSED (a delivered one keeps its state). It sends nothing:
// the rooms are left when the stream closes, so close the clients of a
// stream before the stream itself. A rejoin in progress stops without an
// event and sends nothing more. Close always returns nil; it implements
// io.Closer.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	rooms := make([]*Room, 0, len(c.rooms)+len(c.departed))
	for _, r := range c.rooms {
		rooms = append(rooms, r)
	}
	for _, r := range c.departed {
		rooms = append(rooms, r)
	}
	clear(c.rooms)
	clear(c.departed)
	c.mu.Unlock()
	c.cancel()
	if c.removeHandler != nil {
		c.removeHandler()
		c.removeEvents()
	}
	for _, r := range rooms {
		r.end(ErrLeft, nil)
	}
	return nil
}

// JoinOption configures a join.
type JoinOption func(*joinConfig)

type joinConfig struct {
	password   string
	maxHistory int // -1: the room's default
}

// Password gives the room's password.
func Password(pw string) JoinOption { return func(j *joinConfig) { j.password = pw } }

// History asks for at most n messages of the room's history (default 0:
// none, so that old messages are not mistaken for anything).
func History(n int) JoinOption { return func(j *joinConfig) { j.maxHistory = n } }

// Join enters room (a bare JID) with nick and waits for the room's
// self-presence, or for ctx. A refusal is a *JoinError. When the service
// creates the room for us and keeps it locked until it is configured
// (status 201), Join accepts the default configuration (an instant room,
// XEP-0045 §10.1.2) before it returns. When ctx ends first, Join sends an
// unavailable presence, so that a late answer does not leave us in the room.
func (c *Client) Join(ctx context.Context, room jid.JID, nick string, opts ...JoinOption) (*Room, error) {
	if room.Localpart() == "" || room.Resourcepart() != "" {
		return nil, fmt.Errorf("muc: %q is not a room's bare JID", room)
	}
	occupant, err := room.WithResource(nick)
	if err != nil || nick == "" {
		return nil, fmt.Errorf("muc: bad nick %q: %v", nick, err)
	}
	jc := joinConfig{}
	for _, o := range opts {
		o(&jc)
	}
	r := newRoom(c, occupant, jc)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrLeft
	}
	if _, dup := c.rooms[r.key]; dup {
		c.mu.Unlock()
		return nil, fmt.Errorf("muc: already in %s", r.key)
	}
	c.rooms[r.key] = r
	c.mu.Unlock()
	if err := r.sendJoin(ctx, 0); err != nil {
		r.end(err, nil)
		return nil, err
	}
	return r, nil
}

// Adopt returns the room as joined without sending a join presence: for a
// process that resumes, from the stream's outbox, the session of an earlier
// process that had joined the room as nick (the server kept the session,
// and with it the occupant). Call it between stream.New and Connect, so that
// the room sees the reflections the resumed session brings at once. If the
// session cannot be resumed, the stream starts a new one and the room joins
// again by itself, as after any new session (EventRejoined).
func (c *Client) Adopt(room jid.JID, nick string) (*Room, error) {
	if room.Localpart() == "" || room.Resourcepart() != "" {
		return nil, fmt.Errorf("muc: %q is not a room's bare JID", room)
	}
	occupant, err := room.WithResource(nick)
	if err != nil || nick == "" {
		return nil, fmt.Errorf("muc: bad nick %q: %v", nick, err)
	}
	r := newRoom(c, occupant, joinConfig{})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrLeft
	}
	if _, dup := c.rooms[r.key]; dup {
		return nil, fmt.Errorf("muc: already in %s", r.key)
	}
	r.mu.Lock()
	r.state = joined
	r.mu.Unlock()
	c.rooms[r.key] = r
	return r, nil
}

// Room returns the room with the given bare JID that the client has joined
// (or is joining), compared as XMPP compares JIDs.
func (c *Client) Room(addr jid.JID) (*Room, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.rooms[addr.Bare().String()]
	return r, ok
}

// forget takes r out of the client: out of the joined rooms, and out of the
// departed ones once nothing is pending in it.
func (c *Client) forget(r *Room) {
	c.mu.Lock()
	if c.rooms[r.key] == r {
		delete(c.rooms, r.key)
	}
	if c.departed[r.key] == r {
		delete(c.departed, r.key)
	}
	c.mu.Unlock()
}

// depart moves r from the joined rooms to the departed ones.
func (c *Client) depart(r *Room) {
	c.mu.Lock()
	if c.rooms[r.key] == r {
		delete(c.rooms, r.key)
		if !c.closed {
			c.departed[r.key] = r
		}
	}
	c.mu.Unlock()
}

// Rooms returns the rooms the client is in.
func (c *Client) Rooms() []*Room {
	c.mu.Lock()
	defer c.mu.Unlock()
	rs := make([]*Room, 0, len(c.rooms))
	for _, r := range c.rooms {
		rs = append(rs, r)
	}
	return rs
}

// handle looks at every inbound stanza: those from a room we are in go to
// that room; messages it does not know go to a room of the same address
// that removed us, if any. It runs on the stream's reader goroutine.
func (c *Client) handle(el *stream.Element) {
	local := el.Name().Local
	if local != "message" && local != "presence" {
		return
	}
	from := el.Attr("from")
	if from == "" {
		return
	}
	sender, ok := parseSender(from)
	if !ok {
		return
	}
	c.mu.Lock()
	r, gone := c.rooms[sender.bare], c.departed[sender.bare]
	c.mu.Unlock()
	switch local {
	case "message":
		if r != nil && r.handleMessage(el, sender) {
			return
		}
		if gone != nil {
			gone.handleMessage(el, sender)
		}
	case "presence":
		if r != nil {
			r.handlePresence(el, sender)
		}
	}
}

// sender is the from of a stanza: the normalized bare JID, the resource
// exactly, as XMPP compares JIDs.
type sender struct {
	raw      string
	bare     string
	resource string
}

// parseSender splits from into its normalized bare JID and its resource.
// The common case, an address already in normal form, costs no parse.
func parseSender(from string) (sender, bool) {
	bare, res := from, ""
	if i := indexByte(from, '/'); i >= 0 {
		bare, res = from[:i], from[i+1:]
	}
	if isLowerASCII(bare) {
		return sender{raw: from, bare: bare, resource: res}, true
	}
	j, err := jid.Parse(from)
	if err != nil {
		return sender{}, false
	}
	return sender{raw: from, bare: j.Bare().String(), resource: j.Resourcepart()}, true
}

// isLowerASCII reports whether s holds only ASCII characters that JID
// normalization leaves as they are in a localpart and a domain.
func isLowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b >= 0x80 || ('A' <= b && b <= 'Z') || b <= ' ' {
			return false
		}
	}
	return s != ""
}

// streamEvent joins the rooms again after the stream lost its session. It
// runs on the stream's connecting goroutine before the new session writes
// anything, so messages still queued can be held back for the rejoin.
func (c *Client) streamEvent(ev stream.Event) {
	if ev.Kind != stream.EventNewSession {
		return
	}
	for _, r := range c.Rooms() {
		if n, ok := r.newSession(); ok {
			go r.rejoin(n)
		}
	}
}

func indexByte(s string, b byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return i
		}
	}
	return -1
}

// limit records p, a message without a timeout, and gives up the oldest
// such message when there are more than the limit. Called without any
// Room's lock held.
func (c *Client) limit(p *pending) {
	if c.pendingLimit <= 0 {
		return
	}
	u := &c.untimed
	u.Lock()
	p.uprev, p.unext, p.inUntimed = u.tail, nil, true
	if u.tail != nil {
		u.tail.unext = p
	} else {
		u.head = p
	}
	u.tail = p
	u.n++
	var oldest *pending
	if u.n > c.pendingLimit {
		oldest = u.head
		c.unlimitLocked(oldest)
	}
	u.Unlock()
	if oldest != nil {
		// Its observer forgets it in its room.
		_ = oldest.t.Close()
	}
}

// unlimit forgets p in the FIFO of messages without a timeout.
func (c *Client) unlimit(p *pending) {
	u := &c.untimed
	u.Lock()
	c.unlimitLocked(p)
	u.Unlock()
}

func (c *Client) unlimitLocked(p *pending) {
	u := &c.untimed
	if !p.inUntimed {
		return
	}
	if p.uprev != nil {
		p.uprev.unext = p.unext
	} else {
		u.head = p.unext
	}
	if p.unext != nil {
		p.unext.uprev = p.uprev
	} else {
		u.tail = p.uprev
	}
	p.uprev, p.unext, p.inUntimed = nil, nil, false
	u.n--
}

// mucUser is the part of a muc#user presence the client needs.
type mucUser struct {
	codes      []string
	nick       string // item nick (a nick change, 303)
	destroyed  bool   // <destroy/>: the room is gone
	occupantID string // XEP-0421 <occupant-id/>, a sibling of <x/>
}

func readMUCUser(inner []xml.Token) (mucUser, bool) {
	var u mucUser
	found := false
	depth := 0
	inX := false
	for _, tok := range inner {
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 1 && t.Name.Space == NSOccupantID && t.Name.Local == "occupant-id" {
				u.occupantID = xstanza.Attr(t, "id")
			}
			if depth == 1 && t.Name.Space == NSUser && t.Name.Local == "x" {
				inX, found = true, true
				continue
			}
			if inX && depth == 2 {
				switch t.Name.Local {
				case "status":
					u.codes = append(u.codes, xstanza.Attr(t, "code"))
				case "item":
					if n := xstanza.Attr(t, "nick"); n != "" {
						u.nick = n
					}
				case "destroy":
					u.destroyed = true
				}
			}
		case xml.EndElement:
			if depth == 1 {
				inX = false
			}
			depth--
		}
	}
	return u, found
}

func (u mucUser) has(code string) bool {
	for _, c := range u.codes {
		if c == code {
			return true
		}
	}
	return false
}

// Stats returns a snapshot of the trackers the client handed out, in all
// its rooms: how many are under way, by state; how many ended, by outcome;
// the time from the send call to DELIVERED_TO_RECIPIENT, the room's
// reflection (see tracking.Stats). A send that returned an error handed out
// no tracker and is not counted.
func (c *Client) Stats() tracking.Stats { return c.rec.Stats() }

// AddHook registers h to learn of the deliveries and outcomes of the
// client's trackers as they happen (see tracking.Hook for where it runs);
// the returned function removes it.
func (c *Client) AddHook(h tracking.Hook) (remove func()) { return c.rec.AddHook(h) }
