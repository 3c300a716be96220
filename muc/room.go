package muc

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/reconcile"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// NSOccupantID is the namespace of XEP-0421 occupant ids.
const NSOccupantID = "urn:xmpp:occupant-id:0"

// roomState is where the client is with a room. The whole state machine is
// one table, roomNext; Room.setLocked is the one place that changes state.
type roomState uint8

const (
	// joining: the join presence is sent, the room has not answered.
	joining roomState = iota
	// joined: in the room; messages go to the stream at once.
	joined
	// rejoining: the stream started a new session and the room is joined
	// again; messages are held until the room's self-presence confirms the
	// rejoin, then sent in order.
	rejoining
	// removed: the room removed us. Messages in flight still learn the
	// room's answer; nothing new is sent.
	removed
	// left: Leave, Client.Close, a failed join or rejoin. Nothing is
	// pending and nothing is sent any more. Final.
	left
)

// roomNext[from] holds the states a room may move to.
var roomNext = [...][]roomState{
	joining:   {joined, left},
	joined:    {rejoining, removed, left},
	rejoining: {rejoining, joined, removed, left},
	removed:   {left},
}

// A Room is a room the client has joined.
type Room struct {
	c    *Client
	addr jid.JID // bare
	key  string  // addr as a string, the key of Client.rooms
	join joinConfig

	// ctx ends when the room is left: a rejoin and the messages it holds
	// back stop waiting for the stream then.
	ctx    context.Context
	cancel context.CancelFunc

	// presence serialises the presences the room sends (joins and the
	// leave), so that no join presence follows our unavailable presence.
	presence sync.Mutex

	// mu guards the fields below.
	mu         sync.Mutex
	state      roomState
	self       jid.JID      // our occupant JID
	selfRaw    string       // self as the room writes it
	occupantID string       // our XEP-0421 occupant id, if the room gives one
	anchorID   string       // the room's stanza-id of the last reflection of ours
	anchorAt   time.Time    // when it came
	joinID     string       // id of the latest join presence awaiting its answer
	joined     []chan error // joins waiting for that answer
	created    bool         // the latest self-presence said 201: the room is new and locked
	rejoins    uint64       // rejoins started; only the latest reports
	nickID     string       // id of the nick change presence awaiting its answer
	nickDone   chan error
	byOrigin   map[string]*pending // pending messages by origin-id
	byID       map[string]*pending // pending messages by id
	held       []*pending          // messages held during a rejoin, in send order
	seq        uint64              // messages sent, for the order of held ones
	events     []Event             // room events not yet delivered
	emitting   bool                // a goroutine is delivering events

	// jids guards the JIDs last parsed by messageHeader.
	jids struct {
		sync.Mutex
		from, to parsedJID
	}
}

func newRoom(c *Client, occupant jid.JID, jc joinConfig) *Room {
	r := &Room{
		c:        c,
		addr:     occupant.Bare(),
		key:      occupant.Bare().String(),
		join:     jc,
		self:     occupant,
		selfRaw:  occupant.String(),
		byOrigin: make(map[string]*pending),
		byID:     make(map[string]*pending),
	}
	r.ctx, r.cancel = context.WithCancel(c.ctx)
	return r
}

// setLocked moves the room to state to if the table allows it, and reports
// whether it did. r.mu must be held.
func (r *Room) setLocked(to roomState) bool {
	if int(r.state) >= len(roomNext) || !slices.Contains(roomNext[r.state], to) {
		return false
	}
	r.state = to
	return true
}

// pending is a message waiting for its reflection or error. Its tracker is
// bound to it rather than to the stream's token, because a message held
// back during a rejoin gets a new token when it is finally written: pending
// passes on the changes of its current token only.
type pending struct {
	r            *Room
	t            *tracking.MessageTracker
	id, originID string
	b            []byte // the stanza
	seq          uint64

	// Guarded by Room.mu:
	tok     *stream.StanzaToken      // the current token; nil while held or not yet queued
	onTok   func(stream.TokenChange) // the tracker's observer
	ended   bool                     // the tracker ended: never send it
	sending bool                     // handed to the stream, token not yet known
	// stopSend ends the wait for room in the stream's queue; nil once the
	// stream has the message, so that its context is not kept.
	stopSend context.CancelFunc
	// uncertain: written in a session that was lost, unacknowledged or
	// unreflected; the archive decides after the rejoin (SetReconciler).
	uncertain bool
	sentAt    time.Time // when it was first handed to the stream
	reason    string    // why it ended CLOSED, for the outbox
	stanzaID  string    // the room's stanza-id of its reflection, for the outbox

	// Guarded by Client.untimed:
	uprev, unext *pending
	inUntimed    bool
}

// Observe implements tracking.Token: the tracker learns the changes of the
// message's current stream token.
func (p *pending) Observe(f func(stream.TokenChange)) {
	p.r.mu.Lock()
	p.onTok = f
	p.r.mu.Unlock()
	f(stream.TokenChange{State: stream.TokenQueued})
}

