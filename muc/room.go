package muc

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// A Room is a room the client has joined.
type Room struct {
	c    *Client
	addr jid.JID // bare
	key  string  // addr as a string, the key of Client.rooms
	join joinConfig

	// mu guards the fields below.
	mu       sync.Mutex
	nick     string
	self     string       // our occupant JID, as the room writes it
	joinID   string       // id of the latest join presence awaiting its answer
	joined   []chan error // joins waiting for that answer
	rejoins  uint64       // rejoins started; only the latest reports
	left     bool
	byOrigin map[string]*pending // pending messages by origin-id
	byID     map[string]*pending // pending messages by id

	// jids guards the JIDs last parsed by messageHeader.
	jids struct {
		sync.Mutex
		from, to parsedJID
	}
}

// pending is a message waiting for its reflection or error.
type pending struct {
	t            *tracking.MessageTracker
	id, originID string
	tok          *stream.StanzaToken // set once the stream accepted the stanza; guarded by Room.mu
}

// Addr returns the room's bare JID.
func (r *Room) Addr() jid.JID { return r.addr }

// Nick returns our nick in the room, as the room last told it.
func (r *Room) Nick() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nick
}

// OccupantJID returns our occupant JID (room@service/nick) as the room writes
// it.
func (r *Room) OccupantJID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.self
}

// Pending returns how many messages await their reflection, counted in each
// of the room's two indexes (by origin-id and by id). Both are zero when no
// tracked message is in flight.
func (r *Room) Pending() (byOriginID, byID int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byOrigin), len(r.byID)
}

// sendJoin sends the join presence and waits for the self-presence. When
// another join is sent before the answer (a rejoin after yet another new
// session), both learn the answer to the latest: the earlier presence went
// to a session that is gone.
func (r *Room) sendJoin(ctx context.Context) error {
	id := xstanza.NewID()
	done := make(chan error, 1)
	r.mu.Lock()
	r.joinID = id
	r.joined = append(r.joined, done)
	occupant := r.addr.String() + "/" + r.nick
	r.self = occupant
	r.mu.Unlock()

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
	b = append(b, "</x></presence>"...)
	if _, err := r.c.s.SendBytes(ctx, id, b); err != nil {
		return fmt.Errorf("muc: join %s: %w", r.key, err)
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		r.mu.Lock()
		for i, ch := range r.joined {
			if ch == done {
				r.joined = append(r.joined[:i:i], r.joined[i+1:]...)
				break
			}
		}
		if len(r.joined) == 0 {
			r.joinID, r.joined = "", nil
		}
		r.mu.Unlock()
		select {
		case err := <-done:
			// Answered meanwhile.
			return err
		default:
		}
		return fmt.Errorf("muc: join %s: %w", r.key, ctx.Err())
	}
}

// handlePresence follows our own presence in the room: the self-presence
// that completes a join (status 110), nick changes (303, 210), errors, and
// the room removing us (kicked, banned, room destroyed, service shut down).
func (r *Room) handlePresence(el *stream.Element, from string) {
	typ := xstanza.Attr(el.Start, "type")
	r.mu.Lock()
	if typ == "error" {
		if r.joinID != "" && xstanza.Attr(el.Start, "id") == r.joinID {
			r.finishJoin(&JoinError{Room: r.key, Err: stanzaError(el)})
		}
		r.mu.Unlock()
		return
	}
	u, ok := readMUCUser(el.Inner)
	if !ok || !(u.has("110") || (u.destroyed && from == r.self)) {
		r.mu.Unlock()
		return
	}
	var removed error
	switch {
	case typ == "unavailable" && u.has("303") && u.nick != "":
		// Our nick changed; the new self-presence follows.
		r.nick = u.nick
		r.self = r.key + "/" + u.nick
	case typ == "unavailable" && r.joinID == "" && !r.left:
		removed = &RemovedError{Room: r.key, Codes: u.codes, Destroyed: u.destroyed}
	case typ == "":
		r.self = from
		if i := indexByte(from, '/'); i >= 0 {
			r.nick = from[i+1:]
		}
		if r.joinID != "" {
			r.finishJoin(nil)
		}
	}
	if removed != nil {
		// Messages still in flight will be refused by the room (or were
		// reflected before this presence): they stay pending for that
		// answer or their timeout. Nothing new can be sent.
		r.left = true
	}
	r.mu.Unlock()
	if removed != nil {
		r.maybeForget()
		go r.c.emit(Event{Kind: EventRemoved, Room: r, Err: removed})
	}
}

