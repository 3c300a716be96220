package stream

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/sm"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
)

// entry is one outgoing stanza: its bytes, kept until the server
// acknowledges it so that it can be written again after a resumption.
type entry struct {
	tok *StanzaToken
	b   []byte
}

// A Stream is a client's XMPP stream over mellium.im/xmpp that owns all of the
// connection's I/O. See the package documentation for its guarantees.
type Stream struct {
	cfg Config
	log *slog.Logger

	// mu guards every field below it, and the fields of the current conn
	// marked as guarded by it. It is never held while a token's or a
	// handler's callback runs, nor during network I/O.
	mu        sync.Mutex
	queue     fifo // accepted, not yet written
	out       sm.Outbound[*entry]
	in        uint32        // inbound stanzas handled, mod 2^32
	smOn      bool          // stream management is enabled on the session
	smID      string        // resumption id, "" when not resumable
	smMax     time.Duration // the server's max resumption time
	addr      jid.JID       // the bound full JID
	cur       *conn         // the live connection, nil while reconnecting
	closing   bool          // Close was called: Send refuses
	finished  bool          // run has ended; err says why
	err       error
	room      chan struct{} // closed when the queue shrinks; made on demand
	idle      chan struct{} // closed when nothing is queued or unacked; made on demand
	handlers  []xmpp.Handler
	listeners []*func(Event)
	iqs       map[string]chan *Element
	stats     Stats
	ackScrach []*entry

	closeOnce sync.Once
	closeCh   chan struct{} // closed by Close: run must end
	forceCh   chan struct{} // closed when Close's ctx ended: end at once
	forceOnce sync.Once
	base      context.Context // ends when closeCh is closed
	cancel    context.CancelFunc
	done      chan struct{} // closed when run has ended
}

// Dial connects, logs in, binds a resource and enables stream management
// (when the server offers it), then returns a Stream that keeps itself
// connected until Close. Errors of the first connection are returned as they
// are (unreachable server, TLS, wrong password); later ones are handled by
// reconnecting.
func Dial(ctx context.Context, cfg Config) (*Stream, error) {
	if cfg.JID.Equal(jid.JID{}) {
		return nil, errors.New("stream: Config.JID is required")
	}
	if cfg.TLS == nil && !cfg.AllowPlaintext {
		return nil, errors.New("stream: Config.TLS is required unless AllowPlaintext is set")
	}
	cfg = cfg.withDefaults()
	s := &Stream{
		cfg:     cfg,
		log:     cfg.Logger,
		iqs:     make(map[string]chan *Element),
		closeCh: make(chan struct{}),
		forceCh: make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	c, n, err := s.connect(ctx, nil)
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.mu.Lock()
	_, settle := s.startSession(n)
	s.stats.Connections++
	s.mu.Unlock()
	settle()
	s.emit(Event{Kind: EventConnected, Addr: s.Addr()})
	go s.run(c)
	return s, nil
}

// Addr returns the full JID the session is bound to.
func (s *Stream) Addr() jid.JID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Handle registers h to receive every inbound stanza that is not the reply
// to a SendIQ. Handlers run in the order registered, on the stream's reader
// goroutine: they must not block, and they must not wait for Send to find
// room (use a non-blocking Send or hand the work to another goroutine).
// What a handler writes to its encoder is sent as stanzas through the stream.
// An IQ get or set that no handler answered is answered by the stream
// (a XEP-0199 ping with a result, anything else with service-unavailable), so
// that every stanza in and out is counted.
// The returned function removes h.
func (s *Stream) Handle(h xmpp.Handler) (remove func()) {
	s.mu.Lock()
	hs := make([]xmpp.Handler, len(s.handlers), len(s.handlers)+1)
	copy(hs, s.handlers)
	s.handlers = append(hs, h)
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			hs := make([]xmpp.Handler, 0, len(s.handlers))
			removed := false
			for _, x := range s.handlers {
				if !removed && x == h {
					removed = true
					continue
				}
				hs = append(hs, x)
			}
			s.handlers = hs
		})
	}
}

// HandleElement registers f to receive every inbound stanza as a read
// Element, under the same rules as Handle (it runs on the reader goroutine
// and must not block). It is the cheap way for layers that look at many
// stanzas: nothing is decoded twice. The returned function removes f.
func (s *Stream) HandleElement(f func(*Element)) (remove func()) {
	return s.Handle(&elementHandler{f: f})
}

