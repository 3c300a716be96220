package stream

import (
	"sync"
	"time"
)

// callbacks runs the user's code — token observers, handlers and event
// listeners — for the stream's own goroutines, on a goroutine of its own, one
// callback at a time, in the order the stream queued them.
//
// The reader, the writer and the connecting goroutine only queue work here
// and never wait for it, so no callback can stop them: a callback may call
// Send (even one that waits for room), SendIQ, Abort or Close, and the stream
// keeps reading, writing and reconnecting meanwhile. The goroutine is started
// when work arrives and ends once none has come for callbackLinger, so an
// idle stream has none, and a steady flow of stanzas (a busy room) hands
// them to a goroutine that is already there instead of starting one each.
type callbacks struct {
	mu      sync.Mutex // guards the fields below
	jobs    []job
	running bool          // a goroutine is draining jobs
	waiting bool          // it waits for more, on wake
	done    chan struct{} // closed once drained after finish; nil before
	wake    chan struct{} // has room for one: work or finish for a waiting goroutine
	linger  time.Duration // how long the goroutine waits for more work before it ends; set before use
}

// callbackLinger is how long a stream's callback goroutine waits for more
// work before it ends.
const callbackLinger = time.Millisecond

// job is one unit of user code to run: at most one of tok, toks, el, ev
// and fn is set.
type job struct {
	tok  *StanzaToken  // deliver the token's queued changes to its observers
	toks *tokenBatch   // the same for several tokens, one after another
	el   *Element      // run the handlers on an inbound stanza
	ev   *Event        // tell the event listeners
	fn   func()        // run a hook (see Stream.AddHook)
	ran  chan struct{} // if not nil, closed once the job has run

	// With an outbox, the job of an inbound stanza (or a mark for one that
	// went to a SendIQ waiter) carries the inbound count up to it: once it
	// has run, that many stanzas of session inSession are handled (see
	// Stream.handled).
	in        uint32
	inSession uint64
	counts    bool
}

// push queues j and starts the goroutine if none runs, which runs jobs with
// s.runJob.
func (q *callbacks) push(j job, s *Stream) {
	q.mu.Lock()
	q.jobs = append(q.jobs, j)
	start := !q.running
	q.running = true
	wake := q.waiting
	q.waiting = false
	if q.wake == nil {
		q.wake = make(chan struct{}, 1)
	}
	q.mu.Unlock()
	switch {
	case start:
		go q.drain(s)
	case wake:
		q.wake <- struct{}{}
	}
}

func (q *callbacks) drain(s *Stream) {
	var batch []job
	var timer *time.Timer
	for {
		q.mu.Lock()
		if len(q.jobs) == 0 {
			if q.done == nil && q.linger > 0 {
				// Wait a little for more.
				q.waiting = true
				q.mu.Unlock()
				if timer == nil {
					timer = time.NewTimer(q.linger)
				} else {
					timer.Reset(q.linger)
				}
				select {
				case <-q.wake:
					timer.Stop()
					continue
				case <-timer.C:
				}
				q.mu.Lock()
				if !q.waiting {
					// Woken as the timer fired: take the wake.
					q.mu.Unlock()
					<-q.wake
					continue
				}
				q.waiting = false
			}
			if len(q.jobs) == 0 {
				q.running = false
				if q.done != nil {
					close(q.done)
					q.done = nil
				}
				q.mu.Unlock()
				return
			}
		}
		batch, q.jobs = q.jobs, batch[:0]
		q.mu.Unlock()
		for i := range batch {
			s.runJob(&batch[i])
			if batch[i].ran != nil {
				close(batch[i].ran)
			}
			if b := batch[i].toks; b != nil {
				b.release()
			}
			batch[i] = job{}
		}
	}
}

// finish closes done once every job queued so far (and any queued while
// they run) has run.
func (q *callbacks) finish(done chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.running {
		close(done)
		return
	}
	q.done = done
	if q.waiting {
		// The goroutine waits for work: it is all done.
		q.waiting = false
		q.wake <- struct{}{}
	}
}

// tokenBatch holds the tokens that one change of the stream moved (those
// an <a/> acknowledged, or those the writer took from the queue) whose
// observers must be told, in the order they moved: one job tells them all,
// instead of one job each.
type tokenBatch struct {
	toks []*StanzaToken
}

var tokenBatches = sync.Pool{New: func() any { return new(tokenBatch) }}

// release clears b and keeps it for reuse.
func (b *tokenBatch) release() {
	clear(b.toks)
	b.toks = b.toks[:0]
	tokenBatches.Put(b)
}

// tokenMoves gathers the tokens moved by one of the stream's goroutines
// whose observers must be told, and has the callback goroutine tell them,
// token after token in the order they moved, in one job. The zero value is
// ready to use.
type tokenMoves struct {
	one   *StanzaToken // the first token; most changes move one
	batch *tokenBatch  // all of them, from the second on
}

// move is Stream.move for a token of the gathering.
func (m *tokenMoves) move(t *StanzaToken, from, to TokenState, err error) bool {
	moved, deliver := t.change(from, to, err)
	if deliver {
		m.add(t)
	}
	return moved
}

func (m *tokenMoves) add(t *StanzaToken) {
	switch {
	case m.one == nil:
		m.one = t
	case m.batch == nil:
		m.batch = tokenBatches.Get().(*tokenBatch)
		m.batch.toks = append(m.batch.toks, m.one, t)
	default:
		m.batch.toks = append(m.batch.toks, t)
	}
}

// push queues the job that tells the observers of the gathered tokens, if
// any, and empties m.
func (m *tokenMoves) push(s *Stream) {
	switch {
	case m.batch != nil:
		s.cb.push(job{toks: m.batch}, s)
	case m.one != nil:
		s.cb.push(job{tok: m.one}, s)
	}
	*m = tokenMoves{}
}
