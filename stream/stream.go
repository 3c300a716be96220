package stream

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/notify"
	"github.com/xmpptrack/xmpptrack/internal/quantile"
	"github.com/xmpptrack/xmpptrack/sm"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
)

// entry is one outgoing stanza: its bytes, kept until the server
// acknowledges it so that it can be written again after a resumption.
type entry struct {
	tok  *StanzaToken
	b    []byte
	sent time.Duration // when first written, since Stream.born; guarded by Stream.mu
}

// A Stream is a client's XMPP stream over mellium.im/xmpp that owns all of the
// connection's I/O. See the package documentation for its guarantees.
type Stream struct {
	cfg Config
	log *slog.Logger

	// mu guards every field below it, and the fields of the current conn
	// marked as guarded by it. It is never held while a token's or a
	// handler's callback runs, nor during network I/O.
	mu         sync.Mutex
	queue      fifo // accepted, not yet written
	out        sm.Outbound[*entry]
	in         uint32        // inbound stanzas read, mod 2^32 (see outboxState.handled)
	smOn       bool          // stream management is enabled on the session
	smID       string        // resumption id, "" when not resumable
	smMax      time.Duration // the server's max resumption time
	smLoc      string        // where the server prefers us to resume, "" if anywhere
	session    uint64        // the session's number, from 1; a resumption keeps it
	addr       jid.JID       // the bound full JID
	cur        *conn         // the live connection, nil while reconnecting
	closing    bool          // Close was called: Send refuses
	connecting bool          // Connect was called
	prev       *previous     // the session restored from the outbox, to resume
	finished   bool          // run has ended; err says why
	err        error
	room       chan struct{} // closed when the queue shrinks; made on demand
	idle       chan struct{} // closed when nothing is queued or unacked; made on demand
	handlers   []*handler
	listeners  []*func(Event)
	iqs        map[string]*pendingIQ
	stats      Stats
	rtts       quantile.Window // the latest ack round trips, for Stats
	hooks      []*Hook         // see AddHook
	born       time.Time       // the origin of entry.sent; set by Dial
	ackScratch []*entry
	unreadable unreadable // connections lost to input the decoder rejects

	cb  callbacks   // runs observers, handlers and listeners
	box outboxState // what the outbox is owed (guarded by mu)

	closeOnce sync.Once
	closeCh   chan struct{} // closed by Close: run must end
	forceCh   chan struct{} // closed when Close's ctx ended: end at once
	forceOnce sync.Once
	base      context.Context // ends when closeCh is closed
	cancel    context.CancelFunc
	ended     chan struct{} // closed when run has ended: every token is final
	done      chan struct{} // closed after ended, once every callback has run
}