// Abort implements tracking.Token: it keeps the message from being written,
// whether it is held, queued in the stream, or on its way there.
func (p *pending) Abort() error {
	r := p.r
	r.mu.Lock()
	if p.ended {
		r.mu.Unlock()
		return nil
	}
	tok := p.tok
	if tok != nil {
		r.mu.Unlock()
		return tok.Abort()
	}
	p.ended = true
	if i := slices.Index(r.held, p); i >= 0 {
		r.held = slices.Delete(r.held, i, i+1)
	}
	r.mu.Unlock()
	return nil
}

// follow makes p's tracker learn the changes of tok, its new stream token.
func (p *pending) follow(tok *stream.StanzaToken) {
	r := p.r
	r.mu.Lock()
	p.sending, p.stopSend = false, nil
	if p.ended {
		r.mu.Unlock()
		_ = tok.Abort()
		return
	}
	p.tok = tok
	r.mu.Unlock()
	tok.Observe(func(c stream.TokenChange) {
		r.mu.Lock()
		f := p.onTok
		if p.tok != tok {
			f = nil // replaced: the message was held back for a rejoin
		}
		if f != nil && c.State == stream.TokenDisconnected && r.c.s.Err() == nil {
			if rc, _ := r.c.getReconciler(); rc != nil {
				// Lost with a session while the stream goes on: the
				// archive decides after the rejoin, not the token.
				p.uncertain, f = true, nil
			}
		}
		r.mu.Unlock()
		if f != nil {
			f(c)
		}
	})
}

// Addr returns the room's bare JID.
func (r *Room) Addr() jid.JID { return r.addr }

// Nick returns our nick in the room, as the room last told it.
func (r *Room) Nick() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.self.Resourcepart()
}

// OccupantJID returns our occupant JID (room@service/nick).
func (r *Room) OccupantJID() jid.JID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.self
}

// Pending returns how many tracked messages await their reflection (or the
// room's error), held back during a rejoin included.
func (r *Room) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byID)
}

// joinPresence returns the join presence to occupant with id.
func (r *Room) joinPresence(occupant, id string) []byte {
	b := make([]byte, 0, 256)
	b = append(b, "<presence to='"...)
	b = xstanza.AppendEscaped(b, occupant)
	b = append(b, "' id='"...)
	b = append(b, id...)
	b = append(b, "'><x xmlns='"+NS+"'>"...)
	if r.join.maxHistory >= 0 {
		b = append(b, "<history maxstanzas='"...)
		b = strconv.AppendInt(b, int64(r.join.maxHistory), 10)
		b = append(b, "'/>"...)
	}
	if r.join.password != "" {
		b = append(b, "<password>"...)
		b = xstanza.AppendEscaped(b, r.join.password)
		b = append(b, "</password>"...)
	}
	return append(b, "</x></presence>"...)
}

