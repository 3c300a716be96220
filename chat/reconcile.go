package chat

import (
	"context"
	"fmt"
	"slices"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/reconcile"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// message is one tracked message of a Client. Its tracker is bound to it
// rather than to the stream's token, because a message sent again after a
// lost session gets a new token: message passes on the changes of its
// current token only, and keeps a token lost with its session from ending
// the tracker while the archive decides (SetReconciler).
type message struct {
	c      *Client
	t      *tracking.MessageTracker
	id     string  // the stanza's id, and its origin-id
	to     jid.JID // the addressee as sent
	addr   string  // to as a string
	b      []byte  // the stanza
	sentAt time.Time

	// Guarded by Client.mu:
	seq   uint64
	tok   *stream.StanzaToken      // the current token; nil before the send, and while uncertain
	onTok func(stream.TokenChange) // the tracker's observer
	ended bool                     // the tracker ended before a token: never send it
	// lost: written in a session that was lost; its stanza can no longer
	// be aborted, whatever becomes of it.
	lost bool
	// uncertain: written in a lost session, unacknowledged, no receipt;
	// the archive decides (SetReconciler).
	uncertain bool
	// anchored is set once anchor holds the evidence for the archive
	// recorded when the message became uncertain: the latest message to
	// the same contact that the server had acknowledged (zero if none).
	anchored bool
	anchor   reconcile.Anchor
	reason   string // why it ended CLOSED, for the outbox
}

func newMessage(c *Client, t *tracking.MessageTracker, to jid.JID, id string, b []byte, sentAt time.Time) *message {
	m := &message{c: c, t: t, id: id, to: to, addr: to.String(), b: b, sentAt: sentAt}
	// The tracker follows the message's tokens through m: bound before
	// anything is sent, so that no token change is missed.
	_ = t.Bind(m)
	return m
}

// Observe implements tracking.Token: the tracker learns the changes of the
// message's current stream token.
func (m *message) Observe(f func(stream.TokenChange)) {
	m.c.mu.Lock()
	m.onTok = f
	m.c.mu.Unlock()
	f(stream.TokenChange{State: stream.TokenQueued})
}

// Abort implements tracking.Token: it keeps the message from being
// written, whether it is queued in the stream or on its way there. It fails
// once the message was written.
func (m *message) Abort() error {
	c := m.c
	c.mu.Lock()
	tok := m.tok
	switch {
	case m.ended:
		c.mu.Unlock()
		return nil
	case tok != nil:
		c.mu.Unlock()
		return tok.Abort()
	case m.lost:
		c.mu.Unlock()
		return fmt.Errorf("chat: abort %q: %w", m.id, stream.ErrNotQueued)
	}
	m.ended = true
	c.mu.Unlock()
	return nil
}

// follow makes m's tracker learn the changes of tok, its new stream token.
func (m *message) follow(tok *stream.StanzaToken) {
	c := m.c
	c.mu.Lock()
	if m.ended {
		c.mu.Unlock()
		_ = tok.Abort()
		return
	}
	m.tok = tok
	c.mu.Unlock()
	if m.t.Ended() {
		// Tracking ended while the message waited for the stream: a
		// message sent again after a lost session has no other way to
		// learn it.
		_ = tok.Abort()
	}
	bare := m.to.Bare()
	tok.Observe(func(ch stream.TokenChange) {
		running := ch.State == stream.TokenDisconnected && c.s.Err() == nil
		c.mu.Lock()
		f := m.onTok
		if m.tok != tok {
			f = nil // replaced: the message was lost with a session
		}
		switch {
		case ch.State == stream.TokenAcked:
			// Our own evidence that our archive covers what follows
			// (see SetReconciler).
			c.anchors[bare.String()] = reconcile.Anchor{To: bare, OriginID: m.id, At: time.Now()}
		case f != nil && running && c.reconciler != nil:
			// Lost with a session while the stream goes on: the archive
			// decides after the new session starts, not the token.
			m.uncertain, f = true, nil
		}
		c.mu.Unlock()
		if f != nil {
			f(ch)
		}
	})
}

// track registers m with the client: its receipts, markers and errors move
// its tracker from now on, and the outbox records it and each of its
// changes. It fails when m's id is already tracked or the client is closed.
func (c *Client) track(m *message) error {
	if err := c.m.Track(m.to, m.id, m.t); err != nil {
		return err
	}
	c.mu.Lock()
	c.seq++
	m.seq = c.seq
	c.msgs[m.id] = m
	c.mu.Unlock()
	// The observer is told of the changes made before it registered too.
	c.s.Note(c.record(m, tracking.InTransit, nil))
	m.t.OnChange(func(ch tracking.Change) {
		switch {
		case ch.Ended:
			c.s.NoteDone(c.record(m, ch.To, ch.Response))
			c.mu.Lock()
			m.uncertain = false
			if c.msgs[m.id] == m {
				delete(c.msgs, m.id)
			}
			c.mu.Unlock()
		case ch.To != ch.From:
			c.s.Note(c.record(m, ch.To, ch.Response))
		}
	})
	return nil
}

// record is what the outbox keeps of m (see stream.Stream.Note) in state st,
// after the response resp if any.
func (c *Client) record(m *message, st tracking.MessageState, resp *tracking.Response) outbox.Message {
	r := outbox.Message{Key: m.id, OriginID: m.id, To: m.addr, Kind: outbox.Chat, Stanza: m.b, State: st.String()}
	c.mu.Lock()
	r.Reason = m.reason
	c.mu.Unlock()
	if resp != nil {
		r.StanzaID = resp.StanzaID
		if resp.Error != nil {
			r.Reason = resp.Error.Error()
		}
	}
	return r
}

// SetReconciler makes the client ask rc, with policy p, what became of the
// messages a lost session had written and the server had not acknowledged,
// instead of ending them CLOSED. After the stream starts a new session (its
// resumption refused, live or after a restart of the process), each such
// message that has no receipt yet is looked for in our own archive (package
// reconcile): held there, it becomes DELIVERED_TO_SERVER and stays tracked,
// since a receipt may still come; shown absent, it is sent again with the
// same id and origin-id; when nothing vouches either way, it ends CLOSED,
// with the reason in its outbox record. A contact's anchor is the
// origin-id of the latest message to it that the server acknowledged
// before the lost ones. Messages still queued go out in the new session,
// as without a reconciler. rc must serve the session of a bridge over the
// same stream (see reconcile.Handle); its occupant function may be nil.
// The Reconciler knows our messages in the archive by our address as that
// session has it: make the bridge once the stream has one (after Connect,
// or on a stream that restored a session from its outbox), or every
// message is Unknown. nil restores the default.
func (c *Client) SetReconciler(rc *reconcile.Reconciler, p reconcile.Policy) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reconciler, c.policy = rc, p
}