// maybeForget takes a room that was left out of its client once nothing is
// pending in it any more.
func (r *Room) maybeForget() {
	r.mu.Lock()
	done := r.left && len(r.byID) == 0 && len(r.byOrigin) == 0
	r.mu.Unlock()
	if done {
		r.c.forget(r)
	}
}

func (r *Room) finishJoin(err error) {
	for _, ch := range r.joined {
		ch <- err
	}
	r.joinID, r.joined = "", nil
}

// handleMessage matches a reflection or an error to a pending message.
func (r *Room) handleMessage(el *stream.Element, from string) {
	typ := xstanza.Attr(el.Start, "type")
	var p *pending
	var to tracking.MessageState
	resp := &tracking.Response{}
	ids := xstanza.ReadIDs(el.Start, el.Inner)
	r.mu.Lock()
	switch typ {
	case "groupchat":
		if from != r.self {
			r.mu.Unlock()
			return
		}
		if ids.OriginID != "" {
			p = r.byOrigin[ids.OriginID]
		}
		if p == nil && ids.ID != "" {
			p = r.byID[ids.ID]
		}
		to = tracking.DeliveredToRecipient
		if ids.StanzaIDBy == r.key {
			resp.StanzaID, resp.StanzaIDBy = ids.StanzaID, ids.StanzaIDBy
		}
	case "error":
		if from != r.key && from != r.self {
			r.mu.Unlock()
			return
		}
		p = r.byID[ids.ID]
		to = tracking.Error
		resp.Error = stanzaError(el)
	}
	if p != nil {
		r.forgetLocked(p)
	}
	left := r.left
	r.mu.Unlock()
	if p == nil {
		return
	}
	if left {
		defer r.maybeForget()
	}
	resp.Message = r.messageHeader(el.Start)
	// A rejected transition (an error after the reflection, a reflection
	// after a timeout) changes nothing, which is what we want.
	_ = p.t.Transition(to, resp)
}