// sendJoin sends the join presence and waits for the self-presence. When
// another join is sent before the answer (a rejoin after yet another new
// session), both learn the answer to the latest: the earlier presence went
// to a session that is gone. rejoin is the number of the rejoin, 0 for the
// first join. When ctx ends first, an unavailable presence follows, so that
// a late answer does not leave us in the room.
func (r *Room) sendJoin(ctx context.Context, rejoin uint64) error {
	id := xstanza.NewID()
	done := make(chan error, 1)
	r.presence.Lock()
	r.mu.Lock()
	if r.state == left || (rejoin != 0 && rejoin != r.rejoins) {
		r.mu.Unlock()
		r.presence.Unlock()
		return ErrLeft
	}
	r.joinID = id
	r.joined = append(r.joined, done)
	r.created = false
	occupant := r.self.String()
	r.mu.Unlock()
	_, err := r.c.s.SendBytes(ctx, id, r.joinPresence(occupant, id))
	r.presence.Unlock()
	if err != nil {
		r.dropJoin(done)
		return fmt.Errorf("muc: join %s: %w", r.key, err)
	}
	select {
	case err = <-done:
	case <-ctx.Done():
		if err = r.dropJoin(done); err == nil {
			err = fmt.Errorf("muc: join %s: %w", r.key, ctx.Err())
			r.mu.Lock()
			st := r.state
			r.mu.Unlock()
			if st != left {
				// Left meanwhile: Leave says goodbye itself.
				r.sendLeave(r.c.ctx, occupant)
			}
			return err
		}
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	created := r.created
	r.mu.Unlock()
	if created {
		return r.instant(ctx)
	}
	return nil
}

// dropJoin stops waiting for the answer to a join on done. It returns the
// answer when it came meanwhile, nil otherwise.
func (r *Room) dropJoin(done chan error) error {
	r.mu.Lock()
	if i := slices.Index(r.joined, done); i >= 0 {
		r.joined = slices.Delete(r.joined, i, i+1)
	}
	if len(r.joined) == 0 {
		r.joinID, r.joined = "", nil
	}
	r.mu.Unlock()
	select {
	case err := <-done:
		return err
	default:
		return nil
	}
}

// instant accepts the default configuration of a room the service created
// for us and keeps locked until its owner configures it (XEP-0045 §10.1.2).
func (r *Room) instant(ctx context.Context) error {
	iq := stanza.IQ{To: r.addr, Type: stanza.SetIQ}
	q := xml.StartElement{Name: xml.Name{Space: NSOwner, Local: "query"}}
	x := xml.StartElement{Name: xml.Name{Space: "jabber:x:data", Local: "x"}, Attr: []xml.Attr{{Name: xml.Name{Local: "type"}, Value: "submit"}}}
	reply, err := r.c.s.SendIQ(ctx, iq, xmlstream.Wrap(xmlstream.Wrap(nil, x), q))
	if err != nil {
		return fmt.Errorf("muc: join %s: configure the new room: %w", r.key, err)
	}
	if reply.Attr("type") == "error" {
		return &JoinError{Room: r.addr, Err: stanzaError(reply)}
	}
	return nil
}

// sendLeave queues an unavailable presence to occupant. It returns at once;
// the presence waits for room in the stream's queue no longer than ctx.
func (r *Room) sendLeave(ctx context.Context, occupant string) {
	id := xstanza.NewID()
	b := append([]byte("<presence type='unavailable' to='"), xstanza.AppendEscaped(nil, occupant)...)
	b = append(b, "' id='"...)
	b = append(b, id...)
	b = append(b, "'/>"...)
	go func() {
		r.presence.Lock()
		defer r.presence.Unlock()
		_, _ = r.c.s.SendBytes(ctx, id, b)
	}()
}

// SetNick changes our nick in the room and waits for the room's answer, or
// for ctx. Messages in flight follow the change: their reflection is
// expected from the new occupant JID. A refusal is a *JoinError (for
// example ErrNickConflict).
func (r *Room) SetNick(ctx context.Context, nick string) error {
	occupant, err := r.addr.WithResource(nick)
	if err != nil || nick == "" {
		return fmt.Errorf("muc: bad nick %q: %v", nick, err)
	}
	id := xstanza.NewID()
	done := make(chan error, 1)
	r.mu.Lock()
	if r.state != joined {
		r.mu.Unlock()
		return fmt.Errorf("muc: change nick in %s: %w", r.key, ErrLeft)
	}
	if r.nickID != "" {
		r.mu.Unlock()
		return fmt.Errorf("muc: change nick in %s: a change is already in progress", r.key)
	}
	r.nickID, r.nickDone = id, done
	r.mu.Unlock()
	b := []byte("<presence to='")
	b = xstanza.AppendEscaped(b, occupant.String())
	b = append(b, "' id='"...)
	b = append(b, id...)
	b = append(b, "'/>"...)
	_, err = r.c.s.SendBytes(ctx, id, b)
	if err == nil {
		select {
		case err = <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	r.mu.Lock()
	if r.nickID == id {
		r.nickID, r.nickDone = "", nil
	}
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("muc: change nick in %s: %w", r.key, err)
	}
	return nil
}

// handlePresence follows our own presence in the room: the self-presence
// that completes a join (status 110), nick changes (303, 210), errors, and
// the room removing us (kicked, banned, room destroyed, service shut down).
func (r *Room) handlePresence(el *stream.Element, from sender) {
	typ := el.Attr("type")
	id := el.Attr("id")
	var held []*pending
	r.mu.Lock()
	if typ == "error" {
		switch {
		case r.joinID != "" && id == r.joinID:
			r.finishJoinLocked(&JoinError{Room: r.addr, Err: stanzaError(el)})
		case r.nickID != "" && id == r.nickID:
			r.nickDone <- &JoinError{Room: r.addr, Err: stanzaError(el)}
			r.nickID, r.nickDone = "", nil
		}
		r.mu.Unlock()
		return
	}
	u, ok := readMUCUser(el.Tokens())
	if !ok || !(u.has("110") || (u.destroyed && from.resource == r.self.Resourcepart())) {
		r.mu.Unlock()
		return
	}
	switch {
	case typ == "unavailable" && u.has("303") && u.nick != "":
		// Our nick changed; the new self-presence follows.
		if self, err := r.addr.WithResource(u.nick); err == nil {
			r.self, r.selfRaw = self, self.String()
		}
	case typ == "unavailable" && (u.has("332") || u.has("333")) && r.joinID == "" && (r.state == joined || r.state == rejoining):
		// The service is shutting down (XEP-0045 status 332), or took
		// our connection for broken (333): we did not leave. Hold new
		// messages; the room is joined again with the stream's next
		// session, as after any new session.
		r.setLocked(rejoining)
	case typ == "unavailable" && r.joinID == "" && (r.state == joined || r.state == rejoining):
		r.setLocked(removed)
		// Messages held for a rejoin were never written: they end.
		// Those in flight still learn the room's answer.
		held, r.held = r.held, nil
		for _, p := range held {
			r.forgetLocked(p)
		}
		// Out of the joined rooms at once, so that Join may enter the
		// room again, even from the event's function.
		r.c.depart(r)
		r.emitLocked(Event{Kind: EventRemoved, Room: r, Err: &RemovedError{Room: r.addr, Codes: u.codes, Destroyed: u.destroyed}})
	case typ == "":
		if self, err := jid.Parse(from.raw); err == nil {
			r.self = self
		}
		r.selfRaw = from.raw
		if u.occupantID != "" {
			r.occupantID = u.occupantID
		}
		if r.nickID != "" && id == r.nickID {
			r.nickDone <- nil
			r.nickID, r.nickDone = "", nil
		}
		if r.joinID != "" {
			r.created = u.has("201")
			if r.state == rejoining {
				r.emitLocked(Event{Kind: EventRejoined, Room: r})
			}
			r.finishJoinLocked(nil)
		}
	}
	r.mu.Unlock()
	for _, p := range held {
		r.c.unlimit(p)
		_ = p.t.Close()
	}
	if held != nil || typ == "unavailable" {
		r.maybeForget()
	}
}

func (r *Room) maybeForget() {
	r.mu.Lock()
	done := r.state == removed && len(r.byID) == 0
	if done {
		r.setLocked(left)
	}
	r.mu.Unlock()
	if done {
		r.cancel()
		r.c.forget(r)
	}
}

func (r *Room) finishJoinLocked(err error) {
	for _, ch := range r.joined {
		ch <- err
	}
	r.joinID, r.joined = "", nil
	if err == nil && r.state == joining {
		r.setLocked(joined)
	}
}

// emitLocked queues ev for the client's WithEvents function. The events of
// a room are delivered one at a time and in order, by a goroutine that runs
// while there are events to deliver. r.mu must be held.
func (r *Room) emitLocked(ev Event) {
	if r.c.onEvent == nil {
		return
	}
	r.events = append(r.events, ev)
	if !r.emitting {
		r.emitting = true
		go r.deliverEvents()
	}
}

func (r *Room) deliverEvents() {
	for {
		r.mu.Lock()
		if len(r.events) == 0 {
			r.events, r.emitting = nil, false
			r.mu.Unlock()
			return
		}
		ev := r.events[0]
		r.events = r.events[1:]
		r.mu.Unlock()
		r.c.onEvent(ev)
	}
}

// handleMessage matches a reflection or an error to a pending message, and
// reports whether it did.
func (r *Room) handleMessage(el *stream.Element, from sender) bool {
	typ := el.Attr("type")
	var p *pending
	var to tracking.MessageState
	resp := &tracking.Response{}
	r.mu.Lock()
	switch typ {
	case "groupchat":
		if !r.isSelfLocked(from) {
			r.mu.Unlock()
			return false
		}
		ids := readIDs(el, r.addr, r.key)
		if r.occupantID != "" && ids.occupantID != r.occupantID {
			// XEP-0421: the room vouches for the sender; another
			// occupant id is someone else, whatever the JID says.
			r.mu.Unlock()
			return false
		}
		if ids.originID != "" {
			p = r.byOrigin[ids.originID]
		}
		if p == nil && ids.id != "" {
			p = r.byID[ids.id]
		}
		to = tracking.DeliveredToRecipient
		resp.StanzaID, resp.StanzaIDBy = ids.stanzaID, ids.stanzaIDBy
	case "error":
		if from.resource != "" && !r.isSelfLocked(from) {
			r.mu.Unlock()
			return false
		}
		p = r.byID[el.Attr("id")]
		to = tracking.Error
		resp.Error = stanzaError(el)
	}
	if p != nil {
		r.forgetLocked(p)
	}
	r.mu.Unlock()
	if p == nil {
		return false
	}
	resp.Message = r.messageHeader(el)
	// A rejected transition (an error after the reflection, a reflection
	// after a timeout) changes nothing, which is what we want.
	if to == tracking.DeliveredToRecipient && resp.StanzaID != "" && resp.StanzaIDBy.Equal(r.addr) {
		// Our own evidence that the room's archive covers what follows
		// (see Client.SetReconciler).
		r.mu.Lock()
		r.anchorID, r.anchorAt = resp.StanzaID, time.Now()
		r.mu.Unlock()
	}
	if p.t.Transition(to, resp) == nil && to == tracking.DeliveredToRecipient {
		// The reflection is the room's last word: tracking ends here.
		_ = p.t.Close()
	}
	return true
}

// isSelfLocked reports whether from is our occupant JID: the bare JID
// normalized (handle found the room by it), the nick exactly.
func (r *Room) isSelfLocked(from sender) bool {
	return from.raw == r.selfRaw || from.resource == r.self.Resourcepart()
}

// ids are the identifiers of a room's message.
type ids struct {
	id, originID string
	stanzaID     string
	stanzaIDBy   jid.JID
	occupantID   string
}

// readIDs reads the ids of a message from room: its id, origin-id,
// occupant-id, and the stanza-id the room itself assigned (a message may
// carry others, from archives on the way). key is room as a string: a room
// names itself in its stanza-ids as it is spelt there, and comparing the
// strings spares parsing the JID (PRECIS costs more than the rest of the
// matching) for every message.
func readIDs(el *stream.Element, room jid.JID, key string) ids {
	v := ids{id: el.Attr("id")}
	el.Children(func(t stream.Tag) bool {
		name := t.Name()
		switch {
		case name.Space == xstanza.NSSID && name.Local == "origin-id" && v.originID == "":
			v.originID = t.Attr("id")
		case name.Space == xstanza.NSSID && name.Local == "stanza-id" && v.stanzaID == "":
			if by := t.Attr("by"); by == key {
				v.stanzaID, v.stanzaIDBy = t.Attr("id"), room
			} else if j, err := jid.Parse(by); err == nil && j.Equal(room) {
				v.stanzaID, v.stanzaIDBy = t.Attr("id"), j
			}
		case name.Space == NSOccupantID && name.Local == "occupant-id" && v.occupantID == "":
			v.occupantID = t.Attr("id")
		}
		return true
	})
	return v
}

// stanzaError returns the error of an error stanza. An error without a
// condition, or without an <error/> at all, is an undefined-condition.
func stanzaError(el *stream.Element) *stanza.Error {
	se, ok := xstanza.Error(el.Tokens())
	if !ok {
		return &stanza.Error{Type: stanza.Cancel, Condition: stanza.UndefinedCondition}
	}
	if se.Condition == "" {
		se.Condition = stanza.UndefinedCondition
	}
	return se
}

// messageHeader returns the top-level attributes of a message. The from
// and to of a room's messages hardly ever change, and parsing a JID (PRECIS)
// costs more than matching the message: the last parse of each is kept.
func (r *Room) messageHeader(el *stream.Element) stanza.Message {
	m := stanza.Message{
		ID:   el.Attr("id"),
		Type: stanza.MessageType(el.Attr("type")),
	}
	from, to := el.Attr("from"), el.Attr("to")
	r.jids.Lock()
	defer r.jids.Unlock()
	m.From = r.jids.from.parse(from)
	m.To = r.jids.to.parse(to)
	return m
}

// parsedJID remembers the last JID parsed from a string.
type parsedJID struct {
	s string
	j jid.JID
}

func (p *parsedJID) parse(s string) jid.JID {
	if s != p.s || s == "" {
		j, _ := jid.Parse(s)
		p.s, p.j = s, j
	}
	return p.j
}

func (r *Room) forgetLocked(p *pending) {
	if r.byOrigin[p.originID] == p {
		delete(r.byOrigin, p.originID)
	}
	if r.byID[p.id] == p {
		delete(r.byID, p.id)
	}
}

// SendOption configures one tracked message.
type SendOption func(*sendConfig)

type sendConfig struct {
	timeout      time.Duration
	id, originID string
	sentAt       time.Time // for Follow
}

// WithIDs sends the message with the given id and origin-id instead of new
// ones: to send again, after a restart, a message whose earlier copy the
// room's archive does not hold (see package reconcile), so that a receiver
// that drops duplicates by origin-id can drop the copy. Both must be
// non-empty and must not be in use by a pending message of the room.
func WithIDs(id, originID string) SendOption {
	return func(c *sendConfig) { c.id, c.originID = id, originID }
}

// Timeout overrides the client's default timeout for one message. Zero or
// less means no timeout.
func Timeout(d time.Duration) SendOption {
	return func(c *sendConfig) { c.timeout = d }
}

// SendTrackedMessage sends body to the room and returns the tracker of the
// message (see the package documentation). The error is that of the stream's
// Send: on error no tracker is returned and nothing was sent. While the
// stream's queue is full SendTrackedMessage waits for room, for ctx, or for
// the end of the tracker (its timeout, Close, Abort): a tracker that ends
// first is returned with a nil error, and its message is never sent.
func (r *Room) SendTrackedMessage(ctx context.Context, body string, opts ...SendOption) (*tracking.MessageTracker, error) {
	if !xstanza.ValidText(body) {
		return nil, fmt.Errorf("muc: send to %s: %w", r.key, ErrInvalidText)
	}
	return r.send(ctx, body, nil, opts)
}

// SendTrackedPayload sends a groupchat message whose content is payload (a
// body, or any elements the caller built) and tracks it like
// SendTrackedMessage. The message's to, type, id and origin-id are set by
// the room.
func (r *Room) SendTrackedPayload(ctx context.Context, payload xml.TokenReader, opts ...SendOption) (*tracking.MessageTracker, error) {
	b, err := encodePayload(payload)
	if err != nil {
		return nil, fmt.Errorf("muc: payload: %w", err)
	}
	return r.send(ctx, "", b, opts)
}

// encodePayload serialises the tokens of payload.
func encodePayload(payload xml.TokenReader) ([]byte, error) {
	var buf bytesWriter
	e := xml.NewEncoder(&buf)
	for payload != nil {
		tok, err := payload.Token()
		if tok != nil {
			if err := e.EncodeToken(tok); err != nil {
				return nil, err
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
	}
	if err := e.Flush(); err != nil {
		return nil, err
	}
	return buf, nil
}

// send sends a groupchat message whose content is payload, or, if payload is
// nil, a body of text.
func (r *Room) send(ctx context.Context, text string, payload []byte, opts []SendOption) (tr *tracking.MessageTracker, err error) {
	sent := time.Now()
	defer func() {
		if tr != nil {
			r.c.rec.Track(tr, sent)
		}
	}()
	cfg := sendConfig{timeout: r.c.timeout}
	for _, o := range opts {
		o(&cfg)
	}
	var id, originID string
	if cfg.id != "" || cfg.originID != "" {
		if cfg.id == "" || cfg.originID == "" || !xstanza.ValidText(cfg.id) || !xstanza.ValidText(cfg.originID) {
			return nil, fmt.Errorf("muc: send to %s: WithIDs(%q, %q): %w", r.key, cfg.id, cfg.originID, ErrBadIDs)
		}
		id, originID = cfg.id, cfg.originID
	} else {
		// One random value serves as both: XEP-0359 asks only that the
		// origin-id be unique, and a room that keeps either matches.
		id = xstanza.NewID()
		originID = id
	}
	// Text grows by an escape at most 6 times; most has none.
	b := make([]byte, 0, 128+len(r.key)+len(id)+len(originID)+len(payload)+len(text)+len(text)/8)
	b = append(b, "<message type='groupchat' to='"...)
	b = xstanza.AppendEscaped(b, r.key)
	b = append(b, "' id='"...)
	b = xstanza.AppendEscaped(b, id)
	b = append(b, "'>"...)
	if payload != nil {
		b = append(b, payload...)
	} else {
		b = append(b, "<body>"...)
		b = xstanza.AppendEscaped(b, text)
		b = append(b, "</body>"...)
	}
	b = append(b, "<origin-id xmlns='urn:xmpp:sid:0' id='"...)
	b = xstanza.AppendEscaped(b, originID)
	b = append(b, "'/></message>"...)
	return r.track(ctx, id, originID, b, cfg, nil)
}

// Follow tracks a message of this room that an earlier process wrote and
// that the stream restored from its outbox (stream.Stream.Restored): tok is
// its token, originID its origin-id, b its stanza and sentAt when it was
// first written, as the outbox recorded them. The tracker follows tok, and
// the room's reflection of the message,
// if the resumed session brings it, makes it DELIVERED_TO_RECIPIENT as for
// any message of the room. It returns an error wrapping ErrBadIDs when the
// message is already pending.
//
// A restored message that the resumed session acknowledges at once
// (TokenAcked right after Connect) was in the server's hands before the
// restart: the earlier process may have read its reflection, and counted it
// in the h it recorded, without recording the delivery, so the reflection
// does not come again. Ask the room's archive about such a message
// (package reconcile), as xmpptrack muc -outbox does.
func (r *Room) Follow(tok *stream.StanzaToken, originID string, b []byte, sentAt time.Time, opts ...SendOption) (*tracking.MessageTracker, error) {
	cfg := sendConfig{timeout: r.c.timeout, sentAt: sentAt}
	for _, o := range opts {
		o(&cfg)
	}
	tr, err := r.track(context.Background(), tok.ID(), originID, b, cfg, tok)
	if err == nil {
		r.c.rec.Track(tr, time.Now())
	}
	return tr, err
}

// track registers a message of the room and has its tracker follow it: tok
// if given (a message already written), else a new token from the stream,
// which track asks to send b.
func (r *Room) track(ctx context.Context, id, originID string, b []byte, cfg sendConfig, tok *stream.StanzaToken) (*tracking.MessageTracker, error) {
	t := tracking.NewMessageTracker(tracking.WithID(id), tracking.WithTimers(&r.c.timers))
	p := &pending{r: r, t: t, id: id, originID: originID, b: b, sentAt: cfg.sentAt}
	if p.sentAt.IsZero() {
		p.sentAt = time.Now()
	}
	// The tracker follows the message's token through p: bound before the
	// message can be written, so that no token change is missed.
	_ = t.Bind(p)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	switch r.state {
	case joined, rejoining:
	default:
		r.mu.Unlock()
		_ = t.Close()
		return nil, fmt.Errorf("muc: send to %s: %w", r.key, ErrLeft)
	}
	if r.byID[id] != nil || r.byOrigin[originID] != nil {
		r.mu.Unlock()
		_ = t.Close()
		return nil, fmt.Errorf("muc: send to %s: id %q or origin-id %q: %w", r.key, id, originID, ErrBadIDs)
	}
	r.seq++
	p.seq = r.seq
	r.byOrigin[originID] = p
	r.byID[id] = p
	hold := r.state == rejoining && tok == nil
	if hold {
		r.held = append(r.held, p)
	} else {
		p.sending, p.stopSend = true, cancel
	}
	r.mu.Unlock()
	if cfg.timeout > 0 {
		t.SetTimeout(cfg.timeout)
	} else {
		r.c.limit(p)
	}
	// Forget the message as soon as nothing the room sends can change it,
	// and stop waiting for the stream when tracking ends first. The
	// observer is told of the changes made before it registered too.
	r.c.s.Note(r.record(p, tracking.InTransit, nil))
	t.OnChange(func(c tracking.Change) {
		switch {
		case c.Ended:
			r.c.s.NoteDone(r.record(p, c.To, c.Response))
		case c.To != c.From:
			r.c.s.Note(r.record(p, c.To, c.Response))
		}
		if c.To >= tracking.DeliveredToRecipient {
			r.mu.Lock()
			r.forgetLocked(p)
			r.mu.Unlock()
			r.c.unlimit(p)
			r.maybeForget()
		}
		if c.Ended {
			r.mu.Lock()
			stop := p.stopSend
			r.mu.Unlock()
			if stop != nil {
				stop()
			}
		}
	})
	if hold {
		return t, nil
	}
	if tok != nil {
		p.follow(tok)
		return t, nil
	}
	tok, err := r.c.s.SendBytes(sctx, id, b)
	if err != nil {
		if t.Ended() {
			// The tracker ended while the queue was full: it says why,
			// and the message is never sent.
			return t, nil
		}
		_ = t.Close()
		return nil, fmt.Errorf("muc: send to %s: %w", r.key, err)
	}
	p.follow(tok)
	return t, nil
}

// Leave sends an unavailable presence to the room and ends every pending
// tracker CLOSED (a delivered one keeps its state). A rejoin in progress
// stops without an event, and no join presence follows the unavailable one.
// After the room removed us, Leave ends the trackers still waiting for the
// room's answer and sends nothing.
func (r *Room) Leave(ctx context.Context) error {
	r.mu.Lock()
	st := r.state
	self := r.self.String()
	r.mu.Unlock()
	if st == left {
		return nil
	}
	r.end(ErrLeft, nil)
	if st == removed {
		return nil
	}
	id := xstanza.NewID()
	b := append([]byte("<presence type='unavailable' to='"), xstanza.AppendEscaped(nil, self)...)
	b = append(b, "' id='"...)
	b = append(b, id...)
	b = append(b, "'/>"...)
	r.presence.Lock()
	defer r.presence.Unlock()
	if _, err := r.c.s.SendBytes(ctx, id, b); err != nil {
		return fmt.Errorf("muc: leave %s: %w", r.key, err)
	}
	return nil
}

// end leaves the room for good: it is taken out of its client, a join
// waiting for an answer learns err, and every pending tracker ends. Held
// messages end ERROR with the room's refusal when refusal is not nil,
// CLOSED otherwise, like the messages in flight.
func (r *Room) end(err error, refusal *JoinError) {
	r.mu.Lock()
	r.setLocked(left)
	ps := make([]*pending, 0, len(r.byID))
	for _, p := range r.byID {
		ps = append(ps, p)
	}
	held := r.held
	r.held = nil
	clear(r.byID)
	clear(r.byOrigin)
	if r.joined != nil {
		r.finishJoinLocked(err)
	}
	if r.nickDone != nil {
		r.nickDone <- err
		r.nickID, r.nickDone = "", nil
	}
	r.mu.Unlock()
	r.cancel()
	r.c.forget(r)
	if refusal != nil {
		for _, p := range held {
			_ = p.t.Transition(tracking.Error, &tracking.Response{
				Message: stanza.Message{From: r.addr, Type: stanza.ErrorMessage, ID: p.id},
				Error:   refusal.Err,
			})
		}
	}
	for _, p := range ps {
		r.c.unlimit(p)
		// Final or ended already: refused, which is fine.
		_ = p.t.Close()
	}
}

// newSession prepares the room for a rejoin after the stream started a new
// session, and returns the number of the rejoin to start. It runs before
// the new session writes anything: messages written before end CLOSED (the
// room's answer went to the session that is gone); messages still queued
// are taken back and held, with those sent from now on, until the room
// confirms the rejoin. It reports false for a room that is not joined.
func (r *Room) newSession() (uint64, bool) {
	var closed, requeue []*pending
	var toks []*stream.StanzaToken
	rc, _ := r.c.getReconciler()
	r.mu.Lock()
	if !r.setLocked(rejoining) {
		r.mu.Unlock()
		return 0, false
	}
	r.rejoins++
	n := r.rejoins
	for _, p := range r.byID {
		switch {
		case p.tok == nil:
			// Held already, or on its way to the stream.
		case p.tok.State() == stream.TokenQueued:
			requeue = append(requeue, p)
			toks = append(toks, p.tok)
			p.tok = nil // its token's changes no longer reach the tracker
		case rc != nil:
			// Written in the lost session and not reflected: the
			// archive decides after the rejoin.
			p.uncertain = true
			p.tok = nil
		default:
			closed = append(closed, p)
		}
	}
	for _, p := range closed {
		r.forgetLocked(p)
	}
	r.held = append(r.held, requeue...)
	slices.SortFunc(r.held, func(a, b *pending) int { return int(a.seq - b.seq) })
	r.mu.Unlock()
	for i, tok := range toks {
		if tok.Abort() != nil {
			// Written after all (cannot happen before the new session
			// starts writing): follow it again.
			r.mu.Lock()
			if j := slices.Index(r.held, requeue[i]); j >= 0 {
				r.held = slices.Delete(r.held, j, j+1)
			}
			r.mu.Unlock()
			requeue[i].follow(tok)
		}
	}
	for _, p := range closed {
		r.c.unlimit(p)
		_ = p.t.Close()
	}
	return n, true
}

// rejoin joins the room again after the stream started a new session, then
// sends the messages held meanwhile, in order. When a later rejoin starts
// before this one is done, only the later one reports and sends. Leave and
// Client.Close stop it without an event.
func (r *Room) rejoin(n uint64) {
	ctx, cancel := context.WithTimeout(r.ctx, r.c.rejoinTimeout)
	err := r.sendJoin(ctx, n)
	cancel()
	r.mu.Lock()
	current := n == r.rejoins && r.state == rejoining
	r.mu.Unlock()
	if !current {
		return
	}
	if err == nil {
		r.reconcile(n)
	}
	if err != nil {
		var refusal *JoinError
		errors.As(err, &refusal)
		r.mu.Lock()
		// Only if nothing left the room meanwhile: a deliberate leave
		// wins, without an event.
		failed := n == r.rejoins && r.setLocked(left)
		if failed {
			r.emitLocked(Event{Kind: EventRejoinFailed, Room: r, Err: err})
		}
		r.mu.Unlock()
		if failed {
			r.end(err, refusal)
		}
		return
	}
	r.flush(n)
}

// flush sends the messages held during rejoin n, in order, and then lets
// messages go to the stream directly again.
func (r *Room) flush(n uint64) {
	for {
		r.mu.Lock()
		if n != r.rejoins || r.state != rejoining {
			r.mu.Unlock()
			return
		}
		if len(r.held) == 0 {
			r.setLocked(joined)
			r.mu.Unlock()
			return
		}
		p := r.held[0]
		r.held = r.held[1:]
		p.sending = true
		r.mu.Unlock()
		tok, err := r.c.s.SendBytes(r.ctx, p.id, p.b)
		if err != nil {
			r.mu.Lock()
			p.sending = false
			r.mu.Unlock()
			_ = p.t.Close()
			continue
		}
		p.follow(tok)
	}
}

type bytesWriter []byte

func (b *bytesWriter) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}

// record is what the outbox keeps of p (see stream.Note) in state st, after
// the response resp if any.
func (r *Room) record(p *pending, st tracking.MessageState, resp *tracking.Response) outbox.Message {
	m := outbox.Message{Key: p.id, OriginID: p.originID, To: r.key, Kind: outbox.Groupchat, Stanza: p.b, State: st.String()}
	r.mu.Lock()
	defer r.mu.Unlock()
	if resp != nil {
		if resp.StanzaID != "" {
			p.stanzaID = resp.StanzaID
		}
		if resp.Error != nil {
			p.reason = resp.Error.Error()
		}
	}
	// The last record (the end of tracking, without a response) keeps
	// what the earlier ones said.
	m.StanzaID, m.Reason = p.stanzaID, p.reason
	return m
}

// reconcileTimeout bounds the archive queries after a rejoin.
const reconcileTimeout = time.Minute

// reconcile asks the archive what became of the messages the lost session
// had written and the room had not reflected (see Client.SetReconciler),
// after rejoin n succeeded and before the held messages are sent: one the
// archive holds ends DELIVERED_TO_RECIPIENT, one it shows absent joins the
// held messages to be sent again with the same ids, in order, and the
// rest end CLOSED with the reason.
func (r *Room) reconcile(n uint64) {
	rc, policy := r.c.getReconciler()
	var ps []*pending
	r.mu.Lock()
	for _, p := range r.byID {
		if p.uncertain {
			ps = append(ps, p)
		}
	}
	anchorID, anchorAt := r.anchorID, r.anchorAt
	r.mu.Unlock()
	if rc == nil || len(ps) == 0 {
		return
	}
	msgs := make([]reconcile.Uncertain, len(ps))
	for i, p := range ps {
		msgs[i] = reconcile.Uncertain{Key: p.id, ID: p.id, OriginID: p.originID, To: r.addr, Kind: reconcile.Groupchat, SentAt: p.sentAt}
	}
	var anchors []reconcile.Anchor
	if anchorID != "" {
		anchors = []reconcile.Anchor{{To: r.addr, StanzaID: anchorID, At: anchorAt}}
	}
	ctx, cancel := context.WithTimeout(r.ctx, reconcileTimeout)
	decisions, err := rc.Decide(ctx, msgs, anchors, policy)
	cancel()
	byKey := make(map[string]reconcile.Decision, len(decisions))
	for _, d := range decisions {
		byKey[d.Key] = d
	}
	var delivered, closed []*pending
	var found []reconcile.Decision
	r.mu.Lock()
	if n != r.rejoins {
		r.mu.Unlock()
		return // a later rejoin decides
	}
	for _, p := range ps {
		p.uncertain = false
		d, ok := byKey[p.id]
		switch {
		case ok && d.Outcome == reconcile.Delivered:
			r.forgetLocked(p)
			delivered, found = append(delivered, p), append(found, d)
		case ok && d.Outcome == reconcile.SafeToResend:
			r.held = append(r.held, p)
		default:
			p.reason = "the archive cannot tell whether the room has it"
			if ok {
				p.reason = d.Reason
			} else if err != nil {
				p.reason = err.Error()
			}
			r.forgetLocked(p)
			closed = append(closed, p)
		}
	}
	slices.SortFunc(r.held, func(a, b *pending) int { return int(a.seq - b.seq) })
	r.mu.Unlock()
	for i, p := range delivered {
		r.c.unlimit(p)
		resp := &tracking.Response{StanzaID: found[i].StanzaID, StanzaIDBy: r.addr}
		resp.Message.From, resp.Message.Type = r.OccupantJID(), stanza.GroupChatMessage
		if p.t.Transition(tracking.DeliveredToRecipient, resp) == nil {
			_ = p.t.Close()
		}
	}
	for _, p := range closed {
		r.c.unlimit(p)
		_ = p.t.Close()
	}
}

// SetAnchor tells the room the stanza-id of the last reflection of ours
// that an earlier process saw, and when: the anchor of reconciliation
// (Client.SetReconciler) until a reflection of this process's own replaces
// it. A process that adopts a room from an earlier one sets it from its
// outbox's records.
func (r *Room) SetAnchor(stanzaID string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if stanzaID != "" && at.After(r.anchorAt) {
		r.anchorID, r.anchorAt = stanzaID, at
	}
}
