package stream

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
	xstream "mellium.im/xmpp/stream"

	"github.com/xmpptrack/xmpptrack/sm"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
)

// conn is one connection of the stream. Its reader and writer goroutines own
// the reading and writing halves of nc; everything else is guarded as marked.
type conn struct {
	nc   net.Conn      // the secured connection (what mellium negotiated on)
	raw  net.Conn      // the TCP connection below it
	in   *framer       // the reader's: elements from nc, after negotiation
	kick chan struct{} // wakes the writer; capacity 1
	dead chan struct{} // closed by fail or shut
	once sync.Once
	err  error // why the connection ended; set once, before dead closes
	wg   sync.WaitGroup

	// Guarded by Stream.mu:
	pace      *sm.Pacer     // when to request, answer, probe; when the link is dead
	answered  uint32        // the h of our last <a/>
	skip      uint32        // stanzas the server sends again after <resumed/> that were read before
	resumed   bool          // the connection resumed a session
	resend    bool          // the writer must first write the unacked stanzas again
	closing   bool          // Close: write </stream:stream> after the queue
	final     []byte        // the end of our stream to write, then stop writing
	finalDone chan struct{} // closed by the writer once final is written
	ended     bool          // the XML stream ended (not resumable)
}

func (c *conn) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// fail ends the connection abruptly, without </stream:stream>, so that the
// server keeps the session for resumption. The reset also discards what the
// kernel still holds for a link that is dead anyway.
func (c *conn) fail(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.dead)
		if tc, ok := c.raw.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.raw.Close()
	})
}

// shut ends the connection after the XML stream ended cleanly: a plain close
// (a FIN, not a reset), so that the server's kernel delivers everything we
// wrote, such as a last <a h/> or a stream error.
func (c *conn) shut(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.dead)
		c.raw.Close()
	})
}

// resumable reports whether the server may still hold the session. Called
// after both goroutines ended.
func (c *conn) resumable() bool {
	if c.ended {
		return false
	}
	// A resumed connection that never answered our ack request is the
	// symptom of a server that lost track of the stream (Prosody 0.12 can
	// resume onto a parser that still holds a torn stanza): do not resume
	// onto it again.
	if c.resumed && !c.pace.Confirmed() && errors.Is(c.err, ErrAckTimeout) {
		return false
	}
	return true
}

// closeWait is how long Close waits for the server's </stream:stream> after
// writing its own (RFC 6120 §4.4), so that the connection ends with a FIN.
const closeWait = 2 * time.Second

// serve runs one connection until it fails or the stream is closed.
func (s *Stream) serve(c *conn) error {
	s.mu.Lock()
	s.cur = c
	c.resend = c.resumed && s.out.Len() > 0
	if c.resumed {
		c.pace.RequestNow()
	}
	s.mu.Unlock()
	c.wg.Add(2)
	go s.readLoop(c)
	go s.writeLoop(c)
	select {
	case <-c.dead:
	case <-s.closeCh:
		s.mu.Lock()
		c.closing = true
		s.mu.Unlock()
		c.wake()
		// The writer ends our stream once the queue is written; the reader
		// ends the connection when the server ends its stream.
		t := time.NewTimer(min(s.cfg.AckTimeout, closeWait))
		select {
		case <-c.dead:
		case <-s.forceCh:
		case <-t.C:
		}
		t.Stop()
		c.shut(ErrClosed)
	}
	c.wg.Wait()
	return c.err
}