// Dial connects, logs in, binds a resource and enables stream management
// (when the server offers it), then returns a Stream that keeps itself
// connected until Close. Errors of the first connection are returned as they
// are (unreachable server, TLS, wrong password); later ones are handled by
// reconnecting. Dial is New followed by Connect.
func Dial(ctx context.Context, cfg Config) (*Stream, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.Connect(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// New returns a Stream that is not connected yet: register handlers,
// listeners and the layers above (which then see every stanza from the
// first), follow the stanzas restored from Config.Outbox (Restored), then
// call Connect. Stanzas sent before Connect wait in the queue.
func New(cfg Config) (*Stream, error) {
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
		iqs:     make(map[string]*pendingIQ),
		born:    time.Now(),
		closeCh: make(chan struct{}),
		forceCh: make(chan struct{}),
		ended:   make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.cb.linger = callbackLinger
	s.base, s.cancel = context.WithCancel(context.Background())
	if cfg.Outbox != nil {
		s.box.store = cfg.Outbox
		st, err := cfg.Outbox.Load()
		if err != nil {
			s.cancel()
			return nil, fmt.Errorf("%w: load: %w", ErrOutbox, err)
		}
		if s.prev, err = s.restore(st); err != nil {
			s.cancel()
			return nil, err
		}
	}
	return s, nil
}

// Connect makes the first connection of a Stream made by New: it logs in
// and resumes the session restored from the outbox, or binds a resource and
// enables stream management. It may be called once. When it fails, the
// stream has ended (its tokens are final) and the outbox is left as it was,
// so that a later process may still resume the session.
func (s *Stream) Connect(ctx context.Context) error {
	s.mu.Lock()
	if s.connecting || s.closing {
		s.mu.Unlock()
		return fmt.Errorf("stream: connect: %w", ErrClosed)
	}
	s.connecting = true
	prev := s.prev
	s.mu.Unlock()
	c, n, err := s.connect(ctx, prev, s.cfg.Dial)
	if err != nil {
		s.abandon(err)
		return err
	}
	s.mu.Lock()
	ev, settle := s.startSession(n, fmt.Errorf("%w: the session of an earlier process could not be resumed", ErrConnectionLost))
	s.stats.Connections++
	restored := len(s.box.restored) > 0 || prev != nil
	s.mu.Unlock()
	settle()
	if ev.Kind == EventConnected || !restored {
		ev = Event{Kind: EventConnected, Addr: s.Addr()}
	}
	s.emit(ev)
	go s.run(c)
	return nil
}

// abandon ends a stream that never ran: like finish, but the outbox keeps
// the session it holds.
func (s *Stream) abandon(err error) {
	s.mu.Lock()
	s.box.store = nil
	s.mu.Unlock()
	s.finish(err)
	close(s.ended)
	s.cb.finish(s.done)
}

// Addr returns the full JID the session is bound to.
func (s *Stream) Addr() jid.JID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Handle registers h to receive every inbound stanza that is not the reply
// to a SendIQ. Handlers run in the order registered, one stanza at a time, on
// the stream's callback goroutine (see the package documentation): they may
// call any method of the stream, but the next stanza waits for them.
// What a handler writes to its encoder is sent as stanzas through the stream;
// white space, comments and processing instructions between elements are
// dropped.
//
// An IQ get or set that no handler answered is answered by the stream
// (a XEP-0199 ping with a result, anything else with service-unavailable), so
// that every stanza in and out is counted. A handler that will answer later,
// from another goroutine, returns ErrAnswerLater and sends the reply with
// Send. A handler that is also an ElementHandler gets the stanza as an
// Element instead.
//
// The returned function removes h; it may be called more than once.
func (s *Stream) Handle(h xmpp.Handler) (remove func()) {
	entry := &handler{h: h}
	s.mu.Lock()
	s.handlers = append(s.handlers[:len(s.handlers):len(s.handlers)], entry)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.handlers = notify.Without(s.handlers, entry)
	}
}

// handler is one registration of Handle: removal compares these pointers,
// never the handlers themselves (a func type cannot be compared).
type handler struct{ h xmpp.Handler }

// HandleElement registers f to receive every inbound stanza as a read
// Element, under the same rules as Handle (it runs on the callback
// goroutine). It is the cheap way for layers that look at many
// stanzas: nothing is decoded twice. The returned function removes f.
func (s *Stream) HandleElement(f func(*Element)) (remove func()) {
	return s.Handle(&elementHandler{f: f})
}

// An ElementHandler is a handler (see Handle) that the stream hands each
// inbound stanza as the Element it read, instead of as tokens through
// HandleXMPP: nothing is decoded that the handler does not ask for. As with
// HandleXMPP, returning ErrAnswerLater claims an IQ get or set; other errors
// are logged.
type ElementHandler interface {
	xmpp.Handler
	HandleElement(*Element) error
}

// elementHandler adapts a func(*Element) to the handler list.
type elementHandler struct{ f func(*Element) }

// HandleElement calls f.
func (h *elementHandler) HandleElement(el *Element) error {
	h.f(el)
	return nil
}

// HandleXMPP serves f outside the stream (a mux, a test): the element is
// written out and read back.
func (h *elementHandler) HandleXMPP(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	var buf bytes.Buffer
	e := xml.NewEncoder(&buf)
	if _, err := xmlstream.Copy(e, xmlstream.MultiReader(xmlstream.Token(*start), r)); err != nil {
		return err
	}
	if err := e.Flush(); err != nil {
		return err
	}
	el, err := ParseElement(buf.Bytes())
	if err != nil {
		return err
	}
	h.f(el)
	return nil
}

// OnEvent registers f to learn of connection events (see EventKind) from now
// on; the returned function removes it. (EventConnected, for the first
// session, may have gone out before Dial returned.) f runs on the stream's
// callback goroutine, one event at a time, in order; it may call any method
// of the stream (Close included), but other callbacks wait while it runs.
func (s *Stream) OnEvent(f func(Event)) (remove func()) {
	p := &f
	s.mu.Lock()
	s.listeners = append(s.listeners[:len(s.listeners):len(s.listeners)], p)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.listeners = notify.Without(s.listeners, p)
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
//
// SendIQ never waits for a reply that cannot come: when the IQ is lost with
// its session (its token ends TokenDisconnected or TokenFailed, or a new
// session replaces the one it was written on, whose replies go to a resource
// that no longer exists), it returns an error wrapping ErrIQLost and the
// reason, such as ErrResumeRefused. It returns ctx's error when ctx ends
// first, and the stream's when the stream ends.
func (s *Stream) SendIQ(ctx context.Context, iq stanza.IQ, payload xml.TokenReader) (*Element, error) {
	if iq.ID == "" {
		iq.ID = xstanza.NewID()
	}
	w := &pendingIQ{ch: make(chan iqResult, 1)}
	s.mu.Lock()
	if _, dup := s.iqs[iq.ID]; dup {
		s.mu.Unlock()
		return nil, fmt.Errorf("stream: SendIQ: an IQ with id %q is already waiting for its reply", iq.ID)
	}
	s.iqs[iq.ID] = w
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.iqs[iq.ID] == w {
			delete(s.iqs, iq.ID)
		}
		s.mu.Unlock()
	}()
	if payload == nil {
		payload = xmlstream.Token(nil)
	}
	tok, err := s.Send(ctx, iq.Wrap(payload))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	w.tok = tok
	s.mu.Unlock()
	tokDone := tok.Done()
	for {
		select {
		case r := <-w.ch:
			return r.el, r.err
		case <-tokDone:
			if st := tok.State(); st != TokenAcked && st != TokenSentWithoutSM {
				return nil, fmt.Errorf("stream: IQ %q: %w: %w", iq.ID, ErrIQLost, tok.Err())
			}
			tokDone = nil // the server has it: wait for the reply
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.ended:
			select {
			case r := <-w.ch:
				return r.el, r.err
			default:
			}
			return nil, fmt.Errorf("stream: IQ %q: %w: %w", iq.ID, ErrIQLost, s.Err())
		}
	}
}

// pendingIQ is a SendIQ waiting for its reply. Guarded by Stream.mu.
type pendingIQ struct {
	ch  chan iqResult // capacity 1: receives exactly one result
	tok *StanzaToken  // nil until Send returned
}

type iqResult struct {
	el  *Element
	err error
}

// failIQsLocked ends every pending SendIQ that lost reports lost, with
// cause. Called with s.mu held.
func (s *Stream) failIQsLocked(lost func(*pendingIQ) bool, cause error) {
	for id, w := range s.iqs {
		if lost(w) {
			delete(s.iqs, id)
			w.ch <- iqResult{err: fmt.Errorf("stream: IQ %q: %w: %w", id, ErrIQLost, cause)}
		}
	}
}

// Err returns why the stream ended, or nil while it runs.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Done returns a channel closed when the stream has ended, every token is
// final and every callback (observers, handlers, listeners) has run.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Stats returns a snapshot of the stream's counters: a copy, taken under the
// stream's lock, that the caller owns.
func (s *Stream) Stats() Stats {
	s.mu.Lock()
	st := s.statsLocked()
	rtts := s.rtts // a copy: the percentiles are computed after unlocking
	s.mu.Unlock()
	p := rtts.Percentiles(50, 99)
	st.AckRTTP50, st.AckRTTP99 = p[0], p[1]
	return st
}

// statsLocked is Stats without the percentiles. Called with s.mu held.
func (s *Stream) statsLocked() Stats {
	st := s.stats
	st.Attempts = append([]Attempt(nil), s.stats.Attempts...)
	st.Unacked = s.out.Len()
	st.Queued = s.queue.len()
	st.SMEnabled = s.smOn
	st.ResumeWindow = s.smMax
	if s.cur != nil {
		st.AckRTT, _ = s.cur.pace.RTT()
		st.DeadAfter = s.cur.pace.DeadAfter()
	}
	if e, ok := s.out.Oldest(); ok {
		st.OldestUnacked = max(time.Since(s.born)-e.sent, 0)
	}
	return st
}

// Close sends what is queued, waits for the server to acknowledge it, ends
// the XML stream (with a last <a h/> when stream management is on), waits
// briefly for the server to end its own, and closes the connection. When ctx
// ends first, Close stops waiting, closes at once and returns an error
// wrapping ctx's. Either way every token is in a final state when Close
// returns: acknowledged ones TokenAcked, written but unacknowledged ones
// TokenDisconnected, the rest TokenFailed; and the stream's reader, writer and
// connecting goroutines have ended.
//
// Close does not wait for callbacks that are still to run or running (so a
// callback may call Close); Done tells when they have all run.
func (s *Stream) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	if !s.connecting {
		// Never connected: nothing to send or to wait for.
		s.connecting = true
		s.mu.Unlock()
		s.abandon(ErrClosed)
		return nil
	}
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
		case <-s.ended:
		}
	}
	s.closeOnce.Do(func() {
		close(s.closeCh)
		s.cancel()
	})
	forced := false
	select {
	case <-s.ended:
	case <-ctx.Done():
		s.forceOnce.Do(func() { close(s.forceCh) })
		<-s.ended
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
	defer func() {
		close(s.ended)
		s.cb.finish(s.done)
	}()
	for {
		err := s.serve(c)
		ended := errors.Is(err, ErrClosed) || errors.Is(err, ErrProtocol) || errors.Is(err, ErrOutbox)
		s.mu.Lock()
		s.cur = nil
		s.stats.LastErr = err
		if !ended {
			s.stats.Disconnects++
		}
		if errors.Is(err, ErrAckTimeout) {
			s.stats.DeadLinks++
		}
		resume := c.resumable()
		cause := error(nil)
		if s.unreadable.lost(err, s.in) {
			// The server sends the same unreadable stanza again on every
			// resumption: only a new session gets past it.
			resume = false
			cause = fmt.Errorf("%w: %d connections in a row lost at the same stanza: %w", ErrUnreadable, s.unreadable.n, err)
		}
		s.mu.Unlock()
		if ended {
			s.finish(err)
			return
		}
		s.log.Warn("connection lost", "err", err)
		s.emit(Event{Kind: EventDisconnected, Err: err, Addr: s.Addr()})
		c, err = s.reconnect(time.Now(), resume, cause, err)
		if err != nil {
			s.finish(err)
			return
		}
	}
}

