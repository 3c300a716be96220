package tracking

import (
	"sync"
	"time"
)

// Timers runs the timeouts of many trackers on a single timer: a client that
// tracks thousands of messages at once keeps one deadline entry per tracker
// instead of a runtime timer and a callback each. Give it to the trackers
// with WithTimers; SetTimeout and SetDeadline behave the same either way.
//
// The zero value is ready to use. A Timers must not be copied after first
// use. It owns no goroutine: its one timer is a time.AfterFunc timer, which
// expires the trackers that are due, each on the timer's goroutine, in the
// order of their deadlines.
type Timers struct {
	mu    sync.Mutex // guards the fields below, and MessageTracker.slot
	heap  []deadline // a min-heap on at
	timer *time.Timer
	// wake is when timer fires, 0 when it is stopped or has fired.
	wake int64
	base time.Time // the origin of deadline.at; set on first use
}

// deadline is one tracker's armed timeout.
type deadline struct {
	at int64 // nanoseconds since Timers.base (monotonic)
	t  *MessageTracker
	id uint32 // the tracker's timerID when armed: a stale entry does nothing
}

// WithTimers has the tracker's timeouts run on ts (see Timers) instead of a
// timer of its own: those armed after it, so put it before WithTimeout.
func WithTimers(ts *Timers) Option {
	return func(t *MessageTracker) {
		t.mu.Lock()
		t.timers = ts
		t.mu.Unlock()
	}
}

// add arms t's timeout for when, with t's current timer id. Called with
// t.mu held.
func (ts *Timers) add(t *MessageTracker, when time.Time) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.base.IsZero() {
		ts.base = time.Now()
	}
	at := max(int64(when.Sub(ts.base)), 1)
	i := len(ts.heap)
	ts.heap = append(ts.heap, deadline{at: at, t: t, id: t.timerID})
	ts.heap[i].t.slot = i + 1
	ts.up(i)
	if ts.wake == 0 || at < ts.wake {
		ts.arm(at)
	}
}

// remove disarms t's timeout, if armed. Called with t.mu held. The timer is
// left as it is: firing early finds nothing due and sets it again.
func (ts *Timers) remove(t *MessageTracker) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t.slot == 0 {
		return
	}
	ts.delete(t.slot - 1)
}

// delete removes the entry at index i. Called with ts.mu held.
func (ts *Timers) delete(i int) {
	ts.heap[i].t.slot = 0
	last := len(ts.heap) - 1
	if i != last {
		ts.heap[i] = ts.heap[last]
		ts.heap[i].t.slot = i + 1
	}
	ts.heap[last] = deadline{}
	ts.heap = ts.heap[:last]
	if i < last {
		ts.down(i)
		ts.up(i)
	}
}

// arm has the timer fire at at. Called with ts.mu held.
func (ts *Timers) arm(at int64) {
	ts.wake = at
	d := time.Duration(at) - time.Since(ts.base)
	if ts.timer == nil {
		ts.timer = time.AfterFunc(d, ts.fire)
		return
	}
	ts.timer.Reset(d)
}

// fire expires every tracker that is due and sets the timer for the next.
func (ts *Timers) fire() {
	ts.mu.Lock()
	ts.wake = 0
	now := int64(time.Since(ts.base))
	var due []deadline
	for len(ts.heap) > 0 && ts.heap[0].at <= now {
		due = append(due, ts.heap[0])
		ts.delete(0)
	}
	if len(ts.heap) > 0 {
		ts.arm(ts.heap[0].at)
	}
	ts.mu.Unlock()
	for _, d := range due {
		d.t.expire(d.id)
	}
}

// up and down restore the heap around index i. Called with ts.mu held.
func (ts *Timers) up(i int) {
	h := ts.heap
	for i > 0 {
		p := (i - 1) / 2
		if h[p].at <= h[i].at {
			break
		}
		h[p], h[i] = h[i], h[p]
		h[p].t.slot, h[i].t.slot = p+1, i+1
		i = p
	}
}

func (ts *Timers) down(i int) {
	h := ts.heap
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h[r].at < h[l].at {
			m = r
		}
		if h[i].at <= h[m].at {
			return
		}
		h[i], h[m] = h[m], h[i]
		h[i].t.slot, h[m].t.slot = i+1, m+1
		i = m
	}
}