// stanzaError returns the error of an error stanza. An error without a
// condition, or without an <error/> at all, is an undefined-condition.
func stanzaError(el *stream.Element) *stanza.Error {
	se, ok := xstanza.Error(el.Inner)
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
func (r *Room) messageHeader(start xml.StartElement) stanza.Message {
	m := stanza.Message{
		ID:   xstanza.Attr(start, "id"),
		Type: stanza.MessageType(xstanza.Attr(start, "type")),
	}
	from, to := xstanza.Attr(start, "from"), xstanza.Attr(start, "to")
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
	timeout    time.Duration
	hasTimeout bool
}

// Timeout overrides the client's default timeout for one message.
func Timeout(d time.Duration) SendOption {
	return func(c *sendConfig) { c.timeout, c.hasTimeout = d, true }
}

// SendTrackedMessage sends body to the room and returns the tracker of the
// message (see the package documentation). The error is that of the stream's
// Send: on error no tracker is returned and nothing was sent.
func (r *Room) SendTrackedMessage(ctx context.Context, body string, opts ...SendOption) (*tracking.MessageTracker, error) {
	if !xstanza.ValidText(body) {
		return nil, fmt.Errorf("muc: send to %s: %w", r.key, ErrInvalidText)
	}
	b := make([]byte, 0, 160+len(body)+len(r.key))
	b = append(b, "<body>"...)
	b = xstanza.AppendEscaped(b, body)
	b = append(b, "</body>"...)
	return r.send(ctx, b, opts)
}

// SendTrackedPayload sends a groupchat message whose content is payload (a
// body, or any elements the caller built) and tracks it like
// SendTrackedMessage. The message's to, type, id and origin-id are set by
// the room.
func (r *Room) SendTrackedPayload(ctx context.Context, payload xml.TokenReader, opts ...SendOption) (*tracking.MessageTracker, error) {
	var buf bytesWriter
	e := xml.NewEncoder(&buf)
	for payload != nil {
		tok, err := payload.Token()
		if tok != nil {
			if err := e.EncodeToken(tok); err != nil {
				return nil, fmt.Errorf("muc: payload: %w", err)
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("muc: payload: %w", err)
		}
	}
	if err := e.Flush(); err != nil {
		return nil, fmt.Errorf("muc: payload: %w", err)
	}
	return r.send(ctx, []byte(buf), opts)
}

func (r *Room) send(ctx context.Context, content []byte, opts []SendOption) (*tracking.MessageTracker, error) {
	cfg := sendConfig{timeout: r.c.timeout}
	for _, o := range opts {
		o(&cfg)
	}
	id, originID := xstanza.NewID(), xstanza.NewID()
	b := make([]byte, 0, 128+len(content)+len(r.key))
	b = append(b, "<message type='groupchat' to='"...)
	b = xstanza.AppendEscaped(b, r.key)
	b = append(b, "' id='"...)
	b = append(b, id...)
	b = append(b, "'>"...)
	b = append(b, content...)
	b = append(b, "<origin-id xmlns='urn:xmpp:sid:0' id='"...)
	b = append(b, originID...)
	b = append(b, "'/></message>"...)

	t := tracking.NewMessageTracker(tracking.WithID(id))
	p := &pending{t: t, id: id, originID: originID}
	r.mu.Lock()
	if r.left {
		r.mu.Unlock()
		return nil, fmt.Errorf("muc: send to %s: %w", r.key, ErrLeft)
	}
	r.byOrigin[originID] = p
	r.byID[id] = p
	r.mu.Unlock()
	// Forget the message as soon as nothing the room sends can change it.
	t.OnChange(func(c tracking.Change) {
		if c.To >= tracking.DeliveredToRecipient {
			r.mu.Lock()
			r.forgetLocked(p)
			left := r.left
			r.mu.Unlock()
			if left {
				r.maybeForget()
			}
		}
	})
	if cfg.timeout > 0 {
		t.SetTimeout(cfg.timeout)
	}
	tok, err := r.c.s.SendBytes(ctx, id, b)
	if err != nil {
		r.mu.Lock()
		r.forgetLocked(p)
		r.mu.Unlock()
		t.Close()
		return nil, fmt.Errorf("muc: send to %s: %w", r.key, err)
	}
	r.mu.Lock()
	p.tok = tok
	r.mu.Unlock()
	t.Bind(tok)
	return t, nil
}

// Leave sends an unavailable presence to the room and ends every pending
// tracker CLOSED.
func (r *Room) Leave(ctx context.Context) error {
	r.mu.Lock()
	if r.left {
		r.mu.Unlock()
		return nil
	}
	self := r.self
	r.mu.Unlock()
	r.c.forget(r)
	r.end(ErrLeft)
	id := xstanza.NewID()
	b := append([]byte("<presence type='unavailable' to='"), xstanza.AppendEscaped(nil, self)...)
	b = append(b, "' id='"...)
	b = append(b, id...)
	b = append(b, "'/>"...)
	_, err := r.c.s.SendBytes(ctx, id, b)
	return err
}

// end marks the room left and closes every pending tracker.
func (r *Room) end(err error) {
	r.mu.Lock()
	r.left = true
	ps := make([]*pending, 0, len(r.byID))
	for _, p := range r.byID {
		ps = append(ps, p)
	}
	clear(r.byID)
	clear(r.byOrigin)
	if r.joined != nil {
		r.finishJoin(err)
	}
	r.mu.Unlock()
	for _, p := range ps {
		p.t.Close()
	}
}

// dropWritten ends CLOSED every pending message that was written before the
// stream started a new session: the room's answer to it, if any, went to
// the session that is gone. Messages still queued are written on the new
// session and stay pending. Called from the stream's event; session is the
// new session's number.
func (r *Room) dropWritten(session uint64) {
	var ps []*pending
	r.mu.Lock()
	for _, p := range r.byID {
		// Only what the lost session wrote: the stream may already have
		// written more in the new one by the time this runs.
		if p.tok == nil {
			continue
		}
		if w := p.tok.Session(); w != 0 && w < session {
			ps = append(ps, p)
		}
	}
	for _, p := range ps {
		r.forgetLocked(p)
	}
	r.mu.Unlock()
	for _, p := range ps {
		p.t.Close()
	}
}

// rejoin joins the room again after the stream started a new session. When
// a later rejoin starts before this one is answered, only the later one
// reports.
func (r *Room) rejoin() {
	ctx, cancel := context.WithTimeout(context.Background(), r.c.rejoinTimeout)
	defer cancel()
	r.mu.Lock()
	r.rejoins++
	n := r.rejoins
	r.mu.Unlock()
	err := r.sendJoin(ctx)
	r.mu.Lock()
	superseded := n != r.rejoins
	r.mu.Unlock()
	if superseded {
		return
	}
	if err != nil {
		r.c.forget(r)
		r.end(err)
		r.c.emit(Event{Kind: EventRejoinFailed, Room: r, Err: err})
		return
	}
	r.c.emit(Event{Kind: EventRejoined, Room: r})
}

type bytesWriter []byte

func (b *bytesWriter) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}
