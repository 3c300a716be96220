package muc

import (
	"context"
	"encoding/xml"
	"fmt"
	"sync"
	"time"

	"mellium.im/xmpp/jid"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
)

// DefaultTimeout is how long a tracked message waits for its reflection
// unless WithTimeout says otherwise.
const DefaultTimeout = 30 * time.Second

// EventKind says what happened to a room.
type EventKind uint8

// Kinds of Event.
const (
	// EventRejoined: after the stream started a new session, the room was
	// joined again.
	EventRejoined EventKind = iota
	// EventRejoinFailed: joining again failed; Err says why. The room is
	// left.
	EventRejoinFailed
	// EventRemoved: the room removed us (kicked, banned, destroyed, shut
	// down); Err is a *RemovedError. Pending trackers end CLOSED and the room
	// is left.
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
// reflection before it is TIMED_OUT. Zero or less disables the timeout.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// DefaultRejoinTimeout bounds how long a rejoin after a new session waits
// for the room's answer, unless WithRejoinTimeout says otherwise.
const DefaultRejoinTimeout = 30 * time.Second

// WithRejoinTimeout sets how long a rejoin after a new session waits for the
// room's answer before the room is given up (EventRejoinFailed).
func WithRejoinTimeout(d time.Duration) Option { return func(c *Client) { c.rejoinTimeout = d } }

// WithEvents registers f to learn of room events, such as a rejoin after a
// new session. f runs on its own goroutine, one event at a time per room.
func WithEvents(f func(Event)) Option { return func(c *Client) { c.onEvent = f } }

// A Client tracks the rooms one stream takes part in.
type Client struct {
	s             *stream.Stream
	timeout       time.Duration
	rejoinTimeout time.Duration
	onEvent       func(Event)

	mu     sync.Mutex       // guards rooms and closed
	rooms  map[string]*Room // by bare room JID
	closed bool

	removeHandler, removeEvents func()
}

// NewClient attaches a MUC client to s. Close detaches it.
func NewClient(s *stream.Stream, opts ...Option) *Client {
	c := &Client{s: s, timeout: DefaultTimeout, rejoinTimeout: DefaultRejoinTimeout, rooms: make(map[string]*Room)}
	for _, o := range opts {
		o(c)
	}
	c.removeHandler = s.HandleElement(c.handle)
	c.removeEvents = s.OnEvent(c.streamEvent)
	return c
}

// Close detaches the client from its stream and ends every pending tracker
// of every room CLOSED. It does not send anything: the rooms are left when
// the stream closes.
func (c *Client) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	rooms := c.rooms
	c.rooms = make(map[string]*Room)
	c.mu.Unlock()
	c.removeHandler()
	c.removeEvents()
	for _, r := range rooms {
		r.end(ErrLeft)
	}
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
// self-presence, or for ctx. A refusal is a *JoinError.
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
	r := &Room{
		c:        c,
		addr:     room.Bare(),
		key:      room.Bare().String(),
		nick:     nick,
		join:     jc,
		byOrigin: make(map[string]*pending),
		byID:     make(map[string]*pending),
	}
	r.self = occupant.String()
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
	if err := r.sendJoin(ctx); err != nil {
		c.forget(r)
		return nil, err
	}
	return r, nil
}

func (c *Client) forget(r *Room) {
	c.mu.Lock()
	if c.rooms[r.key] == r {
		delete(c.rooms, r.key)
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
// that room. It runs on the stream's reader goroutine.
func (c *Client) handle(el *stream.Element) {
	from := xstanza.Attr(el.Start, "from")
	if from == "" {
		return
	}
	bare := from
	if i := indexByte(from, '/'); i >= 0 {
		bare = from[:i]
	}
	c.mu.Lock()
	r := c.rooms[bare]
	c.mu.Unlock()
	if r == nil {
		return
	}
	switch el.Start.Name.Local {
	case "message":
		r.handleMessage(el, from)
	case "presence":
		r.handlePresence(el, from)
	}
}

// streamEvent joins the rooms again after the stream lost its session.
func (c *Client) streamEvent(ev stream.Event) {
	if ev.Kind != stream.EventNewSession {
		return
	}
	for _, r := range c.Rooms() {
		r.dropWritten(ev.Session)
		r.mu.Lock()
		left := r.left
		r.mu.Unlock()
		if !left {
			go r.rejoin()
		}
	}
}

func (c *Client) emit(ev Event) {
	if c.onEvent != nil {
		c.onEvent(ev)
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

// mucUser is the part of a muc#user presence the client needs.
type mucUser struct {
	codes     []string
	nick      string // item nick (a nick change, 303)
	destroyed bool   // <destroy/>: the room is gone
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