// maxUnreadable is how many connections in a row may be lost to the same
// unreadable inbound stanza before the stream stops resuming the session.
const maxUnreadable = 3

// unreadable counts connections lost, in a row, to input the decoder
// rejected at the same inbound count. Guarded by Stream.mu.
type unreadable struct {
	in uint32 // the inbound count when it happened
	n  int
}

// lost records how a connection ended, with the inbound count then, and
// reports whether the stream should give up resuming.
func (u *unreadable) lost(err error, in uint32) bool {
	switch {
	case !errors.Is(err, ErrUnreadable):
		u.n = 0
	case u.n > 0 && u.in == in:
		u.n++
	default:
		u.in, u.n = in, 1
	}
	if u.n >= maxUnreadable {
		u.n = 0
		return true
	}
	return false
}

// reconnect dials until a session is up again, resuming the previous one
// when resume is set and the window allows. notResumed, if set, is why a new
// session follows without trying; lost is why the connection was lost. It
// returns the new connection.
func (s *Stream) reconnect(lost time.Time, resume bool, notResumed, cause error) (*conn, error) {
	why := cause // what ended the last connection or attempt
	for attempt := 0; ; attempt++ {
		delay := s.cfg.Backoff.delay(attempt)
		if goingAway(why) {
			delay = max(delay, goingAwayDelay)
		}
		t := time.NewTimer(delay)
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
			// <resume h/> acknowledges too: with an outbox, no more than
			// it holds as handled.
			h := s.in
			if s.box.store != nil {
				h = s.box.in
			}
			prev = &previous{id: s.smID, h: h, addr: s.addr}
		}
		location := s.smLoc
		s.mu.Unlock()

		var c *conn
		var n *negotiated
		var err error
		if prev != nil && location != "" {
			// Resume where the server asked us to (XEP-0198 §5), and fall
			// back to the usual address if that fails.
			c, n, err = s.connectWithin(prev, func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", location)
			})
			if err != nil {
				s.log.Warn("resumption at the preferred location failed", "location", location, "err", err)
			}
		}
		if c == nil {
			c, n, err = s.connectWithin(prev, s.cfg.Dial)
		}
		at := Attempt{At: time.Now(), Resume: prev != nil, Err: err}
		why = err
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
			// it says can be trusted. End the stream as XEP-0198 asks,
			// making sure the stream error is written before the close.
			sent := s.out.SentCount()
			s.mu.Unlock()
			perr := fmt.Errorf("%w: <resumed/>: %w", ErrProtocol, err)
			at.Outcome, at.Err = "error", perr
			s.record(at)
			c.nc.SetWriteDeadline(time.Now().Add(time.Second))
			c.nc.Write([]byte(sm.HandledCountTooHigh(n.h, sent) + "</stream:stream>"))
			c.shut(perr)
			return nil, perr
		}
		if notResumed == nil {
			notResumed = ErrConnectionLost
		}
		ev, settle := s.startSession(n, notResumed)
		if n.resumed {
			// The server sends again what follows prev.h: the stanzas
			// read up to s.in are already dispatched.
			c.skip = s.in - prev.h
		}
		s.stats.Connections++
		at.Outcome = ev.Kind.String()
		if n.refused != nil {
			at.Err = *n.refused
			s.stats.ResumeRefused++
		}
		s.recordLocked(at)
		s.mu.Unlock()
		settle()
		if ev.Kind == EventNewSession {
			s.emitNewSession(ev)
		} else {
			s.emit(ev)
		}
		return c, nil
	}
}