// elementHandler adapts a func(*Element) to the handler list; dispatch calls
// f directly instead of going through HandleXMPP.
type elementHandler struct{ f func(*Element) }

func (h *elementHandler) HandleXMPP(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	el, err := readElement(r, *start)
	if err != nil {
		return err
	}
	h.f(el)
	return nil
}

// OnEvent registers f to learn of connection events (see EventKind), like
// Config.OnEvent; the returned function removes it. f runs on the stream's
// connecting goroutine, one event at a time: it must not block, and it must
// not call Close. Start a goroutine for longer work (such as joining rooms
// again after EventNewSession).
func (s *Stream) OnEvent(f func(Event)) (remove func()) {
	p := &f
	s.mu.Lock()
	s.listeners = append(s.listeners[:len(s.listeners):len(s.listeners)], p)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		ls := make([]*func(Event), 0, len(s.listeners))
		for _, l := range s.listeners {
			if l != p {
				ls = append(ls, l)
			}
		}
		s.listeners = ls
	}
}

// Send serialises one stanza from r, queues it and returns its token. A
// stanza without an id gets a random one (StanzaToken.ID). Stanzas are
// written in the order Send accepted them.
//
// When the queue is full Send waits for room or for ctx, or returns
// ErrQueueFull at once in non-blocking mode. A stanza that cannot be
// serialised returns a TokenDropped token and an error wrapping
// ErrSerialize. After Close, Send returns an error wrapping ErrClosed.
func (s *Stream) Send(ctx context.Context, r xml.TokenReader) (*StanzaToken, error) {
	b, id, err := encodeStanza(r, xstanza.NewID)
	if err != nil {
		t := newToken(id)
		t.move(TokenQueued, TokenDropped, err)
		return t, err
	}
	return s.SendBytes(ctx, id, b)
}

// SendBytes queues one stanza already serialised as b, whose id attribute is
// id, and returns its token. It is the fast path for layers that build their
// stanzas by hand: b must be exactly one well-formed stanza element in the
// jabber:client namespace; the stream does not check it. The stream keeps b
// until the stanza is acknowledged: do not change it afterwards.
func (s *Stream) SendBytes(ctx context.Context, id string, b []byte) (*StanzaToken, error) {
	t := newToken(id)
	e := &entry{tok: t, b: b}
	for {
		s.mu.Lock()
		if s.closing || s.finished {
			err := s.err
			s.mu.Unlock()
			if err == nil {
				err = ErrClosed
			}
			err = fmt.Errorf("stream: send %q: %w", id, err)
			t.move(TokenQueued, TokenFailed, err)
			return t, err
		}
		if s.queue.len() < s.cfg.QueueSize {
			s.enqueueLocked(e)
			s.mu.Unlock()
			return t, nil
		}
		if s.cfg.NonBlocking {
			s.mu.Unlock()
			err := fmt.Errorf("stream: send %q: %w", id, ErrQueueFull)
			t.move(TokenQueued, TokenFailed, err)
			return t, err
		}
		if s.room == nil {
			s.room = make(chan struct{})
		}
		room := s.room
		s.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			err := fmt.Errorf("stream: send %q: %w", id, ctx.Err())
			t.move(TokenQueued, TokenFailed, err)
			return t, err
		}
	}
}

// sendInternal queues a stanza the stream or a handler writes on its own
// (IQ replies). It bypasses the queue's bound: the reader cannot wait.
func (s *Stream) sendInternal(b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return ErrClosed
	}
	s.enqueueLocked(&entry{tok: newToken(""), b: b})
	return nil
}

func (s *Stream) enqueueLocked(e *entry) {
	s.queue.push(e)
	if s.cur != nil {
		s.cur.wake()
	}
}

// SendIQ sends an IQ built from iq and payload and waits for the reply. The
// reply is returned whether it is a result or an error (see Element.Error).
func (s *Stream) SendIQ(ctx context.Context, iq stanza.IQ, payload xml.TokenReader) (*Element, error) {
	if iq.ID == "" {
		iq.ID = xstanza.NewID()
	}
	ch := make(chan *Element, 1)
	s.mu.Lock()
	s.iqs[iq.ID] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.iqs, iq.ID)
		s.mu.Unlock()
	}()
	if payload == nil {
		payload = xmlstream.Token(nil)
	}
	if _, err := s.Send(ctx, iq.Wrap(payload)); err != nil {
		return nil, err
	}
	select {
	case el := <-ch:
		return el, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		return nil, s.Err()
	}
}