// writeLoop is the only writer of a connection. It writes, in this order:
// the unacknowledged stanzas again after a resumption, then queued stanzas
// (moving their tokens to TokenSent), and what the Pacer asks for: answers
// to <r/>, <r/> requests and idle probes. It also takes the link for dead
// when the Pacer says so.
func (s *Stream) writeLoop(c *conn) {
	defer c.wg.Done()
	var buf []byte
	var batch []*entry
	const maxBatch = 64
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		buf = buf[:0]
		if c.resend {
			s.out.Unacked(func(e *entry) { buf = append(buf, e.b...) })
			c.resend = false
		}
		smOn := s.smOn
		session := s.session
		batch = batch[:0]
		for len(batch) < maxBatch && s.queue.len() > 0 && (!smOn || s.out.Len()+len(batch) < s.cfg.MaxUnacked) {
			batch = append(batch, s.queue.pop())
		}
		if len(batch) > 0 && s.room != nil {
			close(s.room)
			s.room = nil
		}
		s.mu.Unlock()

		// Claim each token before its bytes can reach the server, so that
		// an ack never finds a token still queued. An aborted token is
		// skipped.
		popped := len(batch)
		n := 0
		var moves tokenMoves
		for _, e := range batch {
			e.tok.mu.Lock()
			e.tok.session = session
			e.tok.mu.Unlock()
			if moves.move(e.tok, TokenQueued, TokenSent, nil) {
				batch[n] = e
				n++
			}
		}
		moves.push(s)
		clear(batch[n:])
		batch = batch[:n]

		s.mu.Lock()
		now := time.Now()
		since := now.Sub(s.born)
		for _, e := range batch {
			if smOn {
				e.sent = since
				s.out.Sent(e)
			}
			buf = append(buf, e.b...)
		}
		s.stats.Sent += uint64(len(batch))
		c.pace.Wrote(now, len(batch))
		final := c.final
		closing := c.closing && s.queue.len() == 0 && final == nil
		act := c.pace.Next(now, s.out.Len(), final != nil || closing)
		mustCommit := false
		if smOn {
			if act.Dead {
				s.mu.Unlock()
				c.fail(fmt.Errorf("%w within %v", ErrAckTimeout, c.pace.DeadAfter()))
				return
			}
			// Answer a request; and before our stream ends, tell the
			// server what we handled even unasked (XEP-0198 §4).
			// With an outbox, the answer counts what is handled, and the
			// commit below (before the write) records that count first.
			h, commitFirst := s.ackableLocked()
			if act.Answer || ((final != nil || closing) && h != c.answered) {
				buf = sm.AppendAnswer(buf, h)
				c.answered = h
				mustCommit = commitFirst
				s.stats.AnswersSent++
			}
			if act.Request && final == nil && !closing {
				buf = append(buf, sm.Request...)
				s.stats.RequestsSent++
			}
		} else if act.Request && len(buf) == 0 {
			// Without stream management, probe an idle link with a
			// whitespace keepalive; a dead one then fails the write.
			buf = append(buf, ' ')
		}
		s.checkIdleLocked()
		changes, commit := s.boxChangesLocked(batch, mustCommit)
		s.mu.Unlock()

		// Write ahead: the outbox holds the batch before its bytes can
		// reach the server.
		if commit {
			if err := s.box.store.Commit(changes); err != nil {
				c.fail(fmt.Errorf("%w: commit: %w", ErrOutbox, err))
				return
			}
			s.mu.Lock()
			s.stats.OutboxCommits++
			s.box.in = changes.Session.In
			s.mu.Unlock()
		}
		if final != nil {
			buf = append(buf, final...)
		} else if closing {
			buf = append(buf, "</stream:stream>"...)
		}
		var werr error
		if len(buf) > 0 {
			c.nc.SetWriteDeadline(time.Now().Add(s.cfg.AckTimeout))
			var n int
			n, werr = c.nc.Write(buf)
			s.mu.Lock()
			s.stats.BytesWritten += uint64(n)
			s.mu.Unlock()
		}
		if !smOn {
			// Nothing will ever acknowledge these: their fate is the write's.
			for _, e := range batch {
				if werr == nil {
					moves.move(e.tok, TokenSent, TokenSentWithoutSM, nil)
				} else {
					moves.move(e.tok, TokenSent, TokenDisconnected, fmt.Errorf("stream: %q: %w: write: %w", e.tok.id, ErrConnectionLost, werr))
				}
			}
			moves.push(s)
		}
		clear(batch)
		if werr != nil {
			c.fail(fmt.Errorf("%w: write: %w", ErrConnectionLost, werr))
			return
		}
		if final != nil {
			close(c.finalDone)
		}
		if final != nil || closing {
			<-c.dead
			return
		}
		if popped > 0 || len(buf) > 0 || commit {
			// Look for more before sleeping, also when every stanza taken
			// had been aborted: they took the room of those behind them.
			continue
		}
		wait := time.Until(act.Wake)
		s.mu.Lock()
		if due := s.notesDueLocked(); !due.IsZero() {
			wait = min(wait, time.Until(due))
		}
		s.mu.Unlock()
		if !smOn {
			wait = min(wait, s.cfg.KeepAlive)
		}
		timer.Reset(wait)
		select {
		case <-c.kick:
		case <-c.dead:
			return
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// checkIdleLocked wakes a Close waiting for everything to be acknowledged.
func (s *Stream) checkIdleLocked() {
	if s.idle != nil && s.queue.len() == 0 && (!s.smOn || s.out.Len() == 0) {
		close(s.idle)
		s.idle = nil
	}
}

// readLoop is the only reader of a connection. It counts inbound stanzas,
// handles stream management nonzas, and hands stanzas to dispatch.
func (s *Stream) readLoop(c *conn) {
	defer c.wg.Done()
	if err := s.read(c, c.in); err != nil {
		s.readFailed(c, err)
	}
}

// read reads elements from r until an error, which it returns.
func (s *Stream) read(c *conn, r *framer) error {
	for {
		el, err := r.next()
		if err != nil {
			return err
		}
		switch el.name.Space {
		case sm.NS:
			if err := s.handleSM(c, el); err != nil {
				return err
			}
			continue
		case nsStreams:
			if el.name.Local != "error" {
				return syntaxError("unexpected <stream:%s>", el.name.Local)
			}
			var se xstream.Error
			if err := el.Decode(&se); err != nil {
				return err
			}
			return se
		}
		s.mu.Lock()
		c.pace.Read(time.Now())
		if c.skip > 0 {
			// Sent again after <resumed/>: read, counted and dispatched
			// on an earlier connection of the session.
			c.skip--
			s.mu.Unlock()
			continue
		}
		j := job{el: el}
		if s.smOn {
			s.in++
			if s.box.store != nil {
				j.in, j.inSession, j.counts = s.in, s.session, true
			}
		}
		s.stats.Received++
		s.mu.Unlock()
		s.dispatch(j)
	}
}

// readFailed ends the connection after the reader stopped with err.
func (s *Stream) readFailed(c *conn, err error) {
	var se xstream.Error
	var syn *xml.SyntaxError
	s.mu.Lock()
	closing := c.closing
	s.mu.Unlock()
	switch {
	case errors.Is(err, ErrProtocol):
		c.shut(err) // endStream has written the stream error
	case closing && (errors.Is(err, io.EOF) || errors.As(err, &se)):
		// The server answered our </stream:stream> with its own.
		c.shut(ErrClosed)
	case errors.Is(err, io.EOF):
		// The server ended its stream: end ours too, then close.
		c.shut(s.endStream(c, "", fmt.Errorf("%w: the server ended the stream", ErrConnectionLost)))
	case errors.As(err, &se):
		c.shut(s.endStream(c, "", fmt.Errorf("%w: stream error: %w", ErrConnectionLost, se)))
	case errors.As(err, &syn):
		c.fail(fmt.Errorf("%w: read: %w: %w", ErrConnectionLost, ErrUnreadable, err))
	default:
		c.fail(fmt.Errorf("%w: read: %w", ErrConnectionLost, err))
	}
}

// handleSM handles one stream management element read on c.
func (s *Stream) handleSM(c *conn, el *Element) error {
	switch el.name.Local {
	case "r":
		s.mu.Lock()
		s.stats.RequestsReceived++
		if s.smOn {
			c.pace.ServerRequested(time.Now())
		}
		s.mu.Unlock()
		c.wake()
	case "a":
		start, err := el.Start()
		if err != nil {
			return err
		}
		h, err := sm.ParseH(start)
		if err != nil {
			return s.protocolError(c, fmt.Errorf("%w: %w", ErrProtocol, err),
				"<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
		}
		return s.ack(c, h)
	default:
		s.log.Debug("ignoring stream management element", "name", el.name.Local)
		s.mu.Lock()
		c.pace.Read(time.Now())
		s.mu.Unlock()
	}
	return nil
}

// ack applies <a h/>.
func (s *Stream) ack(c *conn, h uint32) error {
	s.mu.Lock()
	acked := s.ackScratch[:0]
	n, err := s.out.Ack(h, func(e *entry) { acked = append(acked, e) })
	if err != nil {
		sent := s.out.SentCount()
		s.mu.Unlock()
		return s.protocolError(c, fmt.Errorf("%w: %w", ErrProtocol, err), sm.HandledCountTooHigh(h, sent))
	}
	s.stats.AnswersRead++
	rtt, sampled := c.pace.Acked(time.Now(), s.out.Len() == 0)
	var hooks []*Hook
	if sampled {
		hooks = s.sampleRTTLocked(rtt)
	}
	s.stats.Acked += uint64(n)
	s.box.drop += n
	s.checkIdleLocked()
	s.mu.Unlock()
	c.wake()
	if len(hooks) > 0 {
		s.cb.push(job{fn: func() {
			for _, h := range hooks {
				(*h).AckRTT(rtt)
			}
		}}, s)
	}
	var moves tokenMoves
	for i, e := range acked {
		moves.move(e.tok, TokenSent, TokenAcked, nil)
		acked[i] = nil
	}
	moves.push(s)
	s.mu.Lock()
	s.ackScratch = acked[:0]
	s.mu.Unlock()
	return nil
}

// protocolError ends the stream for good after the server broke the
// protocol: the writer sends the stream error streamErr, and err is
// returned for the stream to close with.
func (s *Stream) protocolError(c *conn, err error, streamErr string) error {
	return s.endStream(c, streamErr, err)
}

// endStream has the writer end our XML stream, after the stream error
// streamErr if not empty, and waits until that is written or the connection
// is gone. The session is then not resumable. It returns err.
func (s *Stream) endStream(c *conn, streamErr string, err error) error {
	s.mu.Lock()
	if c.final == nil {
		c.final = []byte(streamErr + "</stream:stream>")
		c.finalDone = make(chan struct{})
	}
	done := c.finalDone
	c.ended = true
	s.mu.Unlock()
	c.wake()
	t := time.NewTimer(min(s.cfg.AckTimeout, closeWait))
	defer t.Stop()
	select {
	case <-done:
	case <-c.dead:
	case <-t.C:
	}
	return err
}

// ErrAnswerLater is returned by a handler (see Stream.Handle) that took an
// IQ get or set and will answer it later, from another goroutine, with Send:
// the stream then does not answer it with an error itself. It is not logged
// as a failure.
var ErrAnswerLater = errors.New("stream: the handler answers this IQ later")

// dispatch hands an inbound IQ reply to the SendIQ waiting for it, on the
// reader; any other stanza goes to the handlers, on the callback goroutine.
// j is the stanza's job; a reply handed to its waiter leaves a mark in its
// place, so that it counts as handled once everything before it is.
func (s *Stream) dispatch(j job) {
	el := j.el
	if el.name.Local == "iq" {
		if typ := el.Attr("type"); typ == "result" || typ == "error" {
			id := el.Attr("id")
			s.mu.Lock()
			w, ok := s.iqs[id]
			delete(s.iqs, id)
			s.mu.Unlock()
			if ok {
				w.ch <- iqResult{el: el}
				if j.counts {
					j.el = nil
					s.cb.push(j, s)
				}
				return
			}
		}
	}
	s.cb.push(j, s)
}

// runJob runs one job of the callback goroutine.
func (s *Stream) runJob(j *job) {
	switch {
	case j.tok != nil:
		j.tok.deliver()
	case j.toks != nil:
		for _, t := range j.toks.toks {
			t.deliver()
		}
	case j.el != nil:
		s.handle(j.el)
	case j.ev != nil:
		s.tell(*j.ev)
	case j.fn != nil:
		j.fn()
	}
	if j.counts {
		s.markHandled(j.in, j.inSession)
	}
}

// handle runs the handlers on an inbound stanza, then answers an IQ request
// that no handler answered or claimed (see ErrAnswerLater).
func (s *Stream) handle(el *Element) {
	typ := el.Attr("type")
	id := el.Attr("id")
	s.mu.Lock()
	handlers := s.handlers
	s.mu.Unlock()
	var w *replyWriter // for the handlers of tokens, made for the first
	claimed := false
	for _, h := range handlers {
		var err error
		if eh, ok := h.h.(ElementHandler); ok {
			err = eh.HandleElement(el)
		} else {
			if w == nil {
				w = &replyWriter{s: s, id: id}
			}
			var start xml.StartElement
			if start, err = el.Start(); err == nil {
				err = h.h.HandleXMPP(readEncoder{el.InnerReader(), w}, &start)
			}
		}
		switch {
		case errors.Is(err, ErrAnswerLater):
			claimed = true
		case err != nil:
			s.log.Warn("handler failed", "err", err)
		}
	}
	if el.name.Local != "iq" || (typ != "get" && typ != "set") || w != nil && w.replied || claimed {
		return
	}
	reply := stanza.IQ{ID: id, Type: stanza.ResultIQ}
	if from := el.Attr("from"); from != "" {
		reply.To, _ = jid.Parse(from)
	}
	var body xml.TokenReader
	if typ == "get" && isPing(el) {
		body = reply.Wrap(nil)
	} else {
		reply.Type = stanza.ErrorIQ
		body = reply.Wrap(stanza.Error{Type: stanza.Cancel, Condition: stanza.ServiceUnavailable}.TokenReader())
	}
	b, _, err := encodeStanza(body, xstanza.NewID)
	if err == nil {
		err = s.sendInternal(b)
	}
	if err != nil {
		s.log.Warn("cannot answer IQ", "id", id, "err", err)
	}
}

func isPing(el *Element) bool {
	_, ok := el.Child("urn:xmpp:ping", "ping")
	return ok
}

// finish ends the stream for good: every token that is not final yet ends
// (queued ones TokenFailed, unacknowledged ones TokenDisconnected), waiting
// senders and SendIQ callers are released. Called by run as it ends.
func (s *Stream) finish(err error) {
	s.commitFinal()
	s.mu.Lock()
	s.finished = true
	s.err = err
	var queued, sent []*entry
	for s.queue.len() > 0 {
		queued = append(queued, s.queue.pop())
	}
	s.out.Reset(func(e *entry) { sent = append(sent, e) })
	if s.room != nil {
		close(s.room)
		s.room = nil
	}
	if s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.failIQsLocked(func(*pendingIQ) bool { return true }, err)
	addr := s.addr
	s.mu.Unlock()
	s.cancel()
	var moves tokenMoves
	for _, e := range queued {
		moves.move(e.tok, TokenQueued, TokenFailed, fmt.Errorf("stream: %q not written: %w", e.tok.id, err))
	}
	for _, e := range sent {
		moves.move(e.tok, TokenSent, TokenDisconnected, fmt.Errorf("stream: %q not acknowledged: %w", e.tok.id, err))
	}
	moves.push(s)
	s.emit(Event{Kind: EventClosed, Err: err, Addr: addr, Lost: len(sent)})
}

// move is StanzaToken.move for the stream's own goroutines: observers learn
// of the change on the callback goroutine.
func (s *Stream) move(t *StanzaToken, from, to TokenState, err error) bool {
	moved, deliver := t.change(from, to, err)
	if deliver {
		s.cb.push(job{tok: t}, s)
	}
	return moved
}

// emit has the callback goroutine tell the listeners of ev.
func (s *Stream) emit(ev Event) {
	if ev.At.IsZero() {
		ev.At = time.Now()
	}
	s.log.Debug("stream event", "kind", ev.Kind.String(), "err", ev.Err, "acked", ev.Acked, "resent", ev.Resent, "lost", ev.Lost)
	s.cb.push(job{ev: &ev}, s)
}

// newSessionWait bounds how long a new session waits for the listeners of
// EventNewSession before it writes what is queued.
const newSessionWait = time.Second

// emitNewSession tells the listeners of a new session and waits until they
// have run, or newSessionWait, or Close: a listener can then take back what
// is still queued before the new session writes it (a room client holds
// its messages until it has joined the room again). The bound keeps a
// callback that waits for the stream from holding it up.
func (s *Stream) emitNewSession(ev Event) {
	ran := make(chan struct{})
	s.cb.push(job{ev: &ev, ran: ran}, s)
	t := time.NewTimer(newSessionWait)
	defer t.Stop()
	select {
	case <-ran:
	case <-t.C:
		s.log.Warn("new session: listeners still running, writing anyway")
	case <-s.closeCh:
	}
}

// tell runs the event listeners; on the callback goroutine.
func (s *Stream) tell(ev Event) {
	s.mu.Lock()
	ls := s.listeners
	s.mu.Unlock()
	for _, f := range ls {
		(*f)(ev)
	}
}

// fifo is the send queue.
type fifo struct {
	buf  []*entry
	head int
}

func (q *fifo) len() int { return len(q.buf) - q.head }

func (q *fifo) push(e *entry) { q.buf = append(q.buf, e) }

func (q *fifo) pop() *entry {
	e := q.buf[q.head]
	q.buf[q.head] = nil
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	} else if q.head > 1024 && q.head*2 > len(q.buf) {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	return e
}