// connectWithin is connect with the time budget of one reconnection
// attempt.
func (s *Stream) connectWithin(prev *previous, dial func(context.Context) (net.Conn, error)) (*conn, *negotiated, error) {
	ctx, cancel := context.WithTimeout(s.base, s.cfg.AckTimeout)
	defer cancel()
	return s.connect(ctx, prev, dial)
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
func (s *Stream) connect(ctx context.Context, prev *previous, dial func(context.Context) (net.Conn, error)) (*conn, *negotiated, error) {
	nc, err := dial(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("stream: %w: %w", errDial, err)
	}
	// With direct TLS, raw is the TCP connection below TLS, as it is with
	// STARTTLS: conn.fail resets it, where closing the *tls.Conn would
	// first write a close_notify alert, which can block on a dead link.
	raw := nc
	if tc, ok := nc.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	s.log.Debug("connected", "remote", nc.RemoteAddr(), "direct-tls", raw != nc)
	// mellium watches ctx by setting a deadline in the past and clearing it
	// at once, which a read already blocked can miss: close the connection
	// when ctx ends, so that a server that stops answering cannot hold the
	// negotiation (and Close) forever.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	n, err := negotiate(ctx, &s.cfg, nc, prev)
	if !stop() && err == nil {
		err = fmt.Errorf("%w: %w", net.ErrClosed, ctx.Err())
	}
	if err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("stream: negotiate: %w", err)
	}
	c := &conn{
		nc:      n.sess.Conn(),
		raw:     raw,
		in:      newFramer(n.in, n.sess.In().XMLNS),
		kick:    make(chan struct{}, 1),
		dead:    make(chan struct{}),
		pace:    sm.NewPacer(s.cfg.pacer(), time.Now(), n.rtt),
		resumed: n.resumed,
	}
	return c, n, nil
}

