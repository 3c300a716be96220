package stream

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
	xstream "mellium.im/xmpp/stream"

	"github.com/xmpptrack/xmpptrack/sm"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
)

// conn is one connection of the stream. Its reader and writer goroutines own
// the reading and writing halves of nc; everything else is guarded as marked.
type conn struct {
	nc   net.Conn // the secured connection (what mellium negotiated on)
	raw  net.Conn // the TCP connection below it
	sess *xmpp.Session
	kick chan struct{} // wakes the writer; capacity 1
	dead chan struct{} // closed by fail
	once sync.Once
	err  error // why the connection ended; set once, before dead closes
	wg   sync.WaitGroup

	// Guarded by Stream.mu:
	resumed   bool          // the connection resumed a session
	resend    bool          // the writer must first write the unacked stanzas again
	answerAt  time.Time     // when the server asked for an ack; zero if answered
	reqOut    bool          // our <r/> awaits an <a/>
	reqAt     time.Time     // when it was sent
	sinceReq  int           // stanzas written since the last <r/>
	lastWrite time.Time     // when stanzas were last written
	needReq   bool          // send an <r/> even if nothing new was written
	confirmed bool          // an <a/> arrived on this connection
	since     time.Time     // last time anything was read
	closing   bool          // Close: write </stream:stream> after the queue
	final     []byte        // a stream error to write before closing
	finalDone chan struct{} // closed by the writer once final is written
	ended     bool          // the server ended its stream (not resumable)
}

func (c *conn) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// fail ends the connection abruptly, without </stream:stream>, so that the
// server keeps the session for resumption.
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
	if c.resumed && !c.confirmed && errors.Is(c.err, ErrAckTimeout) {
		return false
	}
	return true
}

// serve runs one connection until it fails or the stream is closed.
func (s *Stream) serve(c *conn) error {
	s.mu.Lock()
	s.cur = c
	c.resend = c.resumed && s.out.Len() > 0
	c.needReq = c.resumed
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
		t := time.NewTimer(s.cfg.AckTimeout)
		select {
		case <-c.dead:
		case <-s.forceCh:
		case <-t.C:
		}
		t.Stop()
		c.fail(ErrClosed)
	}
	c.wg.Wait()
	return c.err
}