// reconcileTimeout bounds the archive queries after a new session.
const reconcileTimeout = time.Minute

// Reasons of a CLOSED tracker, for the outbox.
const (
	reasonNoArchive = "the archive cannot tell whether the server has it"
	reasonNoWitness = "lost with its session, and no reconciler asked the archive"
	reasonEnded     = "the stream ended before the archive could be asked"
)

// streamEvent starts the reconciliation of the messages the lost session
// had written, after a new session, and gives them up when the stream
// ends. It runs on the stream's callback goroutine, after the token
// changes of the lost session, and before the new session writes what is
// queued.
func (c *Client) streamEvent(ev stream.Event) {
	switch ev.Kind {
	case stream.EventNewSession:
	case stream.EventClosed:
		c.giveUp(c.takeUncertain(0), reasonEnded)
		return
	default:
		return
	}
	ms := c.takeUncertain(ev.Session)
	c.mu.Lock()
	rc, policy := c.reconciler, c.policy
	c.mu.Unlock()
	if len(ms) == 0 {
		return
	}
	if rc == nil {
		// Removed since the tokens were lost.
		c.giveUp(ms, reasonNoWitness)
		return
	}
	go c.reconcile(ev.Session, ms, rc, policy)
}

// takeUncertain returns, in the order they were tracked, the messages
// whose fate the archive must decide after new session n: written in a
// lost session, unacknowledged, without a receipt (and those still
// undecided from an earlier session). Each keeps the anchor of its contact
// from the moment it became uncertain. n == 0 means the stream ended: the
// messages are taken out of their uncertainty.
func (c *Client) takeUncertain(n uint64) []*message {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n != 0 {
		c.session = n
	}
	var ms []*message
	for _, m := range c.msgs {
		lost := m.tok != nil && m.tok.State() == stream.TokenDisconnected
		if !m.uncertain && !(lost && c.reconciler != nil) {
			continue
		}
		if m.t.State() >= tracking.DeliveredToRecipient {
			// The receipt came: nothing to decide.
			m.uncertain = false
			continue
		}
		m.uncertain, m.lost, m.tok = n != 0, true, nil
		if !m.anchored {
			m.anchored = true
			m.anchor = c.anchors[m.to.Bare().String()]
		}
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b *message) int { return int(a.seq - b.seq) })
	return ms
}