// startSession applies the outcome of a negotiation to the session state.
// Called with s.mu held, before the new connection's reader and writer
// start. notResumed is why a session that existed was not resumed, unless
// the server refused. It returns the event to report and settle, which moves
// the tokens the negotiation decided (acknowledged or lost) and must be
// called after s.mu is released.
func (s *Stream) startSession(n *negotiated, notResumed error) (Event, func()) {
	ev := Event{At: time.Now()}
	if !n.resumed {
		s.session++
	}
	ev.Session = s.session
	var acked, lost []*entry
	var cause error
	collect := func(e *entry) { acked = append(acked, e) }
	switch {
	case n.resumed:
		ev.Kind = EventResumed
		// reconnect has checked that h is not beyond what was sent.
		k, _ := s.out.Ack(n.h, collect)
		ev.Acked = k
		s.box.drop += k
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
			cause = notResumed
			if n.refused != nil {
				cause = fmt.Errorf("%w: %w", ErrResumeRefused, *n.refused)
			}
			ev.Err = cause
			// Replies to IQs written in the old session would go to a
			// resource that is gone: those SendIQ calls fail now. IQs
			// still queued go out in the new session.
			s.failIQsLocked(func(w *pendingIQ) bool {
				return w.tok != nil && w.tok.State() != TokenQueued
			}, cause)
		} else if s.stats.Connections > 0 {
			ev.Kind = EventNewSession
			s.stats.NewSessions++
		} else {
			ev.Kind = EventConnected
		}
		s.in, s.box.handled, s.box.in = 0, 0, 0
		s.box.reset = s.box.store != nil
		s.smOn, s.smID, s.smMax, s.smLoc = false, "", 0, ""
		if n.enabled != nil {
			s.smOn = true
			if n.enabled.Resume {
				s.smID = n.enabled.ID
				s.smLoc = resumeAddr(n.enabled.Location)
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
		var moves tokenMoves
		for _, e := range acked {
			moves.move(e.tok, TokenSent, TokenAcked, nil)
		}
		for _, e := range lost {
			moves.move(e.tok, TokenSent, TokenDisconnected, fmt.Errorf("stream: %q not acknowledged: %w", e.tok.id, cause))
		}
		moves.push(s)
	}
}

// resumeAddr turns the location of <enabled/> (a host, an IP address, or
// either with a port) into an address to dial; the port defaults to 5222.
func resumeAddr(location string) string {
	if location == "" {
		return ""
	}
	if _, _, err := net.SplitHostPort(location); err == nil {
		return location
	}
	return net.JoinHostPort(strings.Trim(location, "[]"), "5222")
}