// writeLoop is the only writer of a connection. It writes, in this order:
// the unacknowledged stanzas again after a resumption, then queued stanzas
// (moving their tokens to TokenSent), answers to <r/>, and <r/> requests.
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
		// an ack never finds a token still queued. Observers run here,
		// without the lock. An aborted token is skipped.
		to := TokenSent
		if !smOn {
			to = TokenSentWithoutSM
		}
		popped := len(batch)
		n := 0
		for _, e := range batch {
			if e.tok.move(TokenQueued, to, nil) {
				batch[n] = e
				n++
			}
		}
		clear(batch[n:])
		batch = batch[:n]

		s.mu.Lock()
		for _, e := range batch {
			if smOn {
				s.out.Sent(e)
			}
			buf = append(buf, e.b...)
		}
		s.stats.Sent += uint64(len(batch))
		c.sinceReq += len(batch)
		now := time.Now()
		if len(batch) > 0 {
			c.lastWrite = now
		}
		final := c.final
		closing := c.closing && s.queue.len() == 0 && final == nil
		// Answer the server's <r/> along with stanzas we write anyway, or
		// after AnswerDelay: the server asks again only once answered, so
		// a short delay saves a write (and a request) per inbound stanza.
		if !c.answerAt.IsZero() && (len(batch) > 0 || now.Sub(c.answerAt) >= s.cfg.AnswerDelay || final != nil || closing) {
			buf = sm.AppendAnswer(buf, s.in)
			c.answerAt = time.Time{}
		}
		// Ask for an ack when the writer has been idle for RequestDelay
		// after writing, when RequestEvery stanzas went out since the last
		// request, or when half the unacked room is used.
		unacked := smOn && s.out.Len() > 0 && c.sinceReq > 0
		if smOn && (c.needReq || (unacked && (c.sinceReq >= s.cfg.RequestEvery ||
			(!c.reqOut && (now.Sub(c.lastWrite) >= s.cfg.RequestDelay || 2*s.out.Len() >= s.cfg.MaxUnacked))))) {
			buf = append(buf, sm.Request...)
			if !c.reqOut {
				c.reqAt = now
			}
			c.reqOut, c.needReq, c.sinceReq = true, false, 0
			unacked = false
		}
		s.checkIdleLocked()
		wait := c.since.Add(s.cfg.KeepAlive)
		if c.reqOut {
			wait = c.reqAt.Add(s.cfg.AckTimeout)
		}
		if !c.answerAt.IsZero() {
			wait = earliest(wait, c.answerAt.Add(s.cfg.AnswerDelay))
		}
		if unacked && !c.reqOut {
			wait = earliest(wait, c.lastWrite.Add(s.cfg.RequestDelay))
		}
		s.mu.Unlock()
		clear(batch)

		if final != nil {
			buf = append(buf, final...)
			buf = append(buf, "</stream:stream>"...)
		} else if closing {
			buf = append(buf, "</stream:stream>"...)
		}
		if len(buf) > 0 {
			c.nc.SetWriteDeadline(time.Now().Add(s.cfg.AckTimeout))
			if _, err := c.nc.Write(buf); err != nil {
				c.fail(fmt.Errorf("%w: write: %w", ErrConnectionLost, err))
				return
			}
		}
		if final != nil {
			close(c.finalDone)
		}
		if final != nil || closing {
			<-c.dead
			return
		}
		if popped > 0 || len(buf) > 0 {
			// Look for more before sleeping, also when every stanza taken
			// had been aborted: they took the room of those behind them.
			continue
		}
		timer.Reset(time.Until(wait))
		select {
		case <-c.kick:
		case <-c.dead:
			return
		case <-timer.C:
			s.mu.Lock()
			switch {
			case c.reqOut && time.Since(c.reqAt) >= s.cfg.AckTimeout:
				s.mu.Unlock()
				c.fail(fmt.Errorf("%w after %v", ErrAckTimeout, s.cfg.AckTimeout))
				return
			case !c.reqOut && time.Since(c.since) >= s.cfg.KeepAlive:
				if s.smOn {
					c.needReq = true
				} else {
					c.since = time.Now()
					s.mu.Unlock()
					if _, err := c.nc.Write([]byte{' '}); err != nil {
						c.fail(fmt.Errorf("%w: write: %w", ErrConnectionLost, err))
						return
					}
					s.mu.Lock()
				}
			}
			s.mu.Unlock()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
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
	r := c.sess.TokenReader()
	defer r.Close()
	for {
		tok, err := r.Token()
		if err != nil {
			s.mu.Lock()
			closing := c.closing
			var se xstream.Error
			if errors.Is(err, io.EOF) || errors.As(err, &se) {
				c.ended = true
			}
			s.mu.Unlock()
			switch {
			case closing && errors.Is(err, io.EOF):
				c.fail(ErrClosed)
			case errors.Is(err, io.EOF):
				c.fail(fmt.Errorf("%w: the server ended the stream", ErrConnectionLost))
			default:
				c.fail(fmt.Errorf("%w: read: %w", ErrConnectionLost, err))
			}
			return
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if start.Name.Space == sm.NS {
			if err := s.handleSM(c, start, r); err != nil {
				c.fail(err)
				return
			}
			continue
		}
		el, err := readElement(r, start)
		if err != nil {
			c.fail(fmt.Errorf("%w: read: %w", ErrConnectionLost, err))
			return
		}
		s.mu.Lock()
		if s.smOn {
			s.in++
		}
		c.since = time.Now()
		s.stats.Received++
		s.mu.Unlock()
		s.dispatch(el)
	}
}

// handleSM handles one stream management element read on c.
func (s *Stream) handleSM(c *conn, start xml.StartElement, r xml.TokenReader) error {
	if err := skipElement(r); err != nil {
		return fmt.Errorf("%w: read: %w", ErrConnectionLost, err)
	}
	switch start.Name.Local {
	case "r":
		s.mu.Lock()
		c.since = time.Now()
		if s.smOn && c.answerAt.IsZero() {
			c.answerAt = c.since
		}
		s.mu.Unlock()
		c.wake()
	case "a":
		h, err := sm.ParseH(start)
		if err != nil {
			return s.protocolError(c, fmt.Errorf("%w: %w", ErrProtocol, err),
				"<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
		}
		return s.ack(c, h)
	default:
		s.log.Debug("ignoring stream management element", "name", start.Name.Local)
	}
	return nil
}

// ack applies <a h/>.
func (s *Stream) ack(c *conn, h uint32) error {
	s.mu.Lock()
	acked := s.ackScrach[:0]
	n, err := s.out.Ack(h, func(e *entry) { acked = append(acked, e) })
	if err != nil {
		sent := s.out.SentCount()
		s.mu.Unlock()
		return s.protocolError(c, fmt.Errorf("%w: %w", ErrProtocol, err), sm.HandledCountTooHigh(h, sent))
	}
	c.reqOut = false
	c.confirmed = true
	c.since = time.Now()
	s.stats.Acked += uint64(n)
	s.checkIdleLocked()
	s.mu.Unlock()
	c.wake()
	for i, e := range acked {
		e.tok.move(TokenSent, TokenAcked, nil)
		acked[i] = nil
	}
	s.mu.Lock()
	s.ackScrach = acked[:0]
	s.mu.Unlock()
	return nil
}

// protocolError has the writer send a stream error and end the stream; the
// stream then closes for good with err.
func (s *Stream) protocolError(c *conn, err error, streamErr string) error {
	s.mu.Lock()
	c.final = []byte(streamErr)
	c.finalDone = make(chan struct{})
	done := c.finalDone
	c.ended = true
	s.mu.Unlock()
	c.wake()
	t := time.NewTimer(s.cfg.AckTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-c.dead:
	case <-t.C:
	}
	return err
}

// dispatch hands an inbound stanza to the SendIQ waiting for it, or to the
// handlers, and answers an IQ request nobody answered.
func (s *Stream) dispatch(el *Element) {
	typ := el.Attr("type")
	id := el.Attr("id")
	isIQ := el.Start.Name.Local == "iq"
	if isIQ && (typ == "result" || typ == "error") {
		s.mu.Lock()
		ch, ok := s.iqs[id]
		delete(s.iqs, id)
		s.mu.Unlock()
		if ok {
			ch <- el
			return
		}
	}
	s.mu.Lock()
	handlers := s.handlers
	s.mu.Unlock()
	w := &replyWriter{s: s, id: id}
	for _, h := range handlers {
		if eh, ok := h.(*elementHandler); ok {
			eh.f(el)
			continue
		}
		start := el.Start.Copy()
		if err := h.HandleXMPP(readEncoder{el.InnerReader(), w}, &start); err != nil {
			s.log.Warn("handler failed", "err", err)
		}
	}
	if !isIQ || (typ != "get" && typ != "set") || w.replied {
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
	for _, t := range el.Inner {
		if st, ok := t.(xml.StartElement); ok {
			return st.Name.Space == "urn:xmpp:ping" && st.Name.Local == "ping"
		}
	}
	return false
}

// finish ends the stream for good: every token that is not final yet ends
// (queued ones TokenFailed, unacknowledged ones TokenDisconnected), waiting
// senders and SendIQ callers are released.
func (s *Stream) finish(err error) {
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
	addr := s.addr
	s.mu.Unlock()
	s.cancel()
	for _, e := range queued {
		e.tok.move(TokenQueued, TokenFailed, fmt.Errorf("stream: %q not written: %w", e.tok.id, err))
	}
	for _, e := range sent {
		e.tok.move(TokenSent, TokenDisconnected, fmt.Errorf("stream: %q not acknowledged: %w", e.tok.id, err))
	}
	s.emit(Event{Kind: EventClosed, Err: err, Addr: addr, Lost: len(sent)})
}

func (s *Stream) emit(ev Event) {
	if ev.At.IsZero() {
		ev.At = time.Now()
	}
	s.log.Debug("stream event", "kind", ev.Kind.String(), "err", ev.Err, "acked", ev.Acked, "resent", ev.Resent, "lost", ev.Lost)
	if s.cfg.OnEvent != nil {
		s.cfg.OnEvent(ev)
	}
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