// giveUp ends the trackers of ms CLOSED with reason, unless a receipt came
// first.
func (c *Client) giveUp(ms []*message, reason string) {
	c.mu.Lock()
	for _, m := range ms {
		m.uncertain = false
		m.reason = reason
	}
	c.mu.Unlock()
	for _, m := range ms {
		// A transition, not Close: a tracker a receipt moved meanwhile
		// refuses it and stays tracked.
		_ = m.t.Transition(tracking.Closed, nil)
	}
}

// anchorsOf returns the anchor of each contact of ms: the earliest of the
// anchors its messages recorded, which was written before every one of
// them. A contact one of whose messages had none gets none: what was
// acknowledged after that message proves nothing about it.
func anchorsOf(ms []*message) []reconcile.Anchor {
	type best struct {
		a    reconcile.Anchor
		none bool
	}
	byContact := make(map[string]*best)
	var order []string
	for _, m := range ms {
		k := m.to.Bare().String()
		b := byContact[k]
		if b == nil {
			b = &best{a: m.anchor}
			byContact[k] = b
			order = append(order, k)
		}
		switch {
		case m.anchor.OriginID == "":
			b.none = true
		case m.anchor.At.Before(b.a.At):
			b.a = m.anchor
		}
	}
	var as []reconcile.Anchor
	for _, k := range order {
		if b := byContact[k]; !b.none {
			as = append(as, b.a)
		}
	}
	return as
}

// reconcile asks the archive about ms, lost with the session before new
// session n (see SetReconciler): one the archive holds becomes
// DELIVERED_TO_SERVER and stays tracked, one it shows absent is sent again
// with the same id, in order, and the rest end CLOSED with the reason. When
// a later session has started meanwhile, that session's reconciliation
// decides instead.
func (c *Client) reconcile(n uint64, ms []*message, rc *reconcile.Reconciler, policy reconcile.Policy) {
	msgs := make([]reconcile.Uncertain, len(ms))
	for i, m := range ms {
		msgs[i] = reconcile.Uncertain{Key: m.id, ID: m.id, OriginID: m.id, To: m.to, Kind: reconcile.Chat, SentAt: m.sentAt}
	}
	ctx, cancel := context.WithTimeout(c.ctx, reconcileTimeout)
	decisions, err := rc.Decide(ctx, msgs, anchorsOf(ms), policy)
	cancel()
	byKey := make(map[string]reconcile.Decision, len(decisions))
	for _, d := range decisions {
		byKey[d.Key] = d
	}
	var accepted, resend, closed []*message
	var found []reconcile.Decision
	c.mu.Lock()
	if n != c.session {
		c.mu.Unlock()
		return // a later session decides
	}
	for _, m := range ms {
		if !m.uncertain {
			continue // ended, or a receipt came
		}
		m.uncertain = false
		d, ok := byKey[m.id]
		switch {
		case ok && d.Outcome == reconcile.Accepted:
			accepted, found = append(accepted, m), append(found, d)
		case ok && d.Outcome == reconcile.SafeToResend:
			resend = append(resend, m)
		default:
			m.reason = reasonNoArchive
			if ok && d.Reason != "" {
				m.reason = d.Reason
			} else if err != nil {
				m.reason = err.Error()
			}
			closed = append(closed, m)
		}
	}
	c.mu.Unlock()
	self := c.s.Addr().Bare()
	for i, m := range accepted {
		// Our archive holds it: the server took it. A receipt may
		// still come, so it stays tracked.
		_ = m.t.Transition(tracking.DeliveredToServer, &tracking.Response{StanzaID: found[i].StanzaID, StanzaIDBy: self})
	}
	for _, m := range closed {
		_ = m.t.Transition(tracking.Closed, nil)
	}
	for _, m := range resend {
		c.resend(m)
	}
}

// resend writes m again, with its id and origin-id, as the latest message
// to its address: a displayed marker for it marks what was sent before.
func (c *Client) resend(m *message) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	// Stop waiting for room in the queue once tracking ends.
	go func() {
		select {
		case <-m.t.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	select {
	case c.send <- struct{}{}:
	case <-ctx.Done():
		return // the client was closed, or tracking ended
	}
	if m.t.Ended() || m.t.State() >= tracking.DeliveredToRecipient {
		<-c.send
		return
	}
	c.m.requeue(m.id)
	tok, err := c.s.SendBytes(ctx, m.id, m.b)
	<-c.send
	if err != nil {
		c.mu.Lock()
		m.reason = fmt.Sprintf("could not be sent again: %v", err)
		c.mu.Unlock()
		_ = m.t.Transition(tracking.Closed, nil)
		return
	}
	m.follow(tok)
}