// Err returns why the stream ended, or nil while it runs.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Done returns a channel closed when the stream has ended and every token is
// final.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Stats returns a snapshot of the stream's counters.
func (s *Stream) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Attempts = append([]Attempt(nil), s.stats.Attempts...)
	st.Unacked = s.out.Len()
	st.Queued = s.queue.len()
	st.SMEnabled = s.smOn
	st.ResumeWindow = s.smMax
	return st
}

// Close sends what is queued, waits for the server to acknowledge it, ends
// the XML stream and closes the connection. When ctx ends first, Close stops
// waiting, closes at once and returns an error wrapping ctx's. Either way every token ends in a final state:
// acknowledged ones TokenAcked, written but unacknowledged ones
// TokenDisconnected, the rest TokenFailed. No goroutine of the stream is
// left running when Close returns.
func (s *Stream) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	var idle chan struct{}
	if !s.finished && (s.queue.len() > 0 || (s.smOn && s.out.Len() > 0)) {
		if s.idle == nil {
			s.idle = make(chan struct{})
		}
		idle = s.idle
	}
	if s.cur != nil {
		s.cur.wake()
	}
	s.mu.Unlock()
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
		case <-s.done:
		}
	}
	s.closeOnce.Do(func() {
		close(s.closeCh)
		s.cancel()
	})
	forced := false
	select {
	case <-s.done:
	case <-ctx.Done():
		s.forceOnce.Do(func() { close(s.forceCh) })
		<-s.done
		forced = true
	}
	if err := s.Err(); !errors.Is(err, ErrClosed) {
		return err
	}
	if forced || (idle != nil && ctx.Err() != nil) {
		// Close gave up waiting: stanzas may have ended DISCONNECTED or
		// FAILED instead of ACKED.
		return fmt.Errorf("stream: close: %w", ctx.Err())
	}
	return nil
}

// run keeps the stream connected until Close or a failure it cannot recover
// from. It is the only goroutine that starts connections and changes the
// session state (stream management ids, resumption).
func (s *Stream) run(c *conn) {
	defer close(s.done)
	for {
		err := s.serve(c)
		ended := errors.Is(err, ErrClosed) || errors.Is(err, ErrProtocol)
		s.mu.Lock()
		s.cur = nil
		s.stats.LastErr = err
		if !ended {
			s.stats.Disconnects++
		}
		s.mu.Unlock()
		if ended {
			s.finish(err)
			return
		}
		s.log.Warn("connection lost", "err", err)
		s.emit(Event{Kind: EventDisconnected, Err: err, Addr: s.Addr()})
		c, err = s.reconnect(time.Now(), c.resumable(), err)
		if err != nil {
			s.finish(err)
			return
		}
	}
}

// reconnect dials until a session is up again, resuming the previous one
// while that makes sense. It returns the new connection.
func (s *Stream) reconnect(lost time.Time, resume bool, cause error) (*conn, error) {
	for attempt := 0; ; attempt++ {
		t := time.NewTimer(s.cfg.Backoff.delay(attempt))
		select {
		case <-t.C:
		case <-s.closeCh:
			t.Stop()
			return nil, fmt.Errorf("%w while reconnecting after: %w", ErrClosed, cause)
		}
		var prev *previous
		s.mu.Lock()
		window := s.cfg.ResumeWindow
		if s.smMax > 0 && s.smMax < window {
			window = s.smMax
		}
		if resume && s.smOn && s.smID != "" && time.Since(lost) < window {
			prev = &previous{id: s.smID, h: s.in, addr: s.addr}
		}
		s.mu.Unlock()

		ctx, cancel := context.WithTimeout(s.base, s.cfg.AckTimeout)
		c, n, err := s.connect(ctx, prev)
		cancel()
		at := Attempt{At: time.Now(), Resume: prev != nil, Err: err}
		if err != nil {
			at.Outcome = "error"
			s.record(at)
			s.log.Warn("reconnect failed", "attempt", attempt, "err", err)
			if !transient(err) {
				return nil, fmt.Errorf("%w: reconnect: %w", ErrConnectionLost, err)
			}
			continue
		}
		s.mu.Lock()
		if err := s.out.Check(n.h); n.resumed && err != nil {
			// The server claims to have handled more than we sent: nothing
			// it says can be trusted. End the stream as XEP-0198 asks.
			sent := s.out.SentCount()
			s.mu.Unlock()
			perr := fmt.Errorf("%w: <resumed/>: %w", ErrProtocol, err)
			at.Outcome, at.Err = "error", perr
			s.record(at)
			c.nc.SetWriteDeadline(time.Now().Add(time.Second))
			c.nc.Write([]byte(sm.HandledCountTooHigh(n.h, sent) + "</stream:stream>"))
			c.fail(perr)
			return nil, perr
		}
		ev, settle := s.startSession(n)
		s.stats.Connections++
		at.Outcome = ev.Kind.String()
		if n.refused != nil {
			at.Err = *n.refused
		}
		s.recordLocked(at)
		s.mu.Unlock()
		settle()
		s.emit(ev)
		return c, nil
	}
}

