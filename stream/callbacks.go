package stream

import "sync"

// callbacks runs the user's code — token observers, handlers and event
// listeners — for the stream's own goroutines, on a goroutine of its own, one
// callback at a time, in the order the stream queued them.
//
// The reader, the writer and the connecting goroutine only queue work here
// and never wait for it, so no callback can stop them: a callback may call
// Send (even one that waits for room), SendIQ, Abort or Close, and the stream
// keeps reading, writing and reconnecting meanwhile. The goroutine is started
// when work arrives and ends when none is left, so an idle stream has none.
type callbacks struct {
	mu      sync.Mutex // guards the fields below
	jobs    []job
	running bool          // a goroutine is draining jobs
	done    chan struct{} // closed once drained after finish; nil before
}

// job is one unit of user code to run: at most one of tok, el, ev and fn
// is set.
type job struct {
	tok *StanzaToken  // deliver the token's queued changes to its observers
	el  *Element      // run the handlers on an inbound stanza
	ev  *Event        // tell the event listeners
	fn  func()        // run a hook (see Stream.AddHook)
	ran chan struct{} // if not nil, closed once the job has run

	// With an outbox, the job of an inbound stanza (or a mark for one that
	// went to a SendIQ waiter) carries the inbound count up to it: once it
	// has run, that many stanzas of session inSession are handled (see
	// Stream.handled).
	in        uint32
	inSession uint64
	counts    bool
}

// push queues j and starts the goroutine if none runs. run executes a job.
func (q *callbacks) push(j job, run func(*job)) {
	q.mu.Lock()
	q.jobs = append(q.jobs, j)
	start := !q.running
	q.running = true
	q.mu.Unlock()
	if start {
		go q.drain(run)
	}
}

func (q *callbacks) drain(run func(*job)) {
	var batch []job
	for {
		q.mu.Lock()
		if len(q.jobs) == 0 {
			q.running = false
			if q.done != nil {
				close(q.done)
				q.done = nil
			}
			q.mu.Unlock()
			return
		}
		batch, q.jobs = q.jobs, batch[:0]
		q.mu.Unlock()
		for i := range batch {
			run(&batch[i])
			if batch[i].ran != nil {
				close(batch[i].ran)
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
}
