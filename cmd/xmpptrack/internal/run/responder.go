package run

import (
	"context"
	"encoding/xml"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/stream"
)

// ResponderConfig says what a Responder does besides answering receipt
// requests.
type ResponderConfig struct {
	// Display makes the responder mark every markable message it receives
	// displayed (XEP-0333), DisplayAfter after it arrived.
	Display      bool
	DisplayAfter time.Duration
}

// A Responder is the receiving side of one-to-one messages, for tests and
// demos of a chat run: on its stream it answers the receipt request
// (XEP-0184) of every message received, with a chat.Responder, and when
// asked it marks each message displayed after a delay. It sends the
// stream's presence, at the start and again after every new session, so
// that the server delivers to it the messages sent to its bare JID.
type Responder struct {
	s    *stream.Stream
	cfg  ResponderConfig
	resp *chat.Responder

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	remove []func()

	received  atomic.Uint64
	displayed atomic.Uint64

	mu    sync.Mutex // guards queue
	queue []pendingMark
	wake  chan struct{} // a value when queue has a new entry
}

// pendingMark is a message to mark displayed when it is due.
type pendingMark struct {
	from jid.JID
	id   string
	due  time.Time
}

// Respond starts answering on s and sends its presence, returning once the
// server has acknowledged the presence (or, without stream management, once
// it was written). Close stops the responder; it does not close s.
func Respond(ctx context.Context, s *stream.Stream, cfg ResponderConfig) (*Responder, error) {
	r := &Responder{s: s, cfg: cfg, wake: make(chan struct{}, 1)}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.resp = chat.NewResponder(s)
	r.remove = append(r.remove, s.HandleElement(r.handle), s.OnEvent(r.streamEvent))
	if cfg.Display {
		r.wg.Go(r.markLoop)
	}
	if err := r.announce(ctx); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Received returns how many messages with a body from another account the
// responder has seen.
func (r *Responder) Received() uint64 { return r.received.Load() }

// Answered returns how many receipts the responder has sent.
func (r *Responder) Answered() uint64 { return r.resp.Answered() }

// Displayed returns how many displayed markers the responder has sent.
func (r *Responder) Displayed() uint64 { return r.displayed.Load() }

// Close stops answering and marking; the markers not yet sent are dropped.
func (r *Responder) Close() {
	r.cancel()
	r.wg.Wait()
	for _, f := range r.remove {
		f()
	}
	r.resp.Close()
}

// announce sends the stream's initial presence and waits for the server to
// take it.
func (r *Responder) announce(ctx context.Context) error {
	tok, err := r.s.Send(ctx, stanza.Presence{}.Wrap(nil))
	if err != nil {
		return fmt.Errorf("sending presence: %w", err)
	}
	switch st, err := tok.Wait(ctx); st {
	case stream.TokenAcked, stream.TokenSentWithoutSM:
		return nil
	default:
		if err == nil {
			err = fmt.Errorf("presence %v", st)
		}
		return fmt.Errorf("sending presence: %w", err)
	}
}

// streamEvent sends the presence again after a new session, which starts
// without one.
func (r *Responder) streamEvent(ev stream.Event) {
	if ev.Kind != stream.EventNewSession || r.ctx.Err() != nil {
		return
	}
	r.wg.Go(func() {
		ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
		defer cancel()
		_ = r.announce(ctx)
	})
}

// handle counts the messages received and queues the markable ones to be
// marked displayed. It runs on the stream's reader goroutine and never
// blocks.
func (r *Responder) handle(el *stream.Element) {
	if el.Name().Local != "message" {
		return
	}
	switch el.Attr("type") {
	case "error", "groupchat":
		return
	}
	id, from := el.Attr("id"), el.Attr("from")
	if id == "" || from == "" {
		return
	}
	body, markable := children(el.Tokens())
	if !body {
		return
	}
	sender, err := jid.Parse(from)
	if err != nil || sender.Bare().Equal(r.s.Addr().Bare()) {
		return
	}
	r.received.Add(1)
	if !r.cfg.Display || !markable {
		return
	}
	r.mu.Lock()
	r.queue = append(r.queue, pendingMark{from: sender, id: id, due: time.Now().Add(r.cfg.DisplayAfter)})
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// children reports whether a message's content has a <body/> and a
// XEP-0333 <markable/> among its direct children.
func children(inner []xml.Token) (body, markable bool) {
	depth := 0
	for _, tok := range inner {
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 1 {
				switch {
				case t.Name.Local == "body":
					body = true
				case t.Name.Space == chat.NSMarkers && t.Name.Local == "markable":
					markable = true
				}
			}
		case xml.EndElement:
			depth--
		}
	}
	return body, markable
}

// markLoop sends the displayed markers as they fall due, in the order the
// messages arrived (every message waits the same delay), until Close.
func (r *Responder) markLoop() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		r.mu.Lock()
		var next pendingMark
		ok := len(r.queue) > 0
		if ok {
			next = r.queue[0]
		}
		r.mu.Unlock()
		if !ok {
			select {
			case <-r.wake:
				continue
			case <-r.ctx.Done():
				return
			}
		}
		if d := time.Until(next.due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-r.ctx.Done():
				timer.Stop()
				return
			}
		}
		r.mu.Lock()
		r.queue[0] = pendingMark{}
		r.queue = r.queue[1:]
		r.mu.Unlock()
		if err := r.resp.MarkDisplayed(r.ctx, next.from, next.id); err == nil {
			r.displayed.Add(1)
		}
	}
}