func (s *Stream) record(a Attempt) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordLocked(a)
}

func (s *Stream) recordLocked(a Attempt) {
	const keep = 100
	if len(s.stats.Attempts) == keep {
		copy(s.stats.Attempts, s.stats.Attempts[1:])
		s.stats.Attempts = s.stats.Attempts[:keep-1]
	}
	s.stats.Attempts = append(s.stats.Attempts, a)
}

// connect dials and negotiates one connection.
func (s *Stream) connect(ctx context.Context, prev *previous) (*conn, *negotiated, error) {
	nc, err := s.cfg.Dial(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("stream: %w: %w", errDial, err)
	}
	// mellium watches ctx by setting a deadline in the past and clearing it
	// at once, which a read already blocked can miss: close the connection
	// when ctx ends, so that a server that stops answering cannot hold the
	// negotiation (and Close) forever.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	n, err := negotiate(ctx, &s.cfg, nc, prev)
	if !stop() && err == nil {
		err = fmt.Errorf("%w: %w", net.ErrClosed, ctx.Err())
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("stream: negotiate: %w", err)
	}
	c := &conn{
		nc:    n.sess.Conn(),
		raw:   nc,
		sess:  n.sess,
		kick:  make(chan struct{}, 1),
		dead:  make(chan struct{}),
		since: time.Now(),
	}
	c.resumed = n.resumed
	return c, n, nil
}

// startSession applies the outcome of a negotiation to the session state.
// Called with s.mu held, before the new connection's reader and writer
// start. It returns the event to report and settle, which moves the tokens
// the negotiation decided (acknowledged or lost) and must be called after
// s.mu is released.
func (s *Stream) startSession(n *negotiated) (Event, func()) {
	ev := Event{At: time.Now()}
	var acked, lost []*entry
	var cause error
	collect := func(e *entry) { acked = append(acked, e) }
	switch {
	case n.resumed:
		ev.Kind = EventResumed
		// reconnect has checked that h is not beyond what was sent.
		k, _ := s.out.Ack(n.h, collect)
		ev.Acked = k
		ev.Resent = s.out.Len()
		s.stats.Resumptions++
		s.stats.Acked += uint64(k)
	default:
		if s.smOn || s.out.Len() > 0 {
			// A session existed and is gone: acknowledge what <failed/>
			// counted; the rest is lost.
			ev.Kind = EventNewSession
			s.stats.NewSessions++
			if n.refused != nil && n.refused.HasH {
				k, _ := s.out.Ack(n.refused.H, collect)
				ev.Acked = k
				s.stats.Acked += uint64(k)
			}
			s.out.Reset(func(e *entry) { lost = append(lost, e) })
			ev.Lost = len(lost)
			cause = ErrConnectionLost
			if n.refused != nil {
				cause = fmt.Errorf("%w: %w", ErrResumeRefused, *n.refused)
			}
			ev.Err = cause
		} else if s.stats.Connections > 0 {
			ev.Kind = EventNewSession
			s.stats.NewSessions++
		} else {
			ev.Kind = EventConnected
		}
		s.in = 0
		s.smOn, s.smID, s.smMax = false, "", 0
		if n.enabled != nil {
			s.smOn = true
			if n.enabled.Resume {
				s.smID = n.enabled.ID
			}
			s.smMax = n.enabled.Max
		}
		if n.enableErr != nil {
			s.log.Warn("stream management refused", "err", n.enableErr)
		}
	}
	s.addr = n.sess.LocalAddr()
	ev.Addr = s.addr
	return ev, func() {
		for _, e := range acked {
			e.tok.move(TokenSent, TokenAcked, nil)
		}
		for _, e := range lost {
			e.tok.move(TokenSent, TokenDisconnected, fmt.Errorf("stream: %q not acknowledged: %w", e.tok.id, cause))
		}
	}
}
